"""Write stage: encode, publish atomically, record in the manifest, give the slot back.

Several writer tasks share the input channel, each encoding frame files (PNG, 16-bit
PNG or EXR) in a thread (PyAV releases the GIL). The video takes frames strictly in
order through `VideoSequencer`; frames a resumed run skipped are read back from their
published files so the video is whole. Publishing and its manifest record happen in
one thread call, so a cancelled run never leaves a published frame without its record.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import trio

from pipeline.config.formats import FrameFormat
from pipeline.errors import PublishRefused, StageFailed
from pipeline.files.exr import BT709_CHROMATICITIES, Attribute, frame_attributes
from pipeline.files.formats import encode, read_frame
from pipeline.files.manifest import Manifest
from pipeline.files.publish import Published, publish_bytes
from pipeline.files.read_ahead import ReadAhead
from pipeline.files.thumbnail import write_thumbnail
from pipeline.files.video import SegmentedVideo, VideoFile
from pipeline.flow.frames import HostFrame
from pipeline.flow.stats import StageStats
from pipeline.gpu.ring import HostRing

# frames read back ahead of a video made from files (each a PNG decode beside the encode)
READ_AHEAD = 4

@dataclass
class FrameOutputs:
    """Where each frame's file goes, in which format, and what its manifest record says besides."""
    root: Path
    frame_format: FrameFormat | None      # None: the job writes only a video
    frame_paths: dict[int, Path]          # empty when frame_format is None
    png_compression: int
    manifest: Manifest
    record_base: dict[str, Any]           # shot, model_hash, job_hash, device
    # Asked, in the writer's thread, just before each output is published: False stops
    # the render there (a farm task that is no longer this worker's). None: always publish.
    may_publish: Callable[[], bool] | None = None
    exr_transfer: str = "linear"          # output.exr_transfer
    png_encoder: str = "fpng"             # tuning.png_encoder
    exr_compression: str = "zip16"        # output.exr_compression
    fps: int = 24                         # shot.fps (EXR frames say it)
    exr_chromaticities: tuple[float, ...] | None = BT709_CHROMATICITIES   # None: unknown, not written
    exr_extra: tuple[Attribute, ...] = ()  # what every EXR frame says besides (the colour transform)
    thumbnails: bool = False              # a small JPEG beside each published frame (files/thumbnail.py)

    def check_publish(self, what: str) -> None:
        if self.may_publish is not None and not self.may_publish():
            raise PublishRefused(what)

    def publish_frame(self, frame: int, seed: int, pixels: np.ndarray) -> None:
        assert self.frame_format is not None
        path = self.frame_paths[frame]
        where_from = ([*frame_attributes(self.record_base["shot"], frame, self.record_base["job_hash"], self.fps),
                       *self.exr_extra] if self.frame_format.name == "exr" else [])
        data = encode(self.frame_format, pixels, self.png_compression, self.exr_transfer, self.png_encoder,
                      self.exr_compression, where_from, self.exr_chromaticities)
        self.check_publish(f"frame {frame}")   # after the encode: as late as it can be asked
        relative = path.relative_to(self.root).as_posix()
        frame_format = self.frame_format

        def record(published: Published) -> None:   # unless another writer published and recorded it first
            self.manifest.record_unless_recorded({
                **self.record_base, "kind": "frame", "frame": frame, "format": frame_format.name,
                "path": relative, "size": published.size,
                "sha256": published.sha256, "seed": seed, "time": time.time(),
            }, published.kept_existing)

        publish_bytes(path, data, then=record, lock=self.manifest.exclusive())
        if self.thumbnails:   # after the frame is out: the thumbnail never holds it back
            write_thumbnail(path, pixels)


class VideoSequencer:
    """Feeds the video encoder frame by frame in shot order, whichever writer is first.
    Frames a resumed run skipped are read back from their files; frames of segments an
    earlier run published (`unfed`) are not fed at all."""

    def __init__(self, video: VideoFile | SegmentedVideo, frames: range, skipped: frozenset[int],
                 read_back: Callable[[int], np.ndarray]) -> None:
        self.video = video
        self.first = self.next = frames.start
        self.end = frames.stop
        self.skipped = skipped
        self.unfed = video.unfed if isinstance(video, SegmentedVideo) else frozenset()
        # frames to read back, in the order the video takes them: read a few ahead
        self._reads = ReadAhead(read_back, [f for f in frames if f in skipped and f not in self.unfed],
                                READ_AHEAD)
        self._turn = trio.Condition()
        self._limiter = trio.CapacityLimiter(1)

    async def put(self, frame: int, pixels: np.ndarray, planes: dict[str, np.ndarray]) -> None:
        async with self._turn:
            await self._encode_skipped()
            while self.next != frame:
                await self._turn.wait()
            if frame not in self.unfed:
                await trio.to_thread.run_sync(self.video.add, pixels, planes, limiter=self._limiter)
            self.next += 1
            await self._encode_skipped()
            self._turn.notify_all()

    async def finish(self) -> None:
        try:
            async with self._turn:
                await self._encode_skipped()
        finally:
            self._reads.close()
        if self.next != self.end:
            raise RuntimeError(f"video stopped at frame {self.next}, expected {self.end - 1}")

    def _add_from_disk(self, frame: int) -> None:
        self.video.add(self._reads.take(frame))

    async def _encode_skipped(self) -> None:
        try:
            while self.next in self.skipped or self.next in self.unfed:
                if self.next not in self.unfed:
                    await trio.to_thread.run_sync(self._add_from_disk, self.next, limiter=self._limiter)
                self.next += 1
        except BaseException:   # cancelled or failed: no more reads ahead
            self._reads.close()
            raise


def publish_segment(outputs: FrameOutputs, video: Path, part: VideoFile, index: int, frames: range) -> Published:
    """A finished segment of `video` into place with its manifest record (in the video's thread)."""
    outputs.check_publish(f"segment {index} of {video.name}")

    def record(published: Published) -> None:
        outputs.manifest.record_unless_recorded({
            **outputs.record_base, "kind": "segment", "video": video.relative_to(outputs.root).as_posix(),
            "index": index, "frames": [frames.start, frames.stop - 1],
            "path": published.path.relative_to(outputs.root).as_posix(),
            "size": published.size, "sha256": published.sha256, "time": time.time(),
        }, published.kept_existing)

    return part.finish(then=record, lock=outputs.manifest.exclusive())


def read_back(outputs: FrameOutputs) -> Callable[[int], np.ndarray]:
    return lambda frame: read_frame(outputs.frame_paths[frame])


async def write_stage(outputs: FrameOutputs, videos: list[VideoSequencer], ring: HostRing,
                      writers: int, on_done: Callable[[int], None], stats: StageStats,
                      rx: trio.MemoryReceiveChannel, tx: None) -> None:
    limiter = trio.CapacityLimiter(writers)

    async def writer(channel: trio.MemoryReceiveChannel, track: str) -> None:
        async with channel:
            while True:
                try:
                    item: HostFrame = await stats.receive(channel, track)
                except trio.EndOfChannel:
                    return
                published = False
                try:
                    with stats.busy(item.frame, track):
                        if outputs.frame_paths:
                            await trio.to_thread.run_sync(
                                outputs.publish_frame, item.frame, item.seed, item.pixels,
                                limiter=limiter)
                            published = True
                        for video in videos:   # each in its own thread: one writer may be at one
                            await video.put(item.frame, item.pixels, item.planes)   # video's turn, another at the next
                except Exception as err:
                    raise StageFailed("write", item.frame, err) from err
                except BaseException:   # stopped at the video's turn: the frame's file is out, it counts
                    if published:
                        on_done(item.frame)
                    raise
                finally:
                    ring.release(item.slot)
                stats.items += 1
                stats.mark_out()
                on_done(item.frame)

    async with rx, trio.open_nursery() as nursery:
        for index in range(writers):
            nursery.start_soon(writer, rx.clone(), f"write {index}")
    for video in videos:
        try:
            await publish_video(outputs, video)
        except Exception as err:
            raise StageFailed("write", None, err) from err


async def publish_video(outputs: FrameOutputs, video: VideoSequencer) -> None:
    await video.finish()
    await trio.to_thread.run_sync(outputs.check_publish, f"the video {video.video.dest.name}")

    def record(published: Published) -> None:   # once, whichever run on this root published it
        outputs.manifest.record_unless_recorded({
            **outputs.record_base, "kind": "video", "frames": [video.first, video.end - 1],
            "path": published.path.relative_to(outputs.root).as_posix(),
            "size": published.size, "sha256": published.sha256, "time": time.time(),
        }, published.kept_existing)

    await trio.to_thread.run_sync(functools.partial(video.video.finish, then=record,
                                                    lock=outputs.manifest.exclusive()))
