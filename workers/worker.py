"""The farm worker: lease tasks, render them with the same pipeline as `render run`,
acknowledge once the frames are durable.

    while not draining:
        lease a task -> plan its frames (resume: skip frames already published)
        render, renewing the lease meanwhile -> ack (or fail with the error)

Several task slots run at once so the GPU has the next task's frames while one task's
last frames are written; they take turns at the GPU (pipeline.gpu.turns), so that one
task's decodes run while another's frames are prepared or written, rather than both
sharing the GPU and waiting on their host work at the same moments. Models stay loaded
between tasks (`ModelCache`). SIGTERM or Ctrl-C drains: no new task is leased, tasks in
progress finish the frames in flight, and the rest is released at once for other
workers. A queue that cannot be reached (Redis restarting) is retried with backoff; a
lost lease stops the task (its frames already published stay: publishing is
first-writer-wins).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import socket
import time
import tomllib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import trio

from pipeline.config.job import Job, parse_job
from pipeline.errors import JobError, describe
from pipeline.gpu.device import pick_device
from pipeline.gpu.turns import GpuTurn
from pipeline.models.cache import ModelCache
from pipeline.plan import make_plan
from pipeline.run import render

from .metrics import WorkerMetrics
from .queue import open_queue
from .tasks import TASK_VIDEO, JobSpec, QueueUnavailable, Task, TaskQueue, redact

log = logging.getLogger("framefarm.worker")
T = TypeVar("T")


@dataclass
class WorkerConfig:
    queue_url: str
    output_root: Path                   # jobs writing elsewhere are refused
    model_roots: tuple[Path, ...]       # jobs loading models from elsewhere are refused
    device: str | None = None
    name: str = ""
    lease_s: float = 60.0
    slots: int = 2                      # tasks in flight at once
    max_job_failures: int = 3           # after this many failures of one job, stop taking it
    idle_poll_s: float = 1.0
    exit_when_idle: bool = False        # stop once no task is left (batch use, tests)
    heartbeat_s: float = 5.0
    metrics_port: int | None = None
    gpu_turns: bool = True              # slots take turns at the GPU (off: they share it, for comparison)

    def __post_init__(self) -> None:
        if not self.name:
            self.name = f"{socket.gethostname()}/{os.getpid()}/{self.device or 'auto'}"


@dataclass
class WorkerState:
    draining: trio.Event = field(default_factory=trio.Event)
    skip_jobs: set[str] = field(default_factory=set)
    job_failures: Counter[str] = field(default_factory=Counter)
    frames_done: int = 0
    tasks_done: int = 0
    tasks_failed: int = 0


def run_worker(config: WorkerConfig) -> WorkerState:
    return trio.run(serve, config)


async def serve(config: WorkerConfig) -> WorkerState:
    device = pick_device(config.device)
    queue = await _retry(lambda: open_queue(config.queue_url), None)
    metrics = WorkerMetrics(config.metrics_port, device, queue)
    state = WorkerState()
    models = ModelCache()
    turn = GpuTurn() if config.gpu_turns else None   # one GPU per worker process
    log.info("worker %s on %s, queue %s", config.name, device, redact(config.queue_url))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_drain_on_signal, state)
        nursery.start_soon(_heartbeats, config, queue, state, device, metrics)
        async with trio.open_nursery() as slots:
            for _ in range(config.slots):
                slots.start_soon(_slot, config, queue, state, device, models, metrics, turn)
        nursery.cancel_scope.cancel()
    with contextlib.suppress(QueueUnavailable):
        await trio.to_thread.run_sync(queue.heartbeat, config.name, _heartbeat_info(state, device))
    await trio.to_thread.run_sync(queue.close)
    log.info("worker %s stopped: %d task(s), %d frame(s), %d failure(s)", config.name,
             state.tasks_done, state.frames_done, state.tasks_failed)
    return state


async def _slot(config: WorkerConfig, queue: TaskQueue, state: WorkerState, device: torch.device,
                models: ModelCache, metrics: WorkerMetrics, turn: GpuTurn | None) -> None:
    while not state.draining.is_set():
        lease = functools.partial(queue.lease, config.name, config.lease_s, frozenset(state.skip_jobs))
        try:
            task = await _retry(lease, state)
        except QueueUnavailable:
            return  # draining while the queue is down: nothing is leased, nothing to give back
        if task is None:
            unfinished = functools.partial(_unfinished, queue, frozenset(state.skip_jobs))
            if config.exit_when_idle and not await _retry(unfinished, state):
                return
            with trio.move_on_after(config.idle_poll_s):
                await state.draining.wait()
            continue
        await _process(config, queue, state, device, models, metrics, turn, task)


async def _process(config: WorkerConfig, queue: TaskQueue, state: WorkerState, device: torch.device,
                   models: ModelCache, metrics: WorkerMetrics, turn: GpuTurn | None, task: Task) -> None:
    started = time.perf_counter()
    label = f"task {task.job_id}:{task.kind} {task.first}-{task.last} (attempt {task.attempt})"
    stop = trio.Event()
    lost = False
    done = 0

    def frame_done(frame: int) -> None:
        nonlocal done
        done += 1
        metrics.frames_done.inc()

    async def keep_lease() -> None:
        nonlocal lost
        while True:
            await trio.sleep(config.lease_s / 3)
            try:
                renewed = await trio.to_thread.run_sync(queue.renew, task, config.name, config.lease_s)
            except QueueUnavailable:
                continue  # the lease runs on; publishing stays safe if another worker takes over
            if not renewed:
                lost = True
                stop.set()
                return

    async def relay_drain() -> None:
        await state.draining.wait()
        stop.set()

    try:
        spec = await _retry(lambda: queue.job(task.job_id), state)
        if spec is None:
            raise JobError("job", task.job_id, "is not in the queue any more")
        job = job_from_spec(spec, config)
        whole = task.kind == TASK_VIDEO
        plan = await trio.to_thread.run_sync(
            lambda: make_plan(job, device, resume=True, frames=None if whole else task.frames, video=whole))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_lease)
            nursery.start_soon(relay_drain)
            report = await render(plan, frame_done, models, handle_signals=False, stop=stop,
                                  pipelines=models.pipelines, gpu_turn=turn)
            nursery.cancel_scope.cancel()
    except Exception as err:  # ours, a bug or an environment fault: report it with the task, keep serving
        await _failed(config, queue, state, metrics, task, describe(err))
        return
    finished = report.frames == len(plan.todo)
    if lost:
        log.warning("%s: lease lost after %d frame(s); another worker carries on", label, done)
    elif not finished:
        await _retry(lambda: queue.release(task, config.name), None)
        log.info("%s: draining, released after %d frame(s)", label, done)
    elif await _retry(lambda: queue.ack(task, config.name), None):
        state.tasks_done += 1
        state.frames_done += done
        metrics.task_seconds.observe(time.perf_counter() - started)
        log.info("%s: %d frame(s) in %.1f s", label, done, time.perf_counter() - started)
    else:
        log.warning("%s: finished but the lease was gone at ack (cancelled or taken over)", label)


async def _failed(config: WorkerConfig, queue: TaskQueue, state: WorkerState, metrics: WorkerMetrics,
                  task: Task, error: str) -> None:
    state.tasks_failed += 1
    metrics.tasks_failed.inc()
    state.job_failures[task.job_id] += 1
    if state.job_failures[task.job_id] >= config.max_job_failures:
        state.skip_jobs.add(task.job_id)
        log.warning("job %s failed %d times here; this worker stops taking it", task.job_id,
                    state.job_failures[task.job_id])
    dead = await _retry(lambda: queue.fail(task, config.name, error), None)
    log.error("task %s:%s %d-%d failed%s: %s", task.job_id, task.kind, task.first, task.last,
              " (dead-lettered)" if dead else "", error)


def _unfinished(queue: TaskQueue, skip_jobs: frozenset[str]) -> bool:
    """Tasks this worker may still get: pending, or leased (back if the lease expires)."""
    return any(s.state == "active" and (s.pending or s.leased) and s.job_id not in skip_jobs
               for s in queue.status())


def job_from_spec(spec: JobSpec, config: WorkerConfig) -> Job:
    """Parse the stored job text like `render run` does, then refuse what this worker
    must not touch: outputs outside its output root, models outside its model roots."""
    try:
        data = tomllib.loads(spec.toml)
    except tomllib.TOMLDecodeError as err:
        raise JobError("job", spec.job_id, f"stored job text is not valid TOML ({err})") from None
    job = parse_job(data, job_dir=Path(spec.base_dir), file=Path(spec.base_dir) / f"{spec.name}.toml",
                    output_root=Path(spec.output_root))
    root = config.output_root.resolve()
    if not job.output.root.is_relative_to(root):
        raise JobError("output.root", str(job.output.root), f"outside this worker's output root {root}")
    loaded = [("model.path", job.model.path)]
    if job.source.kind == "diffusers" and job.source.path:  # a generation pipeline is loaded too
        loaded.insert(0, ("source.path", Path(job.source.path)))
    for name, path in loaded:
        if not any(path.resolve().is_relative_to(allowed.resolve()) for allowed in config.model_roots):
            allowed = ", ".join(str(p) for p in config.model_roots)
            raise JobError(name, str(path.resolve()), f"outside this worker's model roots ({allowed})")
    return job


async def _retry(call: Callable[[], T], state: WorkerState | None) -> T:
    """Run a blocking queue call in a thread; while the queue is unreachable, back off
    (0.2 s doubling to 10 s) and try again. Gives up only when draining (`state`)."""
    delay = 0.2
    while True:
        try:
            return await trio.to_thread.run_sync(call)
        except QueueUnavailable as err:
            if state is not None and state.draining.is_set():
                raise
            log.warning("queue unavailable (%s); retrying in %.1f s", err, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, 10.0)


async def _drain_on_signal(state: WorkerState) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("%s: draining (finishing frames in flight, releasing the rest)",
                     signal.Signals(signum).name)
            state.draining.set()


def _heartbeat_info(state: WorkerState, device: torch.device) -> dict[str, Any]:
    return {"device": str(device), "pid": os.getpid(), "frames_done": state.frames_done,
            "tasks_done": state.tasks_done, "tasks_failed": state.tasks_failed,
            "draining": state.draining.is_set()}


async def _heartbeats(config: WorkerConfig, queue: TaskQueue, state: WorkerState, device: torch.device,
                      metrics: WorkerMetrics) -> None:
    while True:
        try:
            await trio.to_thread.run_sync(queue.heartbeat, config.name, _heartbeat_info(state, device))
            await trio.to_thread.run_sync(metrics.sample)
        except QueueUnavailable:
            pass
        await trio.sleep(config.heartbeat_s)
