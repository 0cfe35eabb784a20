"""Encoder threading: what FFmpeg's threads buy each video codec, per frame, on this
host's cores. The video writer feeds one encoder in order from one thread; inside the
encoder, FFmpeg may use slice threads (PyAV's default: `thread_type` SLICE,
`thread_count` 0 = one per core) or frame threads (several frames in flight).

For each codec of `pipeline.config.video`, at each --sizes, frames already converted
to the codec's pixel format (swscale, outside the clock) are encoded twice over
(the first pass warms the encoder); the figure is the second pass's time per frame,
flush included, for each threading setting:
`slice_1` (one thread), `slice_auto` (PyAV's default), `frame_auto`, `auto_auto`.

    python benchmarks/encoder_threads.py [--frames 8] [--sizes 3840x2160,1920x1080]
                                         [--out benchmarks/results/encoder_threads.json]
Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from fractions import Fraction
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from video_encode import natural_frames, open_stream, spec, swscale

from pipeline.config.video import VIDEO_CODECS

SETTINGS = {"slice_1": ("SLICE", 1), "slice_auto": ("SLICE", 0), "frame_auto": ("FRAME", 0), "auto_auto": ("AUTO", 0)}


def encode_ms(name: str, frames: list[av.VideoFrame], work: Path, thread_type: str, thread_count: int) -> float:
    container, stream = open_stream(spec(name), work, frames[0].width, frames[0].height)
    stream.codec_context.thread_type, stream.codec_context.thread_count = thread_type, thread_count
    start = 0.0
    for pts, frame in enumerate(frames * 2):
        if pts == len(frames):
            start = time.perf_counter()
        frame.pts, frame.time_base = pts, Fraction(1, 24)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return (time.perf_counter() - start) / len(frames) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--sizes", default="3840x2160,1920x1080")
    parser.add_argument("--codecs", default=",".join(VIDEO_CODECS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/ff-encoder-threads"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/encoder_threads.json"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict[str, object] = {"date": date.today().isoformat(), "host": platform.node(),
                                  "cores": os.cpu_count(), "pyav": av.__version__, "frames": args.frames}
    for size in args.sizes.split(","):
        width, height = map(int, size.split("x"))
        rgb = natural_frames(height, width, args.frames)
        for name in args.codecs.split(","):
            converted = [swscale(f, spec(name)) for f in rgb]
            row = {label: round(encode_ms(name, converted, args.work, *setting), 1)
                   for label, setting in SETTINGS.items()}
            results[f"{name} {size}"] = row
            print(json.dumps({f"{name} {size}": row}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
