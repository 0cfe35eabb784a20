"""What the farm's queue holds and hands out, shared by the worker and every backend:
jobs (`JobSpec`), tasks (`Task`), what `render status` shows (`JobStatus`,
`WorkerStatus`) and the interface a backend implements (`TaskQueue`).

The semantics of that interface are stated once, in workers/queue.py, beside the
opener that picks a backend; tests/test_queue_contract.py checks them on every backend.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol


class QueueUnavailable(Exception):
    """The queue cannot be reached right now (Redis restarting, network down): the
    worker backs off and tries again; nothing is lost, leases simply run on."""


TASK_FRAMES = "frames"
TASK_VIDEO = "video"

# A failed task's error is stored cut to this many characters, so that one runaway
# message (a long traceback) cannot bloat the queue or the output of `render status`.
ERROR_CHARS = 2000


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

    def chunks(self) -> list[tuple[int, int]]:
        return [(first, min(first + self.chunk - 1, self.frame_end))
                for first in range(self.frame_start, self.frame_end + 1, self.chunk)]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Task:
    job_id: str
    task_id: str
    kind: str                 # TASK_FRAMES or TASK_VIDEO
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
    state: str                # "active", "done" or "cancelled"
    priority: int
    done: int = 0             # frames, not tasks
    leased: int = 0
    pending: int = 0
    failed: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)   # {"first","last","error"}

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class WorkerStatus:
    name: str
    heartbeat: float          # seconds since the epoch
    info: dict[str, Any]


class TaskRow(NamedTuple):
    """One task as a backend stores it, reduced to what `job_status` counts."""
    kind: str                 # TASK_FRAMES or TASK_VIDEO
    first: int
    last: int
    state: str                # pending | leased | done | failed | cancelled
    error: str | None


def job_status(job_id: str, name: str, state: str, priority: int, tasks: Iterable[TaskRow]) -> JobStatus:
    """A job's frames counted by the state of their tasks, with the error of each
    failed range in frame order. Only frames tasks count: the video task covers frames
    already counted as done, and cancelled frames are in no column."""
    counts = {"done": 0, "leased": 0, "pending": 0, "failed": 0}
    errors: list[dict[str, Any]] = []
    for task in sorted(tasks, key=lambda task: (task.first, task.last)):
        if task.kind != TASK_FRAMES or task.state not in counts:
            continue
        counts[task.state] += task.last - task.first + 1
        if task.state == "failed":
            errors.append({"first": task.first, "last": task.last, "error": task.error})
    return JobStatus(job_id=job_id, name=name, state=state, priority=priority, done=counts["done"],
                     leased=counts["leased"], pending=counts["pending"], failed=counts["failed"], errors=errors)


class TaskQueue(Protocol):
    def submit(self, spec: JobSpec) -> None: ...
    def lease(self, worker: str, lease_s: float, skip_jobs: frozenset[str] = frozenset()
              ) -> Task | None: ...
    def renew(self, task: Task, worker: str, lease_s: float) -> bool: ...
    def ack(self, task: Task, worker: str) -> bool: ...
    def fail(self, task: Task, worker: str, error: str) -> bool: ...
    def release(self, task: Task, worker: str) -> None: ...
    def job(self, job_id: str) -> JobSpec | None: ...
    def status(self, job_id: str | None = None) -> list[JobStatus]: ...
    def requeue(self, job_id: str, failed_only: bool) -> int: ...
    def cancel(self, job_id: str) -> int: ...
    def heartbeat(self, worker: str, info: dict[str, Any]) -> None: ...
    def workers(self) -> list[WorkerStatus]: ...
    def close(self) -> None: ...


def redact(url: str) -> str:
    """The URL with any password replaced, for logs and messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    credentials, _, host = rest.partition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user + ':' if user else ':'}***@{host}"
