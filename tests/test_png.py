"""framefarm's PNG writers (fpng through our binding for 8-bit frames; ISA-L's deflate in
a container written here for both depths) against the frame's pixels, read back by two
independent decoders (PyAV's FFmpeg and Pillow) and by `read_png`, on natural and noise
content, odd sizes, 8 and 16 bit, every compression level."""

from __future__ import annotations

import io
import sys
import threading
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from pipeline.files import png
from pipeline.files.png import encode_png, encode_png_ffmpeg, encode_png_fpng, encode_png_isal, read_png

needs_fpng = pytest.mark.skipif(png._fpng is None, reason="the fpng binding was not built (no C++ compiler)")


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


@needs_fpng
@pytest.mark.parametrize("size", [(1, 1), (5, 7), (17, 33), (96, 128), (1, 300), (300, 1)])
@pytest.mark.parametrize("content", [natural, noise])
def test_every_fpng_file_decodes_to_the_frame(content, size: tuple[int, int], tmp_path: Path) -> None:
    pixels = content(*size, False)
    data = encode_png_fpng(pixels)
    assert np.array_equal(read_with_pyav(data, False), pixels), "PyAV"
    assert np.array_equal(read_with_pillow(data), pixels), "Pillow"
    path = tmp_path / "frame.png"
    path.write_bytes(data)
    assert np.array_equal(read_png(path, native=True), pixels), "read_png (fpng's decoder)"


@needs_fpng
def test_the_default_encoder_is_fpng_for_8_bit_level_1_and_isal_otherwise() -> None:
    eight, sixteen = natural(64, 96, deep=False), natural(64, 96, deep=True)
    assert encode_png(eight, 1) == encode_png_fpng(eight)
    assert encode_png(eight, 1, "fpng") == encode_png_fpng(eight)
    assert encode_png(eight, 6, "fpng") == encode_png_isal(eight, 6), "fpng has one level: others go to ISA-L"
    assert encode_png(sixteen, 1, "fpng") == encode_png_isal(sixteen, 1), "fpng writes 8-bit only"
    assert encode_png(eight, 1, "isal") == encode_png_isal(eight, 1)


@needs_fpng
def test_fpng_files_stay_within_1_10_of_ffmpegs_level_1_on_natural_frames() -> None:
    pixels = natural(270, 480, deep=False)
    assert len(encode_png_fpng(pixels)) <= 1.10 * len(bytes(encode_png_ffmpeg(pixels, 1)))


@needs_fpng
def test_read_png_reads_other_writers_files_and_refuses_broken_ones(tmp_path: Path) -> None:
    pixels = natural(40, 56, deep=False)
    for name, data in (("isal", encode_png_isal(pixels, 1)), ("ffmpeg", bytes(encode_png_ffmpeg(pixels, 1)))):
        path = tmp_path / f"{name}.png"
        path.write_bytes(data)
        assert np.array_equal(read_png(path), pixels), name
    data = bytearray(encode_png_fpng(pixels))
    data[len(data) // 2] ^= 0xFF   # inside IDAT: fpng's CRC check refuses it, then PyAV does
    broken = tmp_path / "broken.png"
    broken.write_bytes(bytes(data))
    with pytest.raises(Exception) as refused:
        assert not np.array_equal(read_png(broken), pixels)
        raise ValueError("decoded to other pixels")
    assert not isinstance(refused.value, AssertionError)


@needs_fpng
def test_fpng_is_not_given_a_file_that_declares_more_pixels_than_the_largest_frame(tmp_path: Path) -> None:
    data = bytearray(encode_png_fpng(natural(8, 8, deep=False)))
    data[16:24] = (100_000).to_bytes(4, "big") * 2   # IHDR width and height: 10**10 pixels
    assert not png._fpng_may_read(bytes(data))
    assert png._fpng_may_read(encode_png_fpng(natural(8, 8, deep=False)))


@needs_fpng
def test_the_fpng_binding_releases_the_gil_while_it_encodes() -> None:
    """With a switch interval of minutes, this thread can only run while the encoding
    thread has let go of the GIL: it must get in while an encode is in flight. A binding
    that held the GIL (as the ones on PyPI do) would keep it out until the thread ended."""
    pixels = noise(2160, 3840, deep=False)
    in_encode, done = threading.Event(), threading.Event()
    looked_in: list[bool] = []
    seen_during: list[bool] = []

    def encode_and_check() -> None:
        for _ in range(5):
            in_encode.set()
            png._fpng.encode(pixels, 3840, 2160, 3, False)
            seen_during.append(bool(looked_in))
            if looked_in:
                break
        done.set()

    before = sys.getswitchinterval()
    sys.setswitchinterval(120)
    try:
        worker = threading.Thread(target=encode_and_check)
        worker.start()
        in_encode.wait(timeout=60)
        looked_in.append(True)
        done.wait(timeout=60)
        worker.join()
    finally:
        sys.setswitchinterval(before)
    assert any(seen_during), f"no encode saw this thread get in: {seen_during}"
