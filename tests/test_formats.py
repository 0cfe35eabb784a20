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

from pipeline.files.exr import read_exr, srgb_to_linear
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
            # linear light (the default): the sRGB transfer inverted, in half precision
            assert np.abs(written - srgb_to_linear(unit.numpy())).max() <= 1e-3
            assert np.array_equal(written, written.astype(np.float16).astype(np.float32))
            assert np.abs(read_frame(path) - unit.numpy()).max() <= 2e-3   # back to display values
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
        "from pipeline.config.video import review_video\n"
        "from pipeline.files.video import VideoFile\n"
        "video = VideoFile(Path(sys.argv[1]), review_video('clip.mp4', 'libx265', 28, 'ultrafast'),"
        " width=64, height=48, fps=24)\n"
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


@pytest.mark.parametrize("codec", ["libx264", "libx265"])
@pytest.mark.parametrize("depth", ["uint8", "uint16"])
def test_mp4_is_bt709_and_says_so(codec: str, depth: str, tmp_path: Path) -> None:
    """Before: swscale's default BT.601 matrix and no colour tags; at 1920x1080 a BT.709
    player showed (200, 60, 40) as (213, 73, 37)."""
    import av

    from pipeline.config.video import review_video
    from pipeline.files.video import COLOUR_TAGS, VideoFile, read_colour_tags

    dest = tmp_path / "hd.mp4"
    spec = review_video("hd.mp4", codec, 0 if codec == "libx264" else 1, "ultrafast")
    video = VideoFile(dest, spec, width=1920, height=1080, fps=24)
    colour = np.array([200, 60, 40], dtype=np.uint8)
    pixels = np.broadcast_to(colour if depth == "uint8" else colour.astype(np.uint16) * 257, (1080, 1920, 3))
    for _ in range(2):
        video.add(np.ascontiguousarray(pixels))
    video.finish()
    assert read_colour_tags(dest) == COLOUR_TAGS == {
        "color_primaries": 1, "color_trc": 1, "colorspace": 1, "color_range": 1}
    with av.open(str(dest)) as container:
        frame = next(container.decode(video=0))
        as_a_bt709_player_shows = frame.reformat(format="rgb24", src_colorspace="ITU709",
                                                 src_color_range="MPEG").to_ndarray()
    assert np.abs(as_a_bt709_player_shows[540, 960].astype(int) - colour).max() <= 3, as_a_bt709_player_shows[540, 960]


def exr_channel_types(path: Path) -> dict[str, int]:
    """Each channel's stored pixel type from an EXR header (0 uint, 1 half, 2 float), read
    from the bytes: the decoder converts to float32 whatever is stored."""
    import struct

    data = path.read_bytes()
    assert data[:4] == b"\x76\x2f\x31\x01", "not an OpenEXR file"
    at, types = 8, {}
    while data[at] != 0:
        name_end = data.index(b"\0", at)
        type_end = data.index(b"\0", name_end + 1)
        name, kind = data[at:name_end].decode(), data[name_end + 1:type_end].decode()
        size = struct.unpack("<i", data[type_end + 1:type_end + 5])[0]
        value = data[type_end + 5:type_end + 5 + size]
        if name == "channels" and kind == "chlist":
            pos = 0
            while value[pos] != 0:
                channel_end = value.index(b"\0", pos)
                types[value[pos:channel_end].decode()] = struct.unpack("<i", value[channel_end + 1:channel_end + 5])[0]
                pos = channel_end + 1 + 16
        at = type_end + 5 + size
    return types


def test_exr_frames_store_half_floats(tmp_path: Path) -> None:
    """Before: 32-bit float channels (FFmpeg's encoder ignored the `pixel_type` option
    given; its option is `format`), though the README said half."""
    from pipeline.files.exr import encode_exr

    pixels = np.random.default_rng(0).random((5, 7, 3), dtype=np.float32).astype(np.float16)
    path = tmp_path / "frame.exr"
    path.write_bytes(encode_exr(pixels, "srgb"))
    assert exr_channel_types(path) == {"B": 1, "G": 1, "R": 1}
    assert np.array_equal(read_exr(path), pixels.astype(np.float32))


@pytest.mark.parametrize("transfer", ["linear", "srgb"])
def test_exr_says_its_chromaticities_and_transfer_and_still_decodes(transfer: str, tmp_path: Path) -> None:
    """Before: display-referred values with no chromaticities, which compositing packages
    read as linear (the gamma applied twice)."""
    import struct

    from pipeline.files.exr import BT709_CHROMATICITIES, encode_exr, header_attributes

    rng = np.random.default_rng(1)
    pixels = rng.random((37, 19, 3), dtype=np.float32).astype(np.float16)   # 3 zip16 chunks, the last short
    pixels[0, 0] = (0.0, 0.5, 1.0)
    path = tmp_path / "frame.exr"
    path.write_bytes(encode_exr(pixels, transfer))
    attributes, _ = header_attributes(path.read_bytes())
    kind, value = attributes["chromaticities"]
    assert kind == "chromaticities"
    assert np.allclose(struct.unpack("<8f", value), BT709_CHROMATICITIES)
    assert attributes["framefarm.transfer"] == ("string", transfer.encode())
    assert exr_channel_types(path) == {"B": 1, "G": 1, "R": 1}
    stored = read_exr(path)   # FFmpeg's decoder follows the moved chunk offsets to every row
    want = srgb_to_linear(pixels) if transfer == "linear" else pixels.astype(np.float32)
    assert np.array_equal(stored, want.astype(np.float16).astype(np.float32))
    if transfer == "linear":
        assert stored[0, 0].tolist() == [0.0, pytest.approx(0.2140, abs=2e-4), 1.0]   # sRGB 0.5 is 0.214 linear
    assert np.abs(read_frame(path) - pixels.astype(np.float32)).max() <= 2e-3


@pytest.mark.parametrize("compression", ["zip16", "zip1", "rle", "none"])
def test_exr_compression_is_the_jobs_and_every_row_decodes(compression: str, tmp_path: Path) -> None:
    from pipeline.files.exr import encode_exr, frame_attributes, read_attributes

    pixels = np.random.default_rng(2).random((37, 19, 3), dtype=np.float32).astype(np.float16)
    path = tmp_path / "frame.exr"
    path.write_bytes(encode_exr(pixels, "srgb", compression, frame_attributes("sh010", 1001, "abc123", 25)))
    attributes = read_attributes(path)
    assert attributes["compression"] == compression
    assert (attributes["framefarm.shot"], attributes["framefarm.frame"], attributes["framefarm.job_hash"],
            attributes["framesPerSecond"]) == ("sh010", 1001, "abc123", (25, 1))
    assert np.array_equal(read_exr(path), pixels.astype(np.float32))


def test_exr_frames_of_a_run_say_their_shot_frame_and_job_hash(
        write_job: Callable[..., Path], job_dir: Path) -> None:
    from pipeline.files.exr import read_attributes

    job = write_job(output={"formats": ["exr"], "exr_compression": "rle"})
    result = render("run", str(job), "--device", "cpu", "-q")
    assert result.returncode == 0, result.stderr
    root = job_dir / "out"
    records = {r["path"]: r for r in map(json.loads, (root / "manifest.jsonl").read_text().splitlines())
               if r["kind"] != "run"}
    for frame in (1, 6):
        relative = f"test/test.{frame:04d}.exr"
        attributes = read_attributes(root / relative)
        assert attributes["compression"] == "rle"
        assert attributes["framefarm.frame"] == frame and attributes["framefarm.shot"] == "test"
        assert attributes["framefarm.job_hash"] == records[relative]["job_hash"]
        assert attributes["framesPerSecond"] == (24, 1)
    bad = render("run", str(write_job(output={"formats": ["exr"], "exr_compression": "piz"})), "--device", "cpu")
    assert bad.returncode == 2 and "output.exr_compression" in bad.stderr and "zip16" in bad.stderr, bad.stderr
