"""Thumbnails of published frames, for `render monitor`: a small JPEG (THUMBNAIL_WIDTH
pixels wide) of each frame, in a `.thumbnails` folder beside it.

A thumbnail is a view of a frame, not an output: the manifest never records it (`verify`
passes over the folder), and a thumbnail that cannot be made costs a warning, never the
frame. It is made in the writer's thread from the pixels in hand, after the frame is
published: the frame is subsampled to about twice the width first (a strided view, no
copy of the whole frame), then scaled down with area averaging and encoded by FFmpeg's
MJPEG encoder through PyAV, a few milliseconds a frame. It is written to a temporary
name and renamed into place, so the monitor never serves half a file; it is not
fsynced (a thumbnail lost in a power cut is made again when the frame is).
"""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pipeline.files.formats import to_rgb8
from pipeline.files.publish import temp_path

THUMBNAILS_DIR = ".thumbnails"
THUMBNAIL_WIDTH = 256
_QUALITY = "3"   # MJPEG's qscale: 2 (best) to 31

log = logging.getLogger(__name__)


def thumbnail_path(frame_path: Path) -> Path:
    """Where the thumbnail of the frame file `frame_path` goes."""
    return frame_path.parent / THUMBNAILS_DIR / f"{frame_path.stem}.jpg"


def encode_thumbnail(pixels: np.ndarray, width: int = THUMBNAIL_WIDTH) -> bytes:
    """A JPEG of a frame's display-referred (H, W, 3) pixels, `width` wide (the frame's own
    width if narrower), its aspect kept (heights rounded to even: 4:2:0 chroma)."""
    height, full_width = pixels.shape[:2]
    width = max(2, min(width, full_width) // 2 * 2)
    out_height = max(2, round(height * width / full_width / 2) * 2)
    step = max(1, full_width // (2 * width))
    small = np.ascontiguousarray(to_rgb8(pixels[::step, ::step]))
    frame = av.VideoFrame.from_ndarray(small, format="rgb24").reformat(
        width=width, height=out_height, format="yuvj420p", interpolation="AREA")
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height, codec.pix_fmt = width, out_height, "yuvj420p"
    codec.time_base = Fraction(1, 25)
    codec.options = {"q:v": _QUALITY}
    return b"".join(bytes(packet) for packet in [*codec.encode(frame), *codec.encode(None)])


def write_thumbnail(frame_path: Path, pixels: np.ndarray) -> Path | None:
    """The frame's thumbnail into place (replacing an older one); None, with a warning, if it
    could not be made."""
    dest = thumbnail_path(frame_path)
    try:
        data = encode_thumbnail(pixels)
        dest.parent.mkdir(exist_ok=True)
        tmp = temp_path(dest)
        try:
            tmp.write_bytes(data)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    except (OSError, ValueError, av.FFmpegError) as err:
        log.warning("no thumbnail for %s: %s", frame_path.name, err)
        return None
    return dest
