"""`render report OUTDIR`: one self-contained HTML page of a render's runs, opened in a
real browser (Debian's headless chromium); its screenshot is kept as a test artifact."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from helpers import render


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
