"""PNG encoders at 4K, one thread: framefarm's writer over ISA-L against FFmpeg's level 1.

    python benchmarks/png_writer.py [--frames 5] [--out benchmarks/results/png_writer.json]

Content: a natural-looking frame (smooth gradients and waves with a little grain, what a
decoder makes) and uniform noise, 8- and 16-bit, 3840x2160. Figures per encoder:
frames/s on one core (median of --frames encodes after a warm-up), bytes, and the ratio
to FFmpeg's level 1 for both. Every file is decoded back and compared with the frame.
CPU only; not collected by pytest.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import av
import numpy as np

from pipeline.files.png import encode_png_ffmpeg, encode_png_isal


def natural(height: int, width: int, deep: bool) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([0.5 + 0.4 * np.sin(x / 300 + y / 500), 0.5 + 0.3 * np.cos(x / 700) * np.sin(y / 400),
                      0.5 + 0.25 * np.sin((x + y) / 900)], axis=-1)
    image += np.random.default_rng(0).normal(0, 0.008, image.shape).astype(np.float32)
    top = 65535 if deep else 255
    return (np.clip(image, 0, 1) * top).round().astype(np.uint16 if deep else np.uint8)


def noise(height: int, width: int, deep: bool) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 65536 if deep else 256, (height, width, 3),
                                             dtype=np.uint16 if deep else np.uint8)


def decoded(data: bytes, deep: bool) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb48le" if deep else "rgb24")


def time_encoder(encode, pixels: np.ndarray, frames: int) -> tuple[float, bytes]:
    data = bytes(encode(pixels, 1))   # warm-up (and the per-thread codec or buffer)
    times = []
    for _ in range(frames):
        start = time.perf_counter()
        data = bytes(encode(pixels, 1))
        times.append(time.perf_counter() - start)
    return statistics.median(times), data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--width", type=int, default=3840)
    parser.add_argument("--height", type=int, default=2160)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/png_writer.json"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results: dict = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.processor()
                     or platform.machine(), "cores": os.cpu_count(), "size": [args.width, args.height],
                     "frames": args.frames, "load_average_at_start": os.getloadavg()[0], "cases": {}}
    for content in (natural, noise):
        for deep in (False, True):
            pixels = content(args.height, args.width, deep)
            name = f"{content.__name__}_{16 if deep else 8}bit"
            ffmpeg_s, ffmpeg_data = time_encoder(encode_png_ffmpeg, pixels, args.frames)
            ours_s, ours_data = time_encoder(encode_png_isal, pixels, args.frames)
            for data in (ffmpeg_data, ours_data):
                assert np.array_equal(decoded(data, deep), pixels), f"{name}: a file does not decode to the frame"
            case = {
                "ffmpeg_level1_fps_per_core": round(1 / ffmpeg_s, 3), "ffmpeg_level1_bytes": len(ffmpeg_data),
                "isal_fps_per_core": round(1 / ours_s, 3), "isal_bytes": len(ours_data),
                "speed_over_ffmpeg": round(ffmpeg_s / ours_s, 2),
                "size_over_ffmpeg": round(len(ours_data) / len(ffmpeg_data), 3),
            }
            results["cases"][name] = case
            print(f"{name:14s} ffmpeg l1 {case['ffmpeg_level1_fps_per_core']:6.2f} fps/core "
                  f"{len(ffmpeg_data) / 1e6:6.2f} MB | isal {case['isal_fps_per_core']:6.2f} fps/core "
                  f"{len(ours_data) / 1e6:6.2f} MB | x{case['speed_over_ffmpeg']} speed, "
                  f"x{case['size_over_ffmpeg']} size", flush=True)
    results["load_average_at_end"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
