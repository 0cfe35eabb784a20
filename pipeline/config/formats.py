"""The output formats a job may ask for: one frame format per frame (a file each) and
the video. What the GPU quantises to is named here as text, so reading a job needs no
torch: `pipeline.files.formats` turns it into a dtype.

    png    8-bit RGB PNG           uint8    (1 byte per channel)
    png16  16-bit RGB PNG          uint16   (2)
    exr    half-float RGB OpenEXR  float16  (2), linear light by default (EXR_TRANSFERS)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FrameFormat:
    name: str
    suffix: str
    pixels: str          # the precision the decode quantises to and the host ring holds


FRAME_FORMATS = {
    "png": FrameFormat("png", ".png", "uint8"),
    "png16": FrameFormat("png16", ".png", "uint16"),
    "exr": FrameFormat("exr", ".exr", "float16"),
}
VIDEO_FORMATS = ("mp4",)
# What an EXR's values are: "linear" (the sRGB transfer inverted: what compositing
# packages expect of EXR) or "srgb" (display-referred, as the decoder made them)
EXR_TRANSFERS = ("linear", "srgb")
# How EXR frames are compressed: what FFmpeg's EXR encoder writes (zip16 by default:
# lossless, 16 scanlines a block). PIZ and DWA would need OpenEXR's own library.
EXR_COMPRESSIONS = ("zip16", "zip1", "rle", "none")


def frame_format(formats: tuple[str, ...]) -> FrameFormat | None:
    """The job's frame format (it has at most one), or None for a video-only job."""
    names = [f for f in formats if f in FRAME_FORMATS]
    return FRAME_FORMATS[names[0]] if names else None
