"""The embedded farm queue: one SQLite file shared by the worker processes of one host.

WAL lets readers (`render status`) run beside writers; every state change runs inside
`BEGIN IMMEDIATE`, which takes the write lock up front, so two workers can never
claim the same task. A lease is a row in state "leased" with an expiry and a fencing
token that grows on every lease; renew, ack, fail and release match on the token, so
a worker whose lease expired and was taken over changes nothing.

The file is named by an absolute path (workers/queue.py resolves the URL). Opened with
`create=False` (status, requeue, cancel) it must already exist and be a farm queue;
nothing is created then. An older queue file gains the tables and columns added since
(`_migrate`) when it is opened.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import JobError

from .tasks import (
    ERROR_CHARS,
    LOG_CHARS,
    TASK_FRAMES,
    TASK_SEGMENT,
    TASK_VIDEO,
    WORKER_DROP_S,
    JobSpec,
    JobStatus,
    QueueUnavailable,
    Task,
    TaskInfo,
    TaskRow,
    WorkerStatus,
    job_status,
    whole_number,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    spec TEXT NOT NULL,                 -- JobSpec as JSON: data, never code
    priority INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    state TEXT NOT NULL,                -- active | paused | done | cancelled
    submitted REAL                      -- seconds since the epoch
);
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs(id),
    kind TEXT NOT NULL,                 -- frames | segment | video
    first INTEGER NOT NULL,
    last INTEGER NOT NULL,
    state TEXT NOT NULL,                -- pending | leased | done | failed | cancelled | waiting (a segment
                                        --   task until every frames task overlapping it is done)
    attempts INTEGER NOT NULL DEFAULT 0,
    token INTEGER NOT NULL DEFAULT 0,
    lease_until REAL,                   -- leased: the deadline; cancelled while leased: stopping until then
    worker TEXT,
    error TEXT,
    published INTEGER NOT NULL DEFAULT 0,  -- cancelled: frames its worker published before it stopped
    started REAL,                       -- its latest lease began
    finished REAL,                      -- acked or failed after that lease
    preview INTEGER NOT NULL DEFAULT 0  -- 1: a `--preview` frame, leased before the job's other tasks
);
CREATE INDEX IF NOT EXISTS tasks_by_job ON tasks (job_id);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks (state, job_id);
CREATE TABLE IF NOT EXISTS workers (
    name TEXT PRIMARY KEY,
    heartbeat REAL NOT NULL,
    info TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS job_failures (   -- per-worker failure counts and blocklist; requeue clears them
    job_id TEXT NOT NULL REFERENCES jobs(id),
    worker TEXT NOT NULL,
    failures INTEGER NOT NULL,
    blocked INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, worker)
);
CREATE TABLE IF NOT EXISTS idempotency_keys (  -- `render submit --idempotency-key`: a key queues one job
    key TEXT PRIMARY KEY,
    job_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS task_logs (      -- each task's log, its attempts one after another, bounded
    task_id INTEGER PRIMARY KEY REFERENCES tasks(id),
    log TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS drains (         -- workers asked to drain (the monitor); read at their heartbeat
    name TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS notices (        -- a job's webhook events claimed for sending: each once
    job_id TEXT NOT NULL,
    event TEXT NOT NULL,
    PRIMARY KEY (job_id, event)
);
"""

# What `status` hands `job_status` (which does all the counting): each failed task on its
# own (it carries its error), and the other tasks of a job summed per kind and state in
# SQL (`_STATUS_SUMS`, turned into TaskRows by `_summed_rows`): SQLite, not Python, walks
# the 100,000 rows of a large queue. The sums read only the covering index
# `tasks_for_status`, in its order (no temporary B-tree), and each FILTERed aggregate
# sums only what job_status uses of that state: the stopping frames of cancelled tasks
# (leased when cancelled, lease not yet run out), their published frames (clipped per
# task, as job_status clips them), and the frames and lease span of the tasks with both
# times (the others give no rate).
_STATUS_FAILED = """
SELECT job_id, kind, first, last, 'failed', error, published, started, finished
  FROM tasks WHERE state = 'failed' {where}
"""
_STATUS_SUMS = """
SELECT job_id, kind, state, SUM(last - first + 1),
       SUM(last - first + 1) FILTER (WHERE state = 'cancelled' AND lease_until > ?1),
       SUM(MIN(published, last - first + 1)) FILTER (WHERE state = 'cancelled'),
       SUM(last - first + 1) FILTER (WHERE started IS NOT NULL AND finished IS NOT NULL),
       MIN(started) FILTER (WHERE finished IS NOT NULL), MAX(finished) FILTER (WHERE started IS NOT NULL),
       COUNT(*), COUNT(*) FILTER (WHERE state = 'cancelled' AND lease_until > ?1),
       COUNT(*) FILTER (WHERE started IS NOT NULL AND finished IS NOT NULL)
  FROM tasks INDEXED BY tasks_for_status WHERE state != 'failed' {where}
 GROUP BY job_id, kind, state
"""
_STATUS_INDEX = """CREATE INDEX IF NOT EXISTS tasks_for_status
    ON tasks (job_id, kind, state, first, last, published, started, finished, lease_until)"""


def _summed_rows(kind: str, state: str, frames: int, stopping: int | None, published: int | None,
                 timed: int | None, started: float | None, finished: float | None,
                 tasks: int, stopping_tasks: int, timed_tasks: int) -> Iterator[TaskRow]:
    """One row of `_STATUS_SUMS` as the TaskRows job_status counts (first..last spans the
    frames; `tasks` says how many tasks each stands for)."""
    if state == "cancelled":
        stopping = stopping or 0
        if stopping:
            yield TaskRow(kind, 0, stopping - 1, "stopping", None, tasks=stopping_tasks)
        if frames - stopping:
            yield TaskRow(kind, 0, frames - stopping - 1, "cancelled", None, published or 0,
                          tasks=tasks - stopping_tasks)
        return
    timed = timed or 0
    if timed:
        yield TaskRow(kind, 0, timed - 1, state, None, 0, started, finished, tasks=timed_tasks)
    if frames - timed:
        yield TaskRow(kind, 0, frames - timed - 1, state, None, tasks=tasks - timed_tasks)


# A segment task (`tasks` as the outer table) whose frames tasks are all done: readiness is
# read from the tasks' states, so acks, cancels and requeues need no counter kept in step.
_FRAMES_DONE = """job_id = ? AND kind = 'segment' AND NOT EXISTS (
    SELECT 1 FROM tasks f WHERE f.job_id = tasks.job_id AND f.kind = 'frames' AND f.state != 'done'
                            AND f.first <= tasks.last AND f.last >= tasks.first)"""

# Columns added to existing tables since the first schema: (table, column, definition).
_ADDED_COLUMNS = [("tasks", "published", "INTEGER NOT NULL DEFAULT 0"), ("tasks", "started", "REAL"),
                  ("tasks", "finished", "REAL"), ("jobs", "submitted", "REAL"),
                  ("tasks", "preview", "INTEGER NOT NULL DEFAULT 0")]


class SqliteQueue:
    worker_drop_s = WORKER_DROP_S

    def __init__(self, path: str | Path, *, create: bool = True, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path).resolve()
        self.where = f"sqlite://{self.path}"   # sqlite:///absolute/path: the URL convention, round-tripped
        self.clock = clock
        self._local = threading.local()
        # The task sums of jobs stored as done, by job id: they are final (every task of such a job is
        # done; requeue and cancel change none of them), so `status` counts each once per process
        # and a monitor's whole-queue listing costs what the live jobs cost.
        self._done_rows: dict[str, tuple[list[TaskRow], list[tuple[str, int]]]] = {}
        where = str(self.path)
        if self.path.is_dir():
            raise JobError("--queue", where, "is a folder; name the queue's database file in it, e.g. "
                           f"sqlite://{self.path / 'farm.db'}")
        if not create and not self.path.is_file():
            raise JobError("--queue", where, "no queue database at this path (only `render submit` and "
                           "`render worker` create one); a relative sqlite: path is read against the "
                           "working directory")
        if create:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise JobError("--queue", where, f"cannot create its folder: {err.strerror}") from None
        try:
            db = self._db()
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "jobs" not in tables and (tables or not create):
                raise JobError("--queue", where, "is a SQLite database but not a framefarm queue (it has no "
                               "jobs table); name another file")
            db.executescript(_SCHEMA)  # idempotent: every process may create it
            self._migrate(db)
            db.execute(_STATUS_INDEX)   # after _migrate: it covers columns an older file gains there
        except sqlite3.OperationalError as err:
            if "locked" in str(err) or "busy" in str(err):
                raise QueueUnavailable(f"queue database {self.path} is busy: {err}") from None
            raise JobError("--queue", where, f"cannot be opened as the queue database: {err}") from None
        except sqlite3.Error as err:   # "file is not a database", a corrupt file
            raise JobError("--queue", where, f"cannot be opened as the queue database: {err}") from None

    def _migrate(self, db: sqlite3.Connection) -> None:
        for table, column, definition in _ADDED_COLUMNS:
            if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
                with contextlib.suppress(sqlite3.OperationalError):  # another process added it first
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")

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

    def submit(self, spec: JobSpec, idempotency_key: str | None = None) -> str:
        with self._write() as db:
            if idempotency_key is not None:
                seen = db.execute("SELECT job_id FROM idempotency_keys WHERE key = ?", (idempotency_key,)).fetchone()
                if seen is not None:
                    return str(seen[0])
                db.execute("INSERT INTO idempotency_keys (key, job_id) VALUES (?, ?)", (idempotency_key, spec.job_id))
            db.execute("""INSERT INTO jobs (id, spec, priority, max_attempts, state, submitted)
                          VALUES (?, ?, ?, ?, 'active', ?)""",
                       (spec.job_id, json.dumps(spec.as_dict()), spec.priority, spec.max_attempts, self.clock()))
            db.executemany("""INSERT INTO tasks (job_id, kind, first, last, state, preview)
                              VALUES (?, ?, ?, ?, 'pending', ?)""",
                           [(spec.job_id, TASK_FRAMES, first, last, int(preview))
                            for (first, last), preview in spec.preview_first()])
            db.executemany("INSERT INTO tasks (job_id, kind, first, last, state) VALUES (?, ?, ?, ?, 'waiting')",
                           [(spec.job_id, TASK_SEGMENT, first, last) for first, last in spec.segments])
            return spec.job_id

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
                      AND t.job_id NOT IN (SELECT job_id FROM job_failures WHERE worker = ? AND blocked)
                    ORDER BY j.priority DESC,
                             t.worker = ? AND t.error IS NOT NULL,  -- a retry goes to another worker first
                             j.seq, t.kind = 'video', t.preview DESC, t.first LIMIT 1""",
                (now, *skip, worker, worker)).fetchone()
            if row is None:
                return None
            db.execute("""UPDATE tasks SET state = 'leased', attempts = attempts + 1, token = token + 1,
                          lease_until = ?, worker = ?, started = ?, finished = NULL WHERE id = ?""",
                       (now + lease_s, worker, now, row["id"]))
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
                              AND j.state IN ('active', 'paused')""",
                         (int(task.task_id), task.token, worker)).fetchone()
        return row is not None

    def holds(self, task: Task, worker: str) -> bool:
        return self._owned(self._db(), task, worker)

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
            db.execute("UPDATE tasks SET state = 'done', lease_until = NULL, error = NULL, finished = ? WHERE id = ?",
                       (self.clock(), int(task.task_id)))
            if task.kind == TASK_FRAMES:
                db.execute(f"UPDATE tasks SET state = 'pending' WHERE state = 'waiting' AND {_FRAMES_DONE}"
                           " AND first <= ? AND last >= ?", (task.job_id, task.last, task.first))
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

    def fail(self, task: Task, worker: str, error: str, block_after: int | None = None) -> bool:
        with self._write() as db:
            if not self._owned(db, task, worker):
                return False
            limit = db.execute("SELECT max_attempts FROM jobs WHERE id = ?", (task.job_id,)).fetchone()[0]
            dead = task.attempt >= limit
            db.execute("UPDATE tasks SET state = ?, lease_until = NULL, error = ?, finished = ? WHERE id = ?",
                       ("failed" if dead else "pending", error[:ERROR_CHARS], self.clock(), int(task.task_id)))
            db.execute("""INSERT INTO job_failures (job_id, worker, failures) VALUES (?, ?, 1)
                          ON CONFLICT (job_id, worker) DO UPDATE SET failures = failures + 1""",
                       (task.job_id, worker))
            if block_after is not None:
                db.execute("UPDATE job_failures SET blocked = 1 WHERE job_id = ? AND worker = ? AND failures >= ?",
                           (task.job_id, worker, block_after))
            return dead

    def release(self, task: Task, worker: str) -> None:
        with self._write() as db:
            if self._owned(db, task, worker):
                db.execute("""UPDATE tasks SET state = 'pending', attempts = attempts - 1, lease_until = NULL
                              WHERE id = ?""", (int(task.task_id),))

    def record_stopped(self, task: Task, worker: str, published: int) -> bool:
        with self._write() as db:
            return db.execute("""UPDATE tasks SET published = ?, lease_until = NULL
                                 WHERE id = ? AND token = ? AND worker = ? AND state = 'cancelled'""",
                              (max(0, published), int(task.task_id), task.token, worker)).rowcount > 0

    # -- operators

    def cancel(self, job_id: str) -> int:
        with self._write() as db:
            db.execute("UPDATE jobs SET state = 'cancelled' WHERE id = ?", (job_id,))
            # a leased task keeps its deadline: it is "stopping" until its worker reports or the lease runs out
            return db.execute("""UPDATE tasks SET state = 'cancelled', published = 0,
                                     lease_until = CASE WHEN state = 'leased' THEN lease_until END
                                 WHERE job_id = ? AND state IN ('pending', 'leased', 'waiting')""",
                              (job_id,)).rowcount

    def requeue(self, job_id: str, failed_only: bool) -> int:
        states = ("failed",) if failed_only else ("failed", "cancelled", "pending", "leased")
        with self._write() as db:
            count = db.execute(
                f"""UPDATE tasks SET state = 'pending', attempts = 0, error = NULL, lease_until = NULL,
                        published = 0
                    WHERE job_id = ? AND state IN ({','.join('?' * len(states))})""",
                (job_id, *states)).rowcount
            # a requeued segment task waits again for frames tasks that are not done
            db.execute(f"""UPDATE tasks SET state = 'waiting'
                           WHERE state = 'pending' AND kind = 'segment' AND job_id = ?
                             AND NOT ({_FRAMES_DONE})""", (job_id, job_id))
            db.execute("DELETE FROM job_failures WHERE job_id = ?", (job_id,))  # every worker may take it again
            if count:  # a paused job stays paused: its requeued tasks wait for `resume`
                db.execute("UPDATE jobs SET state = 'active' WHERE id = ? AND state != 'paused'", (job_id,))
            return count

    def store_log(self, job_id: str, task_id: str, text: str) -> None:
        number = whole_number(task_id)   # None, not an id: `id = NULL` matches no task, nothing is stored
        with self._write() as db:
            if db.execute("SELECT 1 FROM tasks WHERE id = ? AND job_id = ?", (number, job_id)).fetchone():
                db.execute("""INSERT INTO task_logs (task_id, log) VALUES (?, substr(?, -?))
                              ON CONFLICT (task_id) DO UPDATE SET log = substr(log || excluded.log, -?)""",
                           (number, text, LOG_CHARS, LOG_CHARS))

    def task_log(self, job_id: str, task_id: str) -> str | None:
        # not an id (None): `t.id = NULL` matches no row, so the answer is None, as for an unknown id
        row = self._db().execute("""SELECT t.id, l.log FROM tasks t LEFT JOIN task_logs l ON l.task_id = t.id
                                    WHERE t.id = ? AND t.job_id = ?""",
                                 (whole_number(task_id), job_id)).fetchone()
        return None if row is None else row[1] or ""

    def set_priority(self, job_id: str, priority: int) -> bool:
        with self._write() as db:
            return db.execute("UPDATE jobs SET priority = ? WHERE id = ?", (int(priority), job_id)).rowcount > 0

    def pause(self, job_id: str) -> bool:
        with self._write() as db:
            return db.execute("UPDATE jobs SET state = 'paused' WHERE id = ? AND state = 'active'",
                              (job_id,)).rowcount > 0

    def resume(self, job_id: str) -> bool:
        with self._write() as db:
            return db.execute("UPDATE jobs SET state = 'active' WHERE id = ? AND state = 'paused'",
                              (job_id,)).rowcount > 0

    def tasks(self, job_id: str) -> list[TaskInfo]:
        now = self.clock()
        rows = self._db().execute(
            """SELECT id, kind, first, last,
                      CASE WHEN state = 'cancelled' AND lease_until > ? THEN 'stopping' ELSE state END AS state,
                      attempts, worker, started, finished, error
               FROM tasks WHERE job_id = ? ORDER BY kind = 'video', first, id""", (now, job_id)).fetchall()
        return [TaskInfo(task_id=str(r["id"]), kind=r["kind"], first=r["first"], last=r["last"], state=r["state"],
                         attempts=r["attempts"], worker=r["worker"], started=r["started"], finished=r["finished"],
                         error=r["error"]) for r in rows]

    def job_states(self) -> list[tuple[str, str]]:
        return [(row[0], row[1]) for row in self._db().execute("SELECT id, state FROM jobs ORDER BY seq")]

    def pending_frames(self) -> int:
        # Only live jobs have pending tasks: asking for them lets SQLite read the covering index.
        row = self._db().execute("""SELECT SUM(last - first + 1) FROM tasks
                                    WHERE job_id IN (SELECT id FROM jobs WHERE state IN ('active', 'paused'))
                                      AND kind = ? AND state = 'pending'""", (TASK_FRAMES,)).fetchone()
        return int(row[0] or 0)

    def status(self, job_id: str | None = None, *, job_ids: Sequence[str] | None = None) -> list[JobStatus]:
        db = self._db()
        now = self.clock()
        if job_id is not None:
            job_ids = [job_id]
        rows: dict[str, list[TaskRow]] = {}
        blocked: dict[str, list[tuple[str, int]]] = {}
        db.execute("BEGIN")  # one snapshot for all the reads below
        try:
            jobs = db.execute(
                "SELECT id, json_extract(spec, '$.name') AS name, priority, state, submitted, "
                "json_extract(spec, '$.submitted_by') AS submitted_by, "
                "json_extract(spec, '$.submitted_host') AS submitted_host FROM jobs"
                + ("" if job_ids is None else " WHERE id IN (SELECT value FROM json_each(?))") + " ORDER BY seq",
                () if job_ids is None else (json.dumps(list(job_ids)),)).fetchall()
            counted = [job["id"] for job in jobs if not (job["state"] == "done" and job["id"] in self._done_rows)]
            args = (json.dumps(counted),)
            where = "AND job_id IN (SELECT value FROM json_each(?))"
            for row in db.execute(_STATUS_FAILED.format(where=where), args):
                rows.setdefault(row[0], []).append(TaskRow(*row[1:]))
            for job_key, *sums in db.execute(_STATUS_SUMS.format(where=where), (now, *args)):
                rows.setdefault(job_key, []).extend(_summed_rows(*sums))
            for row in db.execute(f"SELECT job_id, worker, failures FROM job_failures WHERE blocked {where}", args):
                blocked.setdefault(row[0], []).append((row[1], row[2]))
        finally:
            db.execute("COMMIT")
        for job in jobs:
            if job["state"] != "done":
                continue
            if job["id"] in self._done_rows:
                rows[job["id"]], blocked[job["id"]] = self._done_rows[job["id"]]
            else:
                self._done_rows[job["id"]] = (rows.get(job["id"], []), blocked.get(job["id"], []))
        return [job_status(job["id"], job["name"], job["state"], job["priority"],
                           rows.get(job["id"], []), blocked.get(job["id"], []), submitted=job["submitted"],
                           submitted_by=job["submitted_by"], submitted_host=job["submitted_host"])
                for job in jobs]

    # -- workers

    def heartbeat(self, worker: str, info: dict[str, Any]) -> bool:
        now = self.clock()
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO workers (name, heartbeat, info) VALUES (?, ?, ?)",
                       (worker, now, json.dumps(info)))
            db.execute("DELETE FROM workers WHERE heartbeat < ?", (now - self.worker_drop_s,))
            db.execute("DELETE FROM drains WHERE name NOT IN (SELECT name FROM workers)")
            return db.execute("SELECT 1 FROM drains WHERE name = ?", (worker,)).fetchone() is not None

    def drain(self, worker: str) -> bool:
        with self._write() as db:
            if db.execute("SELECT 1 FROM workers WHERE name = ?", (worker,)).fetchone() is None:
                return False
            db.execute("INSERT OR IGNORE INTO drains (name) VALUES (?)", (worker,))
            return True

    def claim_notice(self, job_id: str, event: str) -> bool:
        with self._write() as db:
            return db.execute("INSERT OR IGNORE INTO notices (job_id, event) VALUES (?, ?)",
                              (job_id, event)).rowcount == 1

    def remove_worker(self, worker: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM workers WHERE name = ?", (worker,))
            db.execute("DELETE FROM drains WHERE name = ?", (worker,))

    def workers(self) -> list[WorkerStatus]:
        now = self.clock()
        rows = self._db().execute("SELECT name, heartbeat, info FROM workers WHERE heartbeat >= ? ORDER BY name",
                                  (now - self.worker_drop_s,)).fetchall()
        return [WorkerStatus(r["name"], r["heartbeat"], json.loads(r["info"]), age=max(0.0, now - r["heartbeat"]))
                for r in rows]
