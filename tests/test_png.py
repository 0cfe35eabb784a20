"""framefarm's PNG writer (ISA-L's deflate in a container written here) against the
frame's pixels, read back by two independent decoders (PyAV's FFmpeg and Pillow), on
natural and noise content, odd sizes, 8 and 16 bit, every compression level."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from pipeline.files.png import encode_png, encode_png_ffmpeg, encode_png_isal


def natural(height: int, width: int, deep: bool, seed: int = 0) -> np.ndarray:
    """Smooth gradients and waves with a little grain: what a decoded frame looks like."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([0.5 + 0.4 * np.sin(x / 37 + y / 53), 0.5 + 0.3 * np.cos(x / 71) * np.sin(y / 29),
                      0.5 + 0.2 * np.sin((x + y) / 91)], axis=-1)
    image += np.random.default_rng(seed).normal(0, 0.01, image.shape)
    top = 65535 if deep else 255
    return (np.clip(image, 0, 1) * top).round().astype(np.uint16 if deep else np.uint8)


def noise(height: int, width: int, deep: bool, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 65536 if deep else 256, (height, width, 3), dtype=np.uint16 if deep else np.uint8)


def read_with_pyav(data: bytes, deep: bool) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        frame = next(container.decode(video=0))
        return frame.to_ndarray(format="rgb48le" if deep else "rgb24")


def read_with_pillow(data: bytes) -> np.ndarray:
    """Pillow's reading: RGB, 8 bits a sample (it opens 16-bit RGB PNGs as their high bytes)."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.format == "PNG" and image.mode == "RGB"
        return np.asarray(image)


@pytest.mark.parametrize("deep", [False, True], ids=["8bit", "16bit"])
@pytest.mark.parametrize("size", [(1, 1), (5, 7), (17, 33), (96, 128)])
@pytest.mark.parametrize("content", [natural, noise])
def test_every_file_decodes_to_the_frame(content, size: tuple[int, int], deep: bool) -> None:
    pixels = content(*size, deep)
    for level in (0, 1, 4, 9):
        data = encode_png_isal(pixels, level)
        assert np.array_equal(read_with_pyav(data, deep), pixels), f"PyAV, level {level}"
        high_bytes = (pixels >> 8).astype(np.uint8) if deep else pixels
        assert np.array_equal(read_with_pillow(data), high_bytes), f"Pillow, level {level}"


def test_16_bit_files_say_16_bits_rgb() -> None:
    data = encode_png_isal(natural(17, 33, deep=True), 1)
    assert data[12:16] == b"IHDR" and data[24] == 16 and data[25] == 2, "IHDR: bit depth 16, colour type RGB"


def test_both_encoders_write_the_same_pixels_and_ours_is_no_larger_on_natural_frames(tmp_path: Path) -> None:
    pixels = natural(270, 480, deep=False)
    ours, ffmpeg = encode_png_isal(pixels, 1), bytes(encode_png_ffmpeg(pixels, 1))
    assert np.array_equal(read_with_pyav(ours, False), read_with_pyav(ffmpeg, False))
    assert len(ours) <= 1.10 * len(ffmpeg), (len(ours), len(ffmpeg))
    assert bytes(encode_png(pixels, 1, "ffmpeg")) == ffmpeg
    assert encode_png(pixels, 1, "isal") == ours
