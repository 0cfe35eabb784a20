"""`render report OUTDIR`: one self-contained HTML page of a render's runs, opened in a
real browser (Debian's headless chromium); its screenshot is kept as a test artifact."""

from __future__ import annotations

import html
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import render, render_bounded
from test_bad_input import assert_rejected

RUN: dict[str, Any] = {
    "kind": "run", "shot": "test", "device": "cpu", "frames": 6, "skipped": 0, "render_s": 1.5, "wall_s": 2.0,
    "energy_j": None, "gpu_s": None, "j_per_frame": None, "gpu_s_per_frame": None, "time": 1_700_000_000.0,
    "stages": {"decode": {"busy_s": 1.0, "waiting_s": 0.25, "blocked_s": 0.0}},
}


def output_root(folder: Path, *runs: dict[str, Any]) -> Path:
    """An output root whose manifest holds only these run records (no frame files)."""
    root = folder / "out"
    root.mkdir()
    (root / "manifest.jsonl").write_text("".join(json.dumps(run) + "\n" for run in runs or [RUN]))
    return root


def test_the_report_of_a_run_opens_in_a_browser_with_its_plots(
        write_job: Callable[..., Path], job_dir: Path, browser, tmp_path: Path) -> None:
    job = write_job(cost={"gpu_hour": 2.5, "currency": "EUR"})
    trace = job_dir / "run.trace.json"
    assert render("run", str(job), "--device", "cpu", "-q", "--trace", str(trace)).returncode == 0
    result = render("report", str(job_dir / "out"), "--trace", str(trace), "--job", str(job))
    assert result.returncode == 0, result.stderr
    page = job_dir / "out-report.html"   # beside the output root: inside it, verify would flag it
    assert result.stdout.strip() == f"wrote {page}"
    text = page.read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text   # nothing fetched
    runs_table = text.split("<h2>Runs")[1].split("</table>")[0]
    assert runs_table.count("not measured") == 4   # energy, J/frame, GPU-s/frame, cost/frame: on the CPU
    assert render("verify", str(job_dir / "out")).returncode == 0

    browser.get(page.as_uri())
    assert browser.title == "framefarm report: test"
    images = browser.find_elements("css selector", "img")
    assert len(images) == 2   # frames over time, stage utilisation
    assert all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", image)
               for image in images), "a plot did not render"
    body = browser.find_element("css selector", "body").text
    assert "6 frame file(s), 1 run(s)" in body and "all match their files" in body
    assert "write 0" in body and "decode" in body          # the trace's tracks
    assert 'gpu_hour = 2.5' in body                        # the job's settings
    browser.save_screenshot(str(tmp_path / "report.png"))
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_a_report_of_nothing_is_refused_in_one_line(tmp_path: Path) -> None:
    result = render("report", str(tmp_path))
    assert result.returncode == 2 and "OUTDIR" in result.stderr and "manifest.jsonl" in result.stderr
    assert "\n" not in result.stderr.strip()


@pytest.mark.parametrize("option", ["--job", "--trace"])
def test_a_job_or_trace_that_is_no_regular_file_is_refused_unread(option: str, tmp_path: Path) -> None:
    """A FIFO blocked the read forever and /dev/zero filled memory (a subprocess held to
    4 GiB and 60 s fails here instead); a directory was "cannot be read" with exit 1."""
    root = output_root(tmp_path)
    os.mkfifo(tmp_path / "in.fifo")
    for path, why in [(tmp_path / "in.fifo", "not a regular file"), (Path("/dev/zero"), "not a regular file"),
                      (tmp_path, "is a directory")]:
        result = render_bounded("report", str(root), option, str(path))
        assert_rejected(result.returncode, result.stderr, option, str(path), why)
        assert not (tmp_path / "out-report.html").exists()


def test_the_job_is_shown_with_every_secret_masked(write_job: Callable[..., Path], tmp_path: Path) -> None:
    """The watermark key, a webhook's credentials (user, password, the token in its path)
    and any field named like a token never reach the page, however the file spells them."""
    key, password, hook_token, api_token = "wm-key-5c0ffee", "hook-pw-9f3", "tok-77aa", "api-tok-5e1"
    job = write_job(watermark={"enabled": True, "payload": "x", "key": key},
                    notify={"webhook": f"https://bot:{password}@hooks.example.com/services/{hook_token}",
                            "secret_env": "HOOK_SECRET"},
                    cost={"gpu_hour": 2.5, "api_token": api_token})
    job.write_text(f'# the key used to be "{key}"\n' + job.read_text())   # in a comment too
    root = output_root(tmp_path)
    result = render("report", str(root), "--job", str(job))
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "out-report.html").read_text()
    for secret in (key, password, hook_token, api_token):
        assert secret not in page and secret not in html.unescape(page), secret
    shown = html.unescape(page)
    assert 'key = "***"' in shown and 'api_token = "***"' in shown
    assert 'webhook = "https://***@hooks.example.com/***"' in shown
    assert 'secret_env = "HOOK_SECRET"' in shown and "gpu_hour = 2.5" in shown   # the settings stay


def test_odd_run_records_are_left_out_with_a_warning_each(tmp_path: Path) -> None:
    """A record the page cannot use (edited by hand, another tool's) is named in a warning
    and left out; the other runs are still shown (the page is worth more than a refusal)."""
    no_time = {k: v for k, v in RUN.items() if k != "time"}
    odd = [{**RUN, "frames": "six"}, no_time, {**RUN, "stages": "fast"}, {**RUN, "cost": "cheap"},
           {**RUN, "time": 1e300}]
    root = output_root(tmp_path, RUN, *odd)
    result = render("report", str(root))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == len(odd), result.stderr
    for line, field, number in zip(warnings, ["frames = 'six'", "time is missing", "stages = 'fast'",
                                              "cost = 'cheap'", "time = 1e+300"], range(2, 7), strict=True):
        assert line.startswith("warning: ") and f"run record {number} left out" in line and field in line, line
    assert "0 frame file(s), 1 run(s)" in (tmp_path / "out-report.html").read_text()


@pytest.mark.parametrize("content", ["[]", '{"a": 1}', '{"traceEvents": [1]}', '{"traceEvents": 5}',
                                     '{"traceEvents": [{"ph": "X", "pid": 1, "tid": 1, "name": "frame 1"}]}'])
def test_a_trace_that_is_json_but_no_timeline_is_one_line(content: str, tmp_path: Path) -> None:
    root = output_root(tmp_path)
    trace = tmp_path / "t.json"
    trace.write_text(content)
    result = render("report", str(root), "--trace", str(trace))
    assert_rejected(result.returncode, result.stderr, "--trace", str(trace), "not a timeline")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "t.json"]   # no page, no temporary file


def test_an_output_that_is_a_directory_or_in_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    root = output_root(tmp_path)
    (tmp_path / "pages").mkdir()
    for dest, why in [(tmp_path / "pages", "is a directory"), (tmp_path / "nope" / "r.html", "does not exist"),
                      (root / "r.html", "is inside OUTDIR")]:   # verify would then flag the page
        result = render("report", str(root), "-o", str(dest))
        assert_rejected(result.returncode, result.stderr, "--output", str(dest), why)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["manifest.jsonl", "out", "pages"]
