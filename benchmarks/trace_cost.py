"""What a traced render costs, and what a frame costs in joules and GPU-seconds.

The SD-class VAE (random weights, real config) decodes a 4K shot from the noise source
to PNG through the whole pipeline (`render`), in one process with the model loaded
once: runs alternate without and with a trace, and the medians of their render times
give the trace's overhead. The runs' manifest records give joules and GPU-seconds per
frame (NVML's energy counter). A short traced run's trace and manifest run record are
kept for `benchmarks/results/`.

    python benchmarks/trace_cost.py [--frames 24] [--repeats 3] [--out benchmarks/results/trace_cost.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
import trio
from bench_models import default_writers, noise_job, sd_class_vae

from pipeline.config.job import load_job
from pipeline.files.manifest import read_runs
from pipeline.flow.trace import Trace
from pipeline.models.cache import ModelCache
from pipeline.plan import make_plan
from pipeline.report import write_report
from pipeline.run import render


def one_run(job_file: Path, root: Path, models: ModelCache, trace: Trace | None) -> dict:
    shutil.rmtree(root, ignore_errors=True)
    plan = make_plan(load_job(job_file), torch.device("cuda:0"))
    start = time.perf_counter()
    report = trio.run(lambda: render(plan, lambda frame: None, models, handle_signals=False, trace=trace))
    seconds = time.perf_counter() - start
    (record,) = read_runs(root)
    return {"render_s": round(report.render_s, 4), "seconds": round(seconds, 4), "frames": report.frames,
            "energy_j": record["energy_j"], "gpu_s": record["gpu_s"], "j_per_frame": record["j_per_frame"],
            "gpu_s_per_frame": record["gpu_s_per_frame"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=3840)
    parser.add_argument("--height", type=int, default=2160)
    parser.add_argument("--keep", type=Path, default=None, help="folder for a small traced run's files")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/trace_cost.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("trace_cost.py needs a CUDA GPU")
    work = Path(tempfile.mkdtemp(prefix="ff-trace-"))
    torch.manual_seed(0)
    model = work / "sd_vae"
    sd_class_vae().to(torch.bfloat16).save_pretrained(model, safe_serialization=True)
    writers = default_writers()
    job = noise_job(work / "job.toml", seed=7, name="trace", model=model, root=work / "out", frames=args.frames,
                    width=args.width, height=args.height, formats=["png"], writers=writers)
    models = ModelCache(capacity=1)
    one_run(job, work / "out", models, None)   # warm-up: the model load, cuDNN's choices, Triton's compiles
    plain, traced = [], []
    for _ in range(args.repeats):
        plain.append(one_run(job, work / "out", models, None))
        trace = Trace()
        traced.append(one_run(job, work / "out", models, trace))
        events = len(trace.events())
    median_plain = statistics.median(r["render_s"] for r in plain)
    median_traced = statistics.median(r["render_s"] for r in traced)
    results = {
        "date": date.today().isoformat(), "device": torch.cuda.get_device_name(),
        "command": "python benchmarks/trace_cost.py " + " ".join(sys.argv[1:]),
        "frames": args.frames, "size": [args.width, args.height], "writers": writers,
        "render_s_untraced": plain, "render_s_traced": traced, "trace_events": events,
        "trace_overhead": round(median_traced / median_plain - 1, 4),
        "j_per_frame": statistics.median(r["j_per_frame"] for r in plain if r["j_per_frame"] is not None)
        if any(r["j_per_frame"] is not None for r in plain) else None,
        "gpu_s_per_frame": statistics.median(r["gpu_s_per_frame"] for r in plain),
    }
    if args.keep is not None:   # a small traced run to look at: its trace, manifest record and report
        args.keep.mkdir(parents=True, exist_ok=True)
        small = noise_job(work / "small.toml", seed=7, name="trace", model=model, root=work / "small",
                          frames=4, width=args.width, height=args.height, formats=["png"], writers=writers)
        trace = Trace()
        one_run(small, work / "small", models, trace)
        trace.write(args.keep / "trace_sd_4k_4_frames.json", {"shot": "trace", "device": results["device"]})
        (args.keep / "trace_sd_4k_4_frames_run_record.json").write_text(
            json.dumps(read_runs(work / "small")[0], indent=2) + "\n")
        write_report(work / "small", args.keep / "report_sd_4k_4_frames.html",
                     trace=args.keep / "trace_sd_4k_4_frames.json", job=small)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if not k.startswith("render_s")}, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
