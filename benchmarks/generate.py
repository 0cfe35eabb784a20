"""Generation benchmark (issue 5): an SDXL-class pipeline at real size (random
weights) generating 1024x1024 frames through the whole pipeline to PNG, against
generation plus decode with nothing downstream (`gpu_only`), in one process.

    python benchmarks/generate.py [--out benchmarks/results/generate.json]     # one GPU
    python benchmarks/generate.py --device cpu --pipeline FOLDER --width 48 --height 32 \\
        --frames 4 --steps 2 --dtype float32 --out /tmp/generate.json            # smoke, any pipeline

Generation replays the denoiser from CUDA graphs as a job does by default ([tuning]
cuda_graphs; the warm-up `gpu_only` run captures them, so no run times a capture).
The pipeline is built on the device, saved with save_pretrained (safetensors) and
rendered from that folder as a user's job would be. Timing: `gpu_only` runs the
generation stage's call and the decode stage's decode frame by frame, synchronised at
the end; `pipeline` is `render`'s first-frame-in to last-frame-out time, second of two
runs (the first warms the allocator and cuDNN). `gpu_busy_fraction` is NVML's
utilisation sampled every 50 ms over the second run. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import diffusers
import torch
import trio
from bench_models import default_writers, sdxl_class_pipeline, tuning_table
from gpu_pipeline import NvmlSampler

from pipeline.config.job import load_job
from pipeline.config.seeds import frame_seed
from pipeline.flow.frames import LatentFrame
from pipeline.gpu.device import DeviceContext
from pipeline.models.cache import PipelineCache
from pipeline.models.dtypes import DTYPES
from pipeline.models.generation import batches, generate_latents
from pipeline.plan import make_plan
from pipeline.run import render
from pipeline.stages.decode import Decoder

JOB = """seed = 5
[shot]
name = "gen"
frame_start = 1
frame_end = {frames}
fps = 24
width = {width}
height = {height}
[source]
kind = "diffusers"
path = "{pipeline}"
prompt = "a lighthouse on a cliff at dusk, film still"
negative_prompt = "blurry"
steps = {steps}
guidance_scale = 5.0
batch_size = {batch}
[model]
dtype = "{dtype}"
[output]
root = "{root}"
formats = ["png"]
{tuning}"""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=tuple(DTYPES))
    parser.add_argument("--pipeline", type=Path,
                        help="a pipeline folder; built there (SDXL-class) when it has no model_index.json "
                             "(default: built in a temporary folder)")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--frames", type=int, default=24,
                        help="frames of the shot (8 measured 0.93: a shot's fill and drain, ~0.2 s, weigh more)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1, help="frames per pipeline call")
    parser.add_argument("--writers", type=int, default=0, help="PNG writer threads (0: cores - 4)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/generate.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ff-generate-") as tmp:
        work = Path(tmp)
        folder = args.pipeline or work / "sdxl"
        if not (folder / "model_index.json").exists():
            with torch.device(device):  # random init on the device: seconds, not minutes
                torch.manual_seed(0)
                pipe = sdxl_class_pipeline(work)
            pipe.to(DTYPES[args.dtype]).save_pretrained(folder, safe_serialization=True)
            del pipe
        job_path = work / "job.toml"
        job_path.write_text(JOB.format(frames=args.frames, width=args.width, height=args.height, pipeline=folder,
                                       steps=args.steps, batch=args.batch, dtype=args.dtype, root=work / "out",
                                       tuning=tuning_table(args.writers or default_writers())))
        job = load_job(job_path)
        plan = make_plan(job, device)
        assert plan.pipeline is not None and job.source.generation is not None
        generation = job.source.generation
        cache = PipelineCache()
        pipe = cache.get(plan.pipeline, plan.pipeline_dtype, device, generation.scheduler, job.tuning.cuda_graphs)
        vae = pipe.vae.to(DTYPES[plan.dtype])
        decoder = Decoder(vae, plan.vae, plan.dtype, DeviceContext(device), torch.uint8)

        def gpu_only() -> float:
            """The generation stage's calls and the decode stage's decodes, nothing downstream."""
            sync(device)
            start = time.perf_counter()
            with torch.no_grad():
                for batch in batches(generation, list(plan.todo)):
                    seeds = [frame_seed(job.seed, f) for f in batch]
                    latents = generate_latents(pipe, generation, batch, seeds, args.width, args.height)
                    for f, s, z in zip(batch, seeds, latents, strict=True):
                        decoder.decode(LatentFrame(f, s, z))
            sync(device)
            return time.perf_counter() - start

        gpu_only()  # warm-up
        with NvmlSampler(device.index or 0) as nvml:
            gpu_s = gpu_only()
            end = time.perf_counter()
        gpu_only_busy = nvml.mean(end - gpu_s, end) if device.type == "cuda" else None
        print(f"gpu_only {gpu_s:.3f} s", flush=True)
        runs = []
        for attempt in range(2):
            shutil.rmtree(work / "out", ignore_errors=True)
            with NvmlSampler(device.index or 0) as nvml:
                report = trio.run(functools.partial(render, plan, lambda frame: None, handle_signals=False,
                                                    pipelines=cache))
                end = time.perf_counter()
            runs.append(report)
            print(f"pipeline run {attempt + 1}: {report.render_s:.3f} s", flush=True)
        report = runs[-1]
        busy = nvml.mean(end - report.render_s, end) if device.type == "cuda" else None
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "diffusers": diffusers.__version__,
        "date": datetime.now(UTC).date().isoformat(),
        "command": "python benchmarks/generate.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out" and v is not None),
        "pipeline_class": plan.pipeline.class_name, "width": args.width, "height": args.height,
        "frames": args.frames, "steps": args.steps, "batch": args.batch, "dtype": args.dtype,
        "fps": round(report.frames / report.render_s, 4), "gpu_only_fps": round(args.frames / gpu_s, 4),
        "pipeline_over_gpu_only": round(gpu_s / report.render_s, 4),
        "gpu_busy_fraction": busy, "gpu_busy_how": "NVML utilisation, mean of 50 ms samples over the second run",
        "gpu_only_busy_fraction": gpu_only_busy, "writers": args.writers or default_writers(),
        "first_run_s": round(runs[0].render_s, 3), "stages": report.stages,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "stages"}, indent=1))


if __name__ == "__main__":
    main()
