"""GPU overlap benchmark: does the pipeline keep the GPU busy, against the naive loop,
diffusers' tiled decode and the GPU alone, on the same latents in one process?

    python benchmarks/gpu_pipeline.py [--frames 24] [--out benchmarks/results/gpu_pipeline.json]

Cases (random weights at real configs, bf16, 3840x2160 by default):
  sd_4k    SD-class AutoencoderKL (block_out_channels 128/256/512/512), decoded whole
  tiny_4k  AutoencoderTiny (TAESD config), where the PNG writers are the bottleneck
Modes per case:
  gpu_only         the pipeline's own Decoder (decode, clamp, quantise, HWC) plus the
                   watermark, in a loop on the compute stream, nothing downstream
  naive            diffusers' decode, VaeImageProcessor.postprocess (.cpu()), PIL save,
                   one frame at a time
  diffusers_tiled  the same with vae.enable_tiling()
  pipeline         `render run` on the same latents (source "noise", same seeds) to PNG
  pipeline_mp4     the same to MP4 only (Y'CbCr made on the GPU: video_rgb_to_yuv "auto")
  pipeline_mp4_host  the same with swscale on the video writer's thread ("host")
  gpu_only_after   gpu_only again at the end; ratios use the faster of the two
  writer_limit     (tiny_4k) the pipeline's PNG writer alone (encode, atomic publish,
                   manifest) on host frames, same thread count; and PyAV against Pillow
  mp4_writer_limit (tiny_4k) the pipeline's video writer alone, frames in order
  mp4_writer_limit_planes  the same given the GPU's Y'CbCr planes
Figures:
  fps              frames / seconds (for the pipeline: first frame in to last frame out)
  steady_fps       (pipeline) the lower of `decode_fps`, frames over the GPU span of
                   their decodes, and `written_fps`, the slope of frames written against
                   time without the fill and the drain: in steady state the pipeline can
                   sustain neither more than the GPU decodes nor more than the writers
                   publish. `pipeline_over_*` use it; `*_whole_run` ratios use `fps`
  gpu_busy_fraction  CUDA timing events around each decode on the compute stream
                   (pipeline.gpu.busy.BusyClock): GPU-busy time over the span from the first
                   decode's start to the last one's end; `nvml_util_mean`: pynvml's
                   utilisation sampled every 50 ms, averaged over the steady window
  peak_vram_gib    torch.cuda.max_memory_allocated during the mode; `peak_reserved_gib`
                   what the caching allocator held (pipeline modes)

Needs one CUDA GPU; not collected by pytest.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import av
import diffusers
import numpy as np
import torch
import trio
from bench_models import default_writers, noise_job, sd_class_vae

from pipeline.config.formats import FRAME_FORMATS
from pipeline.config.job import load_job
from pipeline.config.seeds import frame_seed
from pipeline.files.manifest import Manifest
from pipeline.files.png import encode_png
from pipeline.flow.frames import LatentFrame
from pipeline.gpu.device import DeviceContext
from pipeline.models.cache import ModelCache
from pipeline.plan import make_plan
from pipeline.run import render
from pipeline.stages.decode import Decoder
from pipeline.stages.source import noise_latents
from pipeline.stages.watermark import offsets_for
from pipeline.stages.write import FrameOutputs
from pipeline.watermark.embed import embed

SEED = 7
GIB = 2**30


# ---------------------------------------------------------------- models and jobs

def make_vae(kind: str, folder: Path) -> Path:
    """Random weights at the real architecture, saved as a diffusers folder (bf16)."""
    torch.manual_seed(0)
    vae = sd_class_vae() if kind == "sd" else diffusers.AutoencoderTiny()  # Tiny: TAESD's config
    vae.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
    return folder


def write_job(path: Path, *, model: Path, root: Path, frames: int, width: int, height: int,
              formats: list[str], writers: int, tuning: str = "") -> Path:
    return noise_job(path, seed=SEED, name="bench", model=model, root=root, frames=frames, width=width,
                     height=height, formats=formats, writers=writers, tuning=tuning)


def latents_for(frames: int, shape: tuple[int, int, int]) -> list[tuple[int, torch.Tensor]]:
    """Exactly what the pipeline's noise source draws for frames 1..N."""
    return [(f, noise_latents(frame_seed(SEED, f), shape)) for f in range(1, frames + 1)]


# ---------------------------------------------------------------- measuring helpers

class NvmlSampler:
    """GPU utilisation (percent) sampled in a thread, read back as a mean."""

    def __init__(self, index: int, period_s: float = 0.05) -> None:
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._period = period_s
        try:
            import pynvml
            pynvml.nvmlInit()
            self._read = functools.partial(pynvml.nvmlDeviceGetUtilizationRates,
                                           pynvml.nvmlDeviceGetHandleByIndex(index))
        except Exception as err:  # no NVML here: say so in the results
            print(f"NVML unavailable: {err}")
            self._read = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            self.samples.append((time.perf_counter(), self._read().gpu))

    def __enter__(self) -> NvmlSampler:
        if self._read is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._read is not None:
            self._thread.join()

    def mean(self, start: float, end: float) -> float | None:
        window = [u for t, u in self.samples if start <= t <= end]
        return round(statistics.mean(window) / 100, 4) if window else None


def steady_window(times: list[float]) -> slice:
    """The frames written in steady state: without the first quarter (at least 2), while
    the pipeline fills and each writer thread opens its encoder, and without the last
    eighth, while it drains."""
    return slice(max(2, len(times) // 4), len(times) - len(times) // 8)


def steady_rate(times: list[float]) -> float:
    """Frames per second in steady state: the least-squares slope of frames written
    against time in the steady window (writers finish in bursts, so a slope is steadier
    than two end points)."""
    t = np.array(times[steady_window(times)])
    return float(np.polyfit(t - t[0], np.arange(len(t), dtype=float), 1)[0]) if len(t) >= 3 else float("nan")


def peak_gib() -> float:
    return round(torch.cuda.max_memory_allocated() / GIB, 2)


def peak_reserved_gib() -> float:
    """Held by the caching allocator (allocated plus cached)."""
    return round(torch.cuda.max_memory_reserved() / GIB, 2)


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# ---------------------------------------------------------------- modes

def gpu_only(decoder: Decoder, latents: list[tuple[int, torch.Tensor]], offsets: torch.Tensor,
             warmup: int = 2) -> dict[str, Any]:
    ctx = decoder.ctx

    def one(frame: int, lat: torch.Tensor) -> None:
        out = decoder.decode(LatentFrame(frame, 0, lat))
        with ctx.on(ctx.compute):  # same stream: the buffer is freed in stream order
            embed(out.pixels, offsets)

    for frame, lat in latents[:warmup]:
        one(frame, lat)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    decoder.busy = type(decoder.busy)()
    start = time.perf_counter()
    for frame, lat in latents:
        one(frame, lat)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"frames": len(latents), "seconds": round(seconds, 3), "fps": round(len(latents) / seconds, 4),
            "peak_vram_gib": peak_gib(), **decoder.busy.statistics()}


def naive(vae: torch.nn.Module, latents: list[tuple[int, torch.Tensor]], out: Path, *,
          tiled: bool) -> dict[str, Any]:
    """diffusers' decode, postprocess to PIL, PIL.save: one frame at a time."""
    from diffusers.image_processor import VaeImageProcessor

    processor = VaeImageProcessor(vae_scale_factor=8)
    scaling = vae.config.scaling_factor
    if tiled:
        vae.enable_tiling()
    try:
        def one(frame: int, lat: torch.Tensor, folder: Path) -> None:
            with torch.no_grad():
                image = vae.decode(lat[None].to("cuda", torch.bfloat16) / scaling).sample
            processor.postprocess(image, output_type="pil")[0].save(folder / f"{frame:04d}.png")

        one(*latents[0], fresh_dir(out / "warmup"))
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        folder = fresh_dir(out / "frames")
        start = time.perf_counter()
        for frame, lat in latents:
            one(frame, lat, folder)
        seconds = time.perf_counter() - start
    finally:
        vae.disable_tiling()
        shutil.rmtree(out, ignore_errors=True)
    return {"frames": len(latents), "seconds": round(seconds, 3), "fps": round(len(latents) / seconds, 4),
            "peak_vram_gib": peak_gib()}


def pipeline(job_path: Path, models: ModelCache) -> dict[str, Any]:
    job = load_job(job_path)
    shutil.rmtree(job.output.root, ignore_errors=True)
    plan = make_plan(job, torch.device("cuda:0"))
    written: list[float] = []
    torch.cuda.synchronize()
    torch.cuda.empty_cache()  # so that peak_reserved_gib is this mode's own
    torch.cuda.reset_peak_memory_stats()
    with NvmlSampler(0) as nvml:
        report = trio.run(functools.partial(render, plan, lambda frame: written.append(time.perf_counter()),
                                            models, handle_signals=False))
    shutil.rmtree(job.output.root, ignore_errors=True)
    steady = written[steady_window(written)]
    decode = report.stages["decode"]
    return {"frames": report.frames, "seconds": round(report.render_s, 3), "fps": round(report.fps, 4),
            "peak_vram_gib": peak_gib(),
            "peak_reserved_gib": peak_reserved_gib(),
            "gpu_busy_fraction": decode.get("gpu_busy_fraction"),
            "nvml_util_mean": nvml.mean(steady[0], steady[-1]), "stages": report.stages,
            "written_s": [round(t - written[0], 3) for t in written]}


def host_frames(decoder: Decoder, latents: list[tuple[int, torch.Tensor]], count: int) -> list[np.ndarray]:
    frames = []
    for frame, lat in latents[:count]:
        pixels = decoder.decode(LatentFrame(frame, 0, lat)).pixels
        torch.cuda.synchronize()  # decoded on the compute stream; .cpu() runs on the default one
        frames.append(pixels.cpu().numpy())
    return frames


def writer_limit(pictures: list[np.ndarray], frames: int, threads: int, out: Path) -> dict[str, Any]:
    """The pipeline's PNG writer (encode, atomic publish, manifest record) alone, and
    encode-only PyAV against Pillow, at one thread and at `threads`."""
    from PIL import Image

    def pillow(pixels: np.ndarray) -> int:
        import io
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
        return buffer.tell()

    def rate(work: Callable[[int], Any], count: int, workers: int) -> float:
        work(0)  # warm up (frame 0 is not counted)
        with ThreadPoolExecutor(workers) as pool:
            start = time.perf_counter()
            list(pool.map(work, range(1, count + 1)))
            return round(count / (time.perf_counter() - start), 3)

    root = fresh_dir(out)
    outputs = FrameOutputs(root=root, frame_format=FRAME_FORMATS["png"],
                           frame_paths={f: root / f"w.{f:04d}.png" for f in range(frames + 1)},
                           png_compression=1, manifest=Manifest(root),
                           record_base={"shot": "bench", "model_hash": "-", "job_hash": "-"})
    pick = pictures.__getitem__
    result = {
        "threads": threads, "frames": frames,
        "fps": rate(lambda i: outputs.publish_frame(i, 0, pick(i % len(pictures))), frames, threads),
        "encode_only_pyav_fps": rate(lambda i: encode_png(pick(i % len(pictures)), 1), frames, threads),
        "encode_only_pillow_fps": rate(lambda i: pillow(pick(i % len(pictures))), frames, threads),
        "encode_only_pyav_1_thread_fps": rate(lambda i: encode_png(pick(i % len(pictures)), 1), 6, 1),
        "encode_only_pillow_1_thread_fps": rate(lambda i: pillow(pick(i % len(pictures))), 6, 1),
        "png_mib": round(sum(p.stat().st_size for p in root.glob("*.png")) / (frames + 1) / 2**20, 2),
    }
    shutil.rmtree(root, ignore_errors=True)
    return result


def mp4_writer_limit(pictures: list[np.ndarray], frames: int, out: Path, planes: bool = False) -> dict[str, Any]:
    """The pipeline's video writer alone: frames in order into PyAV's libx264; with
    `planes`, given the Y'CbCr the GPU made (made before the clock starts)."""
    from pipeline.colour.ycbcr import to_planes
    from pipeline.config.video import review_video
    from pipeline.files.video import VideoFile

    root = fresh_dir(out)
    height, width, _ = pictures[0].shape
    spec = review_video("w.mp4", "libx264", 18, "veryfast")
    made = [{spec.pixel_format: to_planes(torch.from_numpy(p).cuda(), spec.pixel_format).cpu().numpy()}
            if planes else None for p in pictures]
    video = VideoFile(root / "w.mp4", spec, width=width, height=height, fps=24)
    start = time.perf_counter()
    for i in range(frames):
        video.add(pictures[i % len(pictures)], made[i % len(pictures)])
    video.finish()
    seconds = time.perf_counter() - start
    shutil.rmtree(root, ignore_errors=True)
    return {"frames": frames, "fps": round(frames / seconds, 3)}


# ---------------------------------------------------------------- cases

def run_case(name: str, kind: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    print(f"== {name}", flush=True)
    frames = args.frames if kind == "sd" else args.tiny_frames
    model = make_vae(kind, fresh_dir(work / f"{kind}_vae"))
    models = ModelCache(capacity=1)
    probe = load_job(write_job(work / f"{name}_png.toml", model=model, root=work / "out", frames=frames,
                               width=args.width, height=args.height, formats=["png"], writers=args.writers))
    plan = make_plan(probe, torch.device("cuda:0"))
    vae = models.get(plan.vae, plan.model_hash, plan.dtype, plan.device, False)
    ctx = DeviceContext(plan.device)
    decoder = Decoder(vae, plan.vae, plan.dtype, ctx)
    offsets = offsets_for(probe.watermark, args.height, args.width, ctx)
    latents = latents_for(frames, plan.latent_shape)

    modes: dict[str, Any] = {}

    def mode(label: str, fn: Callable[[], dict[str, Any]]) -> None:
        try:
            modes[label] = fn()
        except Exception as err:  # keep the other modes' figures; the error is in the JSON
            modes[label] = {"error": f"{type(err).__name__}: {err}", "fps": float("nan"), "steady_fps": float("nan")}
        shown = {k: v for k, v in modes[label].items() if k not in ("stages", "written_s")}
        print(f"  {label:<16} {shown}", flush=True)

    mode("gpu_only", lambda: gpu_only(decoder, latents, offsets))
    naive_latents = latents[:args.naive_frames]
    mode("naive", lambda: naive(vae, naive_latents, work / "naive", tiled=False))
    mode("diffusers_tiled", lambda: naive(vae, naive_latents, work / "naive", tiled=True))
    mode("pipeline", lambda: pipeline(work / f"{name}_png.toml", models))
    write_job(work / f"{name}_mp4.toml", model=model, root=work / "out", frames=frames, width=args.width,
              height=args.height, formats=["mp4"], writers=args.writers)
    mode("pipeline_mp4", lambda: pipeline(work / f"{name}_mp4.toml", models))
    write_job(work / f"{name}_mp4_host.toml", model=model, root=work / "out", frames=frames, width=args.width,
              height=args.height, formats=["mp4"], writers=args.writers, tuning='video_rgb_to_yuv = "host"\n')
    mode("pipeline_mp4_host", lambda: pipeline(work / f"{name}_mp4_host.toml", models))
    # the GPU alone once more, after everything else: the spread of the two is the noise
    mode("gpu_only_after", lambda: gpu_only(Decoder(vae, plan.vae, plan.dtype, ctx), latents, offsets))

    if kind == "tiny":
        pictures = host_frames(decoder, latents, 8)
        mode("writer_limit", lambda: writer_limit(pictures, args.tiny_frames, args.writers, work / "writers"))
        mode("mp4_writer_limit", lambda: mp4_writer_limit(pictures, args.tiny_frames, work / "writers"))
        mode("mp4_writer_limit_planes", lambda: mp4_writer_limit(pictures, args.tiny_frames, work / "writers",
                                                                 planes=True))
    case = {"model": plan.vae.class_name, "width": args.width, "height": args.height, "dtype": plan.dtype,
            "modes": modes}
    derive(case)
    return case


def derive(case: dict[str, Any]) -> None:
    """The steady-state rates of the pipeline modes and the ratios, from the measured
    figures alone (so `--rederive` can recompute them for a saved run)."""
    modes = case["modes"]
    for label in ("pipeline", "pipeline_mp4", "pipeline_mp4_host"):
        m = modes.get(label, {"error": "not run"})
        if "error" in m:
            continue
        m["written_fps"] = round(steady_rate(m["written_s"]), 4)
        span = m["stages"]["decode"].get("gpu_span_s")
        m["decode_fps"] = round(m["frames"] / span, 4) if span else float("nan")
        m["steady_fps"] = min(m["written_fps"], m["decode_fps"])
    gpu = max(modes["gpu_only"]["fps"], modes["gpu_only_after"]["fps"])  # the stricter reference

    def ratio(a: float, b: float, digits: int = 4) -> float:
        return round(a / b, digits)

    case.update({
        "gpu_only_fps": gpu,
        "pipeline_over_gpu_only": ratio(modes["pipeline"]["steady_fps"], gpu),
        "pipeline_over_gpu_only_whole_run": ratio(modes["pipeline"]["fps"], gpu),
        "pipeline_mp4_over_gpu_only": ratio(modes["pipeline_mp4"]["steady_fps"], gpu),
        "pipeline_mp4_over_gpu_only_whole_run": ratio(modes["pipeline_mp4"]["fps"], gpu),
        "pipeline_mp4_host_over_gpu_only": ratio(modes.get("pipeline_mp4_host", {}).get("steady_fps", float("nan")),
                                                 gpu),
        "pipeline_over_naive": ratio(modes["pipeline"]["steady_fps"], modes["naive"]["fps"], 3),
        "gpu_busy_fraction": modes["pipeline"].get("gpu_busy_fraction"),
        "nvml_util_mean": modes["pipeline"].get("nvml_util_mean"),
    })
    if "writer_limit" in modes:
        case["pipeline_over_writer_limit"] = ratio(modes["pipeline"]["steady_fps"], modes["writer_limit"]["fps"])
        case["pipeline_mp4_over_writer_limit"] = ratio(modes["pipeline_mp4"]["steady_fps"],
                                                       modes["mp4_writer_limit"]["fps"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=24, help="frames of the SD case")
    parser.add_argument("--tiny-frames", type=int, default=96, help="frames of the AutoencoderTiny case")
    parser.add_argument("--naive-frames", type=int, default=6,
                        help="frames of the naive and diffusers_tiled modes (seconds each at 4K)")
    parser.add_argument("--width", type=int, default=3840)
    parser.add_argument("--height", type=int, default=2160)
    parser.add_argument("--writers", type=int, default=default_writers(),
                        help="writer threads (default: all cores but 4, which the pipeline's own "
                             "threads need: decode launches, copies, the trio loop)")
    parser.add_argument("--cases", default="sd_4k,tiny_4k")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_pipeline.json"))
    parser.add_argument("--rederive", type=Path, default=None, metavar="JSON",
                        help="recompute the derived rates and ratios of a saved run into --out; no GPU")
    args = parser.parse_args()
    if args.rederive is not None:
        results = json.loads(args.rederive.read_text())
        for case in results["cases"].values():
            derive(case)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps({name: {k: v for k, v in case.items() if k != "modes"}
                          for name, case in results["cases"].items()}, indent=2))
        return
    if not torch.cuda.is_available():
        raise SystemExit("gpu_pipeline.py needs a CUDA GPU")
    work = args.work or Path(tempfile.mkdtemp(prefix="ff-bench-"))
    started = time.perf_counter()
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
        "diffusers": diffusers.__version__, "av": av.__version__, "python": platform.python_version(),
        "host_cpus": os.cpu_count(), "date": datetime.now(UTC).date().isoformat(),
        "command": "python benchmarks/gpu_pipeline.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out", "work")),
        "cases": {},
    }
    kinds = {"sd_4k": "sd", "tiny_4k": "tiny"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.cases.split(","):
        results["cases"][name] = run_case(name, kinds[name], args, work)
        torch.cuda.empty_cache()  # the case's model is gone with run_case's frame
        results["seconds"] = round(time.perf_counter() - started, 1)
        args.out.write_text(json.dumps(results, indent=2) + "\n")  # each case as it ends
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({name: {k: v for k, v in case.items() if k != "modes"}
                      for name, case in results["cases"].items()}, indent=2))
    print(f"wrote {args.out} in {results['seconds']} s")


if __name__ == "__main__":
    main()
