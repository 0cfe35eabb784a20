"""The render farm end to end, with real worker processes on both queue backends:
normal runs, kill -9 mid-frame, SIGTERM drain, a poison task, a Redis restart, a
blocklist lifted by requeue, a misconfigured worker, a cancel mid-render, and the
worker list."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import redis_server_port, render, write_latents

from pipeline.files.video import read_video_info
from workers.queue import open_queue

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["sqlite", "redis"])
def queue_url(request: pytest.FixtureRequest, tmp_path: Path, redis_url_factory: Callable[[], str]) -> str:
    return f"sqlite:///{tmp_path / 'farm.db'}" if request.param == "sqlite" else redis_url_factory()


def start_worker(queue_url: str, job_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "worker", "--queue", queue_url, "--device", "cpu",
         "--output-root", str(job_dir), "--model-root", str(job_dir.parent), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})


def submit(job: Path, queue_url: str, *extra: str) -> str:
    result = render("submit", str(job), "--queue", queue_url, *extra)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def status(queue_url: str, job_id: str) -> dict:
    result = render("status", job_id, "--queue", queue_url, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["jobs"][0]


def records(root: Path) -> list[dict]:
    path = root / "manifest.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [r for r in map(json.loads, lines) if r["kind"] != "run"]   # the files' records, not the runs


def wait_for_records(root: Path, count: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(records(root)) < count:
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the worker made no progress"
        time.sleep(0.05)


def assert_every_frame_once(root: Path, frames: range) -> None:
    pngs = sorted(root.rglob("*.png"))
    assert len(pngs) == len(frames)
    frame_records = Counter(r["frame"] for r in records(root) if r["kind"] == "frame")
    assert set(frame_records) == set(frames)
    assert max(frame_records.values()) == 1, f"a frame was recorded twice: {frame_records}"
    assert not list(root.rglob("*.part")), "a partial file was left"
    assert render("verify", str(root)).returncode == 0


@pytest.fixture
def farm_job(write_job: Callable[..., Path]) -> Callable[..., Path]:
    def make(**overrides) -> Path:
        return write_job("farm.toml", **overrides)
    return make


def test_two_workers_render_a_job(queue_url: str, farm_job: Callable[..., Path], job_dir: Path) -> None:
    job_id = submit(farm_job(), queue_url, "--chunk", "2")
    assert status(queue_url, job_id)["pending"] == 6
    workers = [start_worker(queue_url, job_dir, "--exit-when-idle") for _ in range(2)]
    for worker in workers:
        _out, err = worker.communicate(timeout=180)
        assert worker.returncode == 0, err
    final = status(queue_url, job_id)
    assert (final["done"], final["leased"], final["pending"], final["failed"]) == (6, 0, 0, 0)
    assert final["state"] == "done"
    root = job_dir / "out"
    assert_every_frame_once(root, range(1, 7))
    assert read_video_info(root / "test.mp4") == (6, 32, 24)
    listing = render("status", "--queue", queue_url)
    assert job_id in listing.stdout
    assert "worker " not in listing.stdout, "a worker that exited cleanly is off the list"
    assert json.loads(render("status", "--queue", queue_url, "--json").stdout)["workers"] == []


def test_kill_9_mid_frame_loses_nothing(queue_url: str, farm_job: Callable[..., Path], job_dir: Path) -> None:
    job = farm_job(source={"kind": "noise"}, shot={"frame_end": 120, "width": 64, "height": 48})
    job_id = submit(job, queue_url, "--chunk", "40")
    victim = start_worker(queue_url, job_dir, "--lease", "2", "--slots", "1")
    root = job_dir / "out"
    wait_for_records(root, 3, victim)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    survivor = start_worker(queue_url, job_dir, "--lease", "2", "--exit-when-idle")
    _out, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err
    final = status(queue_url, job_id)
    assert (final["done"], final["failed"]) == (120, 0)
    assert_every_frame_once(root, range(1, 121))
    assert read_video_info(root / "test.mp4") == (120, 64, 48)


def test_sigterm_drains_and_releases(queue_url: str, farm_job: Callable[..., Path], job_dir: Path) -> None:
    job = farm_job(source={"kind": "noise"}, shot={"frame_end": 400, "width": 64, "height": 48},
                   output={"formats": ["png"]})
    job_id = submit(job, queue_url, "--chunk", "400")
    worker = start_worker(queue_url, job_dir, "--slots", "1")
    root = job_dir / "out"
    wait_for_records(root, 3, worker)
    # the heartbeat (every 5 s) names the host and the task in hand, for `render monitor`
    deadline = time.monotonic() + 15
    while not (listed := json.loads(render("status", "--queue", queue_url, "--json").stdout)["workers"])[0]["tasks"]:
        assert time.monotonic() < deadline, listed
        time.sleep(0.2)
    [shown] = listed
    assert (shown["tasks"], shown["host"], shown["gpu"]) == ([f"{job_id}:1-400"], socket.gethostname(), None)
    worker.send_signal(signal.SIGTERM)
    _out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert "released after" in err
    drained = status(queue_url, job_id)
    assert (drained["leased"], drained["failed"], drained["pending"]) == (0, 0, 400)
    published = len(records(root))
    assert 3 <= published < 400
    assert not list(root.rglob("*.part"))
    finisher = start_worker(queue_url, job_dir, "--exit-when-idle")
    _out, err = finisher.communicate(timeout=300)
    assert finisher.returncode == 0, err
    assert f"{400 - published} frame(s)" in err, "the finisher re-rendered frames already published"
    assert_every_frame_once(root, range(1, 401))


def test_poison_task_is_dead_lettered_with_its_error(queue_url: str, farm_job: Callable[..., Path],
                                                     job_dir: Path) -> None:
    write_latents(job_dir / "npy", range(1, 7), (4, 12, 16), suffix=".npy")
    poison = job_dir / "npy" / "frame_0003.npy"
    poison.write_bytes(poison.read_bytes()[:-64])
    job = farm_job(source={"path": "npy/frame_{frame:04d}.npy"}, output={"formats": ["png"]})
    job_id = submit(job, queue_url, "--chunk", "1", "--max-attempts", "2")
    workers = [start_worker(queue_url, job_dir, "--exit-when-idle") for _ in range(2)]
    for worker in workers:
        _out, err = worker.communicate(timeout=180)
        assert worker.returncode == 0, err
    final = status(queue_url, job_id)
    assert (final["done"], final["failed"], final["pending"]) == (5, 1, 0)
    [error] = final["errors"]
    assert (error["first"], error["last"]) == (3, 3)
    assert "stage 'source' on frame 3 failed" in error["error"]
    assert_every_frame_once(job_dir / "out", [1, 2, 4, 5, 6])
    queue = open_queue(queue_url)   # each task's log, both attempts of the poisoned one (what the monitor shows)
    [poisoned] = [task for task in queue.tasks(job_id) if task.state == "failed"]
    log = queue.task_log(job_id, poisoned.task_id)
    assert log is not None and log.count("--- attempt ") == 2 and "--- attempt 2 on worker " in log
    assert log.count("stage 'source' on frame 3 failed") == 2 and "framefarm.worker" in log
    fine = queue.task_log(job_id, next(t.task_id for t in queue.tasks(job_id) if t.first == 1))
    assert fine is not None and "frames 1-1 (attempt 1): 1 frame(s) in" in fine and "failed" not in fine
    queue.close()
    requeued = render("requeue", job_id, "--queue", queue_url, "--failed")
    assert requeued.returncode == 0 and "requeued 1 task(s)" in requeued.stdout


def test_submit_with_an_idempotency_key_queues_once(queue_url: str, farm_job: Callable[..., Path]) -> None:
    job = farm_job()
    first = render("submit", str(job), "--queue", queue_url, "--idempotency-key", "sq010/sh0420/v3")
    again = render("submit", str(job), "--queue", queue_url, "--idempotency-key", "sq010/sh0420/v3")
    assert first.returncode == again.returncode == 0, again.stderr
    assert again.stdout == first.stdout and "nothing queued now" in again.stderr
    listed = json.loads(render("status", "--queue", queue_url, "--json").stdout)["jobs"]
    assert [job["job_id"] for job in listed] == [first.stdout.strip()]
    empty = render("submit", str(job), "--queue", queue_url, "--idempotency-key", "")
    assert empty.returncode == 2
    assert empty.stderr == "error: --idempotency-key = '': expected 1 to 200 printable characters\n"


def test_submit_some_frames_as_studios_write_them(queue_url: str, farm_job: Callable[..., Path],
                                                  job_dir: Path) -> None:
    job_id = submit(farm_job(), queue_url, "--frames", "2-6x2", "--chunk", "2")
    queued = status(queue_url, job_id)
    assert (queued["pending"], queued["done"]) == (3, 0)
    worker = start_worker(queue_url, job_dir, "--exit-when-idle")
    _out, err = worker.communicate(timeout=180)
    assert worker.returncode == 0, err
    final = status(queue_url, job_id)
    assert (final["done"], final["state"]) == (3, "done")
    root = job_dir / "out"
    assert sorted(r["frame"] for r in records(root)) == [2, 4, 6]   # frames only: no video record, no MP4
    assert not (root / "test.mp4").exists()
    backwards = render("submit", str(farm_job()), "--queue", queue_url, "--frames", "5-2")
    assert backwards.returncode == 2 and backwards.stderr.startswith("error: --frames = '5-2': expected FIRST-LAST")


def test_cancel_and_unknown_job(queue_url: str, farm_job: Callable[..., Path]) -> None:
    job_id = submit(farm_job(), queue_url)
    assert "cancelled 6 task(s)" in render("cancel", job_id, "--queue", queue_url).stdout
    assert status(queue_url, job_id)["state"] == "cancelled"
    missing = render("cancel", "nope", "--queue", queue_url)
    assert missing.returncode == 2 and "JOB = 'nope': no such job" in missing.stderr


@pytest.mark.parametrize("batch", [True, False], ids=["exit-when-idle", "long-lived"])
def test_a_misconfigured_worker_releases_what_it_refuses_and_exits_2(
        queue_url: str, farm_job: Callable[..., Path], job_dir: Path, tmp_path_factory: pytest.TempPathFactory,
        batch: bool) -> None:
    """A worker whose --output-root refuses every job used to fail each task (burning its
    attempts: here the only one) and exit 0."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    job_id = submit(farm_job(output={"root": str(elsewhere / "out"), "formats": ["png"]}), queue_url,
                    "--chunk", "1", "--max-attempts", "1")
    worker = start_worker(queue_url, job_dir, *(["--exit-when-idle"] if batch else []))
    _out, err = worker.communicate(timeout=120)
    assert worker.returncode == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: --output-root = '{job_dir.resolve()}': this worker refused every job it saw")
    assert f"output.root = '{elsewhere / 'out'}'" in last
    assert err.count("refusing job") == 1, "it says why once"
    final = status(queue_url, job_id)
    assert (final["pending"], final["failed"], final["done"]) == (6, 0, 0), "the tasks' attempts are untouched"
    assert not (elsewhere / "out").exists()
    fitting = start_worker(queue_url, elsewhere, "--exit-when-idle")
    _out, err = fitting.communicate(timeout=180)
    assert fitting.returncode == 0, err
    final = status(queue_url, job_id)
    assert (final["done"], final["failed"]) == (6, 0), "each task rendered on its only attempt"


def test_a_worker_that_renders_some_jobs_and_refuses_others_exits_0(
        queue_url: str, farm_job: Callable[..., Path], job_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    refused = submit(farm_job(output={"root": str(elsewhere / "out"), "formats": ["png"]}), queue_url, "--chunk", "6")
    taken = submit(farm_job(output={"formats": ["png"]}), queue_url, "--chunk", "3")
    worker = start_worker(queue_url, job_dir, "--exit-when-idle")
    _out, err = worker.communicate(timeout=180)
    assert worker.returncode == 0, err
    assert err.count("refusing job") == 1 and refused in err
    assert status(queue_url, taken)["done"] == 6
    assert status(queue_url, refused)["pending"] == 6


def test_submit_rejects_bad_jobs_like_run(queue_url: str, farm_job: Callable[..., Path]) -> None:
    result = render("submit", str(farm_job(shot={"fps": 0})), "--queue", queue_url)
    assert result.returncode == 2 and "shot.fps = 0" in result.stderr
    result = render("submit", str(farm_job(output={"formats": ["mp4"]})), "--queue", queue_url)
    assert result.returncode == 2 and "output.formats" in result.stderr


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[tuple[int, Callable[[], None]]]:
    """A redis-server with an fsynced append-only file, and a function that restarts it."""

    port = redis_server_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
               "--appendonly", "yes", "--appendfsync", "always", "--save", ""]
    server = {"process": subprocess.Popen(command, stdout=subprocess.DEVNULL)}

    def wait_up() -> None:
        import redis

        for _ in range(200):
            try:
                redis.Redis(port=port).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)

    def restart() -> None:
        server["process"].terminate()
        server["process"].wait(10)
        time.sleep(1.0)  # the worker sees the queue gone and backs off
        server["process"] = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        wait_up()

    wait_up()
    yield port, restart
    server["process"].terminate()
    server["process"].wait(10)


def test_redis_restart_mid_job(persistent_redis: tuple[int, Callable[[], None]], farm_job: Callable[..., Path],
                               job_dir: Path) -> None:
    port, restart = persistent_redis
    queue_url = f"redis://127.0.0.1:{port}/0"
    job = farm_job(source={"kind": "noise"}, shot={"frame_end": 60, "width": 64, "height": 48})
    job_id = submit(job, queue_url, "--chunk", "5")
    worker = start_worker(queue_url, job_dir, "--lease", "5", "--exit-when-idle")
    root = job_dir / "out"
    wait_for_records(root, 3, worker)
    restart()
    _out, err = worker.communicate(timeout=300)
    assert worker.returncode == 0, err
    assert "queue unavailable" in err
    final = status(queue_url, job_id)
    assert (final["done"], final["failed"], final["state"]) == (60, 0, "done")
    assert_every_frame_once(root, range(1, 61))


def test_worker_serves_prometheus_metrics(tmp_path: Path, farm_job: Callable[..., Path], job_dir: Path) -> None:
    import socket
    import urllib.request

    queue_url = f"sqlite:///{tmp_path / 'farm.db'}"
    job_id = submit(farm_job(output={"formats": ["png"]}), queue_url, "--chunk", "3")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    worker = start_worker(queue_url, job_dir, "--metrics-port", str(port))
    try:
        from workers.queue import open_queue

        queue = open_queue(queue_url)
        deadline = time.monotonic() + 120
        while queue.status(job_id)[0].done < 6:
            assert worker.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=60)
    assert "framefarm_frames_done_total 6.0" in metrics
    assert "framefarm_task_seconds_count 2.0" in metrics
    assert "framefarm_queue_pending_frames" in metrics
    assert 'framefarm_energy_joules_total{job=' not in metrics   # the CPU: not measured, never zero


def test_a_worker_keeps_each_tasks_trace_and_status_sums_its_runs(
        tmp_path: Path, farm_job: Callable[..., Path], job_dir: Path) -> None:
    queue_url = f"sqlite:///{tmp_path / 'farm.db'}"
    job_id = submit(farm_job(), queue_url, "--chunk", "3")
    worker = start_worker(queue_url, job_dir, "--exit-when-idle", "--traces")
    _out, err = worker.communicate(timeout=180)
    assert worker.returncode == 0, err
    root = job_dir / "out"
    from pipeline.files.manifest import read_runs
    runs = [r for r in read_runs(root) if r.get("farm_job") == job_id]
    assert sorted(r["task"] for r in runs) == [[1, 3], [1, 6], [4, 6]]   # two frame tasks and the video's
    traces = sorted((job_dir / "out-traces").glob(f"{job_id}.*.json"))
    assert [t.name for t in traces] == [f"{job_id}.1-3.1.json", f"{job_id}.1-6.1.json", f"{job_id}.4-6.1.json"]
    spans = [e for e in json.loads(traces[0].read_text())["traceEvents"] if e["ph"] == "X" and e["name"] != "waiting"
             and e["name"] != "blocked"]
    assert {f for e in spans for f in e.get("args", {}).get("frames", [])} == {1, 2, 3}
    shown = status(queue_url, job_id)
    assert (shown["energy_j"], shown["gpu_s"], shown["j_per_frame"]) == (None, None, None)   # CPU: not measured
    assert render("verify", str(root)).returncode == 0   # the traces are beside the root, not in it


@pytest.mark.gpu
def test_the_heartbeat_carries_an_nvml_reading_of_the_gpu(tmp_path: Path) -> None:
    import torch

    from workers.metrics import WorkerMetrics
    from workers.queue import open_queue

    metrics = WorkerMetrics(None, torch.device("cuda:0"), open_queue(f"sqlite:///{tmp_path / 'farm.db'}"))
    metrics.sample()
    assert metrics.gpu is not None
    assert 0 <= metrics.gpu["utilisation"] <= 1 and 10 <= metrics.gpu["temperature_c"] <= 110
    assert 0 <= metrics.gpu["memory_used"] <= metrics.gpu["memory_total"] > 2**30


def test_gpus_all_children_get_the_other_options_unchanged() -> None:
    from workers.gpus import without_gpus_option

    argv = ["worker", "--queue", "q", "--gpus", "all", "--name", "all", "--gpus=all", "--slots", "2"]
    assert without_gpus_option(argv) == ["worker", "--queue", "q", "--name", "all", "--slots", "2"]


def wait_until(check: Callable[[], object], process: subprocess.Popen, timeout: float = 120) -> object:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
    return result


def test_requeue_lifts_a_workers_blocklist(queue_url: str, farm_job: Callable[..., Path], job_dir: Path) -> None:
    """A worker that gave up on a job never took it back, even after `render requeue`;
    the blocklist lived in the worker, out of sight of `render status`."""
    write_latents(job_dir / "npy", range(1, 7), (4, 12, 16), suffix=".npy")
    poison = job_dir / "npy" / "frame_0003.npy"
    whole = poison.read_bytes()
    poison.write_bytes(whole[:-64])
    job = farm_job(source={"path": "npy/frame_{frame:04d}.npy"}, output={"formats": ["png"]})
    job_id = submit(job, queue_url, "--chunk", "1", "--max-attempts", "5")
    worker = start_worker(queue_url, job_dir, "--name", "w1", "--slots", "1", "--max-job-failures", "1")
    try:
        blocked = wait_until(lambda: status(queue_url, job_id).get("blocked"), worker)
        assert blocked == [{"worker": "w1", "failures": 1}]
        shown = render("status", job_id, "--queue", queue_url).stdout
        assert "blocklisted by worker(s) w1 (1 failures)" in shown and f"render requeue {job_id}" in shown
        time.sleep(2)
        held = status(queue_url, job_id)
        assert (held["done"], held["pending"], held["failed"]) == (2, 4, 0), "w1 no longer takes the job"
        poison.write_bytes(whole)  # the operator fixes the cause, then requeues
        requeued = render("requeue", job_id, "--queue", queue_url)
        assert requeued.returncode == 0 and "workers w1 may take it again" in requeued.stdout
        wait_until(lambda: status(queue_url, job_id)["done"] == 6, worker)
        assert status(queue_url, job_id)["blocked"] == []
    finally:
        worker.send_signal(signal.SIGTERM)
        _out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert "blocklists it here" in err
    assert_every_frame_once(job_dir / "out", range(1, 7))


def test_cancel_stops_tasks_in_flight_and_status_matches_the_disk(queue_url: str, farm_job: Callable[..., Path],
                                                                   job_dir: Path) -> None:
    """After `render cancel`, tasks in flight used to finish and publish (status: 32
    done, 40 files on disk). Now they stop at the next frame boundary, and what they
    published counts as done."""
    frames = 1200
    job = farm_job(source={"kind": "noise"}, shot={"frame_end": frames, "width": 64, "height": 48},
                   output={"formats": ["png", "mp4"]})
    job_id = submit(job, queue_url, "--chunk", str(frames // 2))
    worker = start_worker(queue_url, job_dir)       # two slots, both tasks in flight; renewals every 20 s
    root = job_dir / "out"
    wait_for_records(root, 6, worker)
    cancelled = render("cancel", job_id, "--queue", queue_url)
    assert cancelled.returncode == 0 and "cancelled 2 task(s)" in cancelled.stdout
    at_cancel = len(records(root))
    wait_until(lambda: not status(queue_url, job_id).get("stopping", 0), worker, 30)
    time.sleep(3)                                   # nothing more is published
    final = status(queue_url, job_id)
    on_disk = sorted(root.rglob("*.png"))
    frame_records = [r for r in records(root) if r["kind"] == "frame"]
    assert len(on_disk) == len(frame_records), "every file published is recorded"
    assert final["done"] == len(on_disk), "status counts what lies on disk"
    assert final["done"] + final["cancelled"] == frames and final["leased"] == final["pending"] == 0
    assert len(on_disk) - at_cancel <= 8, "only frames already being written finished after the cancel"
    assert len(on_disk) < frames // 2
    assert not (root / "test.mp4").exists() and not list(root.rglob(".*.tmp*"))
    worker.send_signal(signal.SIGTERM)
    _out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert err.count("job cancelled; stopped at a frame boundary") == 2
    assert render("verify", str(root)).returncode == 0


def test_status_shows_silent_workers_as_gone(tmp_path: Path) -> None:
    from workers.queue import open_queue

    url = f"sqlite://{tmp_path / 'farm.db'}"
    queue = open_queue(url)
    queue.heartbeat("crashed", {"heartbeat_s": 0.1, "lease_s": 0.2, "frames_done": 4, "draining": False})
    queue.heartbeat("busy", {"frames_done": 1, "draining": True})
    queue.close()
    time.sleep(0.5)
    shown = render("status", "--queue", url)
    assert shown.returncode == 0, shown.stderr
    assert "worker crashed: gone (no heartbeat for" in shown.stdout
    assert "worker busy: draining, last heartbeat" in shown.stdout
    listed = {w["name"]: w for w in json.loads(render("status", "--queue", url, "--json").stdout)["workers"]}
    assert (listed["crashed"]["state"], listed["busy"]["state"]) == ("gone", "draining")
    assert listed["crashed"]["age_s"] >= 0.4


class HookReceiver:
    """A webhook receiver on 127.0.0.1: every POST's event header, signature and body."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.events: list[tuple[str, str, bytes]] = []
        received = self.events

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:   # the standard library's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((self.headers["X-Framefarm-Event"], self.headers["X-Framefarm-Signature"], body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_a_job_done_or_failed_posts_one_signed_webhook(queue_url: str, farm_job: Callable[..., Path],
                                                       job_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib
    import hmac

    receiver = HookReceiver()
    secret = "s3cret-for-hooks"
    monkeypatch.setenv("FF_TEST_HOOK_SECRET", secret)   # the workers' environment
    notify = {"webhook": receiver.url, "secret_env": "FF_TEST_HOOK_SECRET"}
    fine = submit(farm_job(notify=notify, output={"formats": ["png"]}), queue_url, "--chunk", "2")
    write_latents(job_dir / "npy", range(1, 7), (4, 12, 16), suffix=".npy")
    poison = job_dir / "npy" / "frame_0002.npy"   # readable header, truncated data: fails in the render
    poison.write_bytes(poison.read_bytes()[:-64])
    poisoned = submit(write_job_file(farm_job, "poison.toml", notify=notify, output={"formats": ["png"]},
                                     source={"path": "npy/frame_{frame:04d}.npy"}), queue_url,
                      "--chunk", "3", "--max-attempts", "1")
    workers = [start_worker(queue_url, job_dir, "--exit-when-idle") for _ in range(2)]
    for worker in workers:
        _out, err = worker.communicate(timeout=180)
        assert worker.returncode == 0, err
    receiver.server.shutdown()
    events = {json.loads(body)["job"]: (name, sign, json.loads(body)) for name, sign, body in receiver.events}
    assert len(receiver.events) == 2 and set(events) == {fine, poisoned}, receiver.events   # one each
    for _event, sign, body in receiver.events:
        assert sign == "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert events[fine][0] == "job.done" and events[fine][2]["frames_done"] == 6
    assert events[poisoned][0] == "job.failed" and events[poisoned][2]["frames_failed"] == 3
    assert "stage 'source' on frame 2 failed" in events[poisoned][2]["errors"][0]["error"]


def write_job_file(farm_job: Callable[..., Path], name: str, **overrides: object) -> Path:
    """A second job file beside farm.toml (farm_job writes farm.toml each time)."""
    path = farm_job(**overrides)
    return path.rename(path.with_name(name))


def test_a_bad_webhook_is_refused_in_one_line(farm_job: Callable[..., Path], tmp_path: Path) -> None:
    for notify, field in (({"webhook": "file:///etc/passwd", "secret_env": "X"}, "notify.webhook"),
                          ({"webhook": "http://127.0.0.1/h", "secret_env": "not a name"}, "notify.secret_env"),
                          ({"webhook": "http://127.0.0.1/h"}, "notify.secret_env")):
        result = render("submit", str(farm_job(notify=notify)), "--queue", f"sqlite:///{tmp_path / 'q.db'}")
        assert result.returncode == 2 and field in result.stderr and "\n" not in result.stderr.strip(), result.stderr


@pytest.mark.parametrize(("url", "shown", "words"), [
    ("https://hook:hunter2@pipeline.example/ff", "'https://***@pipeline.example/ff'", "must not hold user:password"),
    ("http://hook:hunter2/x@pipeline.example/ff", "'http://***@pipeline.example/ff'", "a port from 0 to 65535"),
    ("http://pipeline.example:99999/ff", "'http://pipeline.example:99999/ff'", "a port from 0 to 65535"),
    ("http://[::1/ff", "'http://[::1/ff'", "IPv6 host in [brackets]"),
    ("http://pipeline example/ff", "'http://pipeline example/ff'", "without spaces or control characters"),
    ("http:///ff", "'http:///ff'", "URL with a host"),
])
def test_a_webhook_a_worker_could_not_post_to_is_refused_at_submit(
        url: str, shown: str, words: str, farm_job: Callable[..., Path], tmp_path: Path) -> None:
    """Each of these was queued and failed only when the job ended, in the worker (a
    traceback for most); a password was echoed. Now: exit 2, one line, password masked."""
    result = render("submit", str(farm_job(notify={"webhook": url, "secret_env": "X"})), "--queue",
                    f"sqlite:///{tmp_path / 'q.db'}")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"error: notify.webhook = {shown}: " in result.stderr and words in result.stderr, result.stderr
    assert "hunter2" not in result.stderr and not (tmp_path / "q.db").exists()


class DripReceiver:
    """A webhook receiver that never finishes answering: one byte every 0.2 s, for ever."""

    def __init__(self) -> None:
        import threading

        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading

        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1_000_000:
                if self.stop.wait(0.2):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


EVENT = {"event": "job.done", "job": "j1"}


def test_a_webhook_url_that_cannot_be_used_is_logged_once_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    """A job queued before submit checked its URL: post() raised ValueError or InvalidURL
    in the worker's thread (a traceback); now one line each, no retry, password masked."""
    from workers.webhook import post

    for url in ("http://[::1/hook", "http://pipe line.example/hook", "http://hook:hunter 2@pipeline.example/",
                "http://pipeline.example/h\u00e9"):
        caplog.clear()
        assert post(url, "secret", EVENT) is False
        [line] = [record.getMessage() for record in caplog.records]
        assert "webhook job.done for job j1 not sent: its URL cannot be used" in line, line
        assert "hunter" not in line


def test_a_slow_drip_receiver_cannot_hold_the_hook(monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A socket timeout bounds each read only: a byte every 0.2 s held post() for ever."""
    import threading

    from workers import webhook

    monkeypatch.setattr(webhook, "TIMEOUT_S", 1.0)
    monkeypatch.setattr(webhook, "ATTEMPTS", 1)
    receiver = DripReceiver()
    result: list[bool] = []
    sender = threading.Thread(target=lambda: result.append(webhook.post(receiver.url, "secret", EVENT)), daemon=True)
    sender.start()
    sender.join(60)   # a guard, not a measurement: without the deadline this never ends
    receiver.close()
    assert not sender.is_alive() and result == [False]
    assert "attempt 1 failed: no whole answer within 1 s" in caplog.text


def test_a_hook_in_flight_does_not_keep_the_process_alive(tmp_path: Path) -> None:
    """The sending thread was not a daemon: a process that ended while a receiver dripped
    its answer never exited."""
    receiver = DripReceiver()
    code = ("import sys; from workers.webhook import send_in_background\n"
            f"send_in_background({receiver.url!r}, 'FF_HOOK_SECRET', {EVENT!r})\n"
            "print('sent')\n")
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env={
            **os.environ, "FF_HOOK_SECRET": "s", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    finally:
        receiver.close()
    assert (done.returncode, done.stdout) == (0, "sent\n"), done.stderr
