"""The farm's video tail: how long a job's video takes after its last frame, with the
video in segments encoded by segment tasks on every worker, against one piece encoded
by the video task alone.

    python benchmarks/farm_segments.py [--frames 192] [--size 1920x1080] [--segment 24]
                                       [--codec prores_422hq] [--chunk 8] [--repeats 2]
                                       [--out benchmarks/results/farm_segments.json]

The shot: an SD-class VAE (random weights, real config, bf16) decoding frames from the
noise source, PNG frames and one video. Each measurement starts fresh worker processes
(`run_worker`, one per GPU; `--cpu`: two CPU workers and a small frame), waits until they
poll, submits the shot and reads the queue's task records when it is done: `tail_s` is
from the last frames task's ack to the video task's ack (what a client waits for after
the frames), `job_s` from the submit to that ack, `segments_per_worker` who encoded the
segments. Modes alternate `--repeats` times: `segments` (video_segment_frames =
--segment) and `whole` (0: the video task encodes every frame). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from bench_models import noise_job, sd_class_vae
from farm_gpus import wait_workers, worker_process

from pipeline.files.video import read_video_info
from workers.queue import open_queue
from workers.submit import submit_job
from workers.tasks import TASK_FRAMES, TASK_SEGMENT, TASK_VIDEO


def write_job(path: Path, args: argparse.Namespace, model: Path, root: Path, segment: int, writers: int) -> Path:
    width, height = map(int, args.size.split("x"))
    noise_job(path, seed=7, name="shot", model=model, root=root, frames=args.frames, width=width, height=height,
              formats=["png"], writers=writers, dtype=args.dtype,
              tuning=f'decode = "tiles"\nvideo_segment_frames = {segment}\n')
    with path.open("a") as job:
        job.write(f'[[output.videos]]\npath = "{{shot}}.mov"\ncodec = "{args.codec}"\n')
    return path


def measure(args: argparse.Namespace, work: Path, model: Path, devices: list[str], mode: str, run: int,
            writers: int) -> dict[str, Any]:
    url = f"sqlite:///{work}/farm-{run}.db"
    root = work / f"out-{run}"
    job = write_job(work / f"shot-{run}.toml", args, model, root, args.segment if mode == "segments" else 0, writers)
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=worker_process, args=(url, str(work), device, f"w{i}",
                                                              str(args.logs / f"run{run}-w{i}.log"), True,
                                                              True))   # thumbnails: on, as a worker's default
                 for i, device in enumerate(devices)]
    for process in processes:
        process.start()
    try:
        wait_workers(url, len(devices), processes)
        submitted = time.time()
        job_id = submit_job(job, url, chunk=args.chunk, priority=0, max_attempts=1)
        queue = open_queue(url)
        try:
            while (status := queue.status(job_id)[0]).state not in ("done", "failed"):
                time.sleep(0.05)
            if status.state == "failed":
                raise RuntimeError(f"job {job_id}: {status.errors}")
            tasks = queue.tasks(job_id)
        finally:
            queue.close()
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(60)
            if process.is_alive():
                process.kill()
    frames_end = max(t.finished or 0.0 for t in tasks if t.kind == TASK_FRAMES)
    [video] = [t for t in tasks if t.kind == TASK_VIDEO]
    assert video.finished is not None and video.started is not None
    count, _, _ = read_video_info(root / "shot.mov")
    if count != args.frames:
        raise RuntimeError(f"the video holds {count} frames, not {args.frames}")
    return {"mode": mode, "workers": len(devices), "tail_s": round(video.finished - frames_end, 3),
            "job_s": round(video.finished - submitted, 3), "video_task_s": round(video.finished - video.started, 3),
            "segments_per_worker": dict(Counter(t.worker or "" for t in tasks if t.kind == TASK_SEGMENT))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=192)
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--segment", type=int, default=24, help="frames per segment in the segments mode")
    parser.add_argument("--codec", default="prores_422hq")
    parser.add_argument("--chunk", type=int, default=8, help="frames per task")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cpu", action="store_true", help="two CPU workers, small frames (figures for this box only)")
    parser.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()) / "farm_segments_logs")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "farm_segments.json")
    args = parser.parse_args()
    args.dtype = "float32" if args.cpu else "bfloat16"
    args.logs.mkdir(parents=True, exist_ok=True)
    gpus = torch.cuda.device_count()
    if args.cpu:
        devices = ["cpu", "cpu"]
    elif gpus:
        devices = [f"cuda:{i}" for i in range(gpus)]
    else:
        raise SystemExit("needs CUDA (or --cpu)")
    writers = max(2, (os.cpu_count() or 4) // len(devices) - 4)
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} ({os.cpu_count()} cores)",
        "devices": devices, "frames": args.frames, "size": args.size, "segment": args.segment,
        "codec": args.codec, "chunk": args.chunk, "queue": "sqlite", "runs": []}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        torch.manual_seed(0)
        sd_class_vae().save_pretrained(work / "vae", safe_serialization=True)
        run = 0
        for _ in range(args.repeats):
            for mode in ("segments", "whole"):
                outcome = measure(args, work, work / "vae", devices, mode, run, writers)
                run += 1
                results["runs"].append(outcome)
                print(json.dumps(outcome), flush=True)
    for key in ("tail_s", "job_s"):
        results[f"{key}_median"] = {mode: statistics.median(r[key] for r in results["runs"] if r["mode"] == mode)
                                    for mode in ("segments", "whole")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
