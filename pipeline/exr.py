"""OpenEXR through PyAV's encoder (FFmpeg's): half-float RGB, zip-compressed by scanline
blocks, the way compositing packages expect render passes."""

from __future__ import annotations

import threading
from pathlib import Path

import av
import numpy as np

_local = threading.local()


def encode_exr(pixels: np.ndarray) -> bytes:
    """Float (H, W, 3) RGB, half or single -> EXR bytes stored as half floats."""
    height, width, _ = pixels.shape
    key = (width, height)
    codecs = getattr(_local, "codecs", {})
    codec = codecs.get(key)
    if codec is None:  # one encoder per thread and size: codec contexts are not shared
        codec = av.CodecContext.create("exr", "w")
        codec.width, codec.height, codec.pix_fmt = width, height, "gbrpf32le"
        codec.options = {"pixel_type": "half", "compression": "zip16"}
        _local.codecs = {**codecs, key: codec}
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels, dtype=np.float32), format="gbrpf32le")
    return b"".join(bytes(packet) for packet in codec.encode(frame))


def read_exr(path: Path) -> np.ndarray:
    """EXR file -> float32 (H, W, 3) RGB."""
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return frame.to_ndarray(format="gbrpf32le")
