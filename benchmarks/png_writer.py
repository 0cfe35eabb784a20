"""PNG encoders at 4K, one thread: framefarm's writers (fpng for 8-bit, the container
over ISA-L for both depths) against FFmpeg's level 1, and reading the files back.

    python benchmarks/png_writer.py [--frames 5] [--out benchmarks/results/png_writer.json]

Content: a natural-looking frame (smooth gradients and waves with a little grain, what a
decoder makes) and uniform noise, 8- and 16-bit, 3840x2160. Figures per encoder:
frames/s on one core (median of --frames encodes after a warm-up), bytes, and the ratio
to FFmpeg's level 1 for both; then the read back of each file as the product reads
frames for a video (`read_png`: fpng's decoder for fpng's files, PyAV for the rest)
against PyAV alone. Every file is decoded back and compared with the frame.
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

from pipeline.files.png import _fpng, encode_png_ffmpeg, encode_png_fpng, encode_png_isal, read_png


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


def time_reads(data: bytes, deep: bool, frames: int) -> dict[str, float]:
    """ms to read the file back: the product's read_png against PyAV alone."""
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"png_writer_{os.getpid()}.png"
    path.write_bytes(data)
    try:
        figures = {}
        for name, read in (("read_png_ms", lambda: read_png(path, native=True)),
                           ("pyav_read_ms", lambda: decoded(path.read_bytes(), deep))):
            read()
            times = []
            for _ in range(frames):
                start = time.perf_counter()
                read()
                times.append(time.perf_counter() - start)
            figures[name] = round(statistics.median(times) * 1000, 1)
        return figures
    finally:
        path.unlink()


def _written(data: bytes) -> Path:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"png_writer_check_{os.getpid()}.png"
    path.write_bytes(data)
    return path


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
            case: dict = {"ffmpeg_level1_fps_per_core": round(1 / ffmpeg_s, 3),
                          "ffmpeg_level1_bytes": len(ffmpeg_data),
                          "ffmpeg_file": time_reads(ffmpeg_data, deep, args.frames)}
            line = (f"{name:14s} ffmpeg l1 {case['ffmpeg_level1_fps_per_core']:6.2f} fps/core "
                    f"{len(ffmpeg_data) / 1e6:6.2f} MB")
            ours = {"isal": encode_png_isal}
            if not deep and _fpng is not None:   # fpng writes 8-bit only
                ours["fpng"] = lambda pixels, _level: encode_png_fpng(pixels)
            for encoder, encode in ours.items():
                seconds, data = time_encoder(encode, pixels, args.frames)
                assert np.array_equal(decoded(data, deep), pixels), f"{name}: {encoder}'s file is not the frame"
                assert np.array_equal(read_png(_written(data), native=True), pixels), f"{name}: read_png"
                case |= {f"{encoder}_fps_per_core": round(1 / seconds, 3), f"{encoder}_bytes": len(data),
                         f"{encoder}_speed_over_ffmpeg": round(ffmpeg_s / seconds, 2),
                         f"{encoder}_size_over_ffmpeg": round(len(data) / len(ffmpeg_data), 3),
                         f"{encoder}_file": time_reads(data, deep, args.frames)}
                line += (f" | {encoder} {1 / seconds:6.2f} fps/core {len(data) / 1e6:6.2f} MB "
                         f"x{case[f'{encoder}_speed_over_ffmpeg']} speed x{case[f'{encoder}_size_over_ffmpeg']} size"
                         f" read {case[f'{encoder}_file']['read_png_ms']} ms (PyAV "
                         f"{case[f'{encoder}_file']['pyav_read_ms']})")
            assert np.array_equal(decoded(ffmpeg_data, deep), pixels), f"{name}: FFmpeg's file is not the frame"
            results["cases"][name] = case
            print(line, flush=True)
    results["load_average_at_end"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
