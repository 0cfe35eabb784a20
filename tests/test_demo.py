"""The README's main job: the sample shot renders into recognisable frames and a video.

"Recognisable" is measured, not eyeballed: the decoded frames are compared with the
procedural drawing that samples/make_demo.py encoded into the latents."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from helpers import render

from pipeline.files.pictures import read_pictures
from pipeline.files.png import read_png
from pipeline.files.video import read_video_info
from pipeline.watermark.detect import detect, detect_frames

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def drawing(frame: int) -> np.ndarray:
    spec = importlib.util.spec_from_file_location("make_demo", SAMPLES / "make_demo.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.to_uint8(module.demo_frame(frame))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse))


def test_sample_assets_are_small_and_safe() -> None:
    vae = SAMPLES / "demo_vae"
    assert (vae / "config.json").is_file()
    weights = list(vae.glob("*.safetensors"))
    assert weights and not list(vae.glob("*.bin"))
    assert sum(p.stat().st_size for p in vae.iterdir()) <= 10 * 2**20
    assert len(list((SAMPLES / "demo_latents").glob("frame_*.safetensors"))) == 48


def test_demo_renders_recognisable_frames_and_a_video(tmp_path: Path) -> None:
    result = render("run", str(SAMPLES / "demo.toml"), "--device", "cpu", "--output-root",
                    str(tmp_path), "-q", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "rendered 48 frame(s) of demo (512x288)" in result.stdout
    frames = sorted((tmp_path / "demo").glob("demo.*.png"))
    assert len(frames) == 48
    for frame in (1, 24, 48):
        pixels = read_png(tmp_path / "demo" / f"demo.{frame:04d}.png")
        assert pixels.shape == (288, 512, 3)
        assert psnr(pixels, drawing(frame)) >= 23.0, f"frame {frame} does not look like the drawing"
    # order is right: frame 10 is closer to drawing 10 than to drawing 30
    ten = read_png(tmp_path / "demo" / "demo.0010.png")
    assert psnr(ten, drawing(10)) > psnr(ten, drawing(30)) + 3
    assert read_video_info(tmp_path / "demo.mp4") == (48, 512, 288)
    mark = detect(read_png(frames[0]), "framefarm")
    assert mark.found and mark.payload == "demo"
    video = detect_frames(read_pictures(tmp_path / "demo.mp4", 48), "framefarm")  # the product's own MP4
    assert video.found and video.payload == "demo" and video.frames == 48, video
    assert render("verify", str(tmp_path)).returncode == 0
