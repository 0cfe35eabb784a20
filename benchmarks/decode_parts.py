"""Where a 3840x2160 decode of the SD-class VAE spends its time (issue 4): the split
decoder's head (mid block, with what load_vae installs: fast_paths) and tail (up blocks,
per tile batch), in NCHW and channels-last layouts, the attention alone by backend, the
whole decode untiled, and a profiler table of one tiled frame. Random weights, bf16.

    python benchmarks/decode_parts.py --out /tmp/parts    # one GPU; writes parts.json, profile.txt
    python benchmarks/decode_parts.py --wan --out /tmp/parts   # Wan 2.1 VAE, 1280x720, 81 frames:
                                                               #   wan_parts.json, wan_profile.txt

Timing: one warm-up call, then the median of --repeat calls, each between device
synchronisations. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from bench_models import sd_class_vae
from torch.nn.attention import SDPBackend, sdpa_kernel

from pipeline.config.tuning import load_tuning
from pipeline.decode.budget import tile_plan
from pipeline.decode.kl_split import split_decoder
from pipeline.flow.frames import LatentFrame
from pipeline.gpu.device import DeviceContext
from pipeline.kernels.install import use_fast_paths
from pipeline.models.vae import VaeInfo
from pipeline.stages.decode import Decoder


def seconds(fn: Callable[[], Any], repeat: int) -> float:
    with torch.no_grad():
        fn()
        times = []
        for _ in range(repeat):
            torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return round(statistics.median(times), 4)


def profile_table(fn: Callable[[], Any]) -> str:
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    try:
        return prof.key_averages().table(sort_by="device_time_total", row_limit=30, max_name_column_width=90)
    except (KeyError, AttributeError, RuntimeError):  # older torch names it after CUDA
        return prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=90)


def wan_parts(args: argparse.Namespace) -> None:
    import diffusers

    from pipeline.decode.video.chunks import decode_chunks
    from pipeline.kernels.wan import use_lean_wan_forwards

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLWan().to("cuda", torch.bfloat16).eval()
    z = torch.randn(1, 16, 21, 90, 160, device="cuda", dtype=torch.bfloat16)
    r: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}

    def chunked() -> None:
        for _ in decode_chunks(vae, z):
            pass

    r["chunked_diffusers_forwards_s"] = seconds(chunked, 2)
    r["lean_modules"] = use_lean_wan_forwards(vae)   # as load_vae gives them
    r["chunked_s"] = seconds(chunked, 2)
    (args.out / "wan_profile.txt").write_text(profile_table(chunked))
    (args.out / "wan_parts.json").write_text(json.dumps(r, indent=1) + "\n")
    print(json.dumps(r, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--wan", action="store_true", help="the Wan 2.1 VAE's chunked decode instead")
    parser.add_argument("--quick", action="store_true", help="skip the attention backends and channels-last")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.wan:
        wan_parts(args)
        return
    device, dtype = torch.device("cuda"), torch.bfloat16
    torch.manual_seed(0)
    vae = sd_class_vae().to(device, dtype).eval()
    use_fast_paths(vae, device)   # as load_vae installs them
    z = torch.randn(1, 4, 270, 480, device=device, dtype=dtype)
    split = split_decoder(vae)
    assert split is not None
    r: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}

    r["untiled_s"] = seconds(lambda: vae.decode(z).sample, args.repeat)
    r["head_s"] = seconds(lambda: split.head(z), args.repeat)
    with torch.no_grad():
        features = split.head(z)
    batch = torch.cat([features[..., :96, :126]] * 4)
    r["tail_batch4_96x126_s"] = seconds(lambda: split.tail(batch), args.repeat)
    r["tail_whole_frame_s"] = seconds(lambda: split.tail(features), args.repeat)
    r["tail_quarter_frame_s"] = seconds(lambda: split.tail(features[..., ::2, ::2]), args.repeat)

    if not args.quick:
        q = torch.randn(1, 1, 270 * 480, 512, device=device, dtype=dtype)
        for name, backend in (("efficient", SDPBackend.EFFICIENT_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                              ("flash", SDPBackend.FLASH_ATTENTION)):
            try:
                with sdpa_kernel(backend):
                    r[f"attention_{name}_s"] = seconds(lambda: F.scaled_dot_product_attention(q, q, q), args.repeat)
            except RuntimeError as err:
                r[f"attention_{name}_s"] = f"unavailable: {str(err).splitlines()[0][:120]}"
        r["attention_default_s"] = seconds(lambda: F.scaled_dot_product_attention(q, q, q), args.repeat)
        print(json.dumps(r, indent=1), flush=True)

        vae.to(memory_format=torch.channels_last)
        z_cl = z.contiguous(memory_format=torch.channels_last)
        batch_cl = batch.contiguous(memory_format=torch.channels_last)
        r["channels_last_untiled_s"] = seconds(lambda: vae.decode(z_cl).sample, args.repeat)
        r["channels_last_tail_batch4_96x126_s"] = seconds(lambda: split.tail(batch_cl), args.repeat)
        vae.to(memory_format=torch.contiguous_format)
        print(json.dumps(r, indent=1), flush=True)

    info = VaeInfo(path=Path("-"), class_name="AutoencoderKL", latent_channels=4, scale=8, scaling_factor=1.0,
                   shift_factor=0.0, force_upcast=False, sample_size=512, full_res_channels=256,
                   block_out_channels=tuple(vae.config.block_out_channels),
                   parameters=sum(p.numel() for p in vae.parameters()))
    preset = load_tuning("default", Path("."), {})  # the defaults a job gets
    plan = tile_plan(info, (4, 270, 480), dtype, preset.tile_size, preset.tile_overlap, preset.vram_budget_gib,
                     preset.norm_proxy, preset.whole_up_blocks)
    decoder = Decoder(vae, info, "bfloat16", DeviceContext(device), torch.uint8, plan)
    host = z[0].cpu()
    r["ours_defaults_s"] = seconds(lambda: decoder.decode(LatentFrame(0, 0, host)).pixels, args.repeat)
    table = profile_table(lambda: decoder.decode(LatentFrame(0, 0, host)))
    (args.out / "profile.txt").write_text(table)
    (args.out / "parts.json").write_text(json.dumps(r, indent=1) + "\n")
    print(json.dumps(r, indent=1))
    print(table)


if __name__ == "__main__":
    main()
