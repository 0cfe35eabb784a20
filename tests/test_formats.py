"""Frame formats beyond 8-bit PNG: 16-bit PNG and half-float EXR, quantised on the
device, written, read back and compared with the decoder's own output; the video made
from the same pixels; the watermark found in both; one frame format per job."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import render
from safetensors.torch import load_file

from pipeline.files.exr import read_exr
from pipeline.files.formats import read_frame, to_rgb8
from pipeline.files.png import read_png
from pipeline.files.video import read_video_info

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def decoded_unit(vae_path: Path, latents: torch.Tensor) -> torch.Tensor:
    """The decoder's output in [0, 1] as (H, W, 3) float32, computed apart from the pipeline."""
    from diffusers import AutoencoderKL

    config = json.loads((vae_path / "config.json").read_text())
    vae = AutoencoderKL.from_pretrained(vae_path, low_cpu_mem_usage=False).eval()
    with torch.no_grad():
        image = vae.decode(latents[None] / config["scaling_factor"]).sample[0]
    return (image / 2 + 0.5).clamp(0, 1).permute(1, 2, 0)


@pytest.mark.parametrize("fmt", ["png16", "exr"])
def test_deep_frames_equal_the_decoder_and_feed_the_video(
        fmt: str, write_job: Callable[..., Path], job_dir: Path, kl_vae: Path) -> None:
    result = render("run", str(write_job(output={"formats": [fmt, "mp4"]})), "--device", "cpu", "-q")
    assert result.returncode == 0, result.stderr
    root = job_dir / "out"
    suffix = ".exr" if fmt == "exr" else ".png"
    for frame in (1, 6):
        latents = load_file(job_dir / "latents" / f"frame_{frame:04d}.safetensors")["latents"]
        unit = decoded_unit(kl_vae, latents)
        path = root / "test" / f"test.{frame:04d}{suffix}"
        if fmt == "png16":
            written = read_png(path, native=True)
            assert written.dtype == np.uint16 and written.shape == (24, 32, 3)
            expected = (unit * 65535).round().numpy()
            assert np.abs(written.astype(float) - expected).max() <= 64  # 1/1000 of the range
            assert len(np.unique(written % 257)) > 1, "16-bit file holds only 8-bit values"
        else:
            written = read_exr(path)
            assert written.dtype == np.float32 and written.shape == (24, 32, 3)
            assert np.abs(written - unit.numpy()).max() <= 1e-3  # half precision
            assert np.array_equal(written, written.astype(np.float16).astype(np.float32))
    records = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    assert {r["format"] for r in records if r["kind"] == "frame"} == {fmt}
    assert read_video_info(root / "test.mp4") == (6, 32, 24)
    assert render("verify", str(root)).returncode == 0


@pytest.mark.parametrize("fmt", ["png16", "exr"])
def test_watermark_survives_in_deep_frames(fmt: str, tmp_path: Path) -> None:
    job = (SAMPLES / "demo.toml").read_text().replace("frame_end = 48", "frame_end = 2").replace(
        'formats = ["png", "mp4"]', f'formats = ["{fmt}"]')
    job = job.replace('path = "demo_', f'path = "{SAMPLES}/demo_')
    (tmp_path / "job.toml").write_text(job)
    result = render("run", str(tmp_path / "job.toml"), "--device", "cpu", "--output-root", str(tmp_path / "out"), "-q")
    assert result.returncode == 0, result.stderr
    frame = tmp_path / "out" / "demo" / f"demo.0001.{'exr' if fmt == 'exr' else 'png'}"
    check = render("watermark", "verify", str(frame))
    assert check.returncode == 0 and "payload 'demo'" in check.stdout, check.stdout + check.stderr
    assert to_rgb8(read_frame(frame)).shape == (288, 512, 3)


def test_to_rgb8_rounds_every_precision() -> None:
    assert to_rgb8(np.array([[[0, 257, 65535]]], dtype=np.uint16)).tolist() == [[[0, 1, 255]]]
    assert to_rgb8(np.array([[[0.0, 0.5, 1.5]]], dtype=np.float16)).tolist() == [[[0, 128, 255]]]


def test_hevc_mp4_is_tagged_for_apple_players_and_quiet(tmp_path: Path) -> None:
    """libx265 MP4s carry the hvc1 tag (FFmpeg's default hev1 is refused by Apple's
    players), and x265 prints none of its settings on stderr."""
    import subprocess
    import sys

    import av

    script = (
        "import numpy as np, sys\n"
        "from pathlib import Path\n"
        "from pipeline.files.video import VideoFile\n"
        "video = VideoFile(Path(sys.argv[1]), width=64, height=48, fps=24, codec='libx265', crf=28,"
        " preset='ultrafast')\n"
        "for i in range(3):\n"
        "    video.add(np.full((48, 64, 3), 40 * i, np.uint8))\n"
        "video.finish()\n")
    dest = tmp_path / "clip.mp4"
    env = {"PYTHONPATH": str(Path(__file__).resolve().parent.parent), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", script, str(dest)], capture_output=True, text=True, timeout=120,
                         env=env)
    assert out.returncode == 0, out.stderr
    assert "x265 [info]" not in out.stderr, out.stderr
    with av.open(str(dest)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.codec_tag == "hvc1"
        assert sum(1 for _ in container.decode(stream)) == 3
