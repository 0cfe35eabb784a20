"""Farm queue throughput: tasks leased and acknowledged per second, per backend, with
1, 2 and 4 worker processes and a trivial render (lease, publish a 1 KB file, ack).

    python benchmarks/farm.py [--tasks 2000] [--out benchmarks/results/farm.json]

CPU only; starts its own redis-server on a loopback port (skipped if not installed).
Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import shutil
import socket
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from pipeline.files.publish import publish_bytes
from workers.queue import open_queue
from workers.tasks import JobSpec


def worker(url: str, name: str, out_dir: str, start: float, results: multiprocessing.Queue) -> None:
    queue = open_queue(url)
    time.sleep(max(0.0, start - time.time()))
    done = 0
    while (task := queue.lease(name, 60)) is not None:
        publish_bytes(Path(out_dir) / f"{task.job_id}.{task.first:06d}", b"x" * 1024)
        assert queue.ack(task, name)
        done += 1
    queue.close()
    results.put(done)


def measure(url: str, tasks: int, workers: int, out_dir: Path) -> float:
    queue = open_queue(url)
    job_id = f"bench-{workers}-{time.time_ns()}"
    queue.submit(JobSpec(job_id=job_id, name="bench", toml="", base_dir="/", output_root=str(out_dir),
                         frame_start=1, frame_end=tasks, priority=0, chunk=1, video=False, max_attempts=3))
    queue.close()
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    start = time.time() + 2.0  # after every process has imported and connected
    processes = [context.Process(target=worker, args=(url, f"w{i}", str(out_dir), start, results))
                 for i in range(workers)]
    for process in processes:
        process.start()
    counts = [results.get(timeout=600) for _ in processes]
    elapsed = time.time() - start
    for process in processes:
        process.join()
    assert sum(counts) == tasks, f"{sum(counts)} of {tasks} tasks acknowledged"
    return tasks / elapsed


def redis_server() -> tuple[subprocess.Popen, str] | None:
    if shutil.which("redis-server") is None:
        return None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no"], stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    return process, f"redis://127.0.0.1:{port}/0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "farm.json")
    args = parser.parse_args()
    results: dict[str, object] = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
                                  "machine": f"{platform.node()} ({multiprocessing.cpu_count()} cores)",
                                  "tasks": args.tasks, "render": "publish a 1 KB file", "tasks_per_s": {}}
    server = redis_server()
    with tempfile.TemporaryDirectory() as scratch:
        backends = {"sqlite": f"sqlite:///{scratch}/farm.db"}
        if server:
            backends["redis"] = server[1]
        try:
            for backend, url in backends.items():
                for workers in (1, 2, 4):
                    out_dir = Path(scratch) / f"{backend}-{workers}"
                    out_dir.mkdir()
                    rate = measure(url, args.tasks, workers, out_dir)
                    results["tasks_per_s"][f"{backend}_{workers}"] = round(rate, 1)
                    print(f"{backend:<7} {workers} worker(s): {rate:8.1f} tasks/s", flush=True)
        finally:
            if server:
                server[0].terminate()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
