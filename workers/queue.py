"""The render-farm queue: one interface (`TaskQueue`, workers/tasks.py), a backend per
URL scheme, and `open_queue`, which picks the backend.

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
- `status` counts a job's frames (not tasks) as done, leased, pending or failed, with
  the error of each failed range (`job_status`, workers/tasks.py, does the counting).
"""

from __future__ import annotations

from pipeline.errors import JobError

from .tasks import TaskQueue, redact


def open_queue(url: str) -> TaskQueue:
    """`sqlite:///path/farm.db` (one host) or `redis://[:password@]host:port/db` / `rediss://`.

    This is the only place that imports a backend, and only the one the URL names, so a
    farm on SQLite never loads redis-py."""
    if url.startswith("sqlite:///"):
        from .sqlite_queue import SqliteQueue

        return SqliteQueue(url.removeprefix("sqlite:///") or "farm.db")
    if url.startswith(("redis://", "rediss://")):
        from .redis_queue import RedisQueue

        return RedisQueue(url)
    raise JobError("--queue", redact(url), "expected sqlite:///path/farm.db, redis://host:port/db "
                   "or rediss://host:port/db")
