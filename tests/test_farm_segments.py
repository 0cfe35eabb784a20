"""Segmented videos in the farm, with real worker processes on both queue backends: the
segments are tasks of their own, encoded from the published frames by whichever worker
is free, and the video task joins them by a remux; a worker killed mid-encode leaves no
partial segment and the segment is encoded again, once."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from helpers import render
from test_farm import records, start_worker, status, submit

from pipeline.config.job import load_job
from pipeline.files.png import read_png
from pipeline.files.video import read_video_info
from pipeline.plan import make_plan, with_videos
from pipeline.run import encode_segments
from workers.queue import open_queue
from workers.tasks import TASK_SEGMENT, TASK_VIDEO, TaskQueue


@pytest.fixture(params=["sqlite", "redis"])
def queue_url(request: pytest.FixtureRequest, tmp_path: Path, redis_url_factory: Callable[[], str]) -> str:
    return f"sqlite:///{tmp_path / 'farm.db'}" if request.param == "sqlite" else redis_url_factory()


def segmented(root: str, frames: int, segment: int, *, size: tuple[int, int] = (32, 24), formats: tuple[str, ...] = (
        "png", "mp4"), videos: tuple[dict, ...] = ({"path": "{shot}.mkv", "codec": "ffv1"},)) -> dict:
    return {"shot": {"frame_end": frames, "width": size[0], "height": size[1]}, "source": {"kind": "noise"},
            "output": {"root": root, "formats": list(formats), "videos": list(videos)},
            "tuning": {"writer_threads": 2, "video_segment_frames": segment}}


def decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def wait_done(queue: TaskQueue, job_id: str, workers: list, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while (shown := queue.status(job_id)[0]).state != "done":
        assert shown.state == "active", shown
        assert all(w.poll() is None for w in workers), [w.communicate()[1] for w in workers if w.poll() is not None]
        assert time.monotonic() < deadline, shown
        time.sleep(0.2)


def test_two_workers_encode_the_segments_and_the_join_equals_render_run(
        queue_url: str, write_job: Callable[..., Path], job_dir: Path) -> None:
    frames, segment = 24, 2
    job = write_job("farm.toml", **segmented("out", frames, segment))
    reference = write_job("ref.toml", **segmented(str(job_dir / "ref"), frames, segment))
    queue = open_queue(queue_url)
    workers = [start_worker(queue_url, job_dir, "--name", f"w{i}") for i in (1, 2)]
    try:
        assert render("run", str(reference), "--device", "cpu", "-q").returncode == 0   # while they start
        deadline = time.monotonic() + 60   # both polling before the job arrives: both can take its tasks
        while len(queue.workers()) < 2:
            assert time.monotonic() < deadline and all(w.poll() is None for w in workers)
            time.sleep(0.2)
        job_id = submit(job, queue_url, "--chunk", "2")
        wait_done(queue, job_id, workers)
        tasks = queue.tasks(job_id)
    finally:
        queue.close()
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        errors = [worker.communicate(timeout=60)[1] for worker in workers]
    assert [w.returncode for w in workers] == [0, 0], errors
    final = status(queue_url, job_id)
    assert (final["done"], final["failed"], final["segments"]) == (frames, 0, {"done": frames // segment})
    assert f"video segments: {frames // segment} of {frames // segment} encoded" in render(
        "status", job_id, "--queue", queue_url).stdout

    parts = [t for t in tasks if t.kind == TASK_SEGMENT]
    assert [(t.first, t.last) for t in parts] == [(f, f + 1) for f in range(1, frames + 1, segment)]
    assert all(t.state == "done" and t.attempts == 1 for t in parts)
    by_worker = Counter(t.worker for t in parts)
    assert set(by_worker) == {"w1", "w2"}, f"every segment on one worker: {by_worker}"

    root, ref = job_dir / "out", job_dir / "ref"
    segment_records = [r for r in records(root) if r["kind"] == "segment"]
    assert len(segment_records) == 2 * frames // segment   # both videos, each segment once
    assert max(Counter(r["path"] for r in segment_records).values()) == 1
    [video] = [t for t in tasks if t.kind == TASK_VIDEO]
    assert video.started is not None and max(r["time"] for r in segment_records) < video.started, \
        "the segments were encoded by their own tasks, before the join"
    joined = decoded(root / "test.mkv")
    assert len(joined) == frames
    assert all(np.array_equal(a, b) for a, b in zip(joined, decoded(ref / "test.mkv"), strict=True))
    assert all(np.array_equal(pixels, read_png(root / "test" / f"test.{frame:04d}.png"))
               for frame, pixels in enumerate(joined, start=1))
    assert read_video_info(root / "test.mp4") == (frames, 32, 24)
    with av.open(str(root / "test.mp4")) as container:   # a remux of closed-GOP segments: each starts a GOP
        keyframes = [p.is_keyframe for p in container.demux(video=0) if p.dts is not None]
    assert all(keyframes[i] for i in range(0, frames, segment)), keyframes
    verified = render("verify", str(root))
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # a segment task run again (its ack lost, before the join) finds its segments recorded: nothing is added
    for name in ("test.mkv", "test.mp4"):
        (root / name).rename(job_dir / name)
    before = (root / "manifest.jsonl").read_bytes()
    first = root / ".test.mkv.segments" / "00000.mkv"
    written = first.stat().st_mtime_ns
    plan = with_videos(make_plan(load_job(job), torch.device("cpu"), resume=True, frames=range(1, 3),
                                 video=False, check_memory=False))
    assert len(plan.videos_to_write) == 2 and all(0 in v.segments_done for v in plan.videos)
    assert encode_segments(plan, range(1, 3)) == []
    assert (root / "manifest.jsonl").read_bytes() == before
    assert first.stat().st_mtime_ns == written


def test_a_worker_killed_mid_segment_leaves_no_partial_file_and_the_segment_is_encoded_once(
        queue_url: str, write_job: Callable[..., Path], job_dir: Path) -> None:
    frames = 48
    job = write_job("farm.toml", **segmented("out", frames, frames // 2, size=(256, 192), formats=("png",),
                                             videos=({"path": "{shot}.mov", "codec": "prores_4444"},)))
    job_id = submit(job, queue_url, "--chunk", str(frames))
    root = job_dir / "out"
    parts = root / ".test.mov.segments"
    victim = start_worker(queue_url, job_dir, "--lease", "2", "--slots", "1")
    deadline = time.monotonic() + 180
    while not (parts.is_dir() and any(p.name.endswith(".part") for p in parts.iterdir())):
        assert victim.poll() is None, victim.communicate()[1]
        assert time.monotonic() < deadline, "no segment encode was seen"
        time.sleep(0.002)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    assert not (root / "test.mov").exists()
    kept = {p.name for p in parts.iterdir() if not p.name.endswith(".part")}
    assert len(kept) < 2, "the kill landed after both segments were published"

    survivor = start_worker(queue_url, job_dir, "--lease", "2", "--exit-when-idle")
    _out, err = survivor.communicate(timeout=180)
    assert survivor.returncode == 0, err
    final = status(queue_url, job_id)
    assert (final["state"], final["segments"]) == ("done", {"done": 2})
    queue = open_queue(queue_url)
    try:
        attempts = sorted(t.attempts for t in queue.tasks(job_id) if t.kind == TASK_SEGMENT)
    finally:
        queue.close()
    assert attempts[-1] == 2, f"the killed segment task was leased again: {attempts}"
    segment_records = [r for r in records(root) if r["kind"] == "segment"]
    assert sorted(r["index"] for r in segment_records) == [0, 1], "each segment recorded once"
    assert not list(root.rglob("*.part")), "a partial file was left"
    assert read_video_info(root / "test.mov") == (frames, 256, 192)
    verified = render("verify", str(root))
    assert verified.returncode == 0, verified.stdout + verified.stderr
