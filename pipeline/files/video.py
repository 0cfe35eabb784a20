"""MP4 through PyAV, written to a temporary file and published whole at the end.

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

from pipeline.files.formats import to_rgb8
from pipeline.files.publish import Published, commit, failed_write, file_sha256, temp_path


class VideoFile:
    def __init__(self, dest: Path, *, width: int, height: int, fps: int, codec: str,
                 crf: int, preset: str) -> None:
        self.dest = dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temp_path(dest)
        self.frames = 0
        self._container = av.open(str(self.tmp), "w", format="mp4")
        try:
            options = {"crf": str(crf), "preset": preset} if codec.startswith("libx26") else {}
            if codec == "libx265":
                options["x265-params"] = "log-level=error"   # x265 prints its settings on stderr otherwise
            self._stream = cast(av.VideoStream, self._container.add_stream(codec, rate=Fraction(fps), options=options))
            if codec in ("libx265", "hevc_nvenc"):
                self._stream.codec_tag = "hvc1"   # FFmpeg's default hev1 is refused by Apple's players
        except Exception:
            self.abort()
            raise
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"

    def add(self, pixels: np.ndarray) -> None:
        """RGB (H, W, 3): uint8, uint16 (converted by FFmpeg) or float in [0, 1]."""
        if pixels.dtype == np.uint16:
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb48le")  # copies: buffer reusable
        else:
            frame = av.VideoFrame.from_ndarray(to_rgb8(pixels), format="rgb24")
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


def read_video_info(path: Path) -> tuple[int, int, int]:
    """(frames, width, height), counted by decoding: what a player would see."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(stream))
        return count, stream.width, stream.height
