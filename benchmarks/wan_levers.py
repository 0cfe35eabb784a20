"""The Wan 2.1 VAE's chunked decode (pipeline.decode.video.chunks.ClipDecoder, one latent
frame at a time with the causal cache, each chunk quantised as the decode stage does)
with each lever on: (a) diffusers' forwards; (b) the previous lean forwards (spatial
border as the convolution's padding, vector_norm RMS norm; copied below as they were);
(c) (b) with cudnn.benchmark; (d) pipeline.kernels.wan as load_vae installs it on
CUDA (channels-last activations, fused RMS norm + SiLU and bias kernels); (e) (d) with
cudnn.benchmark; (g) (e)'s forwards in NCDHW (what channels-last alone buys); (h) (d)
with the 96-channel convolutions widened to 128 output channels
(pipeline.kernels.wan.widen_convolutions). Random weights (AutoencoderKLWan()'s Wan 2.1
config), random latents, bf16.

Per variant: one warm-up clip (cuDNN's autotuning and Triton's compiles happen there),
then the median of --repeat timed clips between device synchronisations, the peak
memory of those clips (above what was allocated before them), and the PSNR of their
8-bit frames against (a)'s. Then on CUDA a few single steps at the full-resolution
shapes (kernel bandwidths, the full-resolution convolutions in both layouts and
widened to 128 output channels, conv_out's 3 output channels against 8) and a
profiler run of one clip of the fastest variant, its kernels' time by category; the
table is also written beside --out (.profile.txt). JSON to --out, a short table
printed last.

    python benchmarks/wan_levers.py --out /tmp/wan_levers.json        # one H200: 1280x720, 81 frames
    python benchmarks/wan_levers.py --tiny --device cpu --out /tmp/wan_smoke.json   # CPU smoke run

About 30 clip decodes; under 3 minutes on an H200. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import statistics
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.decode.quantise import quantise_hwc
from pipeline.decode.video.chunks import ClipDecoder
from pipeline.kernels.wan import use_lean_wan_forwards

# (b): the lean forwards before channels-last and the fused kernels, as they were


def previous_causal_conv_forward(self, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
    pad_w, _, pad_h, _, pad_t, _ = self._padding
    if pad_t > 0:
        parts = [x]
        if cache_x is not None:
            parts.insert(0, cache_x.to(x.device))
            pad_t -= cache_x.shape[2]
        if pad_t > 0:
            parts.insert(0, x.new_zeros((x.shape[0], x.shape[1], pad_t, *x.shape[3:])))
        x = torch.cat(parts, dim=2) if len(parts) > 1 else x
        if pad_t < 0:
            x = x[:, :, -pad_t:]
    return F.conv3d(x, self.weight, self.bias, self.stride, (0, pad_h, pad_w), self.dilation, self.groups)


def previous_rms_norm_forward(self, x: torch.Tensor) -> torch.Tensor:
    dim = 1 if self.channel_first else -1
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    factor = (self.scale / norm.clamp_min(1e-12)).to(x.dtype)
    out = (x * self.gamma).mul_(factor)
    if isinstance(self.bias, torch.Tensor):
        out = out.add_(self.bias)
    return out


def previous_upsample_forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.mode not in ("nearest", "nearest-exact"):
        return type(self).forward(self, x)
    return F.interpolate(x, self.size, self.scale_factor, self.mode, self.align_corners,
                         recompute_scale_factor=self.recompute_scale_factor)


def use_previous_lean_forwards(vae: torch.nn.Module) -> int:
    from diffusers.models.autoencoders import autoencoder_kl_wan as wan

    lean = {wan.WanCausalConv3d: previous_causal_conv_forward, wan.WanRMS_norm: previous_rms_norm_forward,
            wan.WanUpsample: previous_upsample_forward}
    changed = 0
    for module in vae.modules():
        if type(module) in lean:
            module.forward = types.MethodType(lean[type(module)], module)
            changed += 1
    return changed


Install = Callable[[torch.nn.Module], int]
VARIANTS: dict[str, tuple[str, Install, bool]] = {   # key: (name, installer, cudnn.benchmark)
    "a": ("diffusers", lambda vae: 0, False),
    "b": ("previous_lean", use_previous_lean_forwards, False),
    "c": ("previous_lean+cudnn_benchmark", use_previous_lean_forwards, True),
    "d": ("channels_last_fused", lambda vae: use_lean_wan_forwards(vae, channels_last=True), False),
    "e": ("channels_last_fused+cudnn_benchmark", lambda vae: use_lean_wan_forwards(vae, channels_last=True), True),
    "g": ("fused_ncdhw+cudnn_benchmark", lambda vae: use_lean_wan_forwards(vae, channels_last=False), True),
    "h": ("channels_last_fused+widened", lambda vae: use_lean_wan_forwards(vae, channels_last=True, widen=True),
          False),
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_clip(vae: torch.nn.Module, latents: torch.Tensor) -> list[torch.Tensor]:
    """The clip's uint8 (H, W, 3) frames, chunk by chunk as the decode stage makes them."""
    clip = ClipDecoder(vae)
    frames: list[torch.Tensor] = []
    with torch.no_grad():
        for index in range(latents.shape[2]):
            images = clip.step(latents[:, :, index:index + 1], first=index == 0)[0]
            frames += [quantise_hwc(images[:, i]) for i in range(images.shape[1])]
    clip.finish()
    return frames


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).square().mean().item()
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def run_variant(base: torch.nn.Module, key: str, latents: torch.Tensor, repeat: int,
                reference: torch.Tensor | None) -> tuple[dict[str, Any], torch.Tensor, torch.nn.Module]:
    name, install, benchmark = VARIANTS[key]
    device = latents.device
    vae = copy.deepcopy(base)
    changed = install(vae)
    torch.backends.cudnn.benchmark = benchmark
    warm = torch.randn(latents.shape, generator=torch.Generator().manual_seed(7)).to(device, latents.dtype)
    start = time.perf_counter()
    decode_clip(vae, warm)
    synchronize(device)
    warm_s = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)   # weights of every variant so far, latents, frames
    times, frames = [], []
    for _ in range(repeat):
        synchronize(device)
        start = time.perf_counter()
        frames = decode_clip(vae, latents)
        synchronize(device)
        times.append(time.perf_counter() - start)
    clip = torch.stack(frames)
    result: dict[str, Any] = {"variant": key, "name": name, "modules_changed": changed, "cudnn_benchmark": benchmark,
                              "warmup_s": round(warm_s, 3), "times_s": [round(t, 4) for t in times],
                              "median_s": round(statistics.median(times), 4)}
    if device.type == "cuda":   # the decode's own peak: above what was allocated before it
        result["peak_gib"] = round((torch.cuda.max_memory_allocated(device) - before) / 2**30, 2)
    if reference is not None:
        result["psnr_vs_diffusers_db"] = round(psnr(clip, reference), 2)
    print(f"{key} {name}: {result['median_s']} s", flush=True)
    return result, clip, vae


CATEGORIES = (   # first match wins
    ("layout conversion", r"nchwtonhwc|nhwctonchw|converttensor|tensortransform|transpose"),
    ("normalisation", r"rms_norm|norm|batch_norm"),
    ("convolution", r"conv|fprop|implicit_gemm|winograd|cudnn"),
    ("attention/matmul", r"fmha|attention|flash|gemm|nvjet|cutlass|addmm|matmul|linear|softmax|::mm|bmm"),
    ("elementwise/copy", r"elementwise|copy|cat|fill|memcpy|memset|upsample|add_bias|silu|clamp|mul|add|div|"
                         r"zero|index|clone|round|to_copy|empty|stack|pad"),
)


def category(kernel: str) -> str:
    lowered = kernel.lower()
    return next((group for group, pattern in CATEGORIES if re.search(pattern, lowered)), "other")


def profile(vae: torch.nn.Module, latents: torch.Tensor, top: int = 25) -> tuple[dict[str, Any], str]:
    """One clip under torch.profiler: each kernel's (on the CPU: each op's) self time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity

    cuda = latents.device.type == "cuda"
    activities = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as prof:
        decode_clip(vae, latents)
        synchronize(latents.device)
    rows = []
    for event in prof.key_averages():
        if cuda and event.device_type != DeviceType.CUDA:
            continue
        self_us = event.self_device_time_total if cuda else event.self_cpu_time_total
        if self_us > 0:
            rows.append((event.key, self_us / 1000, event.count))
    rows.sort(key=lambda row: -row[1])
    totals: dict[str, float] = {}
    for name, ms, _ in rows:
        totals[category(name)] = totals.get(category(name), 0.0) + ms
    lines = [f"{'ms':>9} {'calls':>6}  {'category':<18} {'kernel' if cuda else 'op'}"]
    lines += [f"{ms:9.1f} {count:6d}  {category(name):<18} {name[:110]}" for name, ms, count in rows[:top]]
    lines += ["", "all kernels by category:" if cuda else "all ops by category (self CPU time):"]
    lines += [f"{ms:9.1f}  {group}" for group, ms in sorted(totals.items(), key=lambda item: -item[1])]
    lines.append(f"{sum(totals.values()):9.1f}  total")
    top_rows = [{"kernel": n, "ms": round(ms, 2), "calls": c, "category": category(n)} for n, ms, c in rows[:top]]
    summary = {"categories_ms": {k: round(v, 1) for k, v in totals.items()}, "top": top_rows}
    return summary, "\n".join(lines)


def timed_ms(fn: Callable[[], Any], warmup: int = 2, repeat: int = 5) -> float:
    """Median milliseconds of fn on the current CUDA stream, by events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end))
    return round(statistics.median(times), 3)


def micro(height: int, width: int, dtype: torch.dtype) -> dict[str, Any]:
    """Single steps at the full-resolution block's shapes (1 x 96 x 4 frames x H x W)."""
    from pipeline.kernels.rms_norm import add_bias_, rms_norm
    from pipeline.kernels.wan import upsample_frames

    cl3d = torch.channels_last_3d
    out: dict[str, Any] = {}
    x = torch.randn(1, 96, 4, height, width, device="cuda", dtype=dtype).contiguous(memory_format=cl3d)
    gamma, bias = torch.rand(96, device="cuda", dtype=dtype) + 0.5, torch.randn(96, device="cuda", dtype=dtype)
    buffer = torch.empty(1, 96, 6, height, width, device="cuda", dtype=dtype, memory_format=cl3d).normal_()
    size = x.numel() * x.element_size()
    ms = timed_ms(lambda: rms_norm(x, gamma, None, 96**0.5, pre_bias=bias, silu=True, out=buffer[:, :, 2:]))
    out["rms_norm_silu_ms"], out["rms_norm_silu_tb_s"] = ms, round(2 * size / ms / 1e9, 2)
    y, h = x.clone(), torch.randn_like(x)
    ms = timed_ms(lambda: add_bias_(y, [bias, bias], residual=h))
    out["bias_residual_ms"], out["bias_residual_tb_s"] = ms, round(3 * size / ms / 1e9, 2)
    ms = timed_ms(lambda: y.add_(bias.view(-1, 1, 1, 1)))
    out["torch_bias_add_ms"], out["torch_bias_add_tb_s"] = ms, round(2 * size / ms / 1e9, 2)
    pairs = torch.randn(1, 768, 2, height // 4, width // 4, device="cuda", dtype=dtype).contiguous(memory_format=cl3d)
    ms = timed_ms(lambda: upsample_frames(pairs, True, torch.channels_last))
    out["upsample_pairs_ms"], out["upsample_pairs_tb_s"] = ms, round(5 * pairs.numel() * 2 / ms / 1e9, 2)
    # the full-resolution 3x3x3 convolution (96 -> 96), and conv_out (96 -> 3, or 8 with zero kernels)
    flops = 2 * 96 * 96 * 27 * x.numel() / 96
    frames = torch.randn(4, 192, height, width, device="cuda", dtype=dtype)
    frames = frames.contiguous(memory_format=torch.channels_last)
    flops_2d = 2 * 96 * 192 * 9 * frames.numel() / 192
    for benchmark in (False, True):
        torch.backends.cudnn.benchmark = benchmark
        tag = "benchmark" if benchmark else "heuristic"
        for layout, name, width_out in ((cl3d, "ndhwc", 96), (torch.contiguous_format, "ncdhw", 96),
                                        (cl3d, "ndhwc_widened128", 128)):
            inp = buffer.contiguous(memory_format=layout)
            weight = torch.randn(width_out, 96, 3, 3, 3, device="cuda", dtype=dtype).contiguous(memory_format=layout)
            ms = timed_ms(lambda inp=inp, weight=weight: F.conv3d(inp, weight, None, 1, (0, 1, 1)))
            out[f"conv96_{name}_{tag}_ms"], out[f"conv96_{name}_{tag}_tflops"] = ms, round(flops / ms / 1e9, 1)
        for width_out in (96, 128):   # up2's resample convolution (192 -> 96 channels, 3x3) at full resolution
            weight = torch.randn(width_out, 192, 3, 3, device="cuda", dtype=dtype)
            weight = weight.contiguous(memory_format=torch.channels_last)
            ms = timed_ms(lambda weight=weight: F.conv2d(frames, weight, None, 1, 1))
            out[f"conv2d_192to{width_out}_{tag}_ms"] = ms
            out[f"conv2d_192to{width_out}_{tag}_tflops"] = round(flops_2d / ms / 1e9, 1)
        for channels in (3, 8):
            weight = torch.randn(channels, 96, 3, 3, 3, device="cuda", dtype=dtype).contiguous(memory_format=cl3d)
            out[f"conv_out{channels}_ndhwc_{tag}_ms"] = timed_ms(
                lambda weight=weight: F.conv3d(buffer, weight, None, 1, (0, 1, 1)))
    torch.backends.cudnn.benchmark = False
    return out


def tiny_wan() -> torch.nn.Module:
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                            temperal_downsample=[False, True, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON results; the profile table beside it")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--height", type=int, default=None, help="pixels (default 720; --tiny 48)")
    parser.add_argument("--width", type=int, default=None, help="pixels (default 1280; --tiny 64)")
    parser.add_argument("--frames", type=int, default=None, help="pixel frames, 1 + 4k (default 81; --tiny 9)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variants", default="abcdegh", help="which of " + ", ".join(
        f"{key}: {name}" for key, (name, _, _) in VARIANTS.items()))
    parser.add_argument("--tiny", action="store_true", help="a tiny Wan VAE (CPU smoke run)")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--no-micro", action="store_true")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), torch.bfloat16
    height = args.height or (48 if args.tiny else 720)
    width = args.width or (64 if args.tiny else 1280)
    frames = args.frames or (9 if args.tiny else 81)
    if (frames - 1) % 4:
        parser.error("--frames must be 1 + a multiple of 4")

    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    base = (tiny_wan() if args.tiny else AutoencoderKLWan()).to(device, dtype).eval().requires_grad_(False)
    scale = base.config.scale_factor_spatial
    latents = torch.randn(1, base.config.z_dim, 1 + (frames - 1) // 4, height // scale, width // scale,
                          generator=torch.Generator().manual_seed(1)).to(device, dtype)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "size": [frames, height, width], "latents": list(latents.shape), "dtype": str(dtype),
        "model": "tiny" if args.tiny else "Wan 2.1 (AutoencoderKLWan())",
        "weights_gib": round(sum(p.numel() * p.element_size() for p in base.parameters()) / 2**30, 3),
        "variants": {},
    }
    try:
        import triton
        result["triton"] = triton.__version__
    except ImportError:
        result["triton"] = None
    args.out.parent.mkdir(parents=True, exist_ok=True)

    reference = None
    keep: dict[str, torch.nn.Module] = {}
    for key in args.variants:
        row, clip, vae = run_variant(base, key, latents, args.repeat, reference)
        if key == "a":
            reference = clip
            row["psnr_vs_diffusers_db"] = math.inf
        result["variants"][key] = row
        keep[key] = vae
        args.out.write_text(json.dumps(result, indent=1) + "\n")   # partial results survive a later failure
    torch.backends.cudnn.benchmark = False

    if device.type == "cuda" and not args.no_micro:
        result["micro"] = micro(height, width, dtype)
        args.out.write_text(json.dumps(result, indent=1) + "\n")

    if not args.no_profile and result["variants"]:
        best = min(result["variants"].values(), key=lambda row: row["median_s"])
        torch.backends.cudnn.benchmark = best["cudnn_benchmark"]
        summary, table = profile(keep[best["variant"]], latents)
        torch.backends.cudnn.benchmark = False
        result["profile"] = {"variant": best["variant"], "name": best["name"], **summary}
        table = f"profile of one clip, variant {best['variant']} ({best['name']})\n{table}"
        args.out.with_suffix(".profile.txt").write_text(table + "\n")
        print(table)
    args.out.write_text(json.dumps(result, indent=1) + "\n")

    print()
    print(f"{'variant':<40} {'median s':>9} {'peak GiB':>9} {'PSNR dB':>8}")
    for key, row in result["variants"].items():
        print(f"{key} {row['name']:<38} {row['median_s']:>9.3f} {row.get('peak_gib', float('nan')):>9} "
              f"{row['psnr_vs_diffusers_db']:>8}")
    for name, value in result.get("micro", {}).items():
        print(f"  {name}: {value}")


if __name__ == "__main__":
    main()
