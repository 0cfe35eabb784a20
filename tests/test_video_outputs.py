"""The videos editorial receives: every codec written and read back with PyAV (frame
count, size, pixel format, colour tags, the colour a BT.709 player shows; FFV1
pixel-exact), several videos from one render, a resumed run that writes only the
missing one, and every combination FFmpeg cannot make refused up front with one line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
from helpers import render

from pipeline.config.video import VIDEO_CODECS, VideoOutput
from pipeline.files.video import VideoFile, colour_tags, read_colour_tags, read_video_info

RED_BRICK = np.array([200, 60, 40], dtype=np.uint8)


def natural(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth gradients with a patch of one known colour in the middle."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([x / width, y / height, 0.5 + 0.4 * np.sin((x + y + seed * 9) / 11)], axis=-1)
    pixels = np.rint(image * 255).astype(np.uint8)
    pixels[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = RED_BRICK
    return pixels


def spec_for(name: str, suffix: str, pixel_format: str | None = None) -> VideoOutput:
    codec = VIDEO_CODECS[name]
    return VideoOutput(path=f"clip{suffix}", codec=name, encoder=codec.encoder,
                       container={".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".mxf": "mxf"}[suffix],
                       pixel_format=pixel_format or codec.pixel_formats[0], crf=codec.crf,
                       preset="ultrafast" if codec.crf is not None else None, options=codec.options)


CASES = [(name, suffix) for name, codec in VIDEO_CODECS.items() for suffix in codec.suffixes]


@pytest.mark.parametrize(("name", "suffix"), CASES, ids=[f"{n}{s}" for n, s in CASES])
def test_every_codec_round_trips_with_its_colour_tags(name: str, suffix: str, tmp_path: Path) -> None:
    width, height = 256, 144   # DNxHR's least is 256x120
    spec = spec_for(name, suffix)
    dest = tmp_path / f"clip{suffix}"
    video = VideoFile(dest, spec, width=width, height=height, fps=24)
    frames = [natural(height, width, seed) for seed in range(3)]
    for pixels in frames:
        video.add(pixels)
    video.finish()

    assert read_video_info(dest) == (3, width, height)
    assert read_colour_tags(dest) == colour_tags(spec)
    with av.open(str(dest)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == {"libx264": "h264", "libx265": "hevc", "prores_ks": "prores"}.get(
            spec.encoder, spec.encoder)
        decoded = list(container.decode(stream))
    stored = decoded[0].format.name
    # ProRes 4444 decodes to 12 bits; every other codec to what it stored
    assert stored == spec.pixel_format or (name == "prores_4444" and stored == "yuv444p12le"), stored
    if spec.rgb:   # lossless: every pixel back exactly
        for frame, pixels in zip(decoded, frames, strict=True):
            assert np.array_equal(frame.to_ndarray(format="rgb24"), pixels)
    else:   # as a BT.709 player shows it: the matrix the tags declare
        shown = decoded[0].reformat(format="rgb24", src_colorspace="ITU709", src_color_range="MPEG").to_ndarray()
        assert np.abs(shown[height // 2, width // 2].astype(int) - RED_BRICK).max() <= 3, shown[height // 2, width // 2]


def test_ten_bit_video_keeps_the_precision_of_deep_frames(tmp_path: Path) -> None:
    """16-bit frames reach a 10-bit codec at 16 bits: a ramp keeps steps finer than 8 bits."""
    width, height = 256, 16
    ramp = np.linspace(0.25, 0.25 + 64 / 1023, width, dtype=np.float32)   # 64 ten-bit steps, 16 eight-bit ones
    pixels = np.repeat(np.repeat(ramp[None, :, None], height, axis=0), 3, axis=2)
    dest = tmp_path / "master.mov"
    video = VideoFile(dest, spec_for("prores_422hq", ".mov"), width=width, height=height, fps=24)
    video.add(np.rint(pixels * 65535).astype(np.uint16))
    video.add(pixels.astype(np.float16))
    video.finish()
    with av.open(str(dest)) as container:
        for frame in container.decode(video=0):
            plane = frame.planes[0]   # Y of yuv422p10le: 16-bit words, rows line_size bytes apart
            luma = np.frombuffer(bytes(plane), np.uint16).reshape(height, plane.line_size // 2)[:, :width]
            levels = np.unique(luma[height // 2])
            assert len(levels) > 40, f"{len(levels)} distinct luma levels: the frames lost their low bits"


def videos_job(**output: object) -> dict[str, object]:
    return {"output": {"formats": ["png"], **output}}


def test_several_videos_from_one_render_and_a_resume_writes_only_the_missing_one(
        write_job: Callable[..., Path], job_dir: Path) -> None:
    job = write_job(**videos_job(formats=["png", "mp4"], videos=[
        {"path": "{shot}_master.mov", "codec": "prores_4444"},
        {"path": "archive/{shot}.mkv", "codec": "ffv1"}]))
    result = render("run", str(job), "--device", "cpu", "-q")
    assert result.returncode == 0, result.stderr
    root = job_dir / "out"
    for name in ("test.mp4", "test_master.mov", "archive/test.mkv"):
        assert read_video_info(root / name) == (6, 32, 24), name
    records = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["path"] for r in records if r["kind"] == "video") == [
        "archive/test.mkv", "test.mp4", "test_master.mov"]
    with av.open(str(root / "archive/test.mkv")) as container:   # lossless: the PNG's pixels exactly
        first = next(container.decode(video=0)).to_ndarray(format="rgb24")
    from pipeline.files.png import read_png
    assert np.array_equal(first, read_png(root / "test" / "test.0001.png"))

    master, archive = root / "test_master.mov", root / "archive/test.mkv"
    kept = (root / "test.mp4").stat().st_mtime_ns
    master.unlink()
    archive.unlink()
    result = render("run", str(job), "--device", "cpu", "--resume")
    assert result.returncode == 0, result.stderr
    assert read_video_info(master) == (6, 32, 24)
    with av.open(str(archive)) as container:   # made from the PNGs read back: each in its place
        again = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(again) == 6 and all(np.array_equal(again[i], read_png(root / "test" / f"test.{i + 1:04d}.png"))
                                   for i in range(6))
    assert (root / "test.mp4").stat().st_mtime_ns == kept, "a finished video was written again"
    assert render("verify", str(root)).returncode == 0
    runs = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    resumed = [r for r in runs if r["kind"] == "run"][-1]
    # every frame was on disk: the video came from the PNGs, with no model loaded
    assert resumed["device"].startswith("host") and resumed["load_s"] == 0, resumed
    assert resumed["frames"] == 0 and resumed["skipped"] == 6, resumed


def test_videos_alone_travel_at_sixteen_bits_for_a_ten_bit_codec(
        write_job: Callable[..., Path], job_dir: Path) -> None:
    from pipeline.config.job import load_job

    deep = load_job(write_job(**videos_job(formats=[], videos=[{"path": "m.mov", "codec": "prores_422hq"}])))
    assert deep.output.pixels() == "uint16"
    review = load_job(write_job(**videos_job(formats=[], videos=[{"path": "r.mp4", "codec": "h264"}])))
    assert review.output.pixels() == "uint8"
    master_only = write_job(**videos_job(formats=[], videos=[{"path": "m.mov", "codec": "prores_422hq"}]))
    result = render("run", str(master_only), "--device", "cpu", "-q")
    assert result.returncode == 0, result.stderr
    assert read_video_info(job_dir / "out" / "m.mov") == (6, 32, 24)
    assert not (job_dir / "out" / "test").exists()   # no frame files


REFUSED = [
    ({"path": "m.mp4", "codec": "prores_422hq"}, "output.videos[0].path", "prores_422hq goes in a file ending in .mov"),
    ({"path": "m.mov", "codec": "dnxhr_hq", "pixel_format": "yuv422p10le"}, "output.videos[0].pixel_format",
     "expected one of yuv422p"),
    ({"path": "m.mov", "codec": "prores_4444", "crf": 18}, "output.videos[0].crf", "takes no crf"),
    ({"path": "m.mov", "codec": "h264", "pixel_format": "yuv420p10le"}, "output.videos[0].pixel_format",
     "expected one of yuv420p, yuv422p, yuv444p"),
    ({"path": "m.mov", "codec": "dnxhr_hqx"}, "shot.width", "dnxhr_hqx needs at least 256x120 pixels"),
    ({"path": "m.avi", "codec": "h264"}, "output.videos[0].path", "h264 goes in a file ending in .mp4 or .mov or .mkv"),
    ({"path": "../m.mov", "codec": "prores_4444"}, "output.videos[0].path", ""),
    ({"path": "m.mov", "codec": "av1"}, "output.videos[0].codec", "expected one of h264, h265"),
    ({"path": "test.mp4", "codec": "h264"}, "output.videos", "same file"),
]


@pytest.mark.parametrize(("video", "field", "says"), REFUSED, ids=[r[1] + ":" + r[0]["codec"] for r in REFUSED])
def test_a_combination_ffmpeg_cannot_make_is_refused_in_one_line(
        video: dict, field: str, says: str, write_job: Callable[..., Path], job_dir: Path) -> None:
    result = render("run", str(write_job(**videos_job(formats=["png", "mp4"], videos=[video]))), "--device", "cpu")
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, line
    assert field in line and says in line, line
    assert not (job_dir / "out").exists(), "a refused job wrote something"


def test_odd_sizes_and_mxf_rates_are_refused(write_job: Callable[..., Path], job_dir: Path) -> None:
    odd = write_job(shot={"width": 33}, **videos_job(formats=["png"], videos=[{"path": "m.mov", "codec": "h265"}]))
    result = render("run", str(odd), "--device", "cpu")
    assert result.returncode == 2 and "shot.width" in result.stderr and "divisible by 2" in result.stderr, result.stderr
    from pipeline.config.job import load_job  # 4:4:4 takes any size
    fine = write_job(shot={"width": 33}, **videos_job(formats=["png"], videos=[{"path": "m.mov",
                                                                                "codec": "prores_4444"}]))
    assert load_job(fine).output.videos[0].pixel_format == "yuv444p10le"
    mxf = write_job(shot={"fps": 12, "width": 256, "height": 128},
                    **videos_job(formats=["png"], videos=[{"path": "m.mxf", "codec": "dnxhr_hq"}]))
    result = render("run", str(mxf), "--device", "cpu")
    assert result.returncode == 2 and "shot.fps" in result.stderr and "write a .mov" in result.stderr, result.stderr


def segment_records(root: Path) -> dict[str, dict]:
    records = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    return {r["path"]: r for r in records if r["kind"] == "segment"}


def test_videos_in_segments_join_without_reencoding_and_resume_by_segment(
        write_job: Callable[..., Path], job_dir: Path) -> None:
    job = write_job(tuning={"writer_threads": 2, "video_segment_frames": 4},
                    **videos_job(formats=["png", "mp4"], videos=[{"path": "{shot}.mkv", "codec": "ffv1"}]))
    result = render("run", str(job), "--device", "cpu", "-q")
    assert result.returncode == 0, result.stderr
    root = job_dir / "out"
    parts = segment_records(root)
    assert sorted(parts) == [".test.mkv.segments/00000.mkv", ".test.mkv.segments/00001.mkv",
                             ".test.mp4.segments/00000.mp4", ".test.mp4.segments/00001.mp4"]
    assert [parts[".test.mp4.segments/00001.mp4"][k] for k in ("video", "index", "frames")] == ["test.mp4", 1, [5, 6]]
    from pipeline.files.png import read_png
    with av.open(str(root / "test.mkv")) as container:   # joined in order, every frame exact
        joined = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(joined) == 6
    for frame, pixels in enumerate(joined, start=1):
        assert np.array_equal(pixels, read_png(root / "test" / f"test.{frame:04d}.png")), frame
    assert read_video_info(root / "test.mp4") == (6, 32, 24)
    with av.open(str(root / "test.mp4")) as container:   # the second segment starts with a keyframe
        keyframes = [p.is_keyframe for p in container.demux(video=0) if p.dts is not None]
    assert keyframes[0] and keyframes[4], keyframes
    assert render("verify", str(root)).returncode == 0

    first = root / ".test.mp4.segments/00000.mp4"
    kept = first.stat().st_mtime_ns
    (root / "test.mp4").unlink()
    (root / ".test.mp4.segments/00001.mp4").unlink()
    result = render("run", str(job), "--device", "cpu", "--resume", "--dry-run")
    assert "1 segment(s) already finished (resume)" in result.stdout, result.stdout
    result = render("run", str(job), "--device", "cpu", "--resume", "-q")
    assert result.returncode == 0, result.stderr
    assert first.stat().st_mtime_ns == kept, "a finished segment was encoded again"
    assert read_video_info(root / "test.mp4") == (6, 32, 24)
    assert render("verify", str(root)).returncode == 0


def test_verify_counts_a_videos_frames(write_job: Callable[..., Path], job_dir: Path) -> None:
    """A video whose record says more frames than it holds is reported, hash or not."""
    result = render("run", str(write_job()), "--device", "cpu", "-q")
    assert result.returncode == 0, result.stderr
    root = job_dir / "out"
    manifest = root / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    video = next(r for r in records if r["kind"] == "video")
    manifest.write_text("\n".join([*lines, json.dumps({**video, "frames": [1, 7]})]) + "\n")
    result = render("verify", str(root))
    assert result.returncode != 0 and "test.mp4: 6 frames, the record says 7" in result.stdout + result.stderr


def test_a_killed_segmented_run_leaves_no_partial_video_and_resumes_from_its_segments(
        write_job: Callable[..., Path], job_dir: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    frames = 160
    job = write_job(shot={"frame_end": frames, "width": 128, "height": 96}, source={"kind": "noise"},
                    tuning={"writer_threads": 2, "video_segment_frames": 8},
                    **videos_job(formats=[], videos=[{"path": "{shot}.mov", "codec": "prores_422hq"}]))
    root = job_dir / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    run = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(job), "--device", "cpu", "-q"],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not ((root / "manifest.jsonl").exists() and len(segment_records(root)) >= 2):
        assert run.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.005)
    run.kill()
    run.wait()
    assert not (root / "test.mov").exists(), "the kill landed after the video was joined"
    finished = segment_records(root)
    assert 2 <= len(finished) < frames // 8
    kept = {path: (root / path).stat().st_mtime_ns for path in finished}

    result = render("run", str(job), "--device", "cpu", "--resume", "-q")
    assert result.returncode == 0, result.stderr
    assert all((root / path).stat().st_mtime_ns == mtime for path, mtime in kept.items())
    assert read_video_info(root / "test.mov") == (frames, 128, 96)
    verified = render("verify", str(root))
    assert verified.returncode == 0, verified.stdout   # no temporary file left, every segment's hash
