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
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import av
import numpy as np

from pipeline.colour.ycbcr import frame_from_planes
from pipeline.config.video import VideoOutput, segment_path, segments
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
            if spec.encoder == "prores_ks":
                # frames in flight on several threads: 10-17 % less time a frame than PyAV's
                # default slice threads for 422 HQ (benchmarks/encoder_threads.py); the other
                # encoders are fastest with slice threads
                self._stream.codec_context.thread_type = "FRAME"
        except Exception:
            self.abort()
            raise
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = spec.pixel_format
        for tag, value in self._tags.items():
            setattr(self._stream.codec_context, tag, value)

    def add(self, pixels: np.ndarray, planes: Mapping[str, np.ndarray] | None = None) -> None:
        """RGB (H, W, 3): uint8, uint16 or float in [0, 1]; or, where `planes` has this
        video's pixel format, the Y'CbCr the device converted (colour/ycbcr.py)."""
        if planes and self.spec.pixel_format in planes:
            height, width = pixels.shape[:2]
            frame = frame_from_planes(planes[self.spec.pixel_format], self.spec.pixel_format, height, width)
        else:
            frame = self._convert(pixels)
        frame.colorspace, frame.color_range = self._tags["colorspace"], self._tags["color_range"]
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def _convert(self, pixels: np.ndarray) -> av.VideoFrame:
        """swscale on this thread: to the video's pixel format, BT.709 limited range."""
        if self.spec.deep and pixels.dtype != np.uint8:
            if pixels.dtype != np.uint16:
                pixels = np.rint(np.clip(pixels.astype(np.float32), 0, 1) * 65535).astype(np.uint16)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb48le")  # copies: buffer reusable
        else:
            frame = av.VideoFrame.from_ndarray(to_rgb8(pixels), format="rgb24")
        if self.spec.rgb:
            return frame.reformat(format=self.spec.pixel_format)
        return frame.reformat(format=self.spec.pixel_format, dst_colorspace="ITU709", dst_color_range="MPEG")

    def finish(self, *, then: Callable[[Published], None] | None = None,
               lock: AbstractContextManager[Any] | None = None) -> Published:
        """Flush, close and publish the video; inside `lock`, the move into place and `then`
        (the manifest record) as one step."""
        def close() -> None:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
        return _publish(self.tmp, self.dest, close, then, lock)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._container.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


def _publish(tmp: Path, dest: Path, close: Callable[[], None], then: Callable[[Published], None] | None,
             lock: AbstractContextManager[Any] | None) -> Published:
    """`close` the file being written at `tmp`, make it durable, and move it into place
    (with `then`, the manifest record, inside `lock`); the temporary file goes either way."""
    try:
        close()
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        sha256, size = file_sha256(tmp), tmp.stat().st_size
        with lock or contextlib.nullcontext():
            published = commit(tmp, dest, sha256, size)
            if then is not None:
                then(published)
        return published
    except OSError as err:   # a full disk while the last packets and the index are written
        if failed_write(err, tmp):
            raise OSError(err.errno, err.strerror, str(dest)) from err
        raise
    finally:   # published (linked into place) or failed
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


SegmentDone = Callable[[VideoFile, int, range], Published]


class SegmentedVideo:
    """A video in closed-GOP segments: each segment is a video of its own (its own
    encoder, so it starts with a keyframe and refers to nothing before it), published as
    it completes through `on_segment` (which records it), and at `finish` the segments
    are joined by a remux, without re-encoding. Segments in `done` (published by an
    earlier run) are not encoded again: their frames are never fed (`unfed`)."""

    def __init__(self, dest: Path, spec: VideoOutput, *, width: int, height: int, fps: int,
                 frames: range, done: frozenset[int], on_segment: SegmentDone) -> None:
        self.dest, self.spec = dest, spec
        self.size, self.fps = (width, height), fps
        self.segments = segments(frames, spec.segment_frames)
        self.unfed = frozenset(f for i in done for f in self.segments[i])
        self._todo = [i for i in range(len(self.segments)) if i not in done]
        self._on_segment = on_segment
        self._current: VideoFile | None = None
        self.frames = 0
        self.tmp = temp_path(dest)

    def add(self, pixels: np.ndarray, planes: Mapping[str, np.ndarray] | None = None) -> None:
        if self._current is None:
            index = self._todo[0]
            path = segment_path(self.dest, index)
            self._current = VideoFile(path, self.spec, width=self.size[0], height=self.size[1], fps=self.fps)
        self._current.add(pixels, planes)
        self.frames += 1
        index = self._todo[0]
        if self._current.frames == len(self.segments[index]):
            current, self._current = self._current, None
            try:
                self._on_segment(current, index, self.segments[index])
            except BaseException:   # refused before its publish (a fenced farm task): no temporary file stays
                current.abort()
                raise
            self._todo.pop(0)

    def finish(self, *, then: Callable[[Published], None] | None = None,
               lock: AbstractContextManager[Any] | None = None) -> Published:
        if self._todo:
            raise RuntimeError(f"{self.dest.name}: segment {self._todo[0]} was not finished")
        parts = [segment_path(self.dest, i) for i in range(len(self.segments))]
        return _publish(self.tmp, self.dest, lambda: join(parts, self.tmp, self.spec.container, self.fps), then, lock)

    def abort(self) -> None:
        if self._current is not None:
            self._current.abort()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


def join(parts: list[Path], dest: Path, container_format: str, fps: int) -> None:
    """Concatenate videos of one encoder's settings into `dest` by copying their packets,
    each part's timestamps moved past the parts before it (by its frames, one packet
    each: not every container says a packet's duration)."""
    with av.open(str(parts[0])) as first:
        out = av.open(str(dest), "w", format=container_format)
        try:
            stream = out.add_stream_from_template(first.streams.video[0])
            offset = 0
            for part in parts:
                with av.open(str(part)) as container:
                    source = container.streams.video[0]
                    assert source.time_base is not None
                    frames = 0
                    for packet in container.demux(source):
                        if packet.dts is None:   # the demuxer's empty packet at the end
                            continue
                        assert packet.pts is not None
                        packet.pts += offset
                        packet.dts += offset
                        packet.stream = stream
                        out.mux(packet)
                        frames += 1
                    offset += round(frames / (fps * source.time_base))
        finally:
            out.close()


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
