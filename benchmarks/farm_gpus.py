"""Farm frame throughput on one host with several GPUs: one worker against one worker
per GPU, both draining the same shot from the SQLite queue.

    python benchmarks/farm_gpus.py [--frames 96] [--chunk 4] [--repeats 2] [--no-turns] [--gpus N]
                                   [--out benchmarks/results/farm_gpus.json]

The shot: an SD-class VAE (random weights, real config, bf16) decoding 3840x2160 frames
from the noise source with the micro-task decode, written as PNG, watermarked. Each
measurement starts fresh worker processes (the same `run_worker` that `render worker
--device cuda:N` runs), warms them with a small job until every worker has rendered
(models loaded, CUDA started), then submits the shot and times it from submit to its
last frame acknowledged (`fps` = frames / that; the workers poll an idle queue every
50 ms, not the CLI's 1 s, so the submit is picked up at once). `steady_fps` is the slope over the
middle 80 % of the frames' publish times (no fill, no drain). NVML utilisation of each
GPU is sampled every 100 ms while the shot runs. Counts 1 and N (all GPUs) alternate
`--repeats` times; `n_over_one` (also written as `speedup`) compares the medians.

Workers write a thumbnail beside each frame, as `render worker` does by default; with
`--no-thumbnails` they do not, to measure what the thumbnails cost.

Workers take turns at each GPU between their task slots (pipeline.gpu.turns); with
`--no-turns` the slots share it, as before turns existed, for comparison.

`--cpu` runs the same plumbing on CPU workers with a small frame (a smoke test; the
figures mean nothing). Needs CUDA otherwise; not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from bench_models import noise_job, sd_class_vae

from workers.queue import open_queue
from workers.submit import submit_job
from workers.worker import WorkerConfig, run_worker

SEED = 7


def write_job(path: Path, *, name: str, model: Path, root: Path, frames: int, width: int, height: int,
              writers: int, dtype: str) -> Path:
    return noise_job(path, seed=SEED, name=name, model=model, root=root, frames=frames, width=width,
                     height=height, formats=["png"], writers=writers, dtype=dtype, tuning='decode = "tiles"\n')


def worker_process(url: str, root: str, device: str, name: str, log_file: str, turns: bool,
                   thumbnails: bool) -> None:
    logging.basicConfig(level=logging.INFO, filename=log_file, format="%(asctime)s %(name)s %(message)s")
    run_worker(WorkerConfig(queue_url=url, output_root=Path(root), model_roots=(Path(root),), device=device,
                            name=name, idle_poll_s=0.05, gpu_turns=turns, thumbnails=thumbnails))


def wait_done(url: str, job_id: str, frames: int, timeout_s: float = 540.0) -> float:
    """Poll the queue until every frame of the job is acknowledged; the time it saw that."""
    queue = open_queue(url)
    try:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            (job,) = queue.status(job_id)
            if job.failed:
                raise RuntimeError(f"job {job_id}: {job.errors}")
            if job.done >= frames:
                return time.perf_counter()
            time.sleep(0.02)
        raise TimeoutError(f"job {job_id} not done in {timeout_s} s")
    finally:
        queue.close()


def wait_workers(url: str, count: int, processes: list[Any] | None = None, timeout_s: float = 180.0) -> None:
    """Until `count` workers poll the queue; at once if one of `processes` died first."""
    queue = open_queue(url)
    try:
        deadline = time.time() + timeout_s
        while len(queue.workers()) < count:
            dead = [p.name for p in processes or [] if p.exitcode is not None]
            if dead:
                raise RuntimeError(f"worker process(es) {dead} exited before polling: see their logs")
            if time.time() > deadline:
                raise TimeoutError(f"{len(queue.workers())} of {count} workers started in {timeout_s} s")
            time.sleep(0.1)
    finally:
        queue.close()


class Utilisation:
    """NVML GPU utilisation of each device, sampled every 100 ms in a thread."""

    def __init__(self, indices: list[int]) -> None:
        self.samples: dict[int, list[int]] = {i: [] for i in indices}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import pynvml

        pynvml.nvmlInit()
        handles = {i: pynvml.nvmlDeviceGetHandleByIndex(i) for i in self.samples}
        while not self._stop.wait(0.1):
            for i, handle in handles.items():
                self.samples[i].append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        pynvml.nvmlShutdown()

    def __enter__(self) -> Utilisation:
        if self.samples:  # CPU workers: nothing to sample
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def means(self) -> dict[str, float]:
        return {f"cuda:{i}": round(statistics.fmean(s), 1) if s else 0.0 for i, s in self.samples.items()}


def measure(args: argparse.Namespace, work: Path, model: Path, devices: list[str], writers: int,
            run: int) -> dict[str, Any]:
    url = f"sqlite:///{work}/farm-{run}.db"
    width, height = map(int, args.size.split("x"))
    warm = write_job(work / f"warm-{run}.toml", name="warm", model=model, root=work / f"out-{run}" / "warm",
                     frames=2 * len(devices), width=width, height=height, writers=writers, dtype=args.dtype)
    shot = write_job(work / f"shot-{run}.toml", name="shot", model=model, root=work / f"out-{run}" / "shot",
                     frames=args.frames, width=width, height=height, writers=writers, dtype=args.dtype)
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=worker_process, args=(url, str(work), device, f"w{i}",
                                                              str(args.logs / f"run{run}-w{i}.log"), not args.no_turns,
                                                              not args.no_thumbnails))
                 for i, device in enumerate(devices)]
    for process in processes:
        process.start()
    try:
        wait_workers(url, len(devices), processes)  # every worker polling before the warm-up's tasks go out
        warm_id = submit_job(warm, url, chunk=1, priority=0, max_attempts=1)
        wait_done(url, warm_id, 2 * len(devices))
        time.sleep(6.0)  # a heartbeat (every 5 s) from each worker, with its frame count
        queue = open_queue(url)
        warmed = {w.name: w.info.get("frames_done", 0) for w in queue.workers()}
        queue.close()
        if len(warmed) < len(devices) or min(warmed.values()) == 0:
            raise RuntimeError(f"warm-up did not reach every worker: {warmed}")
        indices = [int(d.split(":")[1]) for d in devices if d.startswith("cuda")]
        with Utilisation(indices) as utilisation:
            start = time.perf_counter()
            started_at = time.time()
            shot_id = submit_job(shot, url, chunk=args.chunk, priority=0, max_attempts=1)
            end = wait_done(url, shot_id, args.frames)
        time.sleep(6.0)  # a last heartbeat from each worker: one that exits removes itself from the list
        queue = open_queue(url)
        finished = {w.name: w.info.get("frames_done", 0) for w in queue.workers()}
        queue.close()
    finally:
        for process in processes:
            process.terminate()  # SIGTERM: the worker drains (nothing is in flight by now)
        for process in processes:
            process.join(60)
            if process.is_alive():
                process.kill()
    per_worker = {name: done - warmed.get(name, 0) for name, done in finished.items()}
    published = sorted(p.stat().st_mtime for p in (work / f"out-{run}" / "shot").rglob("*.png"))
    if len(published) != args.frames:
        raise RuntimeError(f"{len(published)} PNGs published for {args.frames} frames")
    low, high = round(0.1 * (len(published) - 1)), round(0.9 * (len(published) - 1))
    seconds = end - start
    return {"workers": len(devices), "seconds": round(seconds, 3), "fps": round(args.frames / seconds, 4),
            "steady_fps": round((high - low) / (published[high] - published[low]), 4),
            "first_frame_s": round(published[0] - started_at, 3), "frames_per_worker": per_worker,
            "writers_per_worker": writers, "nvml_util_mean": utilisation.means()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--chunk", type=int, default=4, help="frames per task")
    parser.add_argument("--size", default="3840x2160")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cpu", action="store_true", help="smoke test on CPU workers (two of them)")
    parser.add_argument("--gpus", type=int, default=0, help="use the first N GPUs (default: all)")
    parser.add_argument("--no-turns", action="store_true",
                        help="a worker's task slots share the GPU instead of taking turns (for comparison)")
    parser.add_argument("--no-thumbnails", action="store_true",
                        help="workers write no thumbnails (`render worker --no-thumbnails`), for comparison")
    parser.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()) / "farm_gpus_logs")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "farm_gpus.json")
    args = parser.parse_args()
    args.dtype = "float32" if args.cpu else "bfloat16"  # bf16 convolutions are very slow on CPUs
    args.logs.mkdir(parents=True, exist_ok=True)
    gpus = torch.cuda.device_count()
    if args.cpu:
        every = ["cpu", "cpu"]
    elif gpus >= 1:
        if args.gpus > gpus:
            raise SystemExit(f"--gpus {args.gpus}: this machine shows {gpus} GPU(s)")
        every = [f"cuda:{i}" for i in range(args.gpus or gpus)]
    else:
        raise SystemExit("needs CUDA (or --cpu for a smoke test)")
    counts = sorted({1, len(every)})
    # the same job for every count: PNG writers as bench_models.default_writers, on each
    # worker's share of the cores when every GPU has its worker
    writers = max(2, (os.cpu_count() or 4) // len(every) - 4)
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} ({os.cpu_count()} cores)",
        "devices": [torch.cuda.get_device_name(i) for i in range(gpus)] if not args.cpu else ["cpu"],
        "torch": torch.__version__, "frames": args.frames, "chunk": args.chunk, "size": args.size,
        "queue": "sqlite", "gpu_turns": not args.no_turns, "thumbnails": not args.no_thumbnails,
        "slots": WorkerConfig.slots,
        "shot": f"SD-class VAE, random weights, {args.dtype}, noise latents, decode = tiles, PNG",
        "runs": []}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        torch.manual_seed(0)
        sd_class_vae().save_pretrained(work / "vae", safe_serialization=True)
        run = 0
        for _ in range(args.repeats):
            for count in counts:
                outcome = measure(args, work, work / "vae", every[:count], writers, run)
                run += 1
                results["runs"].append(outcome)
                print(json.dumps(outcome), flush=True)
    fps = {count: statistics.median(r["fps"] for r in results["runs"] if r["workers"] == count) for count in counts}
    steady = {count: statistics.median(r["steady_fps"] for r in results["runs"] if r["workers"] == count)
              for count in counts}
    results["fps_median"] = {str(c): round(v, 4) for c, v in fps.items()}
    results["steady_fps_median"] = {str(c): round(v, 4) for c, v in steady.items()}
    if len(counts) > 1:
        n = counts[-1]
        results["n_over_one"] = round(fps[n] / fps[1], 4)
        results["speedup"] = results["n_over_one"]   # issue 22's name: N GPUs over one, median fps
        results["n_over_one_steady"] = round(steady[n] / steady[1], 4)
        results["n_over_one_per_repeat"] = [
            round(b["fps"] / a["fps"], 4) for a, b in zip(results["runs"][0::2], results["runs"][1::2], strict=True)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
