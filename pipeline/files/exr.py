"""OpenEXR through PyAV's encoder (FFmpeg's): half-float RGB, zip-compressed by scanline
blocks, the way compositing packages expect render passes."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import av
import numpy as np

from pipeline.files.codecs import thread_codec


def encode_exr(pixels: np.ndarray) -> bytes:
    """Float (H, W, 3) RGB, half or single -> EXR bytes stored as half floats."""
    height, width, _ = pixels.shape

    def open_codec() -> av.VideoCodecContext:
        codec = cast(av.VideoCodecContext, av.CodecContext.create("exr", "w"))
        codec.width, codec.height, codec.pix_fmt = width, height, "gbrpf32le"
        codec.options = {"pixel_type": "half", "compression": "zip16"}
        return codec

    codec = thread_codec(("exr", width, height), open_codec)
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels, dtype=np.float32), format="gbrpf32le")
    return b"".join(bytes(packet) for packet in codec.encode(frame))


def read_exr(path: Path) -> np.ndarray:
    """EXR file -> float32 (H, W, 3) RGB."""
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return frame.to_ndarray(format="gbrpf32le")
