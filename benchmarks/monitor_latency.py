"""`render monitor` latency with a large queue: 1,000 jobs of 100 one-frame tasks
(100,000 tasks), the pages and the API endpoints, over real HTTP to a real
`render monitor` process on loopback.

    python benchmarks/monitor_latency.py [--queue sqlite|redis] [--jobs 1000] [--tasks-per-job 100]
                                         [--requests 50] [--out benchmarks/results/monitor_latency.json]

The jobs are submitted through the queue, then given the states a busy farm has (half
the jobs done, a hundred part-done with a failed and a leased task each, the rest
pending). On SQLite (the default) that is one SQL statement per state, as leasing and
acking 50,000 tasks one by one measures nothing the monitor does; on Redis (`--queue
redis`: a redis-server of its own on a free loopback port, no persistence) there is no
such shortcut, so the tasks are leased, acked and failed through the queue (the jobs get
max_attempts = 1 there, so one failure dead-letters a task; about a minute). Each endpoint gets 3 warm-up
requests, then `--requests` timed ones in a row; median and p95 are reported.
Target: under 200 ms. CPU only. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from workers.queue import open_queue
from workers.tasks import JobSpec, TaskQueue

ROOT = Path(__file__).resolve().parent.parent


def build_queue(path: Path, jobs: int, tasks_per_job: int) -> list[str]:
    queue = open_queue(f"sqlite://{path}")
    ids = [f"job{index:05d}" for index in range(jobs)]
    for job_id in ids:
        queue.submit(JobSpec(job_id=job_id, name=f"sq{int(job_id[3:]) // 10:03d}_sh{job_id[-1]}0", toml="seed = 1\n",
                             base_dir="/jobs", output_root="/renders", frame_start=1001,
                             frame_end=1000 + tasks_per_job, priority=0, chunk=1, video=False, max_attempts=3))
    heartbeats(queue)
    queue.close()
    now = time.time()
    db = sqlite3.connect(path)
    with db:
        half = ids[jobs // 2]
        db.execute("""UPDATE tasks SET state = 'done', attempts = 1, worker = 'node-00/1234/cuda:0',
                          started = ? + id * 0.01, finished = ? + id * 0.01 + 2 WHERE job_id < ?""",
                   (now - 3600, now - 3600, half))
        db.execute("UPDATE jobs SET state = 'done' WHERE id < ?", (half,))
        busy = ids[jobs // 2 + 100] if jobs > jobs // 2 + 100 else "~"
        db.execute("""UPDATE tasks SET state = 'done', attempts = 1, worker = 'node-01/1234/cuda:0',
                          started = ? + id * 0.01, finished = ? + id * 0.01 + 2
                      WHERE job_id >= ? AND job_id < ? AND first < 1000 + ? / 2""",
                   (now - 600, now - 600, half, busy, tasks_per_job))
        db.execute("""UPDATE tasks SET state = 'failed', attempts = 3, worker = 'node-02/1234/cuda:0',
                          error = 'stage ''decode'' on frame ' || first || ' failed: CUDA out of memory'
                      WHERE job_id >= ? AND job_id < ? AND first = 1000 + ? / 2""", (half, busy, tasks_per_job))
        db.execute("""UPDATE tasks SET state = 'leased', attempts = 1, worker = 'node-03/1234/cuda:0',
                          started = ?, lease_until = ? WHERE job_id >= ? AND job_id < ? AND first = 1001 + ? / 2""",
                   (now, now + 3600, half, busy, tasks_per_job))
    db.close()
    return ids


def build_redis_queue(url: str, jobs: int, tasks_per_job: int) -> list[str]:
    """The same farm as `build_queue`, made through the queue's own calls."""
    queue = open_queue(url)
    ids = [f"job{index:05d}" for index in range(jobs)]
    for job_id in ids:
        queue.submit(JobSpec(job_id=job_id, name=f"sq{int(job_id[3:]) // 10:03d}_sh{job_id[-1]}0", toml="seed = 1\n",
                             base_dir="/jobs", output_root="/renders", frame_start=1001,
                             frame_end=1000 + tasks_per_job, priority=0, chunk=1, video=False, max_attempts=1))
    busy = set(ids[jobs // 2:jobs // 2 + 100])
    for job_id in ids[:jobs // 2 + 100]:   # leases go job by job, in submission order
        part = job_id in busy
        for _ in range(tasks_per_job // 2 if part else tasks_per_job):
            task = queue.lease("node-00/1234/cuda:0", 3600)
            assert task is not None and task.job_id == job_id, (task, job_id)
            queue.ack(task, "node-00/1234/cuda:0")
        if part:
            failing = queue.lease("node-02/1234/cuda:0", 3600)
            assert failing is not None and failing.job_id == job_id
            queue.fail(failing, "node-02/1234/cuda:0", f"stage 'decode' on frame {failing.first} failed: CUDA out "
                                                       "of memory")
            assert queue.lease("node-03/1234/cuda:0", 3600) is not None
            queue.pause(job_id)   # so that the next lease goes to the next job; resumed below
    for job_id in busy:
        queue.resume(job_id)
    heartbeats(queue)
    queue.close()
    return ids


def heartbeats(queue: TaskQueue) -> None:
    for worker in range(8):
        queue.heartbeat(f"node-{worker:02d}/1234/cuda:0", {"device": "cuda:0", "host": f"node-{worker:02d}",
                                                          "frames_done": 100 * worker, "heartbeat_s": 5,
                                                          "lease_s": 60})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def timed(url: str, requests: int) -> dict[str, float]:
    def once() -> float:
        start = time.perf_counter()
        with urllib.request.urlopen(url, timeout=60) as reply:
            reply.read()
            assert reply.status == 200, url
        return (time.perf_counter() - start) * 1000

    for _ in range(3):
        once()
    samples = sorted(once() for _ in range(requests))
    return {"median_ms": round(statistics.median(samples), 1),
            "p95_ms": round(samples[min(len(samples) - 1, round(0.95 * len(samples)) - 1)], 1),
            "max_ms": round(samples[-1], 1), "requests": requests}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queue", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--tasks-per-job", type=int, default=100)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/monitor_latency.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as stack:
        started = time.perf_counter()
        if args.queue == "redis":
            redis_port = free_port()
            server = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                       "--save", "", "--appendonly", "no", "--dir", folder],
                                      stdout=subprocess.DEVNULL)
            stack.callback(server.wait, 10)
            stack.callback(server.terminate)
            url = f"redis://127.0.0.1:{redis_port}/0"
            for _ in range(100):
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", redis_port), timeout=1):
                    break
                time.sleep(0.05)
            ids = build_redis_queue(url, args.jobs, args.tasks_per_job)
        else:
            url = f"sqlite://{Path(folder) / 'farm.db'}"
            ids = build_queue(Path(folder) / "farm.db", args.jobs, args.tasks_per_job)
        print(f"{args.queue} queue: {args.jobs} jobs, {args.jobs * args.tasks_per_job} tasks in "
              f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
        port = free_port()
        monitor = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "monitor", "--queue", url,
                                    "--bind", f"127.0.0.1:{port}"],
                                   env={**os.environ, "PYTHONPATH": str(ROOT)})
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    urllib.request.urlopen(base + "/static/monitor.css", timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            busy = ids[args.jobs // 2]
            endpoints = {
                "page: jobs (/)": "/",
                "page: a job (/jobs/ID)": f"/jobs/{busy}",
                "GET /api/jobs (newest 100 of all)": "/api/jobs",
                "GET /api/jobs?state=failed": "/api/jobs?state=failed",
                "GET /api/jobs?limit=1000": "/api/jobs?limit=1000",
                "GET /api/jobs/ID": f"/api/jobs/{busy}",
                "GET /api/jobs/ID/tasks": f"/api/jobs/{busy}/tasks",
                "GET /api/workers": "/api/workers",
            }
            results = {name: timed(base + path, args.requests) for name, path in endpoints.items()}
        finally:
            monitor.terminate()
            monitor.wait(10)
    report = {"benchmark": "monitor_latency", "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "command": " ".join(["python", "benchmarks/monitor_latency.py", *sys.argv[1:]]),
              "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), "
                        f"load average {os.getloadavg()[0]:.2f}",
              "queue": args.queue, "jobs": args.jobs, "tasks": args.jobs * args.tasks_per_job, "target_ms": 200,
              "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, figures in results.items():
        print(f"{name:<38} median {figures['median_ms']:>7.1f} ms   p95 {figures['p95_ms']:>7.1f} ms")


if __name__ == "__main__":
    main()
