"""Videos through PyAV (`config.video` names the codecs), each written to a temporary
file and published whole at the end.

Colour: the decoder's pixels are display-referred sRGB/BT.709. For a Y'CbCr pixel format
they are converted to limited-range Y'CbCr with the BT.709 matrix, and the file says so
(BT.709 primaries, transfer and matrix, limited range), so a player converts back with
the same matrix. Left to the encoder, swscale used BT.601 and the file said nothing: a
BT.709 player showed (200, 60, 40) as (213, 73, 37). An RGB pixel format (FFV1's bgr0)
stores the pixels as they are, tagged RGB, full range.

Frames of more than 8 bits (png16, exr) reach a 10-bit codec at 16 bits; an 8-bit
codec gets them rounded here, the same way the PNG writer rounds.

Frames must arrive in order; `pipeline.stages.write` puts them in order. A run that
stops early aborts the video: the temporary file is removed, nothing is published.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import av
import numpy as np

from pipeline.config.video import VideoOutput
from pipeline.files.formats import to_rgb8
from pipeline.files.publish import Published, commit, failed_write, file_sha256, temp_path

# AVCOL_PRI_BT709, AVCOL_TRC_BT709, AVCOL_SPC_BT709, AVCOL_RANGE_MPEG (limited, "tv")
COLOUR_TAGS = {"color_primaries": 1, "color_trc": 1, "colorspace": 1, "color_range": 1}
# the same for RGB storage: AVCOL_SPC_RGB, AVCOL_RANGE_JPEG (full)
RGB_COLOUR_TAGS = {**COLOUR_TAGS, "colorspace": 0, "color_range": 2}


def colour_tags(spec: VideoOutput) -> dict[str, int]:
    return RGB_COLOUR_TAGS if spec.rgb else COLOUR_TAGS


class VideoFile:
    def __init__(self, dest: Path, spec: VideoOutput, *, width: int, height: int, fps: int) -> None:
        self.dest = dest
        self.spec = spec
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temp_path(dest)
        self.frames = 0
        self._tags = colour_tags(spec)
        self._container = av.open(str(self.tmp), "w", format=spec.container)
        try:
            options = dict(spec.options)
            if spec.crf is not None:
                options["crf"] = str(spec.crf)
            if spec.preset is not None:
                options["preset"] = spec.preset
            if spec.encoder == "libx265":
                options["x265-params"] = "log-level=error"   # x265 prints its settings on stderr otherwise
            self._stream = cast(av.VideoStream, self._container.add_stream(spec.encoder, rate=Fraction(fps),
                                                                           options=options))
            if spec.encoder in ("libx265", "hevc_nvenc") and spec.container in ("mp4", "mov"):
                self._stream.codec_tag = "hvc1"   # FFmpeg's default hev1 is refused by Apple's players
        except Exception:
            self.abort()
            raise
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = spec.pixel_format
        for tag, value in self._tags.items():
            setattr(self._stream.codec_context, tag, value)

    def add(self, pixels: np.ndarray) -> None:
        """RGB (H, W, 3): uint8, uint16 or float in [0, 1]."""
        if self.spec.deep and pixels.dtype != np.uint8:
            if pixels.dtype != np.uint16:
                pixels = np.rint(np.clip(pixels.astype(np.float32), 0, 1) * 65535).astype(np.uint16)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb48le")  # copies: buffer reusable
        else:
            frame = av.VideoFrame.from_ndarray(to_rgb8(pixels), format="rgb24")
        if self.spec.rgb:
            frame = frame.reformat(format=self.spec.pixel_format)
        else:
            frame = frame.reformat(format=self.spec.pixel_format, dst_colorspace="ITU709", dst_color_range="MPEG")
        frame.colorspace, frame.color_range = self._tags["colorspace"], self._tags["color_range"]
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def finish(self, *, then: Callable[[Published], None] | None = None,
               lock: AbstractContextManager[Any] | None = None) -> Published:
        """Flush, close and publish the video; inside `lock`, the move into place and `then`
        (the manifest record) as one step."""
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            with self.tmp.open("rb+") as handle:
                os.fsync(handle.fileno())
            sha256, size = file_sha256(self.tmp), self.tmp.stat().st_size
            with lock or contextlib.nullcontext():
                published = commit(self.tmp, self.dest, sha256, size)
                if then is not None:
                    then(published)
            return published
        except OSError as err:   # a full disk while the last packets and the index are written
            if failed_write(err, self.tmp):
                raise OSError(err.errno, err.strerror, str(self.dest)) from err
            raise
        finally:   # published (linked into place) or failed: the temporary file goes either way
            with contextlib.suppress(FileNotFoundError):
                self.tmp.unlink()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._container.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


def read_colour_tags(path: Path) -> dict[str, int]:
    """The video stream's colour tags, by the names of COLOUR_TAGS (as the decoder reads them)."""
    with av.open(str(path)) as container:
        codec = container.streams.video[0].codec_context
        return {tag: int(getattr(codec, tag)) for tag in COLOUR_TAGS}


def read_video_info(path: Path) -> tuple[int, int, int]:
    """(frames, width, height), counted by decoding: what a player would see."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(stream))
        return count, stream.width, stream.height
