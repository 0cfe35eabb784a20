"""What the farm's queue holds and hands out, shared by the worker and every backend:
jobs (`JobSpec`), tasks (`Task`), what `render status` shows (`JobStatus`,
`WorkerStatus`) and the interface a backend implements (`TaskQueue`).

The semantics of that interface are stated once, in workers/queue.py, beside the
opener that picks a backend; tests/test_queue_contract.py checks them on every backend.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import fileseq


class QueueUnavailable(Exception):
    """The queue cannot be reached right now (Redis restarting, network down): the
    worker backs off and tries again; nothing is lost, leases simply run on."""


TASK_FRAMES = "frames"
TASK_SEGMENT = "segment"   # one closed-GOP segment of the videos, encoded once its frames are done
TASK_VIDEO = "video"       # the videos: segments joined by a remux (unsegmented ones encoded), after every other task

# A task's log (workers/task_log.py) is kept in the queue to its last this many characters.
LOG_CHARS = 64 * 1024

# A failed task's error is stored cut to this many characters, so that one runaway
# message (a long traceback) cannot bloat the queue or the output of `render status`.
ERROR_CHARS = 2000

# Workers that stop heartbeating: shown as "gone" once their last heartbeat is older than
# `worker_gone_after` (the longer of 3 heartbeat intervals and one lease: by then the
# leases it held have expired too and its tasks go to other workers), and dropped from
# the queue once it is older than WORKER_DROP_S. A worker that exits cleanly removes
# itself at once.
# The largest id a queue stores: SQLite's integers are signed 64-bit.
ID_MAX = 2**63 - 1


def whole_number(text: str, high: int = ID_MAX) -> int | None:
    """`text` as a whole number from 0 to `high`, else None. ASCII digits only:
    str.isdecimal() also takes '１２' (full-width) and other scripts' digits, which
    int() reads, so an id a user never typed would match; and a number is checked
    for length before int() converts it (Python refuses past 4300 digits)."""
    if not (text.isascii() and text.isdecimal()) or len(text) > len(str(high)):
        return None
    value = int(text)
    return value if value <= high else None


HEARTBEAT_MISSES = 3
WORKER_DROP_S = 3600.0


@dataclass(frozen=True)
class JobSpec:
    job_id: str
    name: str                 # the shot name, for people reading `render status`
    toml: str                 # the job file's text, parsed again by each worker
    base_dir: str             # the job file's folder: relative inputs resolve against it
    output_root: str          # absolute, fixed at submit time
    frame_start: int
    frame_end: int
    priority: int
    chunk: int                # frames per task
    video: bool               # encode the MP4 once every frame is published
    max_attempts: int
    frames: str | None = None  # `render submit --frames` (e.g. "1001-1097x4"): only these; None: the whole shot
    submitted_by: str | None = None    # who queued it (`render submit --submitted-by`, default the OS user)
    submitted_host: str | None = None  # the host it was queued from
    preview: int = 0          # `render submit --preview N`: N frames spread over the shot, leased before the rest
    segments: tuple[tuple[int, int], ...] = ()   # the videos' segments (first, last): a segment task each

    def frame_list(self) -> list[int]:
        """The job's frames in order: `frames`, or the whole shot."""
        if self.frames is None:
            return list(range(self.frame_start, self.frame_end + 1))
        return sorted({int(f) for f in fileseq.FrameSet(self.frames)})

    def preview_frames(self) -> list[int]:
        """`preview` frames spread evenly over the job's frames, in frame order (1: the first;
        2: the first and the last; 3: first, middle, last; ...)."""
        frames = self.frame_list()
        count = min(self.preview, len(frames))
        if count <= 1:
            return frames[:count]
        # the step is at least one frame (count <= len(frames)), so the picks are distinct
        return [frames[round(i * (len(frames) - 1) / (count - 1))] for i in range(count)]

    def chunks(self) -> list[tuple[int, int]]:
        """The tasks' frame ranges in frame order: `chunk` frames each, never across a gap in
        `frames`; each preview frame is a task of its own (`preview_first` orders them)."""
        preview = set(self.preview_frames())
        runs: list[tuple[int, int]] = []
        for frame in self.frame_list():
            if frame in preview:
                continue
            if runs and runs[-1][1] == frame - 1:
                runs[-1] = (runs[-1][0], frame)
            else:
                runs.append((frame, frame))
        return sorted([(first, min(first + self.chunk - 1, last))
                       for start, last in runs for first in range(start, last + 1, self.chunk)]
                      + [(frame, frame) for frame in preview])

    def preview_first(self) -> list[tuple[tuple[int, int], bool]]:
        """`chunks` as the queue stores them: the preview tasks first (flagged True), then the rest,
        each in frame order."""
        preview = set(self.preview_frames())
        flagged = [(chunk, chunk[0] == chunk[1] and chunk[0] in preview) for chunk in self.chunks()]
        return sorted(flagged, key=lambda pair: not pair[1])

    def segment_waits(self, chunks: list[tuple[int, int]]) -> list[list[int]]:
        """For each of `segments`, the indices (into `chunks`, the frames tasks in the order
        the queue stores them) of the frames tasks it waits for: those whose frames overlap it."""
        return [[i for i, (first, last) in enumerate(chunks) if first <= end and last >= start]
                for start, end in self.segments]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        # a job stored before a field was added takes that field's default
        found = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        if "segments" in found:   # JSON's lists back to pairs
            found["segments"] = tuple((int(first), int(last)) for first, last in found["segments"])
        return cls(**found)


@dataclass(frozen=True)
class Task:
    job_id: str
    task_id: str
    kind: str                 # TASK_FRAMES, TASK_SEGMENT or TASK_VIDEO
    first: int
    last: int
    token: int                # fencing token of this lease
    attempt: int              # 1 on the first lease

    @property
    def frames(self) -> range:
        return range(self.first, self.last + 1)


@dataclass
class JobStatus:
    job_id: str
    name: str
    state: str                # "active", "paused", "done", "cancelled" or "failed" (dead-lettered tasks,
                              #   none left to run)
    priority: int
    done: int = 0             # frames, not tasks: published (acked tasks, and what cancelled tasks published)
    leased: int = 0
    pending: int = 0
    failed: int = 0
    cancelled: int = 0        # frames of cancelled tasks that were not published
    stopping: int = 0         # frames of tasks cancelled while leased whose worker has not stopped yet
    errors: list[dict[str, Any]] = field(default_factory=list)   # {"first","last","error"} (+ "kind": "video")
    blocked: list[dict[str, Any]] = field(default_factory=list)  # {"worker","failures"}: workers that stopped taking it
    submitted: float | None = None   # seconds since the epoch, by the queue's clock (None: queued before it was kept)
    submitted_by: str | None = None  # JobSpec's: who queued it, and from which host (None: not recorded)
    submitted_host: str | None = None
    fps: float | None = None  # frames done per second, from the first lease to the last ack of its done tasks
    eta_s: float | None = None  # frames still to do (pending, leased) at `fps`; None until a task is done
    segments: dict[str, int] = field(default_factory=dict)   # the video segment tasks by state (tasks, not
                                                             #   frames; "waiting": for their frames tasks)
    video: str | None = None  # the video task's state (it joins the segments); None until it is queued

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class TaskInfo:
    """One task as the monitor shows it: its state, attempts and latest lease."""
    task_id: str
    kind: str                 # TASK_FRAMES, TASK_SEGMENT or TASK_VIDEO
    first: int
    last: int
    state: str                # as TaskRow.state
    attempts: int
    worker: str | None        # who leased it last
    started: float | None     # when its latest lease began (seconds since the epoch, queue's clock)
    finished: float | None    # when it was acked or failed after that lease
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        duration = self.finished - self.started if self.started is not None and self.finished is not None else None
        return {**self.__dict__, "duration_s": duration}


@dataclass
class WorkerStatus:
    name: str
    heartbeat: float          # seconds since the epoch, by the queue's clock
    info: dict[str, Any]      # what the worker reports: device, pid, counts, draining, lease_s, heartbeat_s
    age: float = 0.0          # seconds since that heartbeat, by the same clock

    @property
    def gone(self) -> bool:
        return self.age > worker_gone_after(self.info)

    @property
    def state(self) -> str:
        """running | draining | gone (no heartbeat for `worker_gone_after`: exited or hung)."""
        if self.gone:
            return "gone"
        return "draining" if self.info.get("draining") else "running"


def worker_gone_after(info: dict[str, Any]) -> float:
    """Seconds without a heartbeat after which a worker counts as gone (its info says
    how often it beats and how long its leases are; defaults: the worker's)."""
    return max(HEARTBEAT_MISSES * float(info.get("heartbeat_s", 5.0)), float(info.get("lease_s", 60.0)))


class TaskRow(NamedTuple):
    """One task as a backend stores it, reduced to what `job_status` counts; or several
    tasks of one kind and state that are not failed, their frames summed into
    first..last (SQLite sums them in SQL: job_status counts frames, so the counts agree)."""
    kind: str                 # TASK_FRAMES, TASK_SEGMENT or TASK_VIDEO
    first: int
    last: int
    state: str                # pending | leased | done | failed | cancelled | stopping (cancelled while
                              #   leased; its worker has neither reported nor let the lease run out) |
                              #   waiting (a segment task whose frames tasks are not all done)
    error: str | None
    published: int = 0        # cancelled: frames its worker had published when it stopped
    started: float | None = None   # its latest lease began (s, queue's clock)
    finished: float | None = None  # acked or failed after that lease
    tasks: int = 1            # how many tasks the row stands for


def job_status(job_id: str, name: str, state: str, priority: int, tasks: Iterable[TaskRow],
               blocked: Iterable[tuple[str, int]] = (), submitted: float | None = None,
               submitted_by: str | None = None, submitted_host: str | None = None) -> JobStatus:
    """A job's frames counted by the state of their tasks, with the error of each
    failed range in frame order. Only frames tasks count: the video task covers frames
    already counted as done. A cancelled task's frames count as done as far as its
    worker published them before it stopped, and as cancelled for the rest, so that
    `done` is what lies on disk.

    `state` is what the backend stores (active, done, cancelled). An active job whose
    tasks, frames or video, include dead-lettered ones and none that may still run
    (pending, leased, stopping) is "failed": nothing more will happen to it until
    `requeue`, which makes it active again. A dead-lettered video task's error is listed
    too (with "kind": "video"), and a segment task's (with "kind": "segment"), so a
    failed job always shows why. Segment tasks are counted as tasks, by state, in
    `segments`.

    `fps` is the done frames of acked frames tasks over the time from the first of their
    leases to the last of their acks, and `eta_s` the pending and leased frames at that
    rate: a paused or stalled job keeps its last rate rather than decaying to zero."""
    counts = {"done": 0, "leased": 0, "pending": 0, "failed": 0, "cancelled": 0, "stopping": 0}
    errors: list[dict[str, Any]] = []
    segments: dict[str, int] = {}
    video: str | None = None
    rows = sorted(tasks, key=lambda task: (task.kind == TASK_VIDEO, task.first, task.last))
    if state == "active" and any(t.state == "failed" for t in rows) and not any(
            t.state in ("pending", "leased", "stopping") for t in rows):
        state = "failed"
    acked = 0
    span_start: float | None = None
    span_end: float | None = None
    for task in rows:
        if task.kind == TASK_FRAMES and task.state == "done" and task.started is not None \
                and task.finished is not None:
            acked += task.last - task.first + 1
            span_start = task.started if span_start is None else min(span_start, task.started)
            span_end = task.finished if span_end is None else max(span_end, task.finished)
        if task.kind == TASK_SEGMENT:
            segments[task.state] = segments.get(task.state, 0) + task.tasks
        if task.kind == TASK_VIDEO:
            video = task.state
        if task.kind in (TASK_VIDEO, TASK_SEGMENT) and task.state == "failed":
            errors.append({"first": task.first, "last": task.last, "error": task.error, "kind": task.kind})
        if task.kind != TASK_FRAMES or task.state not in counts:
            continue
        frames = task.last - task.first + 1
        if task.state == "cancelled":
            published = max(0, min(int(task.published or 0), frames))
            counts["done"] += published
            counts["cancelled"] += frames - published
            continue
        counts[task.state] += frames
        if task.state == "failed":
            errors.append({"first": task.first, "last": task.last, "error": task.error})
    fps: float | None = None
    eta_s: float | None = None
    if acked and span_start is not None and span_end is not None and span_end > span_start:
        fps = acked / (span_end - span_start)
        eta_s = (counts["pending"] + counts["leased"]) / fps
    return JobStatus(job_id=job_id, name=name, state=state, priority=priority, done=counts["done"],
                     leased=counts["leased"], pending=counts["pending"], failed=counts["failed"],
                     cancelled=counts["cancelled"], stopping=counts["stopping"], errors=errors,
                     blocked=[{"worker": worker, "failures": int(failures)} for worker, failures in sorted(blocked)],
                     submitted=submitted, submitted_by=submitted_by, submitted_host=submitted_host, fps=fps,
                     eta_s=eta_s, segments=segments, video=video)


class TaskQueue(Protocol):
    where: str                # the queue for messages: an absolute sqlite:/// URL, or a redacted Redis URL

    def submit(self, spec: JobSpec, idempotency_key: str | None = None) -> str: ...
    def lease(self, worker: str, lease_s: float, skip_jobs: frozenset[str] = frozenset()
              ) -> Task | None: ...
    def renew(self, task: Task, worker: str, lease_s: float) -> bool: ...
    def holds(self, task: Task, worker: str) -> bool: ...
    def ack(self, task: Task, worker: str) -> bool: ...
    def fail(self, task: Task, worker: str, error: str, block_after: int | None = None) -> bool: ...
    def release(self, task: Task, worker: str) -> None: ...
    def record_stopped(self, task: Task, worker: str, published: int) -> bool: ...
    def job(self, job_id: str) -> JobSpec | None: ...
    def status(self, job_id: str | None = None, *, job_ids: Sequence[str] | None = None) -> list[JobStatus]: ...
    def job_states(self) -> list[tuple[str, str]]: ...
    def pending_frames(self) -> int: ...   # frames of pending frames tasks, all jobs: cheap
    def requeue(self, job_id: str, failed_only: bool) -> int: ...
    def cancel(self, job_id: str) -> int: ...
    def tasks(self, job_id: str) -> list[TaskInfo]: ...
    def store_log(self, job_id: str, task_id: str, text: str) -> None: ...
    def task_log(self, job_id: str, task_id: str) -> str | None: ...
    def set_priority(self, job_id: str, priority: int) -> bool: ...
    def pause(self, job_id: str) -> bool: ...
    def resume(self, job_id: str) -> bool: ...
    def heartbeat(self, worker: str, info: dict[str, Any]) -> bool: ...
    def remove_worker(self, worker: str) -> None: ...
    def workers(self) -> list[WorkerStatus]: ...
    def drain(self, worker: str) -> bool: ...
    def claim_notice(self, job_id: str, event: str) -> bool: ...   # True once per (job, event): who sends it
    def close(self) -> None: ...


