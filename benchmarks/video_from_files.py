"""A video made from published frames (a resumed run, the farm's video and segment
tasks): frames per second encoding a video from PNG files, reading each file on the
encoder's thread (`serial`, as before) against reading a few ahead in threads
(`read_ahead`, pipeline/files/read_ahead.py, as `VideoSequencer` does now).

    python benchmarks/video_from_files.py [--frames 48] [--size 1920x1080]
                                          [--codecs prores_422hq,h264] [--repeats 2]
                                          [--out benchmarks/results/video_from_files.json]

The frames: smooth pictures with a little grain (benchmarks/video_encode.py), written
with the product's PNG writer at level 1. Each codec and mode is timed --repeats times
(the median is reported) with the product's VideoFile. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from video_encode import natural_frames, spec

from pipeline.files.formats import read_frame
from pipeline.files.png import encode_png
from pipeline.files.read_ahead import ReadAhead
from pipeline.files.video import VideoFile
from pipeline.stages.write import READ_AHEAD


def encode(name: str, paths: list[Path], work: Path, ahead: bool) -> float:
    first = read_frame(paths[0])
    video = VideoFile(work / spec(name).path, spec(name), width=first.shape[1], height=first.shape[0], fps=24)
    reads = ReadAhead(lambda i: read_frame(paths[i]), range(len(paths)), READ_AHEAD if ahead else 0)
    start = time.perf_counter()
    try:
        for i in range(len(paths)):
            video.add(reads.take(i) if ahead else read_frame(paths[i]))
        video.finish()
    finally:
        reads.close()
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--codecs", default="prores_422hq,h264")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/video_from_files.json"))
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    results: dict[str, object] = {"date": date.today().isoformat(), "cores": os.cpu_count(), "pyav": av.__version__,
                                  "frames": args.frames, "size": args.size, "read_ahead": READ_AHEAD}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        pictures = natural_frames(height, width, 8)
        paths = []
        for i in range(args.frames):
            paths.append(work / f"f.{i:04d}.png")
            paths[-1].write_bytes(encode_png(pictures[i % len(pictures)], 1))
        start = time.perf_counter()
        for path in paths:
            read_frame(path)
        results["png_read_ms"] = round((time.perf_counter() - start) / len(paths) * 1e3, 1)
        for name in args.codecs.split(","):
            row = {}
            for mode, ahead in (("serial", False), ("read_ahead", True)):
                row[f"{mode}_fps"] = round(statistics.median(
                    encode(name, paths, work, ahead) for _ in range(args.repeats)), 2)
            row["speedup"] = round(row["read_ahead_fps"] / row["serial_fps"], 3)
            results[name] = row
            print(json.dumps({name: row}), flush=True)
    print(json.dumps(results, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
