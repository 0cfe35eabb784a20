"""PNG frames, 8-bit (RGB) and 16-bit (RGB, big-endian samples).

Three encoders (tuning.png_encoder):
- "fpng" (default): 8-bit frames at compression level 1 through fpng (Rich Geldreich's
  fast PNG writer, vendored in native/ behind our binding `_fpng`, which releases the
  GIL): about 2.5x ISA-L's speed at 4K for files ~15 % larger, still within 1.10x of
  FFmpeg's level 1 (benchmarks/RESULTS.md, 'Fast lossless PNG'). Its files are read
  back by fpng's own decoder (3x PyAV's). 16-bit frames, other levels, and a machine
  where the binding was not built (no C++ compiler at install) use ISA-L.
- "isal": the PNG container written here around a zlib stream from ISA-L
  (`isal`, Intel's deflate library, the fastest kept deflate for level-1 work): every row
  filtered with PNG's Sub filter in one vectorised numpy pass (the difference from the
  pixel to its left), the whole image compressed in one call that releases the GIL.
  Measured in benchmarks/png_writer.py (benchmarks/RESULTS.md, 'Fast lossless PNG'):
  several times FFmpeg's level 1 per core, files no larger.
- "ffmpeg": PyAV's encoder (FFmpeg's), which also releases the GIL.
Every file decodes to the same pixels; tests/test_png.py reads them back with PyAV
and Pillow.
"""

from __future__ import annotations

import io
import logging
import struct
import threading
import zlib
from pathlib import Path
from typing import cast

import av
import numpy as np

from pipeline.files.codecs import thread_codec

try:
    from isal import igzip_lib, isal_zlib
except ImportError:  # a machine without the wheel: FFmpeg's encoder, said once
    igzip_lib = isal_zlib = None  # type: ignore[assignment]

try:
    from pipeline.files import _fpng  # type: ignore[attr-defined]
except ImportError:  # built at install when a C++ compiler is there (pyproject.toml)
    _fpng = None

log = logging.getLogger(__name__)
SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_ENCODERS = ("fpng", "isal", "ffmpeg")
_SUB = 1   # PNG filter type: each byte minus the byte one pixel to its left
# The product's largest frame (16384 x 16384, FFmpeg's own limit): a file declaring more
# is left to PyAV, which refuses it, rather than have fpng allocate for it.
_MOST_PIXELS = 16384 * 16384
_local = threading.local()
_warned: set[str] = set()


def encode_png(pixels: np.ndarray, compression: int, encoder: str = "fpng") -> bytes | memoryview:
    """RGB (H, W, 3) uint8 or uint16 -> PNG bytes of that depth; `compression` 0-9 as
    zlib's levels (0: stored; fpng has one level, used for 1; ISA-L has levels 1-3:
    1 -> 1, 2-5 -> 2, 6-9 -> 3)."""
    if encoder == "fpng" and pixels.dtype == np.uint8 and compression == 1:
        if _fpng is not None:
            return encode_png_fpng(pixels)
        _warn_once("fpng", "framefarm's fpng binding was not built (no C++ compiler at install): "
                           "8-bit PNG frames use ISA-L (about 2.5x slower at 4K)")
    if encoder in ("fpng", "isal"):
        if isal_zlib is not None:
            return encode_png_isal(pixels, compression)
        _warn_once("isal", "the isal package is not installed: PNG frames use FFmpeg's encoder (slower)")
    return encode_png_ffmpeg(pixels, compression)


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


def encode_png_fpng(pixels: np.ndarray) -> bytes:
    """8-bit RGB (H, W, 3) -> PNG bytes through fpng (filter Up, its own Huffman tables);
    the GIL is released while it works."""
    assert _fpng is not None
    height, width, channels = pixels.shape
    return cast(bytes, _fpng.encode(np.ascontiguousarray(pixels), width, height, channels, False))


def encode_png_isal(pixels: np.ndarray, compression: int) -> bytes:
    height, width, channels = pixels.shape
    deep = pixels.dtype == np.uint16
    samples = np.ascontiguousarray(pixels.astype(">u2", copy=False) if deep else pixels)
    rows = samples.view(np.uint8).reshape(height, -1)
    step = channels * (2 if deep else 1)   # bytes per pixel: the Sub filter's distance
    filtered = _scratch(rows.shape)
    filtered[:, 0] = _SUB
    filtered[:, 1:1 + step] = rows[:, :step]
    np.subtract(rows[:, step:], rows[:, :-step], out=filtered[:, 1 + step:])
    assert isal_zlib is not None
    if compression == 0:   # stored, as zlib's level 0 (ISA-L's level 0 still compresses)
        idat = zlib.compress(filtered.data.cast("B"), 0)
    else:
        # a 256-byte window: as fast, and smaller files on decoded frames than ISA-L's 32 KiB
        # (11.4 against 12.6 MB at 4K; benchmarks/RESULTS.md, 'Fast lossless PNG')
        idat = igzip_lib.compress(filtered.data.cast("B"), 1 if compression == 1 else 2 if compression <= 5 else 3,
                                  flag=igzip_lib.COMP_ZLIB, hist_bits=8)
    header = struct.pack(">IIBBBBB", width, height, 16 if deep else 8, 2, 0, 0, 0)   # RGB, no interlace
    return b"".join([SIGNATURE, *_chunk(b"IHDR", header), *_chunk(b"IDAT", idat), *_chunk(b"IEND", b"")])


def _fpng_may_read(data: bytes) -> bool:
    """A PNG whose IHDR declares at most the product's largest frame (fpng's decoder
    returns None itself for every file it did not write)."""
    if len(data) < 24 or data[:8] != SIGNATURE or data[12:16] != b"IHDR":
        return False
    width, height = struct.unpack(">II", data[16:24])
    return width * height <= _MOST_PIXELS


def _chunk(kind: bytes, payload: bytes) -> tuple[bytes, bytes, bytes]:
    crc = isal_zlib.crc32(payload, isal_zlib.crc32(kind))
    return struct.pack(">I", len(payload)) + kind, payload, struct.pack(">I", crc)


def _scratch(shape: tuple[int, int]) -> np.ndarray:
    """This thread's filter buffer for frames of `shape`, reused: a fresh 25 MB array per
    4K frame cost its page faults every time."""
    key = (shape[0], shape[1] + 1)
    buffer: np.ndarray | None = getattr(_local, "buffer", None)
    if buffer is None or buffer.shape != key:
        buffer = np.empty(key, dtype=np.uint8)
        _local.buffer = buffer
    return buffer


def encode_png_ffmpeg(pixels: np.ndarray, compression: int) -> bytes | memoryview:
    """RGB (H, W, 3) uint8 or uint16 -> PNG bytes of that depth (a view of the encoder's
    packet where it made one: copying a 4K PNG into `bytes` holds the GIL for ~1 ms a
    copy, time the thread that queues the GPU's kernels waits for)."""
    height, width, _ = pixels.shape
    deep = pixels.dtype == np.uint16

    def open_codec() -> av.VideoCodecContext:
        codec = cast(av.VideoCodecContext, av.CodecContext.create("png", "w"))
        codec.width, codec.height = width, height
        codec.pix_fmt = "rgb48be" if deep else "rgb24"  # PNG stores 16-bit samples big-endian
        codec.options = {"compression_level": str(compression)}
        return codec

    codec = thread_codec(("png", width, height, compression, deep), open_codec)
    frame = av.VideoFrame.from_ndarray(pixels, format="rgb48le" if deep else "rgb24")
    packets = codec.encode(frame)
    if len(packets) == 1:
        return memoryview(packets[0])   # keeps the packet alive; hashlib and write() take it as is
    return b"".join(bytes(packet) for packet in packets)


def read_png(path: Path, *, native: bool = False) -> np.ndarray:
    """PNG file -> RGB uint8 (H, W, 3); with `native`, 16-bit files come back as uint16.
    Files fpng wrote are read by fpng's decoder (3x PyAV's at 4K, the GIL released);
    every other PNG by PyAV."""
    data = path.read_bytes()
    if _fpng is not None and _fpng_may_read(data):
        decoded = _fpng.decode(data)
        if decoded is not None:
            buffer, width, height = decoded
            return np.frombuffer(buffer, dtype=np.uint8).reshape(height, width, 3)
    with av.open(io.BytesIO(data), mode="r") as container:
        frame = next(container.decode(video=0))
        deep = frame.format.name.startswith(("rgb48", "rgba64"))
        return frame.to_ndarray(format="rgb48le" if native and deep else "rgb24")
