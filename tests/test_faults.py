"""Fault injection (issue 15, "Reliability figures to record"), on both queue backends:

- kill -9 of a worker, 20 times per backend, at random points of its tasks; every
  fourth kill lands, by construction, after a task's outputs are published and before
  its ack reaches the queue (SQLite: the test holds the database's write lock, so the
  worker publishes, which only reads the queue, and then waits at its ack; Redis: the
  worker talks to Redis through a proxy that holds back its ack);
- a full disk (RLIMIT_FSIZE, set in the child before it runs) while a frame is written
  and while the video is closed: one clear error line, no torn file, and `render run
  --resume` finishes once the limit is lifted;
- redis-server killed (-9) and started again on the same port from the same append-only
  file, twice in one job;
- latents deleted while their job runs: the task is dead-lettered, `render status` shows
  its error and the job as "failed" (not "active"), and a requeue finishes it.

Each test counts what the fault could cost: frames lost (no file that matches a
record), duplicated (recorded more than once), torn (a file that does not match its
record or that no record names, a temporary file left behind, a manifest line that is
not a record); it asserts each is 0 and that `render verify` exits 0. The figures of a
run are in benchmarks/RESULTS.md ("Fault injection (issue 15)"); `-s` prints them.

The commands run as `render ...` (pipeline.cli.main) in processes forked from a
"zygote": one Python process that imported the project once, since importing torch and
diffusers takes 5-10 s on a 2-core box and 40 worker starts could not afford it. A
forked child is a whole worker process all the same: its own pid, files, sockets and
log, and kill -9 ends it like any other.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import redis_server_port, write_latents
from safetensors.torch import save_file

from pipeline.files.manifest import MANIFEST_NAME, check_record, latest_by_path, read_records, verify
from pipeline.files.publish import TEMP_SUFFIX
from pipeline.files.thumbnail import THUMBNAILS_DIR
from pipeline.files.video import read_video_info
from workers.queue import open_queue, sqlite_path

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parent.parent

# -- the zygote: `render ...` in forked processes

ZYGOTE = r"""
import json, os, resource, signal, sys, traceback, warnings
warnings.simplefilter("ignore", DeprecationWarning)   # Python 3.12+: fork() with torch's helper thread
import pipeline.cli, pipeline.run, workers.worker, workers.status, workers.submit   # what a command imports
import workers.sqlite_queue, workers.redis_queue
from diffusers import AutoencoderKL   # what a worker's first render imports


def reap(*_):   # at once: a dead worker's pid must be gone for the next run's sweep of its temporaries
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


signal.signal(signal.SIGCHLD, reap)
while line := sys.stdin.readline():
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            if request["fsize"]:   # a full disk: writes past this size fail (EFBIG) instead of killing
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
                resource.setrlimit(resource.RLIMIT_FSIZE, (request["fsize"], hard))
            for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request["out"], os.O_WRONLY | os.O_CREAT),
                                    (2, request["err"], os.O_WRONLY | os.O_CREAT)):
                opened = os.open(path, flags, 0o644)
                os.dup2(opened, fd)
                os.close(opened)
            sys.argv = ["render", *request["argv"]]
            try:
                pipeline.cli.main()
                code = 0
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                limit = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))   # the soft limit only: lifted
                with open(request["rc"], "w") as out:
                    out.write(str(code))
            finally:
                os._exit(code)
    print(pid, flush=True)
"""


@dataclass
class Child:
    """One `render` command in a process of its own."""
    pid: int
    base: Path
    killed: bool = False

    def out(self) -> str:
        return self.base.with_suffix(".out").read_text()

    def err(self) -> str:
        return self.base.with_suffix(".err").read_text()

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def kill9(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.killed = True
        deadline = time.monotonic() + 10
        while self.alive():   # reaped by the zygote: gone, as a later run's sweep must see it
            assert time.monotonic() < deadline, f"pid {self.pid} survived kill -9"
            time.sleep(0.002)

    def wait(self, timeout: float = 180) -> int:
        rc = self.base.with_suffix(".rc")
        deadline = time.monotonic() + timeout
        while not rc.exists() or self.alive():
            assert time.monotonic() < deadline, f"`render` pid {self.pid} still running:\n{self.err()[-3000:]}"
            time.sleep(0.02)
        return int(rc.read_text())


class Zygote:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.children: list[Child] = []
        self.process = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})

    def start(self, *argv: str, fsize: int | None = None) -> Child:
        base = self.folder / f"{len(self.children) + 1:03d}-{argv[0]}"
        request = {"argv": list(argv), "fsize": fsize, **{k: f"{base}.{k}" for k in ("out", "err", "rc")}}
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "the zygote died"
        self.children.append(Child(int(line), base))
        return self.children[-1]

    def run(self, *argv: str, fsize: int | None = None, timeout: float = 180) -> tuple[int, str, str]:
        child = self.start(*argv, fsize=fsize)
        rc = child.wait(timeout)
        return rc, child.out(), child.err()

    def kill_from(self, first: int) -> None:
        """Kill the children from the `first`-th on that still run (a test that failed midway)."""
        for child in self.children[first:]:
            if not child.killed and not child.base.with_suffix(".rc").exists():   # never a pid reused since
                with contextlib.suppress(ProcessLookupError, AssertionError):
                    child.kill9()

    def close(self) -> None:
        self.kill_from(0)
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(30)


@pytest.fixture(scope="session")
def zygote_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygote]:
    forks = Zygote(tmp_path_factory.mktemp("zygote"))
    yield forks
    forks.close()


@pytest.fixture
def zygote(zygote_process: Zygote) -> Iterator[Zygote]:
    """The session's zygote; what a test started and left running is killed after it."""
    first = len(zygote_process.children)
    yield zygote_process
    zygote_process.kill_from(first)


def worker_argv(url: str, job_dir: Path, name: str, *extra: str) -> list[str]:
    return ["worker", "--queue", url, "--device", "cpu", "--output-root", str(job_dir),
            "--model-root", str(job_dir.parent), "--name", name, *extra]


def submit(zygote: Zygote, job: Path, url: str, *extra: str) -> str:
    rc, out, err = zygote.run("submit", str(job), "--queue", url, *extra)
    assert rc == 0, err
    return out.strip()


def wait_until(check: Callable[[], Any], what: str, timeout: float = 120, alive: Child | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert alive is None or alive.alive(), f"the worker died waiting for {what}:\n{alive.err()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
    return result


# -- what lies on disk

def tally(root: Path, frames: Iterable[int], video: bool) -> dict[str, int]:
    """Frames lost, duplicated and torn under an output root (see the module's docstring)."""
    records = read_records(root)
    latest = latest_by_path(records)
    whole = {rel for rel, record in latest.items() if check_record(root, record) is None}
    valid_frames = {r.get("frame") for rel, r in latest.items() if rel in whole and r.get("kind") == "frame"}
    valid_video = any(r.get("kind") == "video" for rel, r in latest.items() if rel in whole)
    recorded = Counter(r.get("frame") for r in records if r.get("kind") == "frame")
    videos = sum(1 for r in records if r.get("kind") == "video")
    files = [p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST_NAME]
    rel = {p: p.relative_to(root).as_posix() for p in files}
    # a thumbnail is a view of a frame, not an output (as `verify` has it); a half-written one is still torn
    torn = [p for p in files if p.name.endswith(TEMP_SUFFIX)
            or (rel[p] not in whole and THUMBNAILS_DIR not in p.relative_to(root).parts[:-1])]
    bad_lines = [problem for problem in verify(root)[1] if "not a manifest record" in problem]
    return {"lost": sum(1 for frame in frames if frame not in valid_frames) + int(video and not valid_video),
            "duplicated": sum(count - 1 for count in recorded.values()) + max(0, videos - 1),
            "torn": len(torn) + len(bad_lines)}


def check_outputs(zygote: Zygote, root: Path, frames: range, video: bool = True) -> dict[str, int]:
    """Every frame once, nothing torn, `render verify` content, the video whole."""
    counts = tally(root, frames, video)
    rc, out, err = zygote.run("verify", str(root))
    assert rc == 0, out + err
    if video:
        assert read_video_info(root / "test.mp4")[0] == len(frames)
    return counts


def temporaries(root: Path, pid: int | None = None) -> list[Path]:
    return [p for p in root.rglob(f"*{TEMP_SUFFIX}") if pid is None or f".{pid}." in p.name]


# -- the queue, read from the backend's own storage

def leases_of(url: str, worker: str, db: sqlite3.Connection | None = None) -> list[tuple[str, str, int, int]]:
    """(job, kind, first, last) of each task `worker` holds."""
    if url.startswith("sqlite:"):
        with contextlib.ExitStack() as stack:
            if db is None:
                db = stack.enter_context(contextlib.closing(sqlite3.connect(sqlite_path(url))))
            return [(job, kind, first, last) for job, kind, first, last in db.execute(
                "SELECT job_id, kind, first, last FROM tasks WHERE worker = ? AND state = 'leased' ORDER BY id",
                (worker,))]
    import redis

    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        held = []
        for job in client.zrange("ff:jobs", 0, -1):
            for raw in client.hvals(f"ff:job:{job}:tasks"):
                task = json.loads(raw)
                if task["state"] == "leased" and task.get("worker") == worker:
                    held.append((job, task["kind"], int(task["first"]), int(task["last"])))
        return held
    finally:
        client.close()


ACK_SCRIPT_MARK = "-- ack: the task is done"


class AckGate:
    """A TCP proxy between one worker and Redis. It passes everything on, except that,
    once armed, it holds back the next ack the worker sends (the EVALSHA of ack.lua):
    the worker has published its task's outputs and asked to ack, and Redis never hears
    of it. The worker waits for a reply until it is killed."""

    def __init__(self, redis_url: str) -> None:
        from workers import redis_queue

        self.ack_sha = hashlib.sha1(redis_queue._ACK.encode()).hexdigest().encode()
        assert ACK_SCRIPT_MARK in redis_queue._ACK
        parts = urllib.parse.urlsplit(redis_url)
        assert parts.hostname == "127.0.0.1" and parts.port is not None
        self.redis_port = parts.port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = parts._replace(netloc=f"127.0.0.1:{self.port}").geturl()   # the worker's queue URL
        self.armed, self.held, self.closed = threading.Event(), threading.Event(), threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                worker, _ = self.listener.accept()
                server = socket.create_connection(("127.0.0.1", self.redis_port))
            except OSError:
                return
            self.sockets += [worker, server]
            threading.Thread(target=self._pump, args=(worker, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, worker, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_worker: bool) -> None:
        tail = b""
        try:
            while data := source.recv(1 << 16):
                if from_worker and self.armed.is_set() and (self.ack_sha in tail + data
                                                            or ACK_SCRIPT_MARK.encode() in tail + data):
                    self.held.set()
                    self.closed.wait()   # neither passed on nor refused: the worker waits for its reply
                    return
                tail = (tail + data)[-len(ACK_SCRIPT_MARK):]
                sink.sendall(data)
        except OSError:
            pass
        finally:   # one side closed: close the other, as a direct connection would be
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        for end in self.sockets:
            with contextlib.suppress(OSError):
                end.close()


# -- kill -9 at random points of tasks

KILLS = 20
ACK_EVERY = 4          # every 4th kill lands between a task's publish and its ack
SPAN_S = 2.5           # other kills: a uniform delay in [0, SPAN_S] after the worker first holds a task, which
                       #   covers its first task (model load included, ~1-2.5 s here) and the ones after it
JOB_FRAMES = 32


def outputs_recorded(root: Path, kind: str, first: int, last: int) -> tuple[int, int]:
    """(outputs of the task recorded in its root's manifest, outputs it has)."""
    records = read_records(root)
    if kind == "video":
        return int(any(r.get("kind") == "video" for r in records)), 1
    frames = {r.get("frame") for r in records if r.get("kind") == "frame"}
    return sum(1 for frame in range(first, last + 1) if frame in frames), last - first + 1


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_kill_9_at_random_points_of_tasks(backend: str, zygote: Zygote, write_job: Callable[..., Path],
                                         job_dir: Path, tmp_path: Path,
                                         redis_url_factory: Callable[[], str]) -> None:
    started = time.monotonic()
    rng = random.Random(15)
    url = f"sqlite:///{tmp_path / 'farm.db'}" if backend == "sqlite" else redis_url_factory()
    queue = open_queue(url)
    jobs: dict[str, Path] = {}

    def add_job() -> None:
        root = job_dir / f"out{len(jobs) + 1}"
        job = write_job(f"kill{len(jobs) + 1}.toml", source={"kind": "noise"},
                        shot={"frame_end": JOB_FRAMES, "width": 128, "height": 96}, output={"root": str(root)})
        jobs[submit(zygote, job, url, "--chunk", "4", "--max-attempts", "100")] = root

    gates: list[AckGate] = []
    kills = ack_window_kills = 0
    landings: Counter[str] = Counter()     # where, in each task the victim held, its kill landed
    left_by_kills = 0                      # temporary files a killed worker left (a later run sweeps them)
    add_job()
    try:
        for index in range(KILLS):
            if not sum(s.pending for s in queue.status()) and index < KILLS - 1:
                add_job()   # keep work queued: a worker must always have a task to be killed in
            name = f"victim{index:02d}"
            gate = AckGate(url) if backend == "redis" else None
            gates += [gate] if gate else []
            victim = zygote.start(*worker_argv(gate.url if gate else url, job_dir, name, "--lease", "3"))
            wait_until(lambda: leases_of(url, name), "a lease", alive=victim)   # noqa: B023
            in_window = index % ACK_EVERY == ACK_EVERY - 1
            if not in_window:
                time.sleep(rng.uniform(0, SPAN_S))
                victim.kill9()
                held = leases_of(url, name)
            elif gate is not None:
                gate.armed.set()
                wait_until(gate.held.is_set, "the worker's ack", 30, alive=victim)
                victim.kill9()
                held = leases_of(url, name)
            else:
                held = kill_9_at_ack_under_a_write_lock(url, name, victim, jobs)
            kills += 1
            landed = []
            for job, kind, first, last in held:
                done, total = outputs_recorded(jobs[job], kind, first, last)
                landed.append("between publish and ack" if done == total else "mid-task" if done
                              else "before its first output")
            landings.update(landed or ["between tasks"])
            if in_window:
                assert "between publish and ack" in landed, (landed, held)
                ack_window_kills += 1
            left_by_kills += sum(len(temporaries(root, victim.pid)) for root in jobs.values())
        finisher = zygote.start(*worker_argv(url, job_dir, "finisher", "--lease", "3", "--exit-when-idle"))
        assert finisher.wait(240) == 0, finisher.err()[-3000:]
    finally:
        for gate in gates:
            gate.close()
    figures: Counter[str] = Counter()
    for job, root in jobs.items():
        [final] = queue.status(job)
        assert (final.state, final.done, final.failed) == ("done", JOB_FRAMES, 0), final
        figures.update(check_outputs(zygote, root, range(1, JOB_FRAMES + 1)))
        assert not temporaries(root), "every temporary file a kill left was swept"
    queue.close()
    print(f"\nfaults: kill -9 on {backend}: {kills} kills ({ack_window_kills} held between publish and ack); "
          f"tasks held at the kills: {dict(landings)}; {left_by_kills} temporary file(s) left, all swept; "
          f"{len(jobs)} jobs, {len(jobs) * JOB_FRAMES} frames + {len(jobs)} videos: lost {figures['lost']}, duplicated "
          f"{figures['duplicated']}, torn {figures['torn']}; {time.monotonic() - started:.0f} s")
    assert (figures["lost"], figures["duplicated"], figures["torn"]) == (0, 0, 0), figures
    assert (kills, ack_window_kills) == (KILLS, KILLS // ACK_EVERY)


def kill_9_at_ack_under_a_write_lock(url: str, name: str, victim: Child, jobs: dict[str, Path]
                                     ) -> list[tuple[str, str, int, int]]:
    """SQLite: hold the queue's write lock. The worker renders and publishes its tasks
    (that only reads the queue), then waits for the lock at its ack (or a renewal); once
    every output of its tasks is recorded, kill it there."""
    db = sqlite3.connect(sqlite_path(url), timeout=30, isolation_level=None)
    try:
        while True:
            db.execute("BEGIN IMMEDIATE")
            held = leases_of(url, name, db)
            if held:
                break
            db.execute("ROLLBACK")   # between two tasks: let it lease the next one
            time.sleep(0.01)
        wait_until(lambda: all(fully_recorded(jobs[job], kind, first, last) for job, kind, first, last in held),
                   "its outputs", 25, alive=victim)
        time.sleep(0.2)   # from its last record to its ack
        victim.kill9()
        assert leases_of(url, name, db) == held, "no ack got through"
    finally:
        if db.in_transaction:
            db.execute("ROLLBACK")
        db.close()
    return held


def fully_recorded(root: Path, kind: str, first: int, last: int) -> bool:
    done, total = outputs_recorded(root, kind, first, last)
    return done == total


# -- a full disk

def latents(folder: Path, noise: Iterable[int], flat: Iterable[int] = ()) -> str:
    """Latents for 64x48 frames: random ones decode to PNGs of ~8.6 KB, flat (zero) ones to ~3.6 KB."""
    pattern = write_latents(folder, list(noise), (4, 24, 32))
    for frame in flat:
        save_file({"latents": torch.zeros(4, 24, 32)}, str(folder / f"frame_{frame:04d}.safetensors"))
    return pattern


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    return line


def sizes(root: Path, frames: Iterable[int]) -> list[int]:
    return [(root / "test" / f"test.{frame:04d}.png").stat().st_size for frame in frames]


FRAME_LIMIT = 6000     # bytes: frames 1-6 (flat, ~3.6 KB) fit, frame 7 (~8.6 KB) does not


def test_a_full_disk_while_a_frame_is_written(zygote: Zygote, write_job: Callable[..., Path], job_dir: Path) -> None:
    job = write_job("full.toml", shot={"frame_end": 12, "width": 64, "height": 48},
                    source={"path": latents(job_dir / "full", range(7, 13), range(1, 7))})
    root = job_dir / "out"
    rc, _out, err = zygote.run("run", str(job), "--device", "cpu", fsize=FRAME_LIMIT)
    assert rc == 1, err
    line = one_error_line(err)
    assert line.startswith("error: stage 'write' on frame ") and "File too large" in line and "--resume" in line
    frame = int(line.split("on frame ")[1].split()[0])
    assert frame >= 7 and f"{root / 'test' / f'test.{frame:04d}.png'}'" in line, "it names the frame's file"
    published = sorted(r["frame"] for r in read_records(root))
    assert published and max(published) <= 6, published
    after_fault = tally(root, published, video=False)
    assert not temporaries(root) and not (root / "test.mp4").exists()
    rc, out, err = zygote.run("run", str(job), "--device", "cpu", "--resume")   # space freed: no limit
    assert rc == 0, err
    assert f"{len(published)} frame(s) already finished" in out
    counts = check_outputs(zygote, root, range(1, 13))
    assert max(sizes(root, range(1, 7))) < FRAME_LIMIT < min(sizes(root, range(7, 13))), "the fault hit frame 7"
    print(f"\nfaults: full disk at a frame's write: {len(published)} frame(s) published before it, "
          f"{line!r}; after the fault {after_fault}; after --resume {counts}")
    assert after_fault == counts == {"lost": 0, "duplicated": 0, "torn": 0}


VIDEO_LIMIT = 16000    # bytes: every PNG (~8.7 KB) and the manifest fit; the lossless MP4 (~29 KB) does not


def test_a_full_disk_while_the_video_is_closed(zygote: Zygote, write_job: Callable[..., Path],
                                               job_dir: Path) -> None:
    """x264 holds every packet of so short a shot until it is flushed, so the MP4 grows
    past the limit while it is being closed, after every frame is published."""
    job = write_job("video.toml", shot={"frame_end": 8, "width": 64, "height": 48},
                    source={"path": latents(job_dir / "noisy", range(1, 9))},
                    tuning={"writer_threads": 2, "video_crf": 0})
    root = job_dir / "out"
    rc, _out, err = zygote.run("run", str(job), "--device", "cpu", fsize=VIDEO_LIMIT)
    assert rc == 1, err
    line = one_error_line(err)
    assert line.startswith("error: stage 'write' failed: ") and "File too large" in line and "--resume" in line
    assert f"{root / 'test.mp4'}'" in line, "it names the video, not its temporary file"
    after_fault = tally(root, range(1, 9), video=False)
    assert not (root / "test.mp4").exists() and not temporaries(root)
    rc, out, err = zygote.run("run", str(job), "--device", "cpu", "--resume")
    assert rc == 0, err
    assert "8 frame(s) already finished" in out
    counts = check_outputs(zygote, root, range(1, 9))
    assert max(sizes(root, range(1, 9))) < VIDEO_LIMIT < (root / "test.mp4").stat().st_size
    print(f"\nfaults: full disk at the video's close: {line!r}; after the fault {after_fault} (8 frames "
          f"published); after --resume {counts}")
    assert after_fault == counts == {"lost": 0, "duplicated": 0, "torn": 0}


# -- redis-server killed and started again

@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[int, Callable[[], None]]]:
    """A redis-server of this test's own, its append-only file fsynced at every write, and
    a function that kills it (-9) and starts it again on the same port and file."""

    import redis

    port = redis_server_port()
    folder = tmp_path / "redis"
    folder.mkdir()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
               "--appendonly", "yes", "--appendfsync", "always", "--save", ""]
    server = {"process": subprocess.Popen(command, stdout=subprocess.DEVNULL)}

    def wait_up() -> None:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except (redis.ConnectionError, redis.BusyLoadingError):
                assert time.monotonic() < deadline, "redis-server did not come back"
                time.sleep(0.05)
        client.close()

    def restart() -> None:
        server["process"].kill()
        server["process"].wait(10)
        time.sleep(0.5)   # down long enough for the workers to notice
        server["process"] = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        wait_up()

    wait_up()
    yield port, restart
    server["process"].kill()
    server["process"].wait(10)


def test_redis_killed_and_restarted_mid_job(own_redis: tuple[int, Callable[[], None]], zygote: Zygote,
                                            write_job: Callable[..., Path], job_dir: Path) -> None:
    port, restart = own_redis
    url = f"redis://127.0.0.1:{port}/0"
    frames = range(1, 49)
    job = write_job("restart.toml", source={"kind": "noise"}, shot={"frame_end": 48, "width": 128, "height": 96})
    job_id = submit(zygote, job, url, "--chunk", "4")
    workers = [zygote.start(*worker_argv(url, job_dir, f"w{n}", "--lease", "10", "--exit-when-idle"))
               for n in range(2)]
    root = job_dir / "out"
    at_restart = []
    for published in (8, 24):
        wait_until(lambda: len(read_records(root)) >= published, f"{published} frames", alive=workers[0])  # noqa: B023
        at_restart.append(len(read_records(root)))
        restart()
    for worker in workers:
        assert worker.wait(180) == 0, worker.err()[-3000:]
    assert all(count < len(frames) for count in at_restart), at_restart
    assert any("queue unavailable" in worker.err() for worker in workers)
    queue = open_queue(url)
    [final] = queue.status(job_id)
    queue.close()
    assert (final.state, final.done, final.failed) == ("done", len(frames), 0), final
    counts = check_outputs(zygote, root, frames)
    print(f"\nfaults: redis-server killed -9 and restarted twice (at {at_restart} of {len(frames)} frames): "
          f"{counts}")
    assert counts == {"lost": 0, "duplicated": 0, "torn": 0}


# -- latents that vanish mid-run

@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_latents_that_vanish_mid_run_dead_letter_the_task_and_fail_the_job(
        backend: str, zygote: Zygote, write_job: Callable[..., Path], job_dir: Path, tmp_path: Path,
        redis_url_factory: Callable[[], str]) -> None:
    url = f"sqlite:///{tmp_path / 'farm.db'}" if backend == "sqlite" else redis_url_factory()
    job = write_job("vanish.toml", shot={"frame_end": 24, "width": 64, "height": 48},
                    source={"path": latents(job_dir / "vanish", range(1, 25))})
    job_id = submit(zygote, job, url, "--chunk", "4", "--max-attempts", "2")
    root = job_dir / "out"
    worker = zygote.start(*worker_argv(url, job_dir, "w1", "--exit-when-idle"))
    wait_until(lambda: read_records(root), "the first frame", alive=worker)
    vanished = {path: path.read_bytes() for path in (job_dir / "vanish" / f"frame_{f:04d}.safetensors"
                                                     for f in (21, 22))}
    for path in vanished:
        path.unlink()
    assert worker.wait(120) == 0, worker.err()[-3000:]
    rc, out, err = zygote.run("status", job_id, "--queue", url, "--json")
    assert rc == 0, err
    [shown] = json.loads(out)["jobs"]
    assert (shown["state"], shown["done"], shown["failed"], shown["pending"], shown["leased"]) == \
        ("failed", 20, 4, 0, 0), shown
    [error] = shown["errors"]
    assert (error["first"], error["last"]) == (21, 24) and "frame 21" in error["error"], error
    rc, table, err = zygote.run("status", job_id, "--queue", url)
    assert rc == 0, err
    assert f"{job_id:<14}{'test':<16}{'failed':<11}" in table and "failed frames 21-24: " in table, table
    assert "dead-lettered" in worker.err()
    counts = check_outputs(zygote, root, range(1, 21), video=False)
    for path, data in vanished.items():
        path.write_bytes(data)
    rc, out, err = zygote.run("requeue", job_id, "--queue", url, "--failed")
    assert rc == 0 and "requeued 1 task(s)" in out, out + err
    assert zygote.run("worker", *worker_argv(url, job_dir, "w2", "--exit-when-idle")[1:])[0] == 0
    queue = open_queue(url)
    [final] = queue.status(job_id)
    queue.close()
    assert (final.state, final.done, final.failed, final.errors) == ("done", 24, 0, [])
    finished = check_outputs(zygote, root, range(1, 25))
    print(f"\nfaults: latents vanished mid-run on {backend}: dead-lettered with {error['error']!r}, job "
          f"{shown['state']!r}; frames 1-20 {counts}; after restoring and requeueing {finished}")
    assert counts == finished == {"lost": 0, "duplicated": 0, "torn": 0}
