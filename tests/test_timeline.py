"""A run's timeline (`render run --trace`), and what it measured and cost: the run
record in the manifest, and the summary saying "not measured" on the CPU."""

from __future__ import annotations

import itertools
import json
import os
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import render
from test_bad_input import assert_rejected

from pipeline.config.cost import Cost, price
from pipeline.config.job import load_job
from pipeline.errors import TraceNotWritten
from pipeline.files.manifest import read_runs
from pipeline.flow.trace import Trace
from pipeline.gpu.device import pick_device
from pipeline.plan import make_plan
from pipeline.run import run_plan


def spans_by_track(trace: dict) -> dict[str, list[dict]]:
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in trace["traceEvents"]
             if e["ph"] == "M" and e["name"] == "thread_name"}
    tracks: dict[str, list[dict]] = defaultdict(list)
    for event in trace["traceEvents"]:
        if event["ph"] == "X":
            tracks[names[(event["pid"], event["tid"])]].append(event)
    return tracks


def test_the_trace_has_a_span_per_frame_in_every_stage_and_no_track_overlaps(
        write_job: Callable[..., Path], job_dir: Path) -> None:
    job = write_job(watermark={"enabled": True, "payload": "tl"})
    trace_file = job_dir / "run.trace.json"
    result = render("run", str(job), "--device", "cpu", "-q", "--trace", str(trace_file))
    assert result.returncode == 0, result.stderr
    trace = json.loads(trace_file.read_text())
    tracks = spans_by_track(trace)
    assert {"source", "decode", "watermark", "transfer", "write 0", "write 1"} <= set(tracks)
    for stage in ("source", "decode", "watermark", "transfer", "write"):
        work = [e for name, events in tracks.items() if name.split(" ")[0] == stage for e in events
                if e["name"].startswith("frame")]
        frames = sorted(f for e in work for f in e["args"]["frames"])
        assert frames == [1, 2, 3, 4, 5, 6], (stage, frames)
    for name, events in tracks.items():   # spans within one track never overlap
        events.sort(key=lambda e: e["ts"])
        for before, after in itertools.pairwise(events):
            assert before["ts"] + before["dur"] <= after["ts"] + 1e-3, (name, before, after)
    # a frame passes the stages in order: its decode ends before its transfer starts
    def span(stage: str, frame: int) -> dict:
        return next(e for name, events in tracks.items() if name.split(" ")[0] == stage for e in events
                    if e["name"] == f"frame {frame}")
    for frame in range(1, 7):
        assert span("decode", frame)["ts"] + span("decode", frame)["dur"] <= span("transfer", frame)["ts"] + 1e-3
        assert span("transfer", frame)["ts"] <= span("write", frame)["ts"]
    counters = {e["name"] for e in trace["traceEvents"] if e["ph"] == "C"}
    assert "ring slots in use" in counters and "decode output queue" in counters
    assert trace["otherData"]["shot"] == "test"


def test_a_trace_file_that_cannot_be_written_is_refused_before_any_frame(
        write_job: Callable[..., Path], job_dir: Path) -> None:
    job = write_job()
    (job_dir / "traces").mkdir()
    os.mkfifo(job_dir / "trace.fifo")
    cases = [(job_dir / "traces", "is a directory"),
             (job_dir / "no-such-folder" / "t.json", "does not exist"),
             (job / "t.json", "is not a folder"),                  # the folder is the job file
             (job_dir / "trace.fifo", "not a regular file"),       # a rename would replace it
             (job_dir / ("t" * 300 + ".json"), "cannot be written")]
    for trace_file, why in cases:
        result = render("run", str(job), "--device", "cpu", "-q", "--trace", str(trace_file))
        assert_rejected(result.returncode, result.stderr, "--trace", str(trace_file)[:60], why)
        assert not (job_dir / "out").exists(), f"{trace_file}: frames were rendered before the refusal"
    assert sorted(p.name for p in job_dir.iterdir()) == ["job.toml", "latents", "trace.fifo", "traces"]


def test_a_trace_write_that_fails_leaves_no_temporary_file(tmp_path: Path) -> None:
    (tmp_path / "t.json").mkdir()   # the rename onto it fails, after the temporary file is written
    with pytest.raises(OSError):
        Trace().write(tmp_path / "t.json", {"shot": "x"})
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]


def test_a_trace_lost_after_the_run_is_one_error_and_the_frames_stay(write_job: Callable[..., Path],
                                                                     job_dir: Path) -> None:
    # the folder checked before the run went away during it (or the disk filled)
    plan = make_plan(load_job(write_job()), pick_device("cpu"))
    with pytest.raises(TraceNotWritten, match="frames are rendered and published"):
        run_plan(plan, trace_path=job_dir / "gone" / "t.json")
    assert render("verify", str(job_dir / "out")).returncode == 0
    assert len(list((job_dir / "out").rglob("*.png"))) == 6


def test_a_run_record_says_what_was_not_measured_on_the_cpu(write_job: Callable[..., Path], job_dir: Path) -> None:
    job = write_job(cost={"gpu_hour": 2.5, "kwh": 0.2, "currency": "EUR"})
    result = render("run", str(job), "--device", "cpu", "-q")
    assert result.returncode == 0, result.stderr
    assert "energy J: not measured; GPU-seconds: not measured; cost EUR: not measured (on cpu)" in result.stdout
    (run,) = read_runs(job_dir / "out")
    assert run["frames"] == 6 and run["device"] == "cpu"
    assert run["energy_j"] is None and run["gpu_s"] is None and run["cost_per_frame"] is None
    assert run["currency"] == "EUR" and run["wall_s"] > 0
    assert render("verify", str(job_dir / "out")).returncode == 0   # a run record is not a stray line
    # a resumed run with nothing to do adds no record; one that renders adds its own
    assert render("run", str(job), "--device", "cpu", "--resume", "-q").returncode == 0
    assert len(read_runs(job_dir / "out")) == 1


def test_price_is_the_sum_of_gpu_time_and_energy() -> None:
    cost = Cost(gpu_hour=3.6, kwh=0.5, currency="USD")
    assert price(cost, 100.0, 7.2e6) == pytest.approx(3.6 * 100 / 3600 + 0.5 * 2)
    assert price(cost, 100.0, None) is None          # energy priced but not measured
    assert price(Cost(gpu_hour=3.6), 100.0, None) == pytest.approx(0.1)   # energy not priced


def test_bad_cost_fields_are_refused(write_job: Callable[..., Path], job_dir: Path) -> None:
    result = render("run", str(write_job(cost={"gpu_hour": -1})), "--device", "cpu")
    assert result.returncode == 2 and "cost.gpu_hour" in result.stderr and ">= 0" in result.stderr, result.stderr
    result = render("run", str(write_job(cost={"per_frame": 1})), "--device", "cpu")
    assert result.returncode == 2 and "cost.per_frame" in result.stderr, result.stderr
