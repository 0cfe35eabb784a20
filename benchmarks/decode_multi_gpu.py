"""One frame or one clip decoded by several GPUs together (issue 22, part 2): the
patch-parallel decode (pipeline/decode/patches) on N GPUs against one GPU.

    python benchmarks/decode_multi_gpu.py --gpus 2 --out benchmarks/results/decode_multi_gpu_x2.json
    python benchmarks/decode_multi_gpu.py --cpu --gpus 2 --kl-size 256x128 --wan-size 64x48 \\
        --wan-frames 5 --repeats 1 --out /tmp/decode_multi_gpu.json          # smoke: gloo, CPU ranks

Cases, random weights at real diffusers configs, in --dtype:
- `kl`: an SD-class AutoencoderKL (block_out_channels 128/256/512/512) decoding one
  --kl-size frame (default 7680x4320: latents 4x540x960);
- `wan`: the Wan 2.1 VAE (diffusers' default AutoencoderKLWan config) decoding one
  --wan-size clip of --wan-frames frames (default 1280x720x81: 21 latent frames), latent
  frame by latent frame with the causal cache, as `render run` decodes a clip.

Each case is timed three ways, each with one warm-up decode, then --repeats timed ones
(device synchronised; the median is reported):
- `one_gpu_s`: the decode `render run` gives one GPU (load_vae's model and forwards:
  the layer-by-layer decode for the frame, the chunked decode for the clip);
- `bands_one_gpu_s`: the patch-parallel code with one rank (a DecodeGroup of one device);
- `bands_n_gpu_s`: the same with --gpus ranks, one process per GPU, NCCL.
`speedup` is one_gpu_s / bands_n_gpu_s (the target: >= 1.8 on two GPUs);
`speedup_same_code` is bands_one_gpu_s / bands_n_gpu_s. PSNR: the N-GPU output against
the one-GPU decode's, both quantised to 8 bits as the pipeline writes them (peak 255;
target >= 45 dB), mean over frames. `peak_gib_per_gpu`: each rank's peak
torch.cuda.max_memory_allocated (rank 0 also holds the gathered frames).
NCCL_NVLS_ENABLE=0 is set here and in every rank (the machines require it).
Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ["NCCL_NVLS_ENABLE"] = "0"   # the machines require it: NVLink multicast can take GPUs out of service

import diffusers
import torch
from bench_models import sd_class_vae

from pipeline.decode.layered import LayeredFrame
from pipeline.decode.patches.group import ClipGroup, FrameGroup, decode_group
from pipeline.decode.video.chunks import ClipDecoder
from pipeline.models.vae import inspect_vae, load_vae


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_8bit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> uint8, as the pipeline quantises them."""
    return ((images.float() * 0.5 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over frames (the first dimension) of 8-bit PSNR; inf where equal."""
    values = []
    for x, y in zip(a, b, strict=True):
        mse = (x.float() - y.float()).square().mean().item()
        values.append(math.inf if mse == 0 else 10 * math.log10(255**2 / mse))
    finite = [v for v in values if math.isfinite(v)]
    return statistics.mean(finite) if finite else math.inf


def timed(device: torch.device, decode: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    """Median seconds of `repeats` decodes after one warm-up, and the last output."""
    out = decode()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = decode()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def peak_gib(device: torch.device) -> float:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else 0.0


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def compare(devices: list[torch.device], model: Path, dtype: str, repeats: int,
            one_gpu: Callable[[Any], Callable[[], torch.Tensor]],
            bands: Callable[[Any], Callable[[], torch.Tensor]]) -> dict[str, Any]:
    """The three timings of one case; outputs are (frames, 3, H, W) uint8 on the CPU."""
    info = inspect_vae(model)
    device = devices[0]
    result: dict[str, Any] = {}
    reset_peak(device)
    with torch.no_grad():
        vae = load_vae(info, dtype, device, tiling=False)
        result["one_gpu_s"], reference = timed(device, one_gpu(vae), repeats)
        result["one_gpu_peak_gib"] = peak_gib(device)
        del vae
        for label, ranks in (("bands_one_gpu", devices[:1]), ("bands_n_gpu", devices)):
            reset_peak(device)
            group = decode_group(info, dtype, ranks)
            try:
                group.peak_memory()   # reset every rank's peak: the load is not the decode
                result[f"{label}_s"], out = timed(device, bands(group), repeats)
                peaks = group.peak_memory()
            except torch.cuda.OutOfMemoryError as err:
                if label != "bands_one_gpu":
                    raise
                result[f"{label}_s"] = None   # the whole frame's bands code on one GPU: recorded, not fatal
                result[f"{label}_error"] = str(err).splitlines()[0]
                continue
            finally:
                group.close()
            result[f"{label}_peak_gib_per_gpu"] = [round(p / 2**30, 3) for p in peaks]
            result[f"{label}_psnr_db"] = round(psnr(out, reference), 2)
    result["speedup"] = round(result["one_gpu_s"] / result["bands_n_gpu_s"], 3)
    same = result["bands_one_gpu_s"]
    result["speedup_same_code"] = round(same / result["bands_n_gpu_s"], 3) if same is not None else None
    result["psnr_db"] = result["bands_n_gpu_psnr_db"]
    result["peak_gib_per_gpu"] = result["bands_n_gpu_peak_gib_per_gpu"]
    return result


def kl_case(args: argparse.Namespace, devices: list[torch.device], work: Path) -> dict[str, Any]:
    width, height = map(int, args.kl_size.split("x"))
    torch.manual_seed(0)
    sd_class_vae().save_pretrained(work / "kl", safe_serialization=True)
    dtype = getattr(torch, args.dtype)
    latents = torch.randn(4, height // 8, width // 8, generator=torch.Generator().manual_seed(1))
    latents = (latents / 0.18215).to(devices[0], dtype)   # as the decode stage scales them

    def one_gpu(vae: Any) -> Callable[[], torch.Tensor]:
        layered = LayeredFrame(vae)
        return lambda: to_8bit(layered(latents))[None].cpu()

    def bands(group: FrameGroup) -> Callable[[], torch.Tensor]:
        return lambda: to_8bit(group(latents))[None].cpu()

    return {"width": width, "height": height,
            **compare(devices, work / "kl", args.dtype, args.repeats, one_gpu, bands)}


def wan_case(args: argparse.Namespace, devices: list[torch.device], work: Path) -> dict[str, Any]:
    width, height = map(int, args.wan_size.split("x"))
    t = (args.wan_frames - 1) // 4 + 1
    torch.manual_seed(0)
    diffusers.AutoencoderKLWan().save_pretrained(work / "wan", safe_serialization=True)   # Wan 2.1's config
    dtype = getattr(torch, args.dtype)
    clip = torch.randn(1, 16, t, height // 8, width // 8, generator=torch.Generator().manual_seed(2))
    clip = clip.to(devices[0], dtype)

    def chunks(step: Callable[[torch.Tensor, bool], torch.Tensor], finish: Callable[[], None]) -> torch.Tensor:
        frames = [to_8bit(step(clip[:, :, i:i + 1], i == 0)[0]).transpose(0, 1).cpu() for i in range(t)]
        finish()
        return torch.cat(frames)   # (frames, 3, H, W)

    def one_gpu(vae: Any) -> Callable[[], torch.Tensor]:
        decoder = ClipDecoder(vae)
        return lambda: chunks(decoder.step, decoder.finish)

    def bands(group: ClipGroup) -> Callable[[], torch.Tensor]:
        return lambda: chunks(group.step, group.finish)

    return {"width": width, "height": height, "frames": 1 + 4 * (t - 1), "latent_frames": t,
            **compare(devices, work / "wan", args.dtype, args.repeats, one_gpu, bands)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--cases", default="kl,wan")
    parser.add_argument("--kl-size", default="7680x4320")
    parser.add_argument("--wan-size", default="1280x720")
    parser.add_argument("--wan-frames", type=int, default=81)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu", action="store_true", help="CPU ranks on gloo (a smoke test; figures mean nothing)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.cpu:
        devices = [torch.device("cpu")] * args.gpus
        args.dtype = "float32" if args.dtype == "float16" else args.dtype
    else:
        if torch.cuda.device_count() < args.gpus:
            raise SystemExit(f"--gpus {args.gpus}: this machine shows {torch.cuda.device_count()} GPU(s)")
        devices = [torch.device("cuda", i) for i in range(args.gpus)]
    cases = {"kl": kl_case, "wan": wan_case}
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0) if not args.cpu else "cpu",
        "gpus": args.gpus, "dtype": args.dtype, "repeats": args.repeats,
        "torch": torch.__version__, "diffusers": diffusers.__version__,
        "nccl_nvls_enable": os.environ.get("NCCL_NVLS_ENABLE"),
    }
    with tempfile.TemporaryDirectory() as folder:
        for name in args.cases.split(","):
            results[name] = cases[name](args, devices, Path(folder))
            print(json.dumps({name: results[name]}, indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
