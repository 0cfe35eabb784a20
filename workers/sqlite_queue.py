"""The embedded farm queue: one SQLite file shared by the worker processes of one host.

WAL lets readers (`render status`) run beside writers; every state change runs inside
`BEGIN IMMEDIATE`, which takes the write lock up front, so two workers can never
claim the same task. A lease is a row in state "leased" with an expiry and a fencing
token that grows on every lease; renew, ack, fail and release match on the token, so
a worker whose lease expired and was taken over changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .tasks import (
    ERROR_CHARS,
    TASK_FRAMES,
    TASK_VIDEO,
    JobSpec,
    JobStatus,
    QueueUnavailable,
    Task,
    TaskRow,
    WorkerStatus,
    job_status,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    spec TEXT NOT NULL,                 -- JobSpec as JSON: data, never code
    priority INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    state TEXT NOT NULL                 -- active | done | cancelled
);
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs(id),
    kind TEXT NOT NULL,                 -- frames | video
    first INTEGER NOT NULL,
    last INTEGER NOT NULL,
    state TEXT NOT NULL,                -- pending | leased | done | failed | cancelled
    attempts INTEGER NOT NULL DEFAULT 0,
    token INTEGER NOT NULL DEFAULT 0,
    lease_until REAL,
    worker TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks (state, job_id);
CREATE TABLE IF NOT EXISTS workers (
    name TEXT PRIMARY KEY,
    heartbeat REAL NOT NULL,
    info TEXT NOT NULL
);
"""


class SqliteQueue:
    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self._local = threading.local()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db().executescript(_SCHEMA)  # idempotent: every process may create it
        except (OSError, sqlite3.Error) as err:
            raise QueueUnavailable(f"cannot open the queue database {self.path}: {err}") from None

    # -- connections: one per thread, autocommit, explicit transactions

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoints, never torn
            self._local.db = db
        return db

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as err:
            raise QueueUnavailable(f"queue database {self.path} is busy: {err}") from None
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- jobs

    def submit(self, spec: JobSpec) -> None:
        with self._write() as db:
            db.execute("INSERT INTO jobs (id, spec, priority, max_attempts, state) VALUES (?, ?, ?, ?, 'active')",
                       (spec.job_id, json.dumps(spec.as_dict()), spec.priority, spec.max_attempts))
            db.executemany("INSERT INTO tasks (job_id, kind, first, last, state) VALUES (?, ?, ?, ?, 'pending')",
                           [(spec.job_id, TASK_FRAMES, first, last) for first, last in spec.chunks()])

    def job(self, job_id: str) -> JobSpec | None:
        row = self._db().execute("SELECT spec FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return JobSpec.from_dict(json.loads(row["spec"])) if row else None

    # -- leases

    def lease(self, worker: str, lease_s: float, skip_jobs: frozenset[str] = frozenset()) -> Task | None:
        now = self.clock()
        with self._write() as db:
            self._dead_letter_lost(db, now)
            skip = sorted(skip_jobs)
            row = db.execute(
                f"""SELECT t.* FROM tasks t JOIN jobs j ON j.id = t.job_id
                    WHERE j.state = 'active'
                      AND (t.state = 'pending' OR (t.state = 'leased' AND t.lease_until < ?))
                      AND t.job_id NOT IN ({','.join('?' * len(skip))})
                    ORDER BY j.priority DESC,
                             t.worker = ? AND t.error IS NOT NULL,  -- a retry goes to another worker first
                             j.seq, t.kind = 'video', t.first LIMIT 1""",
                (now, *skip, worker)).fetchone()
            if row is None:
                return None
            db.execute("""UPDATE tasks SET state = 'leased', attempts = attempts + 1, token = token + 1,
                          lease_until = ?, worker = ? WHERE id = ?""", (now + lease_s, worker, row["id"]))
            return Task(job_id=row["job_id"], task_id=str(row["id"]), kind=row["kind"], first=row["first"],
                        last=row["last"], token=row["token"] + 1, attempt=row["attempts"] + 1)

    def _dead_letter_lost(self, db: sqlite3.Connection, now: float) -> None:
        """Expired leases that used their last attempt: the task keeps killing workers."""
        db.execute("""UPDATE tasks SET state = 'failed', lease_until = NULL,
                          error = 'lease expired ' || attempts || ' times (last worker ' || worker || ')'
                      WHERE state = 'leased' AND lease_until < ?
                        AND attempts >= (SELECT max_attempts FROM jobs WHERE jobs.id = tasks.job_id)""",
                   (now,))

    def _owned(self, db: sqlite3.Connection, task: Task, worker: str) -> bool:
        row = db.execute("""SELECT 1 FROM tasks t JOIN jobs j ON j.id = t.job_id
                            WHERE t.id = ? AND t.token = ? AND t.worker = ? AND t.state = 'leased'
                              AND j.state = 'active'""",
                         (int(task.task_id), task.token, worker)).fetchone()
        return row is not None

    def renew(self, task: Task, worker: str, lease_s: float) -> bool:
        with self._write() as db:
            if not self._owned(db, task, worker):
                return False
            db.execute("UPDATE tasks SET lease_until = ? WHERE id = ?", (self.clock() + lease_s, int(task.task_id)))
            return True

    def ack(self, task: Task, worker: str) -> bool:
        with self._write() as db:
            if not self._owned(db, task, worker):
                return False
            db.execute("UPDATE tasks SET state = 'done', lease_until = NULL, error = NULL WHERE id = ?",
                       (int(task.task_id),))
            self._after_done(db, task.job_id)
            return True

    def _after_done(self, db: sqlite3.Connection, job_id: str) -> None:
        open_tasks = db.execute("SELECT COUNT(*) FROM tasks WHERE job_id = ? AND state != 'done'",
                                (job_id,)).fetchone()[0]
        if open_tasks:
            return
        spec = self.job(job_id)
        has_video = db.execute("SELECT 1 FROM tasks WHERE job_id = ? AND kind = ?",
                               (job_id, TASK_VIDEO)).fetchone()
        if spec is not None and spec.video and not has_video:
            db.execute("INSERT INTO tasks (job_id, kind, first, last, state) VALUES (?, ?, ?, ?, 'pending')",
                       (job_id, TASK_VIDEO, spec.frame_start, spec.frame_end))
        else:
            db.execute("UPDATE jobs SET state = 'done' WHERE id = ?", (job_id,))

    def fail(self, task: Task, worker: str, error: str) -> bool:
        with self._write() as db:
            if not self._owned(db, task, worker):
                return False
            limit = db.execute("SELECT max_attempts FROM jobs WHERE id = ?", (task.job_id,)).fetchone()[0]
            dead = task.attempt >= limit
            db.execute("UPDATE tasks SET state = ?, lease_until = NULL, error = ? WHERE id = ?",
                       ("failed" if dead else "pending", error[:ERROR_CHARS], int(task.task_id)))
            return dead

    def release(self, task: Task, worker: str) -> None:
        with self._write() as db:
            if self._owned(db, task, worker):
                db.execute("""UPDATE tasks SET state = 'pending', attempts = attempts - 1, lease_until = NULL
                              WHERE id = ?""", (int(task.task_id),))

    # -- operators

    def cancel(self, job_id: str) -> int:
        with self._write() as db:
            db.execute("UPDATE jobs SET state = 'cancelled' WHERE id = ?", (job_id,))
            return db.execute("""UPDATE tasks SET state = 'cancelled', lease_until = NULL
                                 WHERE job_id = ? AND state IN ('pending', 'leased')""", (job_id,)).rowcount

    def requeue(self, job_id: str, failed_only: bool) -> int:
        states = ("failed",) if failed_only else ("failed", "cancelled", "pending", "leased")
        with self._write() as db:
            count = db.execute(
                f"""UPDATE tasks SET state = 'pending', attempts = 0, error = NULL, lease_until = NULL
                    WHERE job_id = ? AND state IN ({','.join('?' * len(states))})""",
                (job_id, *states)).rowcount
            if count:
                db.execute("UPDATE jobs SET state = 'active' WHERE id = ?", (job_id,))
            return count

    def status(self, job_id: str | None = None) -> list[JobStatus]:
        db = self._db()
        where, args = ("WHERE id = ?", (job_id,)) if job_id else ("", ())
        jobs = db.execute(f"SELECT id, spec, priority, state FROM jobs {where} ORDER BY seq", args).fetchall()
        result = []
        for job in jobs:
            tasks = db.execute("SELECT kind, first, last, state, error FROM tasks WHERE job_id = ?", (job["id"],))
            result.append(job_status(job["id"], json.loads(job["spec"])["name"], job["state"], job["priority"],
                                     (TaskRow(*row) for row in tasks)))
        return result

    # -- workers

    def heartbeat(self, worker: str, info: dict[str, Any]) -> None:
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO workers (name, heartbeat, info) VALUES (?, ?, ?)",
                       (worker, self.clock(), json.dumps(info)))

    def workers(self) -> list[WorkerStatus]:
        rows = self._db().execute("SELECT name, heartbeat, info FROM workers ORDER BY name").fetchall()
        return [WorkerStatus(r["name"], r["heartbeat"], json.loads(r["info"])) for r in rows]
