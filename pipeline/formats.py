"""Frame file formats: the file each frame becomes, and the precision the GPU
quantises to for it, so that the copy moves the final bytes and nothing more.

    png    8-bit RGB PNG           uint8    (1 byte per channel)
    png16  16-bit RGB PNG          uint16   (2)
    exr    half-float RGB OpenEXR  float16  (2), values 0..1 as the VAE made them

A job writes at most one of them per frame (plus, if it asks, the MP4, which is
encoded from the same pixels).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import exr, png


@dataclass(frozen=True)
class FrameFormat:
    name: str
    suffix: str
    dtype: torch.dtype          # what the decode quantises to and the ring holds


FRAME_FORMATS = {
    "png": FrameFormat("png", ".png", torch.uint8),
    "png16": FrameFormat("png16", ".png", torch.uint16),
    "exr": FrameFormat("exr", ".exr", torch.float16),
}
VIDEO_FORMATS = ("mp4",)


def frame_format(formats: tuple[str, ...]) -> FrameFormat | None:
    names = [f for f in formats if f in FRAME_FORMATS]
    return FRAME_FORMATS[names[0]] if names else None


def pixel_dtype(formats: tuple[str, ...]) -> torch.dtype:
    """The precision a run's frames travel in: the frame format's, or 8 bits for video alone."""
    found = frame_format(formats)
    return found.dtype if found else torch.uint8


def encode(fmt: FrameFormat, pixels: np.ndarray, png_compression: int) -> bytes | memoryview:
    if fmt.name == "exr":
        return exr.encode_exr(pixels)
    return png.encode_png(pixels, png_compression)


def read_frame(path: Path) -> np.ndarray:
    """A frame file as written: uint8 or uint16 (H, W, 3) for PNG, float32 for EXR."""
    return exr.read_exr(path) if path.suffix == ".exr" else png.read_png(path, native=True)


def to_rgb8(pixels: np.ndarray) -> np.ndarray:
    """Any frame precision -> uint8 RGB, rounded (watermark checks, video from EXR)."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype == np.uint16:
        return ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return np.rint(np.clip(pixels.astype(np.float32), 0, 1) * 255).astype(np.uint8)
