"""The render-farm queue: one interface, a backend per URL scheme.

A job is stored as data (its TOML text and where relative paths resolve), never as
code. Its frames become tasks. A task is *leased*, not popped: the lease expires unless
renewed, and every lease carries a fencing token, so a worker that lost its lease (it
stalled, the lease expired, another worker took the task) can no longer renew, ack or
fail it. Publishing is first-writer-wins on disk, so a task rendered twice still
yields each frame once.

Semantics every backend implements (tests/test_queue_contract.py checks them):
- `lease` hands out pending tasks by job priority (high first), then submission
  order, then frame order; a task whose lease expired is handed out again, with its
  attempt count raised. A task leased `max_attempts` times without an ack is
  dead-lettered instead ("failed", with the last error).
- `fail` records the error; below `max_attempts` the task becomes pending again (for
  another worker), at `max_attempts` it is dead-lettered.
- `release` gives a task back untouched (a draining worker): no attempt is counted.
- When the last frames task of a job that wants a video is acked, a "video" task
  (the whole frame range) is enqueued: a worker encodes the video from the PNGs.
- `cancel` drops a job's pending tasks and refuses its leased ones at renew and ack;
  `requeue` makes failed (or all unfinished) tasks pending again with fresh attempts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.errors import JobError


class QueueUnavailable(Exception):
    """The queue cannot be reached right now (Redis restarting, network down): the
    worker backs off and tries again; nothing is lost, leases simply run on."""


TASK_FRAMES = "frames"
TASK_VIDEO = "video"


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


def open_queue(url: str) -> TaskQueue:
    """`sqlite:///path/farm.db` (one host) or `redis://[:password@]host:port/db` / `rediss://`."""
    if url.startswith("sqlite:///"):
        from .sqlite_queue import SqliteQueue

        return SqliteQueue(url.removeprefix("sqlite:///") or "farm.db")
    if url.startswith(("redis://", "rediss://")):
        from .redis_queue import RedisQueue

        return RedisQueue(url)
    raise JobError("--queue", redact(url), "expected sqlite:///path/farm.db, redis://host:port/db "
                   "or rediss://host:port/db")


def redact(url: str) -> str:
    """The URL with any password replaced, for logs and messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    credentials, _, host = rest.partition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user + ':' if user else ':'}***@{host}"
