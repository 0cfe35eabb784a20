"""Frame files: encoding and reading the formats `pipeline.config.formats` names, and the
torch dtype the GPU quantises to for each, so that the copy moves the final bytes and
nothing more. A job writes at most one frame format (plus, if it asks, videos, which
are encoded from the same pixels)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pipeline.config.formats import FrameFormat
from pipeline.config.job import Output
from pipeline.files import exr, png


def pixel_dtype(output: Output) -> torch.dtype:
    """The precision a run's frames travel in (`Output.pixels`), as a torch dtype."""
    return getattr(torch, output.pixels())


def encode(fmt: FrameFormat, pixels: np.ndarray, png_compression: int, exr_transfer: str = "linear",
           png_encoder: str = "fpng", exr_compression: str = "zip16",
           exr_attributes: Sequence[exr.Attribute] = (),
           exr_chromaticities: tuple[float, ...] | None = exr.BT709_CHROMATICITIES) -> bytes | memoryview:
    if fmt.name == "exr":
        return exr.encode_exr(pixels, exr_transfer, exr_compression, exr_attributes, exr_chromaticities)
    return png.encode_png(pixels, png_compression, png_encoder)


def read_frame(path: Path) -> np.ndarray:
    """A frame file's display-referred pixels: uint8 or uint16 (H, W, 3) for PNG, float32
    for EXR (linear EXR converted back)."""
    # case-insensitive: a frame.EXR from another tool is an EXR, not a broken PNG
    return exr.read_exr_display(path) if path.suffix.lower() == ".exr" else png.read_png(path, native=True)


def to_rgb8(pixels: np.ndarray) -> np.ndarray:
    """Any frame precision -> uint8 RGB, rounded (watermark checks, video from EXR)."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype == np.uint16:
        return ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return np.rint(np.clip(pixels.astype(np.float32), 0, 1) * 255).astype(np.uint8)
