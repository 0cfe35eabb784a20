"""Thumbnails (issue 19): a small JPEG made beside each published frame (never in the
manifest, passed over by verify), the latest ones found through the manifest's tail and
confined to the output root, and served by `render monitor` on both queue backends."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
from helpers import http, render, running_monitor

from pipeline.config.formats import frame_format
from pipeline.files.manifest import Manifest, read_records, verify
from pipeline.files.publish import TEMP_SUFFIX
from pipeline.files.thumbnail import THUMBNAILS_DIR, encode_thumbnail, thumbnail_path, write_thumbnail
from pipeline.stages.write import FrameOutputs
from workers.monitor.thumbnails import latest_thumbnails
from workers.queue import open_queue
from workers.tasks import JobSpec


def half_and_half(height: int, width: int, dtype: type) -> np.ndarray:
    """Dark left half, bright right half, in the value range of `dtype`."""
    top = {np.uint8: 255, np.uint16: 65535, np.float32: 1.0}[dtype]
    pixels = np.full((height, width, 3), 0.1 * top, dtype=np.float64)
    pixels[:, width // 2:] = 0.9 * top
    return pixels.astype(dtype)


def decoded(jpeg: bytes | Path) -> np.ndarray:
    with av.open(str(jpeg) if isinstance(jpeg, Path) else __import__("io").BytesIO(jpeg), format="mjpeg") as box:
        return next(box.decode(video=0)).to_ndarray(format="rgb24")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_a_thumbnail_is_a_small_jpeg_of_the_frame(dtype: type) -> None:
    jpeg = encode_thumbnail(half_and_half(720, 1280, dtype))
    assert jpeg[:2] == b"\xff\xd8" and len(jpeg) < 20_000
    pixels = decoded(jpeg)
    assert pixels.shape == (144, 256, 3)
    assert abs(pixels[:, :120].mean() - 25.5) < 6 and abs(pixels[:, 136:].mean() - 229.5) < 6


def test_a_frame_narrower_than_a_thumbnail_keeps_its_size() -> None:
    assert decoded(encode_thumbnail(half_and_half(24, 32, np.uint8))).shape == (24, 32, 3)


def outputs(root: Path, shot: str = "sh010", *, thumbnails: bool = True, frames: range = range(1, 4)) -> FrameOutputs:
    return FrameOutputs(root=root, frame_format=frame_format(("png",)),
                        frame_paths={f: root / "frames" / f"{shot}.{f:04d}.png" for f in frames},
                        png_compression=1, manifest=Manifest(root), thumbnails=thumbnails,
                        record_base={"shot": shot, "model_hash": "m", "job_hash": "j", "device": "cpu"})


def publish(files: FrameOutputs, frames: range) -> None:
    for frame in frames:
        files.frame_paths[frame].parent.mkdir(parents=True, exist_ok=True)
        files.publish_frame(frame, 0, half_and_half(48, 64, np.uint8))


def test_publishing_a_frame_puts_its_thumbnail_beside_it_outside_the_manifest(tmp_path: Path) -> None:
    files = outputs(tmp_path)
    publish(files, range(1, 4))
    thumbs = sorted((tmp_path / "frames" / THUMBNAILS_DIR).iterdir())
    assert [p.name for p in thumbs] == ["sh010.0001.jpg", "sh010.0002.jpg", "sh010.0003.jpg"]
    assert decoded(thumbs[0]).shape == (48, 64, 3)
    assert [r["path"] for r in read_records(tmp_path)] == [f"frames/sh010.000{f}.png" for f in (1, 2, 3)]
    assert verify(tmp_path) == (3, [])


def test_without_thumbnails_nothing_is_made(tmp_path: Path) -> None:
    publish(outputs(tmp_path, thumbnails=False), range(1, 3))
    assert not (tmp_path / "frames" / THUMBNAILS_DIR).exists()


def test_a_thumbnail_that_cannot_be_made_costs_a_warning_not_the_frame(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / THUMBNAILS_DIR).write_text("a file where the folder would go")
    with caplog.at_level(logging.WARNING):
        publish(outputs(tmp_path), range(1, 2))
    assert (tmp_path / "frames" / "sh010.0001.png").is_file()
    assert "no thumbnail for sh010.0001.png" in caplog.text
    assert write_thumbnail(tmp_path / "frames" / "sh010.0001.png", half_and_half(8, 8, np.uint8)) is None


def test_the_latest_thumbnails_of_a_shot_newest_first_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "out"
    publish(outputs(root, frames=range(1, 6)), range(1, 6))
    publish(outputs(root, "sh020", frames=range(1, 3)), range(1, 3))   # another shot on the same root
    latest = latest_thumbnails(str(root), "sh010", 3)
    assert [t["frame"] for t in latest] == [5, 4, 3]
    assert latest[0]["path"] == thumbnail_path(root / "frames" / "sh010.0005.png").resolve()
    assert [t["frame"] for t in latest_thumbnails(str(root), "sh010", 8, frame=2)] == [2]
    assert latest_thumbnails(str(tmp_path / "nowhere"), "sh010") == []
    # a record naming a frame outside the root (edited, or a link) shows nothing from there
    outside = tmp_path / "elsewhere" / "sh010.0009.png"
    outside.parent.mkdir()
    assert write_thumbnail(outside, half_and_half(8, 8, np.uint8)) == thumbnail_path(outside)
    Manifest(root).append({"kind": "frame", "shot": "sh010", "frame": 9, "path": "../elsewhere/sh010.0009.png",
                           "time": 2e9})
    (root / "frames" / THUMBNAILS_DIR / "sh010.0004.jpg").unlink()
    (root / "frames" / THUMBNAILS_DIR / "sh010.0004.jpg").symlink_to(thumbnail_path(outside))
    assert [t["frame"] for t in latest_thumbnails(str(root), "sh010")] == [5, 3, 2, 1]


@pytest.fixture(params=["sqlite", "redis"])
def queue_url(request: pytest.FixtureRequest, tmp_path: Path, redis_url_factory: Callable[[], str]) -> str:
    return f"sqlite:///{tmp_path / 'farm.db'}" if request.param == "sqlite" else redis_url_factory()


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def test_the_monitor_serves_a_jobs_latest_thumbnails(queue_url: str, tmp_path: Path) -> None:
    root = tmp_path / "out"
    queue = open_queue(queue_url)
    queue.submit(JobSpec(job_id="j1", name="sh010", toml="seed = 1\n", base_dir=str(tmp_path), output_root=str(root),
                         frame_start=1, frame_end=12, priority=0, chunk=1, video=False, max_attempts=1))
    queue.close()
    publish(outputs(root, frames=range(1, 13)), range(1, 13))
    with running_monitor(queue_url) as base:
        status, listed = http("GET", base + "/api/jobs/j1/thumbnails")
        assert status == 200
        assert [t["frame"] for t in listed["thumbnails"]] == [12, 11, 10, 9, 8, 7, 6, 5]
        assert listed["thumbnails"][0]["url"] == "/api/jobs/j1/thumbnails/12"
        status, kind, jpeg = get(base + "/api/jobs/j1/thumbnails/12")
        assert (status, kind) == (200, "image/jpeg") and decoded(jpeg).shape == (48, 64, 3)
        for path, want in [("/api/jobs/j1/thumbnails/13", 404), ("/api/jobs/nope/thumbnails/1", 404),
                           ("/api/jobs/j1/thumbnails/x1", 400), ("/api/jobs/j1/thumbnails/..", 400),
                           ("/api/jobs/j1/thumbnails/..%2F..%2Fmanifest.jsonl", 404),
                           ("/api/jobs/..%2Fj1/thumbnails", 404), ("/api/jobs/.j1/thumbnails", 400)]:
            status, kind, body = get(base + path)
            assert (status, kind) == (want, "application/json"), (path, body)
            assert json.loads(body)["error"], path
        status, _kind, page = get(base + "/jobs/j1")
        assert status == 200 and b'id="thumbs"' in page


def test_a_run_sweeps_the_thumbnail_temporaries_a_killed_worker_left(write_job: Callable[..., Path],
                                                                     job_dir: Path) -> None:
    job = write_job(output={"formats": ["png"]})
    assert render("run", str(job)).returncode == 0
    folder = sorted((job_dir / "out").rglob("*.png"))[0].parent
    (folder / THUMBNAILS_DIR).mkdir(exist_ok=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = folder / THUMBNAILS_DIR / f".test.0001.jpg.{int(dead.stdout)}.{os.urandom(4).hex()}{TEMP_SUFFIX}"
    stale.write_bytes(b"left by kill -9 mid-thumbnail")
    result = render("run", str(job))
    assert result.returncode == 0, result.stderr
    assert not stale.exists()
    assert verify(job_dir / "out")[1] == []
