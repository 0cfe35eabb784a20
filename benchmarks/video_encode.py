"""Video encode time per 4K frame, by codec, and where the RGB -> Y'CbCr conversion
should run: on the host (swscale, what `pipeline/files/video.py` does) or on the GPU
(a BT.709 matrix and a chroma average in torch, then a copy of the planes).

For each codec of `pipeline.config.video`: swscale's conversion alone, the encoder
alone (fed converted frames), both together as the writer runs them; and with a GPU, the
torch conversion (kernel time from CUDA events, and with the device-to-host copy of the
planes). One thread: the video writer encodes frames in order on one thread.

    python benchmarks/video_encode.py [--frames 8] [--out benchmarks/results/video_encode.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import date
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config.video import VIDEO_CODECS, VideoOutput

KR, KB = 0.2126, 0.0722   # BT.709


def natural_frames(height: int, width: int, count: int) -> list[np.ndarray]:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(0)
    frames = []
    for i in range(count):
        image = np.stack([x / width, y / height, 0.5 + 0.4 * np.sin((x + 2 * y + 40 * i) / 90)], axis=-1)
        image += rng.normal(0, 0.01, image.shape).astype(np.float32)
        frames.append(np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8))
    return frames


def spec(name: str) -> VideoOutput:
    codec = VIDEO_CODECS[name]
    return VideoOutput(path=f"b{codec.suffixes[0]}", codec=name, encoder=codec.encoder,
                       container={".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}[codec.suffixes[0]],
                       pixel_format=codec.pixel_formats[0], crf=codec.crf,
                       preset="veryfast" if codec.crf is not None else None, options=codec.options)


def swscale(pixels: np.ndarray, video: VideoOutput) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
    if video.rgb:
        return frame.reformat(format=video.pixel_format)
    return frame.reformat(format=video.pixel_format, dst_colorspace="ITU709", dst_color_range="MPEG")


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def open_stream(video: VideoOutput, work: Path, width: int, height: int) -> tuple[Any, Any]:
    """A container in `work` and the codec's stream, with the codec's fixed options."""
    container = av.open(str(work / video.path), "w", format=video.container)
    options = dict(video.options)
    if video.crf is not None:
        options.update(crf=str(video.crf), preset=video.preset or "veryfast")
    if video.encoder == "libx265":
        options["x265-params"] = "log-level=error"
    stream = container.add_stream(video.encoder, rate=Fraction(24), options=options)
    stream.width, stream.height, stream.pix_fmt = width, height, video.pixel_format
    return container, stream


def host_case(name: str, frames: list[np.ndarray], work: Path) -> dict[str, float]:
    video = spec(name)
    height, width, _ = frames[0].shape
    convert = timed(lambda: [swscale(f, video) for f in frames], 2)
    converted = [swscale(f, video) for f in frames]
    container, stream = open_stream(video, work, width, height)
    encode_times = []
    for pts, frame in enumerate(converted * 2):   # the first pass warms the encoder's lookahead
        frame.pts, frame.time_base = pts, Fraction(1, 24)
        start = time.perf_counter()
        for packet in stream.encode(frame):
            container.mux(packet)
        encode_times.append(time.perf_counter() - start)
    start = time.perf_counter()
    for packet in stream.encode():
        container.mux(packet)
    flush = time.perf_counter() - start
    container.close()
    encode = statistics.mean(encode_times[len(converted):]) + flush / (2 * len(converted))
    per_frame = min(convert) / len(frames)
    return {"pixel_format": video.pixel_format, "swscale_ms": round(per_frame * 1e3, 2),
            "encode_ms": round(encode * 1e3, 2), "writer_ms": round((per_frame + encode) * 1e3, 2),
            "writer_fps": round(1 / (per_frame + encode), 2)}


def gpu_conversion(frames: list[np.ndarray], pixel_format: str) -> dict[str, float]:
    """BT.709 limited range in torch: Y' and subsampled Cb, Cr planes, 8 or 10 bits."""
    import torch

    depth = 10 if "10" in pixel_format else 8
    across, down = (2, 2) if pixel_format.startswith("yuv420") else (2, 1) if pixel_format.startswith("yuv422") \
        else (1, 1)
    scale = float(1 << (depth - 8))
    kg = 1 - KR - KB
    matrix = torch.tensor([[KR, kg, KB],
                           [-KR / (2 * (1 - KB)), -kg / (2 * (1 - KB)), 0.5],
                           [0.5, -kg / (2 * (1 - KR)), -KB / (2 * (1 - KR))]], device="cuda")
    out_dtype = torch.uint8 if depth == 8 else torch.int16
    on_gpu = [torch.from_numpy(f).cuda() for f in frames]
    height, width, _ = frames[0].shape
    pinned = [torch.empty(height * width * 3, dtype=out_dtype, pin_memory=True) for _ in range(2)]

    def convert(rgb: torch.Tensor) -> list[torch.Tensor]:
        ycc = (rgb.float() / 255) @ matrix.T
        luma = (16 + 219 * ycc[..., 0]) * scale
        chroma = ycc[..., 1:].permute(2, 0, 1)[None]
        if across > 1 or down > 1:
            chroma = torch.nn.functional.avg_pool2d(chroma, (down, across))
        chroma = (128 + 224 * chroma[0]) * scale
        return [luma.round_().to(out_dtype), chroma[0].round_().to(out_dtype), chroma[1].round_().to(out_dtype)]

    for rgb in on_gpu:
        convert(rgb)
    torch.cuda.synchronize()
    kernel, with_copy = [], []
    for i, rgb in enumerate(on_gpu * 3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        wall = time.perf_counter()
        start.record()
        planes = convert(rgb)
        end.record()
        offset, dest = 0, pinned[i % 2]
        for plane in planes:
            dest[offset: offset + plane.numel()].copy_(plane.reshape(-1), non_blocking=True)
            offset += plane.numel()
        torch.cuda.synchronize()
        with_copy.append(time.perf_counter() - wall)
        kernel.append(start.elapsed_time(end) / 1e3)
    return {"gpu_convert_ms": round(statistics.median(kernel) * 1e3, 3),
            "gpu_convert_and_copy_ms": round(statistics.median(with_copy) * 1e3, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--width", type=int, default=3840)
    parser.add_argument("--height", type=int, default=2160)
    parser.add_argument("--codecs", default=",".join(VIDEO_CODECS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/ff-video-encode"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/video_encode.json"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    frames = natural_frames(args.height, args.width, args.frames)
    try:
        import torch
        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except ImportError:
        gpu = None
    results: dict[str, object] = {
        "date": date.today().isoformat(), "host": platform.processor() or platform.machine(),
        "python": platform.python_version(), "av": av.__version__, "gpu": gpu,
        "size": [args.width, args.height], "frames": args.frames,
        "command": "python benchmarks/video_encode.py " + " ".join(sys.argv[1:]), "codecs": {},
    }
    for name in args.codecs.split(","):
        case = host_case(name, frames, args.work)
        if gpu and not spec(name).rgb:
            case.update(gpu_conversion(frames, case["pixel_format"]))
        results["codecs"][name] = case   # type: ignore[index]
        print(name, case, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
