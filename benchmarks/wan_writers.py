"""Wan 2.1 720p x 81 through the pipeline to PNG with several writer-thread counts, against
the decode stage's work alone, in one process (issue 17's `wan_pipeline_over_gpu_only`).

The loss left there is not the drain but the decode slowing down beside the writers (its
GPU span 2.12 s in the pipeline against 2.00 s alone, with 12 writer threads): this
measures how the ratio moves with fewer writers. A 720p PNG takes a few milliseconds to
encode, so 81 frames in 2 s need far fewer than 12 threads.

    python benchmarks/wan_writers.py --writers 2,4,8,12 --out benchmarks/results/wan_writers.json

Per writer count: one warm-up run, then the median of --repeats runs; per run the render
time and the decode's GPU span (CUDA events around each chunk). `gpu_only`: the decode
stage's work chunk by chunk with nothing downstream, median of 3, before and after.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import diffusers
import torch
import trio
from bench_models import tuning_table
from decode import WAN_JOB
from safetensors.torch import save_file

from pipeline.config.job import load_job
from pipeline.decode.video.chunks import chunk_frames
from pipeline.flow.frames import ClipChunk
from pipeline.gpu.device import DeviceContext
from pipeline.models.cache import ModelCache
from pipeline.plan import make_plan
from pipeline.run import render
from pipeline.stages.decode import Decoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writers", default="2,4,8,12")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/wan_writers.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("wan_writers.py needs a CUDA GPU")
    device = torch.device("cuda:0")
    width, height = map(int, args.size.split("x"))
    t = (args.frames - 1) // 4 + 1
    frames = 1 + 4 * (t - 1)
    work = Path(tempfile.mkdtemp(prefix="ff-wan-writers-"))
    torch.manual_seed(0)
    diffusers.AutoencoderKLWan().save_pretrained(work / "wan", safe_serialization=True)   # Wan 2.1's config
    clip = torch.randn(16, t, height // 8, width // 8, generator=torch.Generator().manual_seed(2))
    save_file({"latents": clip}, str(work / "clip.safetensors"))
    models = ModelCache(capacity=1)

    def job(writers: int) -> Path:
        path = work / f"wan_{writers}.toml"
        path.write_text(WAN_JOB.format(frames=frames, width=width, height=height, model=work / "wan",
                                       clip=work / "clip.safetensors", root=work / "out", dtype="bfloat16",
                                       tuning=tuning_table(writers)))
        return path

    plan = make_plan(load_job(job(2)), device)
    vae = models.get(plan.vae, plan.model_hash, plan.dtype, device, False)
    decoder = Decoder(vae, plan.vae, plan.dtype, DeviceContext(device), torch.uint8)

    def gpu_only() -> float:
        times = []
        for _ in range(4):   # the first warms up
            torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.no_grad():
                for index in range(t):
                    count = len(chunk_frames(index, plan.vae.temporal_scale))
                    chunk = ClipChunk(index, tuple(range(count)), (0,) * count, clip[:, index:index + 1],
                                      index == t - 1)
                    list(decoder.decode_clip(chunk))   # a generator: run it to its end
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return round(statistics.median(times[1:]), 4)

    results: dict[str, Any] = {"date": date.today().isoformat(), "device": torch.cuda.get_device_name(),
                               "command": "python benchmarks/wan_writers.py " + " ".join(sys.argv[1:]),
                               "size": [width, height], "frames": frames, "gpu_only_s": [gpu_only()], "by_writers": {}}
    for writers in map(int, args.writers.split(",")):
        plan = make_plan(load_job(job(writers)), device)
        runs = []
        for _ in range(args.repeats + 1):
            shutil.rmtree(work / "out", ignore_errors=True)
            report = trio.run(functools.partial(render, plan, lambda frame: None, models, handle_signals=False))
            runs.append({"render_s": round(report.render_s, 4),
                         "decode_gpu_span_s": report.stages["decode"].get("gpu_span_s"),
                         "drain_s": round(report.stages["write"]["last_out_s"]
                                          - report.stages["transfer"]["last_out_s"], 4)})
        timed = runs[1:]
        results["by_writers"][writers] = {"runs": runs, "render_s": statistics.median(r["render_s"] for r in timed)}
        print(writers, "writers:", results["by_writers"][writers], flush=True)
    results["gpu_only_s"].append(gpu_only())
    reference = min(results["gpu_only_s"])   # the stricter reference
    for figures in results["by_writers"].values():
        figures["pipeline_over_gpu_only"] = round(reference / figures["render_s"], 4)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({"gpu_only_s": results["gpu_only_s"],
                      **{w: f["pipeline_over_gpu_only"] for w, f in results["by_writers"].items()}}, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
