"""Time the variants and configs of the fused wide-head attention
(pipeline/kernels/wide_attention.py) on one GPU, against PyTorch's SDPA and a
chunked cuBLAS attention, and check each result against SDPA's.

    python benchmarks/attention_configs.py results.json [--shapes 4k-sd,wan-720p] [--only defer]
    python benchmarks/attention_configs.py smoke.json --smoke     # CPU, Triton's interpreter, tiny shapes

Prints one line per (shape, variant/config): variant, config, ms (median of CUDA-event
timings after a warm-up call), TFLOP/s (4 N^2 D B / t) and the relative error
||out - sdpa|| / ||sdpa||; then the fastest configs per shape; writes every row to the
JSON file. Each shape runs in a child process, so a config that fails to compile or runs
out of resources is reported and skipped, and one that breaks the CUDA context costs
only itself: the parent records it as failed and starts a fresh child for the rest.
"""

from __future__ import annotations

import os
import sys

if "--smoke" in sys.argv:   # must precede Triton's import
    os.environ["TRITON_INTERPRET"] = "1"

import argparse
import json
import subprocess
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the repository root

import torch
import torch.nn.functional as F
import triton

from pipeline.kernels.wide_attention import Config, attention, pick_config

# name: (batch, tokens, head dim)
SHAPES: dict[str, tuple[int, int, int]] = {
    "4k-sd": (1, 129_600, 512),      # 3840x2160 frame, SD/SDXL/SD3/Flux VAE mid block (latent 480x270)
    "wan-720p": (1, 14_400, 384),    # 1280x720 frame, Wan 2.1 VAE
    "tile-512": (2, 3_600, 512),     # small tiles, two at a time
    "tile-384": (2, 3_600, 384),
}
SMOKE_SHAPES: dict[str, tuple[int, int, int]] = {"smoke-512": (2, 45, 512), "smoke-384": (1, 70, 384)}


def candidate_configs(head_dim: int) -> list[Config]:
    """The configs worth timing on sm_90; NOTES.md says why each is here.

    Shared memory bounds BLOCK_N: Q stays resident (64 KiB for 64 rows at D = 512) and
    each pipeline stage holds a K and a V tile of BLOCK_N x 2 D bytes each. All of these
    compile for sm_90 within the 227 KiB (sm90_report.py).
    """
    if head_dim == 512:
        return [
            # straightforward: both warpgroups compute all the logits (see NOTES.md)
            Config(64, 32, 8, 2, 512), Config(64, 32, 8, 2, 128), Config(64, 16, 8, 3, 512),
            # p @ v deferred one block: the logits split over the two warpgroups
            Config(64, 32, 8, 2, 512, defer_pv=True), Config(64, 32, 8, 2, 128, defer_pv=True),
            Config(64, 16, 8, 4, 512, defer_pv=True), Config(64, 64, 8, 1, 512, defer_pv=True),
            Config(64, 32, 8, 2, 512, defer_pv=True, lazy_rescale=True),
            # output columns split over two programs that each recompute the logits
            Config(128, 32, 8, 2, 256, d_split=256), Config(128, 32, 8, 2, 128, d_split=256),
            Config(64, 32, 4, 2, 256, d_split=256), Config(128, 64, 8, 1, 256, d_split=256),
            # the same with TMA loads and stores
            Config(64, 32, 8, 2, 512, defer_pv=True, tma=True), Config(128, 32, 8, 2, 256, d_split=256, tma=True),
        ]
    if head_dim == 384:
        return [
            Config(64, 32, 8, 3, 128), Config(128, 32, 8, 2, 128), Config(64, 32, 4, 3, 128),
            Config(64, 32, 8, 3, 128, defer_pv=True), Config(64, 64, 8, 1, 128, defer_pv=True),
            Config(64, 32, 8, 3, 128, defer_pv=True, lazy_rescale=True),
            Config(128, 32, 8, 2, 64, d_split=192),
            Config(64, 32, 8, 3, 128, defer_pv=True, tma=True), Config(128, 32, 8, 2, 128, tma=True),
        ]
    return [pick_config(head_dim, torch.bfloat16)]


def smoke_configs(head_dim: int) -> list[Config]:
    chunk = head_dim & -head_dim
    return [Config(32, 32, 4, 2, min(chunk, 128)), Config(16, 32, 4, 2, chunk, defer_pv=True),
            Config(32, 16, 4, 2, 64, d_split=head_dim // 2), Config(16, 16, 4, 2, 128, defer_pv=True, tma=True)]


def variant_name(config: Config) -> str:
    return "triton-split" if config.d_split else "triton-defer" if config.defer_pv else "triton-plain"


def chunked_cublas(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                   chunk_bytes: int = 4 << 30) -> torch.Tensor:
    """The project's present path: float32 logits from cuBLAS, float32 softmax, cuBLAS again."""
    out = torch.empty_like(q)
    kt = k.transpose(1, 2)
    rows = max(1, chunk_bytes // (4 * k.shape[1] * q.shape[0]))
    for start in range(0, q.shape[1], rows):
        qc = q[:, start:start + rows]
        try:
            logits = torch.bmm(qc, kt, out_dtype=torch.float32)
        except (TypeError, RuntimeError):   # a PyTorch (or device) without out_dtype
            logits = torch.bmm(qc, kt).float()
        weights = torch.softmax(logits.mul_(scale), dim=-1).to(q.dtype)
        del logits
        out[:, start:start + rows] = torch.bmm(weights, v)
    return out


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], torch.Tensor], reps: int, device: str) -> float:
    """Median of `reps` timings (CUDA events on the GPU)."""
    times = []
    for _ in range(reps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def measure(fn: Callable[[], torch.Tensor], ref: torch.Tensor | None, flops: float, device: str) -> dict:
    t0 = time.perf_counter()
    out = fn()                       # warm-up; compiles a Triton kernel on first use
    _sync(device)
    first_s = time.perf_counter() - t0
    once = time_ms(fn, 1, device)
    ms = time_ms(fn, max(3, min(20, int(300 / max(once, 1e-3)))), device)   # ~0.3 s of timing
    err = None if ref is None else ((out.float() - ref.float()).norm() / ref.float().norm()).item()
    return {"ms": ms, "tflops": flops / (ms * 1e-3) / 1e12, "rel_err": err, "first_call_s": first_s, "status": "ok"}


def worker(shape: str, keys: list[str], out_path: str, smoke: bool) -> None:
    """Child process: time the references (key "refs") and the named configs on one shape.

    Rows are appended to out_path as they come, so the parent keeps them if this dies.
    """
    if smoke:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
        from triton_interpreter import patch_interpreter
        patch_interpreter()
    device = "cpu" if smoke else "cuda"
    batch, n, d = (SMOKE_SHAPES if smoke else SHAPES)[shape]
    by_name = {c.name: c for c in (smoke_configs(d) if smoke else candidate_configs(d))}
    flops = 4.0 * n * n * d * batch

    def emit(row: dict) -> None:
        with open(out_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    gen = torch.Generator(device=device).manual_seed(zlib.crc32(shape.encode()))
    q, k, v = (torch.randn(batch, n, d, device=device, dtype=torch.bfloat16, generator=gen) for _ in range(3))
    q.mul_(2.0)                      # logits with std ~2: a peaked softmax, as in real VAEs
    scale = d ** -0.5

    def sdpa() -> torch.Tensor:
        return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]

    try:
        ref = sdpa()
    except Exception:                # no reference, no errors: the timings still count
        ref = None
    for key in keys:
        if key == "refs":
            for name, fn, check in (("torch-sdpa", sdpa, None),
                                    ("chunked-cublas", lambda: chunked_cublas(q, k, v, scale), ref)):
                try:
                    row = measure(fn, check, flops, device)
                except Exception as err:
                    row = {"status": "failed", "error": _first_line(err)}
                emit({"key": key, "variant": name, "config": "-", **row})
            continue
        config = by_name[key]
        try:
            row = measure(lambda config=config: attention(q, k, v, scale, config), ref, flops, device)
        except Exception as err:     # compile errors, OutOfResources, ...: report and go on
            row = {"status": "failed", "error": _first_line(err)}
        emit({"key": key, "variant": variant_name(config), "config": key, **row})
        if device == "cuda":
            try:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
            except Exception:        # a broken context: let the parent start a fresh child
                sys.exit(3)


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0][:200] if lines else ''}"


def run_shape(shape: str, dims: tuple[int, int, int], configs: list[Config], smoke: bool) -> list[dict]:
    """Parent: run children until every key has a row."""
    batch, n, d = dims
    print(f"\n== {shape}: B={batch} N={n} D={d} bf16, {4.0 * n * n * d * batch / 1e12:.3g} TFLOP", flush=True)
    print(f"{'variant':15s} {'config':44s} {'ms':>9s} {'TFLOP/s':>8s} {'rel err':>9s}", flush=True)
    todo = ["refs"] + [c.name for c in configs]
    variant_names = {c.name: variant_name(c) for c in configs}
    rows: list[dict] = []
    while todo:
        fd, part = tempfile.mkstemp(suffix=".jsonl")
        os.close(fd)
        cmd = [sys.executable, os.path.abspath(__file__), "unused", "--worker", shape, ",".join(todo), part]
        proc = subprocess.run(cmd + (["--smoke"] if smoke else []), stderr=subprocess.PIPE, text=True)
        with open(part) as f:
            new = [json.loads(line) for line in f]
        os.unlink(part)
        done = {row["key"] for row in new}
        if proc.returncode != 0 and todo[0] not in done:   # it died on this one
            lines = [line for line in proc.stderr.splitlines() if line.strip()]
            new.append({"key": todo[0], "variant": variant_names.get(todo[0], "references"), "config": todo[0],
                        "status": "failed",
                        "error": f"child died (exit {proc.returncode}): {lines[-1][:200] if lines else ''}"})
            done.add(todo[0])
        for row in new:
            row.update(shape=shape, batch=batch, n=n, head_dim=d)
            _print_row(row)
        rows += new
        todo = [key for key in todo if key not in done]
    return rows


def _print_row(row: dict) -> None:
    if row["status"] != "ok":
        print(f"{row['variant']:15s} {row['config'][:44]:44s} FAILED {row['error']}", flush=True)
        return
    err = "-" if row["rel_err"] is None else f"{row['rel_err']:.2e}"
    print(f"{row['variant']:15s} {row['config'][:44]:44s} {row['ms']:9.3f} {row['tflops']:8.1f} {err:>9s}",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_out")
    parser.add_argument("--shapes", help="comma-separated names (default: all)")
    parser.add_argument("--only", default="", help="time only the configs whose name contains this")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU under Triton's interpreter")
    parser.add_argument("--worker", nargs=3, metavar=("SHAPE", "KEYS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        shape, keys, out_path = args.worker
        worker(shape, keys.split(","), out_path, args.smoke)
        return

    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    device = "CPU (Triton interpreter)" if args.smoke else torch.cuda.get_device_name()
    print(f"{device}  torch {torch.__version__}  triton {triton.__version__}", flush=True)
    t0 = time.perf_counter()
    results, configs = [], {}
    for shape in (args.shapes.split(",") if args.shapes else shapes):
        dims = shapes[shape]
        chosen = [c for c in (smoke_configs if args.smoke else candidate_configs)(dims[2]) if args.only in c.name]
        configs.update({c.name: asdict(c) for c in chosen})
        results += run_shape(shape, dims, chosen, args.smoke)

    print(f"\nfastest per shape (total {time.perf_counter() - t0:.0f} s):")
    for shape in dict.fromkeys(row["shape"] for row in results):
        ok = sorted((r for r in results if r["shape"] == shape and r["status"] == "ok"), key=lambda r: r["ms"])
        print(f"  {shape}: " + ", ".join(f"{r['config'] if r['config'] != '-' else r['variant']} "
                                         f"{r['ms']:.3g} ms ({r['tflops']:.0f} TFLOP/s)" for r in ok[:4]))
    with open(args.json_out, "w") as f:
        json.dump({"device": device, "torch": torch.__version__, "triton": triton.__version__,
                   "results": results, "configs": configs}, f, indent=1)
    print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
