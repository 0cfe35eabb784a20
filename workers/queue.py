"""The render-farm queue: one interface (`TaskQueue`, workers/tasks.py), a backend per
URL scheme, and `open_queue`, which picks the backend.

A job is stored as data (its TOML text and where relative paths resolve), never as
code. Its frames become tasks. A task is *leased*, not popped: the lease expires unless
renewed, and every lease carries a fencing token, so a worker that lost its lease (it
stalled, the lease expired, another worker took the task) can no longer renew, ack or
fail it. Publishing is first-writer-wins on disk, so a task rendered twice still
yields each frame once.

Semantics every backend implements (tests/test_queue_contract.py checks them):
- `submit` stores a job and queues its tasks, and returns its id; given an
  `idempotency_key` already seen, it stores nothing and returns the id of the job
  first submitted with that key (one atomic step: two submits racing queue one job).
- `lease` hands out pending tasks by job priority (high first), then submission
  order, then frame order; a task whose lease expired is handed out again, with its
  attempt count raised. A task leased `max_attempts` times without an ack is
  dead-lettered instead ("failed", with the last error).
- `fail` records the error; below `max_attempts` the task becomes pending again (for
  another worker), at `max_attempts` it is dead-lettered. It also counts the job's
  failures on that worker; given `block_after`, a worker that has failed the job that
  many times is blocklisted on it: `lease` no longer offers it the job, and `status`
  lists it under the job's `blocked`, until `requeue` lifts every block of the job.
- `release` gives a task back untouched (a draining worker, or one whose own
  configuration refuses the job): no attempt is counted.
- `holds` says, reading only, whether the worker still holds the lease (as `renew`
  would, without extending it): the worker asks at every frame boundary.
- A job with segmented videos (`JobSpec.segments`) has a "segment" task per segment,
  submitted "waiting"; the ack of the last frames task overlapping it makes it pending,
  in the same atomic step. `cancel` drops waiting ones too, and `requeue` makes a
  requeued segment task wait again while any of its frames tasks is not done.
- When the last other task of a job that wants a video is acked, a "video" task
  (the whole frame range) is enqueued: a worker joins the segments by a remux and
  encodes unsegmented videos from the published frames.
- `cancel` drops a job's pending tasks and refuses its leased ones at renew, holds and
  ack; a task cancelled while leased is "stopping" in `status` until its worker
  `record_stopped`s it, saying how many of its frames it had published (they count as
  done, the rest as cancelled), or until its lease deadline passes.
- `requeue` makes failed (or all unfinished) tasks pending again with fresh attempts.
- `job_states` lists every job id with its stored state (active, paused, done,
  cancelled) in submission order, cheaply: the monitor picks the jobs it shows from it
  and asks `status(job_ids=...)` for those only (in submission order too).
- `pending_frames` is the frames of every job's pending frames tasks (the workers'
  queue-depth gauge), cheaper than summing `status`.
- `status` counts a job's frames (not tasks) as done, leased, pending, failed,
  cancelled or stopping, with the error of each failed range and the blocklisted
  workers (`job_status`, workers/tasks.py, does the counting).
- `tasks` lists a job's tasks in frame order with their attempts, last worker, the start
  of their latest lease and when it ended (ack or fail), and their error: what the
  monitor shows (`TaskInfo`).
- `store_log` appends a task's log text (one attempt's) after what it holds, keeping
  the last LOG_CHARS characters; `task_log` reads it ("" before any, None for a task
  the job does not have).
- `set_priority` moves a job to another priority level (leases follow it at once);
  `pause` stops a job's tasks from being leased (leased ones finish; requeue keeps it
  paused) and `resume` undoes it.
- `drain` asks a known worker to drain: its next `heartbeat` returns True and the worker
  stops leasing (as on SIGTERM); the request goes when the worker is removed or dropped.
- `heartbeat` records a worker as alive (by the queue's clock: SQLite's host, the Redis
  server), `remove_worker` forgets it (a clean exit), and `workers` lists them with the
  age of their last heartbeat; entries older than WORKER_DROP_S are dropped.

Queue URLs (README, 'Render farm'): `sqlite:///ABSOLUTE/PATH` (the path after `sqlite://`
is absolute, as in a file:/// URL; SQLAlchemy's four slashes mean the same file),
`sqlite:RELATIVE/PATH` (against the working directory, resolved once, here), and
`redis://` / `rediss://` as redis-py reads them.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config.urls import redact
from pipeline.errors import JobError

from .tasks import TaskQueue

SQLITE_FORMS = "sqlite:///ABSOLUTE/PATH/farm.db or sqlite:RELATIVE/PATH/farm.db"
URL_FORMS = f"{SQLITE_FORMS}, redis://[USER:PASSWORD@]host:port/db or rediss://..."


def sqlite_path(url: str) -> Path:
    """The absolute path a `sqlite:` URL names (see the module's docstring)."""
    rest = url.removeprefix("sqlite:")
    if rest.startswith("//"):
        path = rest[2:]
        if not path.startswith("/"):  # sqlite://host/...: SQLite files are local
            raise JobError("--queue", url, f"a SQLite queue is a local file, not a host; expected {SQLITE_FORMS}")
        path = "/" + path.lstrip("/")  # sqlite:///abs and SQLAlchemy's sqlite:////abs: the same file
    else:
        path = rest
    if not path or path.endswith("/"):
        raise JobError("--queue", url, f"names no database file; expected {SQLITE_FORMS}")
    return Path(path).resolve()  # a relative path against the working directory, once


def open_queue(url: str, *, create: bool = True) -> TaskQueue:
    """The queue a URL names: `sqlite:` (one host) or `redis://` / `rediss://` (many).

    `create=False` (status, requeue, cancel) refuses a SQLite file that does not exist
    instead of creating an empty queue there. This is the only place that imports a
    backend, and only the one the URL names, so a farm on SQLite never loads redis-py."""
    if url.startswith("sqlite:"):
        from .sqlite_queue import SqliteQueue

        return SqliteQueue(sqlite_path(url), create=create)
    if url.startswith(("redis://", "rediss://")):
        from .redis_queue import RedisQueue

        return RedisQueue(url)
    raise JobError("--queue", redact(url), f"expected {URL_FORMS}")
