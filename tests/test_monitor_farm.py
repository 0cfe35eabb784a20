"""The monitor's remainder end to end (issue 19), with a real worker process on both queue
backends: `render submit --preview N --submitted-by NAME` queues the preview frames
first and keeps who submitted it from where; the worker renders the preview frames
before the rest and writes a thumbnail beside each frame; `render monitor` shows the
submitter and serves the thumbnails. Bad `--submitted-by` and `--preview` are refused
in one line."""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import clip_job, http, render, running_monitor

from pipeline.errors import JobError
from pipeline.files.manifest import verify
from pipeline.files.thumbnail import THUMBNAILS_DIR
from workers.queue import open_queue
from workers.submit import submitter

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["sqlite", "redis"])
def queue_url(request: pytest.FixtureRequest, tmp_path: Path, redis_url_factory: Callable[[], str]) -> str:
    return f"sqlite:///{tmp_path / 'farm.db'}" if request.param == "sqlite" else redis_url_factory()


def submit(job: Path, queue_url: str, *extra: str) -> str:
    result = render("submit", str(job), "--queue", queue_url, *extra)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_preview_job_renders_its_preview_first_with_thumbnails_and_its_submitter(
        queue_url: str, write_job: Callable[..., Path], job_dir: Path) -> None:
    job_id = submit(write_job("farm.toml"), queue_url, "--preview", "2", "--chunk", "2",
                    "--submitted-by", "Ada Lovelace")
    worker = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "worker", "--queue", queue_url, "--device", "cpu", "--slots", "1",
         "--output-root", str(job_dir), "--model-root", str(job_dir.parent), "--exit-when-idle"],
        capture_output=True, text=True, timeout=180, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert worker.returncode == 0, worker.stderr

    queue = open_queue(queue_url)
    tasks = [task for task in queue.tasks(job_id) if task.kind == "frames"]
    queue.close()
    assert [(t.first, t.last) for t in tasks] == [(1, 1), (2, 3), (4, 5), (6, 6)]
    by_start = [(t.first, t.last) for t in sorted(tasks, key=lambda task: task.started or 0)]
    assert by_start == [(1, 1), (6, 6), (2, 3), (4, 5)], "one slot: the preview frames go first, then the rest"

    out = job_dir / "out"
    frames = sorted(out.rglob("*.png"))
    assert len(frames) == 6
    assert sorted(p.name for p in out.rglob(f"{THUMBNAILS_DIR}/*.jpg")) == [p.stem + ".jpg" for p in frames]
    assert all(p.parent.name == THUMBNAILS_DIR and p.parent.parent == frames[0].parent
               for p in out.rglob("*.jpg")), "beside the frames"
    assert THUMBNAILS_DIR not in (out / "manifest.jsonl").read_text()
    assert verify(out) == (7, []), "six frames and the video, nothing else"

    with running_monitor(queue_url) as base:
        [job] = http("GET", base + "/api/jobs")[1]["jobs"]
        assert (job["submitted_by"], job["submitted_host"]) == ("Ada Lovelace", socket.gethostname())
        assert http("GET", base + f"/api/jobs/{job_id}")[1]["preview"] == 2
        shown = http("GET", base + f"/api/jobs/{job_id}/thumbnails")[1]["thumbnails"]
        assert sorted(t["frame"] for t in shown) == [1, 2, 3, 4, 5, 6]
        assert [t["time"] for t in shown] == sorted((t["time"] for t in shown), reverse=True), "newest first"


@pytest.mark.gpu
def test_a_gpu_worker_writes_a_thumbnail_of_each_frame_from_pinned_memory(write_job: Callable[..., Path],
                                                                          job_dir: Path) -> None:
    queue_url = f"sqlite:///{job_dir / 'farm.db'}"
    submit(write_job("farm.toml"), queue_url, "--preview", "2", "--chunk", "2")
    worker = render("worker", "--queue", queue_url, "--device", "cuda:0", "--output-root", str(job_dir),
                    "--model-root", str(job_dir.parent), "--exit-when-idle", timeout=300)
    assert worker.returncode == 0, worker.stderr
    out = job_dir / "out"
    frames = sorted(out.rglob("*.png"))
    thumbs = sorted(out.rglob(f"{THUMBNAILS_DIR}/*.jpg"))
    assert len(frames) == 6 and [p.stem for p in thumbs] == [p.stem for p in frames]
    assert "no thumbnail" not in worker.stderr
    assert verify(out) == (7, [])


def test_the_submitter_defaults_to_the_os_user_and_bad_options_are_one_line(
        write_job: Callable[..., Path], wan_vae: Path, tmp_path: Path) -> None:
    queue_url = f"sqlite:///{tmp_path / 'farm.db'}"
    job = write_job("farm.toml")
    job_id = submit(job, queue_url)
    refused = render("submit", str(job), "--queue", queue_url, "--submitted-by", "")
    assert (refused.returncode, refused.stderr) == (2, "error: --submitted-by = '': expected 1 to 64 printable "
                                                       "characters\n")
    with pytest.raises(JobError, match="--submitted-by = 'a\\\\nb': expected 1 to 64 printable characters"):
        submitter("a\nb")
    clip = render("submit", str(clip_job(tmp_path, wan_vae, name="clip.toml")), "--queue", queue_url, "--preview", "3")
    assert clip.returncode == 2
    assert clip.stderr.startswith("error: --preview = 3: this job renders a clip") and clip.stderr.count("\n") == 1
    queue = open_queue(queue_url)
    listed = queue.status()
    queue.close()
    assert [(j.job_id, j.submitted_by, j.submitted_host) for j in listed] == [
        (job_id, getpass.getuser(), socket.gethostname())], "the OS user; nothing queued by a refused submit"
