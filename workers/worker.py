"""The farm worker: lease tasks, render them with the same pipeline as `render run`,
acknowledge once the frames are durable.

    while not draining:
        lease a task -> refuse it (release) if this worker's configuration excludes its job
        plan its frames (resume: skip frames already published)
        render, renewing the lease meanwhile and checking it at every frame boundary
        -> ack (or fail with the error; or, if the task was cancelled, stop and report)

A segment task (a segmented video's segment, queued once its frames are done) is no
render: its frames are read back from their files and encoded (`encode_segments`), no
model loaded; the video task that follows the last of them joins them by a remux.

Several task slots run at once so the GPU has the next task's frames while one task's
last frames are written; they take turns at the GPU (pipeline.gpu.turns), so that one
task's decodes run while another's frames are prepared or written, rather than both
sharing the GPU and waiting on their host work at the same moments. Models stay loaded
between tasks (`ModelCache`). SIGTERM, Ctrl-C or a drain request read at the heartbeat
(`render monitor`'s drain) drains: no new task is leased, tasks in progress finish the
frames in flight, and the rest is released at once for other workers. A queue that
cannot be reached (Redis restarting) is retried with backoff.

A task cancelled, requeued or taken over while it renders publishes nothing more: the
render's writers ask the queue (`holds`, read-only) just before each publish, the
worker asks after every frame and renews the lease every third of its length; the
first "no" stops the render (a publish is never torn). The worker then reports how many
of the task's frames lie published (`record_stopped`), so that `render status` counts
what is on disk.

Refusals: a job whose outputs fall outside --output-root, whose model or pipeline lies
outside the --model-roots, or whose latents or preset file lie outside the --input-roots
(default: the model roots) is refused because of this worker's configuration, not the task's
fault: the task is released untouched (no attempt counted), the worker says once why
and never takes that job again. A worker that refuses every job it sees (it has taken
on none, and nothing else is left for it) stops with exit status 2 and one line naming
the option (`WorkerState.error`). Failures of the tasks themselves count in the queue,
which blocklists a worker on a job after --max-job-failures of them until `requeue`.

A worker that stops cleanly removes itself from the queue's worker list.
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
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
import trio

from pipeline.config.job import Job, Notify, parse_job, read_notify
from pipeline.errors import JobError, describe
from pipeline.flow.trace import Trace
from pipeline.gpu.device import pick_device
from pipeline.gpu.turns import GpuTurn
from pipeline.models.cache import ModelCache
from pipeline.plan import Plan, make_plan, with_videos
from pipeline.run import RunReport, encode_segments, render

from . import task_log
from .metrics import WorkerMetrics
from .queue import open_queue
from .tasks import TASK_FRAMES, TASK_SEGMENT, TASK_VIDEO, JobSpec, JobStatus, QueueUnavailable, Task, TaskQueue
from .webhook import finish_sending, send_in_background

log = logging.getLogger("framefarm.worker")
T = TypeVar("T")


def trace_path(root: Path, task: Task) -> Path:
    """Beside the job's output root, not in it (every file in it has a manifest record)."""
    return root.with_name(root.name + "-traces") / f"{task.job_id}.{task.first}-{task.last}.{task.attempt}.json"


def write_task_trace(trace: Trace, plan: Plan, task: Task) -> None:
    path = trace_path(plan.root, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    trace.write(path, {"shot": plan.job.shot.name, "job_hash": plan.job_hash, "farm_job": task.job_id,
                       "task": [task.first, task.last], "attempt": task.attempt})


@dataclass
class WorkerConfig:
    queue_url: str
    output_root: Path                   # jobs writing elsewhere are refused
    model_roots: tuple[Path, ...]       # jobs loading models from elsewhere are refused
    input_roots: tuple[Path, ...] = ()  # jobs reading latents or preset files elsewhere are refused
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
    traces: bool = False                # write each task's timeline beside its job's outputs
    thumbnails: bool = True             # a small JPEG beside each frame, for `render monitor`

    def __post_init__(self) -> None:
        if not self.name:
            self.name = f"{socket.gethostname()}/{os.getpid()}/{self.device or 'auto'}"

    def data_roots(self) -> tuple[Path, ...]:
        """Where jobs may read latents and preset files: the input roots, or where none
        were given, the model roots."""
        return self.input_roots or self.model_roots


class WorkerRefusal(JobError):
    """A job this worker's own configuration excludes (`option`: --output-root,
    --model-root or --input-root): not the task's fault, so the task is released, not failed."""

    def __init__(self, field: str, value: Any, allowed: str, *, option: str, option_value: str) -> None:
        super().__init__(field, value, allowed)
        self.option = option
        self.option_value = option_value


@dataclass
class WorkerState:
    draining: trio.Event = field(default_factory=trio.Event)
    skip_jobs: set[str] = field(default_factory=set)   # jobs this worker's configuration refuses
    refusals: dict[str, WorkerRefusal] = field(default_factory=dict)   # job id -> why
    accepted: int = 0         # tasks leased and not refused, whatever became of them
    leasing: int = 0          # lease calls in flight
    in_hand: int = 0          # tasks leased and not yet acked, failed or given back
    error: JobError | None = None   # why the worker stopped on its own: it refused every job it saw
    frames_done: int = 0
    tasks_done: int = 0
    tasks_failed: int = 0
    current: dict[int, str] = field(default_factory=dict)   # the tasks in hand, as "job:first-last"


def run_worker(config: WorkerConfig) -> WorkerState:
    return trio.run(serve, config)


async def serve(config: WorkerConfig) -> WorkerState:
    device = pick_device(config.device)
    queue = await _retry(lambda: open_queue(config.queue_url), None)
    metrics = WorkerMetrics(config.metrics_port, device, queue)
    state = WorkerState()
    models = ModelCache()
    turn = GpuTurn() if config.gpu_turns else None   # one GPU per worker process
    task_log.install()
    log.info("worker %s on %s, queue %s", config.name, device, queue.where)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_drain_on_signal, state)
        nursery.start_soon(_heartbeats, config, queue, state, device, metrics)
        async with trio.open_nursery() as slots:
            for _ in range(config.slots):
                slots.start_soon(_slot, config, queue, state, device, models, metrics, turn)
        nursery.cancel_scope.cancel()
    with contextlib.suppress(QueueUnavailable):  # a clean exit: off the list at once (else shown gone, then dropped)
        await trio.to_thread.run_sync(queue.remove_worker, config.name)
    await trio.to_thread.run_sync(queue.close)
    await trio.to_thread.run_sync(finish_sending)   # a hook just claimed goes out; a stuck one no longer holds the exit
    log.info("worker %s stopped: %d task(s), %d frame(s), %d failure(s)", config.name,
             state.tasks_done, state.frames_done, state.tasks_failed)
    return state


async def _slot(config: WorkerConfig, queue: TaskQueue, state: WorkerState, device: torch.device,
                models: ModelCache, metrics: WorkerMetrics, turn: GpuTurn | None) -> None:
    while not state.draining.is_set():
        lease = functools.partial(queue.lease, config.name, config.lease_s, frozenset(state.skip_jobs))
        state.leasing += 1
        try:
            task = await _retry(lease, state)
        except QueueUnavailable:
            return  # draining while the queue is down: nothing is leased, nothing to give back
        finally:
            state.leasing -= 1
        if task is None:
            if state.refusals and not (state.accepted or state.in_hand or state.leasing):
                _refused_everything(config, state)
                return
            unfinished = functools.partial(_unfinished, queue, frozenset(state.skip_jobs), config.name)
            if config.exit_when_idle and not await _retry(unfinished, state):
                return
            with trio.move_on_after(config.idle_poll_s):
                await state.draining.wait()
            continue
        state.in_hand += 1
        state.current[id(task)] = f"{task.job_id}:{task.first}-{task.last}"
        with task_log.capturing(f"--- attempt {task.attempt} on worker {config.name}") as lines:
            try:
                await _process(config, queue, state, device, models, metrics, turn, task)
            finally:
                state.in_hand -= 1
                del state.current[id(task)]
                with contextlib.suppress(QueueUnavailable):   # a log is worth one try, not a stalled slot
                    await trio.to_thread.run_sync(queue.store_log, task.job_id, task.task_id, lines.text())


def _refused_everything(config: WorkerConfig, state: WorkerState) -> None:
    """Stop the worker: every job it saw was refused for its configuration."""
    first = next(iter(state.refusals.values()))
    jobs = len(state.refusals)
    state.error = JobError(first.option, first.option_value,
                           f"this worker refused every job it saw ({jobs} job{'s' * (jobs > 1)}; first: "
                           f"{first}); their tasks were released untouched for other workers. Give it an "
                           f"{first.option} that covers them, or point it at another queue")
    log.error("worker %s stops: it refused every job it saw", config.name)
    state.draining.set()


async def _process(config: WorkerConfig, queue: TaskQueue, state: WorkerState, device: torch.device,
                   models: ModelCache, metrics: WorkerMetrics, turn: GpuTurn | None, task: Task) -> None:
    started = time.perf_counter()
    label = f"task {task.job_id}:{task.kind} {task.first}-{task.last} (attempt {task.attempt})"
    stop = trio.Event()       # draining: the frames in flight finish, no new one starts
    fenced = False            # the queue took the task back (cancelled, requeued, taken over)
    boundary = trio.Event()   # set when a frame is published: ask the queue before the next one
    done = 0
    plan = None
    report = None

    def frame_done(frame: int) -> None:
        nonlocal done
        done += 1
        metrics.frames_done.inc()
        boundary.set()

    async def guard(render_scope: trio.CancelScope) -> None:
        """Renew the lease every third of its length; at every frame boundary in between,
        check that it still holds. The first "no" cancels the render: frames in a writer
        thread finish whole, no other frame is published."""
        nonlocal fenced, boundary
        renew_at = trio.current_time() + config.lease_s / 3
        while True:
            with trio.move_on_at(renew_at):
                await boundary.wait()
            boundary = trio.Event()
            renewing = trio.current_time() >= renew_at
            try:
                if renewing:
                    ours = await trio.to_thread.run_sync(queue.renew, task, config.name, config.lease_s)
                else:
                    ours = await trio.to_thread.run_sync(queue.holds, task, config.name)
            except QueueUnavailable:
                ours = True  # the lease runs on; publishing stays safe if another worker takes over
            if renewing:
                renew_at = trio.current_time() + config.lease_s / 3
            if not ours:
                fenced = True
                render_scope.cancel()
                return

    async def relay_drain() -> None:
        await state.draining.wait()
        stop.set()

    async def still_ours() -> bool:
        try:
            return await trio.to_thread.run_sync(queue.holds, task, config.name)
        except QueueUnavailable:
            return True  # as in guard: the lease runs on

    def may_publish() -> bool:
        """Asked by the render's writer threads just before each publish: a cancelled (or
        requeued, or taken-over) task publishes nothing more, not even frames in flight."""
        nonlocal fenced
        if fenced:
            return False
        try:
            ours = queue.holds(task, config.name)
        except QueueUnavailable:
            return True  # as in guard: the lease runs on
        fenced = fenced or not ours
        return ours

    state.accepted += 1   # taken back by _refuse
    try:
        spec = await _retry(lambda: queue.job(task.job_id), state)
        if spec is None:
            raise JobError("job", task.job_id, "is not in the queue any more")
        try:
            job = job_from_spec(spec, config)
        except WorkerRefusal as refusal:
            await _refuse(config, queue, state, task, spec, refusal)
            return
        whole = task.kind == TASK_VIDEO
        segment = task.kind == TASK_SEGMENT
        frames = None if whole else _segment_plan_frames(spec, task) if segment else task.frames
        plan = await trio.to_thread.run_sync(
            lambda: make_plan(job, device, resume=True, frames=frames, video=whole, check_memory=not segment))
        plan = replace(plan, thumbnails=config.thumbnails)
        with trio.CancelScope() as render_scope:
            if not await still_ours():
                fenced = True  # cancelled while it was being planned
                render_scope.cancel()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(guard, render_scope)
                nursery.start_soon(relay_drain)
                if segment:   # from the frame files: no model, no GPU turn
                    report = await _encode_segment(plan, task, may_publish, label)
                else:
                    trace = Trace() if config.traces else None
                    report = await render(plan, frame_done, models, handle_signals=False, stop=stop,
                                          pipelines=models.pipelines, gpu_turn=turn, may_publish=may_publish,
                                          trace=trace, run_fields={"farm_job": task.job_id, "worker": config.name,
                                                                   "task": [task.first, task.last]})
                    if trace is not None:
                        await trio.to_thread.run_sync(write_task_trace, trace, plan, task)
                nursery.cancel_scope.cancel()
    except Exception as err:  # ours, a bug or an environment fault: report it with the task, keep serving
        if fenced:  # the render was being stopped anyway: the task is no longer ours to fail
            log.warning("%s: %s, while stopping", label, describe(err))
            await _stopped(config, queue, task, plan, label, done)
        else:
            await _failed(config, queue, state, metrics, task, describe(err))
        return
    if fenced or report is None:
        await _stopped(config, queue, task, plan, label, done)
    elif report.frames != len(plan.todo):
        await _retry(lambda: queue.release(task, config.name), None)
        log.info("%s: draining, released after %d frame(s)", label, done)
    elif await _retry(lambda: queue.ack(task, config.name), None):
        await _notify_if_finished(queue, task.job_id)
        state.tasks_done += 1
        state.frames_done += done
        metrics.task_seconds.observe(time.perf_counter() - started)
        metrics.task_done(task.job_id, report.energy_j, report.gpu_s)
        log.info("%s: %d frame(s) in %.1f s", label, done, time.perf_counter() - started)
    else:
        log.warning("%s: finished but the lease was gone at ack (cancelled or taken over)", label)


def _segment_plan_frames(spec: JobSpec, task: Task) -> range:
    """What a segment task plans (and checks are published): the frames of the frames
    tasks it waited for. A clip, decoded from its first latent frame in one task, is
    planned whole, as its frames task was."""
    chunks = [(first, last) for first, last in spec.chunks() if first <= task.last and last >= task.first]
    return range(min(first for first, _ in chunks), max(last for _, last in chunks) + 1)


async def _encode_segment(plan: Plan, task: Task, may_publish: Callable[[], bool], label: str) -> RunReport:
    """A segment task: its segment of every segmented video, from the published frame
    files (`encode_segments`); the lease is renewed meanwhile by `_process`'s guard. The
    report is empty: no frame is rendered (its plan's frames are all published, or the
    encode refuses)."""
    def encode() -> list[Path]:
        return encode_segments(with_videos(plan), task.frames, may_publish)

    parts = await trio.to_thread.run_sync(encode)
    log.info("%s: %s", label, f"published {', '.join(p.name for p in parts)}" if parts else
             "every video already has this segment")
    return RunReport()


async def _stopped(config: WorkerConfig, queue: TaskQueue, task: Task, plan: Plan | None, label: str,
                   done: int) -> None:
    """The queue took the task back mid-render. Count the task's frames that lie published
    (this run's, those in flight that finished whole, earlier attempts') and report them:
    for a cancelled task they count as done in `status`, so status and disk agree."""
    def published() -> int:
        if plan is None or task.kind != TASK_FRAMES:   # a video or segment task renders no frame of its own
            return 0
        return sum(1 for frame in task.frames if frame in plan.frame_paths and plan.frame_paths[frame].is_file())

    count = await trio.to_thread.run_sync(published)
    if await _retry(lambda: queue.record_stopped(task, config.name, count), None):
        log.warning("%s: job cancelled; stopped at a frame boundary after %d frame(s) this run; %d of the "
                    "task's %d frame(s) are published, nothing more will be", label, done, count, len(task.frames))
    else:
        log.warning("%s: lease lost after %d frame(s) (requeued or taken over); stopped, another worker "
                    "carries on", label, done)


async def _refuse(config: WorkerConfig, queue: TaskQueue, state: WorkerState, task: Task, spec: JobSpec,
                  refusal: WorkerRefusal) -> None:
    """Give the task back untouched and never take its job again; say why once per job."""
    await _retry(lambda: queue.release(task, config.name), None)
    state.accepted -= 1
    state.skip_jobs.add(task.job_id)
    if task.job_id not in state.refusals:
        state.refusals[task.job_id] = refusal
        log.warning("refusing job %s (shot %s): %s. This is this worker's configuration (%s), not the job's "
                    "fault: its task is released untouched for other workers, and this worker will not take "
                    "job %s again", task.job_id, spec.name, refusal, refusal.option, task.job_id)


async def _failed(config: WorkerConfig, queue: TaskQueue, state: WorkerState, metrics: WorkerMetrics,
                  task: Task, error: str) -> None:
    state.tasks_failed += 1
    metrics.tasks_failed.inc()
    dead = await _retry(lambda: queue.fail(task, config.name, error, config.max_job_failures), None)
    log.error("task %s:%s %d-%d failed%s: %s", task.job_id, task.kind, task.first, task.last,
              " (dead-lettered)" if dead else "", error)
    if dead:
        await _notify_if_finished(queue, task.job_id)
    with contextlib.suppress(QueueUnavailable):
        jobs = await trio.to_thread.run_sync(queue.status, task.job_id)
        blocked = {b["worker"]: b["failures"] for job in jobs for b in job.blocked}
        if config.name in blocked:
            log.warning("job %s failed %d times on this worker: the queue blocklists it here (`render status` "
                        "shows it) until `render requeue %s`", task.job_id, blocked[config.name], task.job_id)


async def _notify_if_finished(queue: TaskQueue, job_id: str) -> None:
    """A job just done or failed, with a [notify] webhook: claim the event in the queue
    (one worker sends it) and POST it from a thread of its own. Never raises: a hook that
    cannot be sent is logged, the rendering goes on."""
    def finished() -> tuple[JobStatus, JobSpec, Notify] | None:
        jobs = queue.status(job_id)
        spec = queue.job(job_id)
        if not jobs or spec is None or jobs[0].state not in ("done", "failed"):
            return None
        notify = read_notify(tomllib.loads(spec.toml))
        if notify is None or not queue.claim_notice(job_id, jobs[0].state):
            return None
        return jobs[0], spec, notify

    try:
        found = await trio.to_thread.run_sync(finished)
    except (QueueUnavailable, JobError, tomllib.TOMLDecodeError) as err:
        log.warning("job %s: its webhook was not sent: %s", job_id, describe(err))
        return
    if found is not None:
        status, spec, notify = found
        send_in_background(notify.webhook, notify.secret_env, {
            "event": f"job.{status.state}", "job": job_id, "shot": spec.name, "output_root": spec.output_root,
            "frames_done": status.done, "frames_failed": status.failed, "errors": status.errors,
            "time": time.time()})


def _unfinished(queue: TaskQueue, skip_jobs: frozenset[str], worker: str) -> bool:
    """Tasks this worker may still get: pending, or leased (back if the lease expires),
    in jobs it neither refuses nor is blocklisted on."""
    return any(s.state == "active" and (s.pending or s.leased or _segments_to_come(s)) and s.job_id not in skip_jobs
               and worker not in {b["worker"] for b in s.blocked}
               for s in queue.status())


def _segments_to_come(status: JobStatus) -> int:
    return sum(status.segments.get(state, 0) for state in ("pending", "leased", "waiting"))


def job_from_spec(spec: JobSpec, config: WorkerConfig) -> Job:
    """Parse the stored job text like `render run` does, refusing what this worker must
    not touch: outputs outside its output root, models and pipelines outside its model
    roots, latents and preset files outside its input roots (each checked before it is
    read, so a job cannot make the worker read, or quote, a file of the worker's)."""
    try:
        data = tomllib.loads(spec.toml)
    except tomllib.TOMLDecodeError as err:
        raise JobError("job", spec.job_id, f"stored job text is not valid TOML ({err})") from None
    job = parse_job(data, job_dir=Path(spec.base_dir), file=Path(spec.base_dir) / f"{spec.name}.toml",
                    output_root=Path(spec.output_root), check_input=functools.partial(_check_input, config))
    root = config.output_root.resolve()
    if not job.output.root.is_relative_to(root):
        raise WorkerRefusal("output.root", str(job.output.root), f"outside this worker's output root {root}",
                            option="--output-root", option_value=str(root))
    return job


def _check_input(config: WorkerConfig, field: str, path: Path, kind: str) -> None:
    """config.job's InputCheck: `path` must resolve inside one of this worker's roots for
    its kind (symbolic links followed: a link out of a root is outside)."""
    roots, option, what = ((config.model_roots, "--model-root", "model roots") if kind == "model"
                           else (config.data_roots(), "--input-root", "input roots"))
    resolved = path.resolve()
    if not any(resolved.is_relative_to(allowed.resolve()) for allowed in roots):
        allowed = ", ".join(str(p.resolve()) for p in roots)
        raise WorkerRefusal(field, str(resolved), f"outside this worker's {what} ({allowed})",
                            option=option, option_value=allowed)


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


def _heartbeat_info(config: WorkerConfig, state: WorkerState, device: torch.device,
                    metrics: WorkerMetrics) -> dict[str, Any]:
    return {"device": str(device), "host": socket.gethostname(), "pid": os.getpid(),
            "tasks": sorted(state.current.values()), "gpu": metrics.gpu, "frames_done": state.frames_done,
            "tasks_done": state.tasks_done, "tasks_failed": state.tasks_failed,
            "draining": state.draining.is_set(), "refused_jobs": sorted(state.refusals),
            "lease_s": config.lease_s, "heartbeat_s": config.heartbeat_s}


async def _heartbeats(config: WorkerConfig, queue: TaskQueue, state: WorkerState, device: torch.device,
                      metrics: WorkerMetrics) -> None:
    while True:
        try:
            drain = await trio.to_thread.run_sync(queue.heartbeat, config.name,
                                                  _heartbeat_info(config, state, device, metrics))
            if drain and not state.draining.is_set():  # `render monitor`'s drain button, through the queue
                log.info("asked to drain by the queue (finishing frames in flight, releasing the rest)")
                state.draining.set()
            await trio.to_thread.run_sync(metrics.sample)
        except QueueUnavailable:
            pass
        await trio.sleep(config.heartbeat_s)
