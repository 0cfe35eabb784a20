"""The videos' RGB -> Y'CbCr in torch (the GPU's path, run here on the CPU): the same
planes swscale makes within a level, at every depth the frames come in, handed to the
encoder as they are, and a render that takes it writes videos a BT.709 player shows as
the frames."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from helpers import render

from pipeline.colour.ycbcr import PLANAR, frame_from_planes, plane_shapes, planes_size, to_planes
from pipeline.files.png import read_png


def natural(height: int, width: int) -> np.ndarray:
    """Gradients, a sharp-edged sawtooth in blue and a little grain."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x / width * 255, y / height * 255, (x + y) % 37 / 37 * 255], axis=-1)
    grain = np.random.default_rng(0).normal(0, 2, image.shape)
    return np.clip(np.rint(image + grain), 0, 255).astype(np.uint8)


def samples(frame: av.VideoFrame, index: int) -> np.ndarray:
    plane = frame.planes[index]
    dtype = np.uint8 if PLANAR[frame.format.name][2] == 8 else np.dtype("<u2")
    return np.frombuffer(memoryview(plane), dtype=dtype).reshape(plane.height, -1)[:, :plane.width].astype(int)


def shown(frame: av.VideoFrame) -> np.ndarray:
    """What a BT.709 player shows (the matrix and range the files are tagged with)."""
    return frame.reformat(format="rgb24", src_colorspace="ITU709", src_color_range="MPEG").to_ndarray().astype(int)


@pytest.mark.parametrize("pixel_format", sorted(PLANAR))
def test_planes_match_swscale_and_show_the_frame_as_well(pixel_format: str) -> None:
    height, width = 54, 96
    pixels = natural(height, width)
    ours = frame_from_planes(to_planes(torch.from_numpy(pixels), pixel_format).numpy(), pixel_format, height, width)
    theirs = av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(
        format=pixel_format, dst_colorspace="ITU709", dst_color_range="MPEG")
    assert [(p.width, p.height) for p in ours.planes] == [(w, h) for h, w in
                                                            plane_shapes(pixel_format, height, width)]
    assert np.abs(samples(ours, 0) - samples(theirs, 0)).max() <= 1   # luma: the same matrix, rounding
    if PLANAR[pixel_format][:2] != (2, 2):   # 4:2:0's chroma: swscale sites it otherwise
        for index in (1, 2):
            assert np.abs(samples(ours, index) - samples(theirs, index)).max() <= 1
    # back to RGB as a player does: at least as close to the frame as swscale's planes
    error, baseline = (np.abs(shown(f) - pixels).mean() for f in (ours, theirs))
    assert error <= baseline + 0.05, (error, baseline)


@pytest.mark.parametrize("pixel_format", ["yuv420p", "yuv422p10le"])
def test_deep_and_float_frames_give_the_planes_of_their_8_bit_values(pixel_format: str) -> None:
    pixels = natural(16, 32)
    eight = to_planes(torch.from_numpy(pixels), pixel_format).to(torch.int32)
    sixteen = to_planes(torch.from_numpy(pixels.astype(np.uint16) * 257), pixel_format).to(torch.int32)
    half = to_planes(torch.from_numpy(pixels / 255).to(torch.float16), pixel_format).to(torch.int32)
    assert eight.numel() == planes_size(pixel_format, 16, 32)
    assert torch.equal(eight, sixteen)
    assert (half - eight).abs().max() <= 1   # float16 holds 8-bit values to within a 10-bit level


def decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [shown(frame) for frame in container.decode(video=0)]


def render_videos(write_job: Callable[..., Path], job_dir: Path, where: str, device: str) -> Path:
    """The review MP4 (yuv420p) and a ProRes master (yuv422p10le) of 6 noise frames."""
    job = write_job(f"{where}.toml", shot={"width": 64, "height": 48}, source={"kind": "noise"},
                    output={"formats": ["png", "mp4"], "root": str(job_dir / where),
                            "videos": [{"path": "{shot}_master.mov", "codec": "prores_422hq"}]},
                    tuning={"video_rgb_to_yuv": where, "video_crf": 0})
    result = render("run", str(job), "--device", device, "-q")
    assert result.returncode == 0, result.stderr
    return job_dir / where


def assert_shows_the_frames_as_well(root: Path, baseline_root: Path) -> None:
    """Each video of `root` shows its PNG frames at least as closely as `baseline_root`'s
    (swscale's planes) show theirs (noise frames: the hardest case for subsampled chroma)."""
    def pngs(root: Path) -> list[np.ndarray]:
        return [read_png(path).astype(int) for path in sorted((root / "test").glob("*.png"))]

    for name in ("test.mp4", "test_master.mov"):
        errors = [np.abs(got - want).mean() for got, want in zip(decoded(root / name), pngs(root), strict=True)]
        baseline = [np.abs(got - want).mean()
                    for got, want in zip(decoded(baseline_root / name), pngs(baseline_root), strict=True)]
        assert len(errors) == len(baseline) == 6
        assert max(e - b for e, b in zip(errors, baseline, strict=True)) <= 0.25, (name, errors, baseline)


def test_a_render_with_the_conversion_on_the_device_writes_the_videos_as_the_frames(
        write_job: Callable[..., Path], job_dir: Path) -> None:
    """`video_rgb_to_yuv = "device"` (torch on the CPU here, as on a GPU) against swscale;
    the two are not the same file (the device's planes did reach the encoder)."""
    device = render_videos(write_job, job_dir, "device", "cpu")
    host = render_videos(write_job, job_dir, "host", "cpu")
    assert_shows_the_frames_as_well(device, host)
    for name in ("test.mp4", "test_master.mov"):
        assert (device / name).read_bytes() != (host / name).read_bytes(), name


@pytest.mark.gpu
def test_a_cuda_render_converts_on_the_gpu_as_on_the_cpu(write_job: Callable[..., Path], job_dir: Path) -> None:
    """The default on a GPU ("auto": the device) shows the frames as swscale's planes do."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    cuda = render_videos(write_job, job_dir, "auto", "cuda:0")
    host = render_videos(write_job, job_dir, "host", "cpu")
    assert_shows_the_frames_as_well(cuda, host)
