"""The videos a job may ask for: the codecs editorial receives, their containers and
pixel formats, and the checks that refuse a combination FFmpeg would fail on late (or
silently change) with one line naming the field.

    h264          libx264, 8-bit 4:2:0 (4:2:2, 4:4:4)      .mp4 .mov .mkv   crf
    h265          libx265, 10-bit 4:2:0 (8-bit, 4:2:2, 4:4:4) .mp4 .mov .mkv  crf
    prores_422hq  prores_ks profile 3, 10-bit 4:2:2        .mov
    prores_4444   prores_ks profile 4, 10-bit 4:4:4        .mov
    dnxhr_hq      dnxhd profile dnxhr_hq, 8-bit 4:2:2      .mov .mxf
    dnxhr_hqx     dnxhd profile dnxhr_hqx, 10-bit 4:2:2    .mov .mxf
    ffv1          FFV1 version 3, lossless 8-bit RGB       .mkv

Text only (no av, no torch), like `config.formats`: reading a job needs neither.
The `mp4` frame format of earlier jobs is the review video: H.264 with the preset's
`video_codec`, `video_crf` and `video_preset`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

# FFmpeg's muxer for each file suffix
CONTAINERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".mxf": "mxf"}
# Frame rates FFmpeg's MXF muxer accepts (whole numbers; measured with PyAV 18)
MXF_RATES = (24, 25, 30, 48, 50, 60, 72, 75, 90, 96, 100, 120)
X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow")


@dataclass(frozen=True)
class VideoCodec:
    name: str                         # what a job writes
    encoder: str                      # FFmpeg's encoder
    suffixes: tuple[str, ...]         # containers it may go in
    pixel_formats: tuple[str, ...]    # what it may store; the first is the default
    crf: int | None                   # default constant rate factor; None: the codec has none
    options: tuple[tuple[str, str], ...] = ()   # fixed encoder options (the profile)
    min_size: tuple[int, int] = (1, 1)          # (width, height) the encoder accepts at least


VIDEO_CODECS = {c.name: c for c in (
    VideoCodec("h264", "libx264", (".mp4", ".mov", ".mkv"), ("yuv420p", "yuv422p", "yuv444p"), 18),
    VideoCodec("h265", "libx265", (".mp4", ".mov", ".mkv"),
               ("yuv420p10le", "yuv420p", "yuv422p10le", "yuv444p10le"), 22),
    VideoCodec("prores_422hq", "prores_ks", (".mov",), ("yuv422p10le",), None, (("profile", "3"), ("vendor", "apl0"))),
    VideoCodec("prores_4444", "prores_ks", (".mov",), ("yuv444p10le",), None, (("profile", "4"), ("vendor", "apl0"))),
    VideoCodec("dnxhr_hq", "dnxhd", (".mov", ".mxf"), ("yuv422p",), None, (("profile", "dnxhr_hq"),),
               min_size=(256, 120)),
    VideoCodec("dnxhr_hqx", "dnxhd", (".mov", ".mxf"), ("yuv422p10le",), None, (("profile", "dnxhr_hqx"),),
               min_size=(256, 120)),
    VideoCodec("ffv1", "ffv1", (".mkv",), ("bgr0", "yuv444p", "yuv444p10le"), None,
               (("level", "3"), ("slicecrc", "1"), ("g", "1"))),
)}


@dataclass(frozen=True)
class VideoOutput:
    path: str                         # pattern under the output root ({shot})
    codec: str                        # a VIDEO_CODECS name, or "review" (the preset's MP4)
    encoder: str
    container: str                    # CONTAINERS value
    pixel_format: str
    crf: int | None = None
    preset: str | None = None         # x264/x265 speed preset
    options: tuple[tuple[str, str], ...] = ()
    segment_frames: int = 0           # closed-GOP segments of this many frames; 0: one piece

    @property
    def deep(self) -> bool:
        """Whether it stores more than 8 bits a channel (the frames should travel in 16)."""
        return bit_depth(self.pixel_format) > 8

    @property
    def rgb(self) -> bool:
        return self.pixel_format in ("bgr0", "gbrp", "gbrp10le")

    def describe(self) -> str:
        quality = f", crf {self.crf}" if self.crf is not None else ""
        return f"{self.codec} ({self.encoder}, {self.pixel_format}{quality})"


def segments(frames: range, length: int) -> list[range]:
    """The shot's frames cut into segments of `length` (the last may be shorter); 0: one."""
    step = length or len(frames)
    return [range(first, min(first + step, frames.stop)) for first in range(frames.start, frames.stop, step)]


def segment_path(video: Path, index: int) -> Path:
    """Where segment `index` of `video` is published: a hidden folder beside it."""
    return video.parent / f".{video.name}.segments" / f"{index:05d}{video.suffix}"


def with_segments(video: VideoOutput, default: int) -> VideoOutput:
    return video if video.segment_frames else replace(video, segment_frames=default)


def bit_depth(pixel_format: str) -> int:
    for depth in (16, 12, 10):
        if f"p{depth}" in pixel_format:
            return depth
    return 8


def chroma_steps(pixel_format: str) -> tuple[int, int]:
    """How many pixels share one chroma sample, across and down: what the size must divide."""
    if pixel_format.startswith("yuv420"):
        return 2, 2
    if pixel_format.startswith("yuv422"):
        return 2, 1
    return 1, 1


def review_video(path: str, encoder: str, crf: int, preset: str) -> VideoOutput:
    """The MP4 of `formats = [..., "mp4"]`: H.264 (or what the preset names), 8-bit 4:2:0."""
    container = "mp4"
    x26x = encoder.startswith("libx26")
    return VideoOutput(path=path, codec="review", encoder=encoder, container=container, pixel_format="yuv420p",
                       crf=crf if x26x else None, preset=preset if x26x else None)
