"""Decode benchmark (issue 4): this project's micro-task decode against diffusers'
untiled decode and diffusers' `enable_tiling()`, side by side, on the same latents:
seconds per frame, peak VRAM, PSNR against untiled; plus the Wan 2.1 VAE decoded
chunk by chunk (with pipeline.kernels.wan's lean forwards, as load_vae gives them) against
diffusers' whole-clip decode and diffusers' own forwards chunk by chunk.

    python benchmarks/decode.py [--out benchmarks/results/decode.json]        # one GPU
    python benchmarks/decode.py --device cpu --width 256 --height 144 --frames 1 \\
        --tile 16 --overlap 4 --wan-size 64x48 --wan-frames 5 --out /tmp/decode.json  # smoke

Models: random weights at real configs (SD-class AutoencoderKL, block_out_channels
128/256/512/512; Wan 2.1 VAE), in --dtype. Timing: one warm-up frame, then each frame
timed alone with the device synchronised before and after; the median is reported.
Every SD mode ends in the pipeline's quantisation to 8-bit RGB (the Wan clips are
rounded to 8 bits the same way); PSNR is over those frames against untiled decode
(peak 255), frame by frame, mean. "ours" is the
pipeline's own Decoder with the default preset's tile plan (for AutoencoderKL: the mid
block and `whole_up_blocks` up blocks on the whole frame, the rest tiled, one set of
GroupNorm statistics per frame), with what load_vae installs (fast_paths: the chunked
mid-block attention, GroupNorm by spread-out reductions); `untiled_fast_paths` is
diffusers' untiled decode with the same.
`wan_720p_81f_s` is a whole `render` of a clip job (source kind "clip", 81 frames
written as PNG; the median of runs 2-4 in one process, the first warms up);
`wan_pipeline_over_gpu_only` is the chunked decode with the decode stage's quantisation
and nothing downstream (median of three), over that; `pipeline.drain_s`, per run, the
seconds from the last frame's copy to the last PNG published; `pipeline_png_stored` the same
render with png_compression = 0. `wan.tiled`: the clip decoded tiled in space
(pipeline.decode.video.tiled) with --tile and --budget, then with --wan-large-budget, each
timed and its peak taken keeping no output (PSNR from a third run); `--wan-fit` adds
the peaks of fixed tile plans; `--wan-blocks` adds the GPU time of the Wan
decoder's blocks alone and in the pipeline.
Not collected by pytest.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import diffusers
import torch
import trio
from bench_models import default_writers, sd_class_vae, tuning_table
from safetensors.torch import save_file

from pipeline.config.job import load_job
from pipeline.config.tuning import load_tuning
from pipeline.decode.budget import TilePlan, layered_peak, plan_decode, tile_plan
from pipeline.decode.quantise import quantise_hwc
from pipeline.decode.tiles import TileGrid, make_grid
from pipeline.decode.video.chunks import ClipDecoder, chunk_frames, decode_chunks
from pipeline.decode.video.tiled import TiledClipDecoder
from pipeline.flow.frames import ClipChunk, LatentFrame
from pipeline.gpu.device import DeviceContext
from pipeline.kernels.install import use_fast_paths
from pipeline.models.cache import ModelCache
from pipeline.models.vae import VaeInfo
from pipeline.plan import make_plan
from pipeline.run import render
from pipeline.stages.decode import Decoder

GIB = 2**30


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / GIB, 3) if device.type == "cuda" else None


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Between two 8-bit frames (or clips), in dB; inf when equal."""
    mse = float(((a.float() - b.float()) ** 2).mean())
    return round(10 * math.log10(255**2 / mse), 2) if mse > 0 else float("inf")


def timed(fn: Callable[[torch.Tensor], torch.Tensor], latents: list[torch.Tensor],
          device: torch.device) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """Warm up on the first frame, then time each frame alone; outputs kept on the CPU."""
    with torch.no_grad():
        fn(latents[0])
        sync(device)
        reset_peak(device)
        outputs, seconds = [], []
        for lat in latents:
            sync(device)
            start = time.perf_counter()
            out = fn(lat)
            sync(device)
            seconds.append(time.perf_counter() - start)
            outputs.append(out.cpu())
    return outputs, {"s_per_frame": round(statistics.median(seconds), 4), "peak_vram_gib": peak_gib(device),
                     "frames": len(latents)}


def matmul_peak_tflops(device: torch.device) -> float | None:
    """Dense bf16 matrix product 8192^3 on random data: the rate the fractions are of."""
    if device.type != "cuda":
        return None
    a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return round(2 * 8192**3 / statistics.median(times) / 1e12, 1)


def counted_flops(run: Callable[[], Any]) -> float:
    """Floating-point operations of `run`, counted by PyTorch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        run()
    return float(counter.get_total_flops())


CATEGORIES = (  # kernel name patterns, first match wins
    ("layout conversion", ("nchwToNhwc", "nhwcToNchw", "tensorTransform")),
    ("convolution", ("fprop", "conv", "implicit_gemm", "cudnn", "winograd", "sm90_xmma", "sm80_xmma")),
    ("attention", ("wide_attn", "fmha", "flash", "attention", "softmax")),
    ("matmul", ("gemm", "nvjet", "cublas", "splitK")),
    ("normalisation", ("norm", "moments", "_apply", "batch_norm", "reduce_kernel")),
    ("copy", ("copy", "Memcpy", "Cat", "cat_", "fill", "Memset")),
    ("elementwise", ("elementwise", "silu", "add", "mul", "upsample")),
)


def kernel_profile(run: Callable[[], Any], device: torch.device) -> tuple[dict[str, float], str]:
    """GPU milliseconds of one `run` by kernel category, and the profiler's table."""
    if device.type != "cuda":
        return {}, ""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        sync(device)
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        ms = event.device_time_total / 1000 if hasattr(event, "device_time_total") else event.cuda_time_total / 1000
        if ms <= 0:
            continue
        name = event.key
        category = next((c for c, keys in CATEGORIES if any(k.lower() in name.lower() for k in keys)), "other")
        totals[category] = totals.get(category, 0.0) + ms
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=90)
    return {k: round(v, 1) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}, table


def sd_info(vae: diffusers.AutoencoderKL) -> VaeInfo:
    return VaeInfo(path=Path("-"), class_name="AutoencoderKL", latent_channels=4, scale=8, scaling_factor=1.0,
                   shift_factor=0.0, force_upcast=False, sample_size=512, full_res_channels=256,
                   block_out_channels=tuple(vae.config.block_out_channels),
                   parameters=sum(p.numel() for p in vae.parameters()))


def sd_case(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    torch.manual_seed(0)
    vae = sd_class_vae().to(device, dtype).eval()   # diffusers' own forwards: the reference
    h, w = args.height // 8, args.width // 8
    gen = torch.Generator().manual_seed(1)
    latents = [torch.randn(4, h, w, generator=gen).to(device, dtype) for _ in range(args.frames)]
    results: dict[str, Any] = {"width": args.width, "height": args.height, "dtype": str(dtype)}

    def diffusers_decode(z: torch.Tensor) -> torch.Tensor:
        return quantise_hwc(vae.decode(z[None]).sample[0])

    untiled, results["diffusers_untiled"] = timed(diffusers_decode, latents, device)
    print("diffusers untiled", results["diffusers_untiled"], flush=True)
    results["flops"] = counted_flops(lambda: vae.decode(latents[0][None]))

    if not args.quick:
        vae.enable_tiling()
        tiled, results["diffusers_tiled"] = timed(diffusers_decode, latents, device)
        vae.disable_tiling()
        results["diffusers_tiled"]["psnr_vs_untiled"] = statistics.mean(map(psnr, tiled, untiled))
        print("diffusers tiled", results["diffusers_tiled"], flush=True)

    info = sd_info(vae)
    ctx = DeviceContext(device)
    host_latents = [z.cpu() for z in latents]
    fast = copy.deepcopy(vae)
    use_fast_paths(fast, device)  # what the pipeline's load_vae installs

    if not args.quick:
        lean, results["untiled_fast_paths"] = timed(lambda z: quantise_hwc(fast.decode(z[None]).sample[0]),
                                                    latents, device)
        results["untiled_fast_paths"]["psnr_vs_untiled"] = statistics.mean(map(psnr, lean, untiled))
        print("untiled with the fast paths (module forwards)", results["untiled_fast_paths"], flush=True)

    def ours(label: str, plan: TilePlan | None, budget: float) -> dict[str, Any]:
        decoder = Decoder(fast, info, args.dtype, ctx, torch.uint8, plan)

        def run(z: torch.Tensor) -> torch.Tensor:
            return decoder.decode(LatentFrame(0, 0, z)).pixels

        outputs, figures = timed(run, host_latents, device)  # the pipeline's source hands over host latents
        figures.update(psnr_vs_untiled=statistics.mean(map(psnr, outputs, untiled)), budget_gib=budget,
                       strategy=type(decoder.strategy).__name__, **decoder.strategy.statistics())
        if plan is not None:
            figures.update(tiles_per_frame=len(plan.grid.tiles), tile=list(plan.grid.tile_shape),
                           overlap=plan.grid.overlap, groupnorm_proxy=plan.norm_proxy,
                           whole_up_blocks=plan.whole_up_blocks)
        else:
            figures["modelled_peak_gib"] = round((layered_peak(info, (4, h, w), args.dtype) or 0) / GIB, 2)
        print(label, figures, flush=True)
        return figures

    def tuning(**changes: Any) -> Any:
        return dataclasses.replace(load_tuning("default", Path("."), {}), **changes)

    shape = (4, h, w)
    default = tuning(vram_budget_gib=args.budget)
    results["ours"] = ours("ours (what a job gets by default)", plan_decode(default, info, shape, args.dtype),
                           args.budget)
    small = tuning(vram_budget_gib=args.small_budget)
    results["ours_small_budget"] = ours("ours_small_budget", plan_decode(small, info, shape, args.dtype),
                                        args.small_budget)
    tiles = tuning(decode="tiles", vram_budget_gib=args.budget)
    results["ours_tiles"] = ours("ours_tiles", plan_decode(tiles, info, shape, args.dtype), args.budget)
    per_tile = tuning(decode="tiles", norm_proxy=0, vram_budget_gib=args.budget)
    results["ours_per_tile_statistics"] = ours("ours_per_tile_statistics",
                                               plan_decode(per_tile, info, shape, args.dtype), args.budget)
    decoder = Decoder(fast, info, args.dtype, ctx, torch.uint8, plan_decode(default, info, shape, args.dtype))
    results["profile_ms"], table = kernel_profile(lambda: decoder.decode(LatentFrame(0, 0, host_latents[0])),
                                                  device)
    results["profile_table"] = table
    print("profile, ms by kernel category:", results["profile_ms"], flush=True)
    results["sizes"] = [size_case(args, device, dtype, width, height) for width, height in args.sizes]
    return results


def size_case(args: argparse.Namespace, device: torch.device, dtype: torch.dtype, width: int,
              height: int) -> dict[str, Any]:
    """Fidelity of the default decode at another size, with other random weights (seed 7)."""
    torch.manual_seed(7)
    vae = sd_class_vae().to(device, dtype).eval()
    latents = [torch.randn(4, height // 8, width // 8, generator=torch.Generator().manual_seed(8)).to(device, dtype)]
    with torch.no_grad():
        untiled = [quantise_hwc(vae.decode(latents[0][None]).sample[0]).cpu()]
    fast = copy.deepcopy(vae)
    use_fast_paths(fast, device)
    info = sd_info(vae)
    plan = plan_decode(dataclasses.replace(load_tuning("default", Path("."), {}), vram_budget_gib=args.budget),
                       info, (4, height // 8, width // 8), args.dtype)
    decoder = Decoder(fast, info, args.dtype, DeviceContext(device), torch.uint8, plan)
    outputs, figures = timed(lambda z: decoder.decode(LatentFrame(0, 0, z)).pixels, [z.cpu() for z in latents * 2],
                             device)
    figures.update(width=width, height=height, psnr_vs_untiled=psnr(outputs[0], untiled[0]),
                   strategy=type(decoder.strategy).__name__)
    print("size", figures, flush=True)
    return figures


def wan_case(args: argparse.Namespace, device: torch.device, dtype: torch.dtype, work: Path) -> dict[str, Any]:
    """Wan 2.1's VAE (random weights): diffusers' whole-clip decode, our chunked decode
    alone, the same plus quantisation with nothing downstream (`gpu_only`), and the
    whole pipeline writing every frame as PNG (`pipeline`), on one clip."""
    width, height = map(int, args.wan_size.split("x"))
    t = (args.wan_frames - 1) // 4 + 1
    frames = 1 + 4 * (t - 1)
    torch.manual_seed(0)
    diffusers.AutoencoderKLWan().save_pretrained(work / "wan", safe_serialization=True)  # Wan 2.1's config
    clip = torch.randn(16, t, height // 8, width // 8, generator=torch.Generator().manual_seed(2))
    save_file({"latents": clip}, str(work / "clip.safetensors"))
    job_path = work / "wan.toml"
    writers = args.wan_writers or default_writers()
    job_path.write_text(WAN_JOB.format(frames=frames, width=width, height=height, model=work / "wan",
                                       clip=work / "clip.safetensors", root=work / "out", dtype=args.dtype,
                                       tuning=tuning_table(writers)))
    plan = make_plan(load_job(job_path), device)
    models = ModelCache(capacity=1)
    vae = models.get(plan.vae, plan.model_hash, plan.dtype, device, False)  # as the pipeline loads it
    decoder = Decoder(vae, plan.vae, plan.dtype, DeviceContext(device), torch.uint8)
    mean = torch.tensor(plan.vae.latents_mean).reshape(-1, 1, 1, 1)
    std = torch.tensor(plan.vae.latents_std).reshape(-1, 1, 1, 1)
    latents = (clip * std + mean)[None].to(device, dtype)
    results: dict[str, Any] = {"width": width, "height": height, "frames": frames, "latent_frames": t}

    def gpu_only() -> list[torch.Tensor]:
        """What the decode stage does, chunk by chunk, with nothing downstream."""
        pixels = []
        for index in range(t):
            count = len(chunk_frames(index, plan.vae.temporal_scale))
            chunk = ClipChunk(index, tuple(range(count)), (0,) * count, clip[:, index:index + 1], index == t - 1)
            pixels += [frame.pixels for frame in decoder.decode_clip(chunk)]
        return pixels

    # diffusers' own forwards (load_vae gives the pipeline's model the lean ones, wan_fast)
    plain = diffusers.AutoencoderKLWan.from_pretrained(work / "wan", torch_dtype=vae.dtype).to(device).eval()
    runs = [("diffusers_untiled", lambda: plain.decode(latents).sample),
            ("diffusers_forwards_chunked", lambda: torch.cat(list(decode_chunks(plain, latents)), dim=2)),
            ("ours_chunked", lambda: torch.cat(list(decode_chunks(vae, latents)), dim=2)),
            ("gpu_only", gpu_only)]
    if args.quick:
        runs = [run for run in runs if run[0] != "diffusers_forwards_chunked"]
    outputs = {}
    with torch.no_grad():
        for label, run in runs:
            run()  # warm-up
            sync(device)
            reset_peak(device)
            times = []
            for _ in range(3 if label == "gpu_only" else 1):  # the ratio's denominator: a median
                start = time.perf_counter()
                out = run()
                sync(device)
                times.append(round(time.perf_counter() - start, 3))
            results[label] = {"s": statistics.median(times), "peak_vram_gib": peak_gib(device)}
            if len(times) > 1:
                results[label]["runs_s"] = times
            if label != "gpu_only":
                outputs[label] = ((out.float() * 0.5 + 0.5).clamp(0, 1) * 255).round().cpu()
            print("wan", label, results[label], flush=True)
    del out   # gpu_only's frames (0.21 GiB on the device): not in the tiled runs' peaks
    if device.type == "cuda":
        torch.cuda.empty_cache()
    results["flops"] = counted_flops(lambda: plain.decode(latents))   # the useful work: untiled decode
    if "diffusers_forwards_chunked" in outputs:
        results["chunked_equals_untiled_psnr"] = psnr(outputs.pop("diffusers_forwards_chunked"),
                                                      outputs["diffusers_untiled"])
    results["ours_psnr_vs_diffusers_untiled"] = psnr(outputs["ours_chunked"], outputs["diffusers_untiled"])
    results["tiled"] = []
    for tile, budget in () if args.quick else ((args.tile, args.budget), (args.tile, args.wan_large_budget)):
        tiles = tile_plan(plan.vae, plan.latent_shape, dtype, tile, args.overlap, budget, 0)
        figures = tiled_clip(vae, tiles.grid, tiles.batch, latents, device, outputs["diffusers_untiled"])
        figures.update(tile=tile, overlap=args.overlap, budget_gib=budget,
                       modelled_gib=round(tiles.modelled_peak / 2**30, 2))
        results["tiled"].append(figures)
        print("wan tiled", figures, flush=True)
    if args.wan_fit:  # the decoder's own peaks for pipeline.decode.budget's clip model
        results["tiled_fit"] = [{"tile": tile, **tiled_clip(vae, make_grid(*plan.latent_shape[1:], tile, args.overlap),
                                                            batch, latents, device, None)}
                                for tile, batch in ((128, 1), (64, 1), (56, 1), (128, 2))]
        results["untiled_fit"] = tiled_clip(vae, None, 1, latents, device, None)
        print("wan tiled fit", results["tiled_fit"], results["untiled_fit"], flush=True)
    del outputs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    runs_s, drains_s = [], []
    for attempt in range(3 if args.quick else 4):  # the first also pays for the writers' start and allocator growth
        shutil.rmtree(work / "out", ignore_errors=True)
        reset_peak(device)
        report = trio.run(functools.partial(render, plan, lambda frame: None, models, handle_signals=False))
        assert report.frames == frames, report.frames
        runs_s.append(round(report.render_s, 3))
        # after the last frame left the copy: the encode and publish of what the GPU made last
        drains_s.append(round(report.stages["write"]["last_out_s"] - report.stages["transfer"]["last_out_s"], 3))
        print("wan pipeline, run", attempt + 1, runs_s[-1], "s, drain", drains_s[-1], "s", flush=True)
    results["pipeline"] = {"s": statistics.median(runs_s[1:]), "runs_s": runs_s, "drain_s": drains_s,
                           "peak_vram_gib": peak_gib(device), "frames_written": report.frames, "format": "png",
                           "stages": report.stages}
    results["pipeline_over_gpu_only"] = round(results["gpu_only"]["s"] / results["pipeline"]["s"], 4)
    if args.quick:
        return results
    # The same with PNG stored uncompressed (png_compression = 0, a job's choice): what is
    # left of the gap when the last chunk's frames take ~4 ms each to encode, not ~80.
    stored = work / "wan_stored.toml"
    stored.write_text(job_path.read_text() + "png_compression = 0\n")
    stored_plan = make_plan(load_job(stored), device)
    for _ in range(2):
        shutil.rmtree(work / "out", ignore_errors=True)
        report = trio.run(functools.partial(render, stored_plan, lambda frame: None, models, handle_signals=False))
    results["pipeline_png_stored"] = {"s": round(report.render_s, 3), "stages": report.stages,
                                      "over_gpu_only": round(results["gpu_only"]["s"] / report.render_s, 4)}
    print("wan pipeline, PNG stored", results["pipeline_png_stored"]["s"], "s", flush=True)
    if args.wan_blocks:  # where a chunk's GPU time goes, alone and in the pipeline (not timed runs)
        results["block_ms"] = {"gpu_only": block_times(vae, device, gpu_only)}
        shutil.rmtree(work / "out", ignore_errors=True)
        results["block_ms"]["pipeline"] = block_times(vae, device, lambda: trio.run(functools.partial(
            render, plan, lambda frame: None, models, handle_signals=False)))
        print("wan block ms", results["block_ms"], flush=True)
    return results


def tiled_clip(vae: torch.nn.Module, grid: TileGrid | None, batch: int, latents: torch.Tensor,
               device: torch.device, reference: torch.Tensor | None) -> dict[str, Any]:
    """The clip through TiledClipDecoder (`grid` None: ClipDecoder, untiled): a warm-up,
    then a timed run keeping no output (as the pipeline, which hands each chunk on), its
    peak the decoder's own; with `reference`, an untimed run for PSNR against it."""
    def run(keep: bool) -> tuple[list[torch.Tensor], dict[str, int]]:
        decoder = TiledClipDecoder(vae, grid, batch) if grid is not None else ClipDecoder(vae)
        kept = []
        for i in range(latents.shape[2]):
            out = decoder.step(latents[:, :, i:i + 1], i == 0)
            if keep:
                kept.append(((out.float() * 0.5 + 0.5).clamp(0, 1) * 255).round().cpu())
        counts = decoder.statistics() if isinstance(decoder, TiledClipDecoder) else {}
        decoder.finish()
        return kept, counts

    with torch.no_grad():
        run(False)
        sync(device)
        reset_peak(device)
        start = time.perf_counter()
        _, counts = run(False)
        sync(device)
        figures = {"s": round(time.perf_counter() - start, 3), "peak_vram_gib": peak_gib(device)}
        if grid is not None:
            figures.update(tiles=len(grid.tiles), tile_cells=list(grid.tile_shape), batch=batch, **counts)
        if reference is not None:
            figures["psnr_vs_diffusers_untiled"] = psnr(torch.cat(run(True)[0], dim=2), reference)
    return figures


def block_times(vae: torch.nn.Module, device: torch.device, run: Callable[[], Any]) -> dict[str, float]:
    """GPU milliseconds from each of the Wan decoder's blocks' start to its end, summed
    over a run: CUDA events recorded by hooks on the stream the block runs on. A block
    whose kernels wait for the host to queue them takes longer than its kernels."""
    if device.type != "cuda":
        return {}
    blocks = {"mid": vae.decoder.mid_block, **{f"up{i}": b for i, b in enumerate(vae.decoder.up_blocks)}}
    events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []
    open_: dict[str, torch.cuda.Event] = {}
    handles = []
    for name, block in blocks.items():
        def pre(module: Any, args: Any, name: str = name) -> None:
            open_[name] = torch.cuda.Event(enable_timing=True)
            open_[name].record()

        def post(module: Any, args: Any, out: Any, name: str = name) -> None:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            events.append((name, open_.pop(name), end))

        handles += [block.register_forward_pre_hook(pre), block.register_forward_hook(post)]
    try:
        with torch.no_grad():
            run()
        sync(device)
    finally:
        for handle in handles:
            handle.remove()
    totals: dict[str, float] = {}
    for name, begin, end in events:
        totals[name] = totals.get(name, 0.0) + begin.elapsed_time(end)
    return {name: round(ms, 1) for name, ms in totals.items()}


WAN_JOB = """seed = 1
[shot]
name = "wan"
frame_start = 1
frame_end = {frames}
fps = 16
width = {width}
height = {height}
[source]
kind = "clip"
path = "{clip}"
[model]
path = "{model}"
dtype = "{dtype}"
[output]
root = "{root}"
formats = ["png"]
{tuning}"""


def main() -> None:
    preset = load_tuning("default", Path("."), {})  # the defaults a job gets
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--width", type=int, default=3840)
    parser.add_argument("--height", type=int, default=2160)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--tile", type=int, default=preset.tile_size, help="latent cells per tile side")
    parser.add_argument("--overlap", type=int, default=preset.tile_overlap)
    parser.add_argument("--budget", type=float, default=preset.vram_budget_gib, help="VRAM budget in GiB")
    parser.add_argument("--small-budget", type=float, default=2.0)
    parser.add_argument("--wan-size", default="1280x720")
    parser.add_argument("--wan-frames", type=int, default=81)
    parser.add_argument("--no-wan", action="store_true")
    parser.add_argument("--wan-large-budget", type=float, default=16.0,
                        help="a second Wan tiled run's budget, in GiB")
    parser.add_argument("--wan-blocks", action="store_true", help="also time the Wan decoder's blocks")
    parser.add_argument("--wan-fit", action="store_true",
                        help="also the Wan decoder's peaks at fixed tiles, for the clip memory model")
    parser.add_argument("--no-sd", action="store_true")
    parser.add_argument("--wan-writers", type=int, default=0, help="PNG writer threads (0: cores - 4)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/decode.json"))
    parser.add_argument("--quick", action="store_true", help="skip diffusers' tiling and the module-forward decode")
    parser.add_argument("--sizes", default="1920x1080,4096x2160,1280x536",
                        help="other frame sizes whose fidelity is checked, with other weights ('' for none)")
    args = parser.parse_args()
    args.sizes = [tuple(map(int, s.split("x"))) for s in args.sizes.split(",") if s]
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "diffusers": diffusers.__version__,
        "date": datetime.now(UTC).date().isoformat(), "command": "python benchmarks/decode.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "wan_720p_81f_s": None, "wan_pipeline_over_gpu_only": None,  # filled below unless --no-wan
    }
    peak = results["matmul_peak_tflops"] = matmul_peak_tflops(device)
    print("dense bf16 matmul", peak, "TFLOP/s", flush=True)
    if not args.no_sd:
        sd = results["sd"] = sd_case(args, device, dtype)
        tflops = sd["flops"] / sd["ours"]["s_per_frame"] / 1e12
        results.update(sd_4k_s_per_frame=sd["ours"]["s_per_frame"], sd_4k_peak_vram_gib=sd["ours"]["peak_vram_gib"],
                       sd_4k_psnr_vs_untiled=sd["ours"]["psnr_vs_untiled"],
                       sd_4k_psnr_min_over_sizes=min([sd["ours"]["psnr_vs_untiled"],
                                                      *(s["psnr_vs_untiled"] for s in sd["sizes"])]),
                       sd_4k_flops=sd["flops"], sd_4k_tflops=round(tflops, 1),
                       sd_4k_fraction_of_peak=round(tflops / peak, 3) if peak else None,
                       diffusers_tiled={k: sd["diffusers_tiled"][k]
                                        for k in ("s_per_frame", "peak_vram_gib", "psnr_vs_untiled")}
                       if "diffusers_tiled" in sd else None)
    write(args.out, results, started)   # so far: a later case that fails or times out keeps these
    if not args.no_wan:
        with tempfile.TemporaryDirectory(prefix="ff-decode-") as work:
            wan = results["wan"] = wan_case(args, device, dtype, Path(work))
        results["wan_720p_81f_s"] = wan["pipeline"]["s"]
        results["wan_720p_81f_decode_s"] = wan["gpu_only"]["s"]
        results["wan_pipeline_over_gpu_only"] = wan["pipeline_over_gpu_only"]
        tflops = wan["flops"] / wan["gpu_only"]["s"] / 1e12
        results.update(wan_flops=wan["flops"], wan_tflops=round(tflops, 1),
                       wan_fraction_of_peak=round(tflops / peak, 3) if peak else None)
    write(args.out, results, started)
    print(f"wrote {args.out} in {results['seconds']} s")


def write(path: Path, results: dict[str, Any], started: float) -> None:
    results["seconds"] = round(time.perf_counter() - started, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
