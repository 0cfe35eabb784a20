"""What a frame's thumbnail costs a farm worker's writer thread (pipeline/files/thumbnail.py),
beside what the same thread already spends encoding the frame's PNG.

    python benchmarks/thumbnail_cost.py [--repeats 20] [--out benchmarks/results/thumbnail_cost.json]

Frames of 1920x1080 and 3840x2160 in each precision a run's pixels travel in (uint8,
uint16 for 16-bit PNG, float32 for EXR), a smooth gradient with noise (a rendered
frame's texture, not a flat field). Median of `--repeats` calls after one warm-up:
`encode_thumbnail` (subsample, to uint8, area scale to 256 wide, MJPEG), the write of
the thumbnail (`write_thumbnail`, to a temporary folder), and the frame's own PNG
encode at the job default (compression 1, ISA-L) for scale. CPU only, one thread.
Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from pipeline.config.formats import frame_format
from pipeline.files.formats import encode
from pipeline.files.thumbnail import encode_thumbnail, write_thumbnail

ROOT = Path(__file__).resolve().parent.parent


def frame(height: int, width: int, dtype: type) -> np.ndarray:
    rng = np.random.default_rng(0)
    ramp = np.linspace(0.1, 0.9, width, dtype=np.float32)[None, :, None] * np.ones((height, 1, 3), np.float32)
    pixels = np.clip(ramp + rng.normal(0, 0.03, (height, width, 3)).astype(np.float32), 0, 1)
    if dtype is np.float32:
        return pixels
    return np.rint(pixels * np.iinfo(dtype).max).astype(dtype)


def median_ms(call: Callable[[], object], repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/thumbnail_cost.json")
    args = parser.parse_args()
    png, png16 = frame_format(("png",)), frame_format(("png16",))
    assert png is not None and png16 is not None
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for height, width in ((1080, 1920), (2160, 3840)):
            for dtype, fmt in ((np.uint8, png), (np.uint16, png16), (np.float32, None)):
                pixels = frame(height, width, dtype)
                row = {"size": f"{width}x{height}", "pixels": np.dtype(dtype).name,
                       "thumbnail_encode_ms": median_ms(lambda p=pixels: encode_thumbnail(p), args.repeats),
                       "thumbnail_write_ms": median_ms(
                           lambda p=pixels: write_thumbnail(Path(folder) / "frame.png", p), args.repeats),
                       "thumbnail_bytes": len(encode_thumbnail(pixels))}
                if fmt is not None:
                    row["png_encode_ms"] = median_ms(lambda p=pixels, f=fmt: encode(f, p, 1), max(3, args.repeats // 4))
                results.append(row)
                print(json.dumps(row), file=sys.stderr)
    report = {"benchmark": "thumbnail_cost", "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "command": " ".join(["python", "benchmarks/thumbnail_cost.py", *sys.argv[1:]]),
              "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), "
                        f"load average {os.getloadavg()[0]:.2f}",
              "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
