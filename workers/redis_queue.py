"""The farm queue on Redis Streams: workers on many hosts share one Redis server.

Each job has its own stream, read through one consumer group whose consumers are the
workers, so `lease` can take jobs by priority, then submission order, and pass over a
job a worker skips without delivering anything from it. Every check-and-act step
(submit, lease, renew, holds, ack, fail, release, stopped, cancel, requeue, priority,
pause/resume, heartbeat, drain)
is one Lua script in
workers/redis_lua/, so it is atomic on the server: redis_lua/prelude.lua documents the
key layout and the invariants the scripts keep, and each script's header its arguments
and its reply. This module passes arguments in and turns replies and errors into the
queue's types.

Errors: connection loss, timeouts, a server still loading its data and a read-only
replica during a failover raise `QueueUnavailable` (the worker backs off and retries);
a refused password, or a server that does not speak Redis's protocol when the queue is
opened (a wrong port), raises `JobError` (retrying cannot fix it). Messages name the URL
only through `redact` (pipeline/config/urls.py: every credential, in the userinfo or in the
query, masked); the password lives only in redis-py's connection pool.
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from collections.abc import Iterator, Sequence
from importlib import resources
from typing import Any, cast

import redis
from redis.backoff import ConstantBackoff
from redis.retry import Retry

from pipeline.config.urls import redact
from pipeline.errors import JobError

from .tasks import (
    ERROR_CHARS,
    LOG_CHARS,
    TASK_FRAMES,
    WORKER_DROP_S,
    JobSpec,
    JobStatus,
    QueueUnavailable,
    Task,
    TaskInfo,
    TaskRow,
    WorkerStatus,
    job_status,
)

# Transient: the worker backs off and tries again (BusyLoadingError is a ConnectionError:
# Redis loading its data after a restart; ReadOnlyError: a failover in progress).
_UNAVAILABLE: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError)
# Configuration, not weather: retrying forever with a wrong password helps nobody.
_REFUSED: tuple[type[Exception], ...] = (redis.AuthenticationError, redis.exceptions.AuthorizationError)
# At open, a server that is not Redis (an HTTP server, another service on the port): the
# configuration again. redis-py's parser raises InvalidResponse on bytes that are not RESP,
# and its handshake AttributeError or TypeError on a RESP reply of the wrong shape.
_NOT_REDIS: tuple[type[Exception], ...] = (redis.exceptions.InvalidResponse, AttributeError, TypeError)


def _script(name: str) -> str:
    """redis_lua/<name>.lua after the helpers every script shares (redis_lua/prelude.lua)."""
    folder = resources.files("workers") / "redis_lua"
    return "\n".join((folder / f"{part}.lua").read_text(encoding="utf-8") for part in ("prelude", name))


# Read once, at import, so a missing script fails when the backend is opened, not at its first use.
_SUBMIT, _LEASE, _RENEW = _script("submit"), _script("lease"), _script("renew")
_ACK, _FAIL, _RELEASE = _script("ack"), _script("fail"), _script("release")
_CANCEL, _REQUEUE = _script("cancel"), _script("requeue")
_HOLDS, _STOPPED, _HEARTBEAT = _script("holds"), _script("stopped"), _script("heartbeat")
_PRIORITY, _PAUSE, _DRAIN = _script("priority"), _script("pause"), _script("drain")


class RedisQueue:
    """`TaskQueue` on Redis Streams; one instance may be shared by threads (redis-py's
    connection pool hands each call its own connection)."""

    worker_drop_s = WORKER_DROP_S

    def __init__(self, url: str, *, prefix: str = "ff:") -> None:
        self._where = self.where = redact(url)  # the URL itself (and its password) is kept only inside redis-py
        # The task rows of jobs stored as done, by job id: final (as SqliteQueue's), counted once per process.
        self._done_rows: dict[str, tuple[list[TaskRow], list[tuple[str, int]]]] = {}
        self._prefix = prefix
        try:
            self._client: redis.Redis = redis.Redis.from_url(
                # replies come back as str; redis-py's annotations cannot tie reply types to
                # this flag, hence the casts to str types below
                url, decode_responses=True,
                # one quick retry for a pooled connection the server dropped; longer outages
                # surface as QueueUnavailable, and the worker does the backing off
                retry=Retry(ConstantBackoff(0.05), 1, supported_errors=(redis.ConnectionError,)))
        except ValueError:
            raise JobError("--queue", self._where, "expected redis://[USER:PASSWORD@]host:port/db "
                           "or rediss://[USER:PASSWORD@]host:port/db") from None
        # A password holding '/', '?' or '#' unencoded ends the URL's host part early: redis-py
        # then takes a piece of the password for the host, and would print it in every
        # connection error. Refuse the URL unless redis-py's host is the one `redact` shows.
        host = self._client.connection_pool.connection_kwargs.get("host")
        if host is not None and str(host).lower() != (urllib.parse.urlsplit(self._where).hostname or "").lower():
            self._client.close()
            raise JobError("--queue", self._where, "the host cannot be told from the credentials: percent-encode "
                           "'/', '?', '#' and '@' in a password or user name (%2F, %3F, %23, %40), or pass them "
                           "as ?password=...&username=...")
        register = self._client.register_script
        self._submit, self._lease, self._renew = register(_SUBMIT), register(_LEASE), register(_RENEW)
        self._ack, self._fail, self._release = register(_ACK), register(_FAIL), register(_RELEASE)
        self._cancel, self._requeue = register(_CANCEL), register(_REQUEUE)
        self._holds, self._stopped, self._heartbeat = register(_HOLDS), register(_STOPPED), register(_HEARTBEAT)
        self._priority, self._pause, self._drain = register(_PRIORITY), register(_PAUSE), register(_DRAIN)
        database = urllib.parse.urlsplit(self._where).path.strip("/")
        if database and not database.isdecimal() and "db" not in self._client.connection_pool.connection_kwargs:
            self._client.close()  # redis-py would quietly use database 0
            raise JobError("--queue", self._where, f"database {database!r} is not a number; expected "
                           "redis://host:port/N with N a database number (0-15 on a default server)")
        try:
            with self._talk():
                try:
                    self._client.ping()  # fail at open, not at the first lease
                except _NOT_REDIS:
                    self._client.close()
                    raise JobError("--queue", self._where, "the server there answered something that is not "
                                   "the Redis protocol; is another service on that port?") from None
        except redis.ResponseError as err:  # the server refused the connection's setup, e.g. SELECT 99999
            self._client.close()
            db = self._client.connection_pool.connection_kwargs.get("db", 0)
            detail = (f"the server has no database {db}; expected a number from 0 to its `databases` setting "
                      "minus 1 (0-15 on a default server)" if "DB index" in str(err) else "the server refused it")
            raise JobError("--queue", self._where, f"{detail} ({err})") from None

    def __repr__(self) -> str:
        return f"RedisQueue({self._where!r})"

    @contextlib.contextmanager
    def _talk(self) -> Iterator[None]:
        """Turn redis-py's connection errors into ours; messages carry the redacted URL only."""
        try:
            yield
        except _REFUSED as err:
            raise JobError("--queue", self._where, f"Redis refused to authenticate ({err}); give the "
                           "password as redis://[USER]:PASSWORD@host:port/db (percent-encode '@', '/', "
                           "'?', '#' and '%' in it) or as ?password=") from None
        except _UNAVAILABLE as err:
            raise QueueUnavailable(f"Redis at {self._where}: {type(err).__name__}: {err}") from None
        except redis.exceptions.InvalidResponse:   # after open: a reply garbled on the way, or the server replaced
            raise QueueUnavailable(f"Redis at {self._where}: the reply was not the Redis protocol") from None

    def _key(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    def close(self) -> None:
        with contextlib.suppress(redis.RedisError):
            self._client.close()

    # -- jobs

    def submit(self, spec: JobSpec, idempotency_key: str | None = None) -> str:
        ordered = spec.preview_first()
        with self._talk():
            job_id = self._submit(args=[
                self._prefix, spec.job_id, json.dumps(spec.as_dict()), str(int(spec.priority)),
                spec.max_attempts, int(spec.video), spec.frame_start, spec.frame_end,
                # the stream hands tasks out in the order they are added: the preview ones first
                json.dumps([[first, last, int(preview)] for (first, last), preview in ordered]),
                "" if idempotency_key is None else idempotency_key,
                json.dumps([[first, last, waits] for (first, last), waits in zip(
                    spec.segments, spec.segment_waits([chunk for chunk, _ in ordered]), strict=True)])])
        if not job_id:
            raise JobError("job", spec.job_id, "a job with this id is already in the queue")
        return str(job_id)

    def job(self, job_id: str) -> JobSpec | None:
        with self._talk():
            raw = self._client.hget(self._key("job", job_id), "spec")
        return JobSpec.from_dict(json.loads(raw)) if raw else None

    # -- leases

    def lease(self, worker: str, lease_s: float, skip_jobs: frozenset[str] = frozenset()) -> Task | None:
        with self._talk():
            got = self._lease(args=[self._prefix, worker, _ms(lease_s), *sorted(skip_jobs)])
        if not got:
            return None
        job_id, task_id, kind, first, last, token, attempt = got
        return Task(job_id=job_id, task_id=task_id, kind=kind, first=int(first), last=int(last),
                    token=int(token), attempt=int(attempt))

    def renew(self, task: Task, worker: str, lease_s: float) -> bool:
        with self._talk():
            return bool(self._renew(args=[self._prefix, task.job_id, task.task_id, task.token, worker,
                                          _ms(lease_s)]))

    def holds(self, task: Task, worker: str) -> bool:
        with self._talk():
            return bool(self._holds(args=[self._prefix, task.job_id, task.task_id, task.token, worker]))

    def ack(self, task: Task, worker: str) -> bool:
        with self._talk():
            return bool(self._ack(args=[self._prefix, task.job_id, task.task_id, task.token, worker]))

    def fail(self, task: Task, worker: str, error: str, block_after: int | None = None) -> bool:
        """Record the error; True if the task is now dead-lettered (it used its last attempt)."""
        with self._talk():
            return bool(self._fail(args=[self._prefix, task.job_id, task.task_id, task.token, worker,
                                         error[:ERROR_CHARS], "" if block_after is None else int(block_after)]))

    def release(self, task: Task, worker: str) -> None:
        with self._talk():
            self._release(args=[self._prefix, task.job_id, task.task_id, task.token, worker])

    def record_stopped(self, task: Task, worker: str, published: int) -> bool:
        with self._talk():
            return bool(self._stopped(args=[self._prefix, task.job_id, task.task_id, task.token, worker,
                                            max(0, int(published))]))

    # -- operators

    def cancel(self, job_id: str) -> int:
        with self._talk():
            return int(self._cancel(args=[self._prefix, job_id]))

    def requeue(self, job_id: str, failed_only: bool) -> int:
        with self._talk():
            return int(self._requeue(args=[self._prefix, job_id, int(failed_only)]))

    def job_states(self) -> list[tuple[str, str]]:
        with self._talk():
            job_ids = cast(list[str], self._client.zrange(self._key("jobs"), 0, -1))
            pipe = self._client.pipeline(transaction=False)
            for jid in job_ids:
                pipe.hget(self._key("job", jid), "state")
            states = pipe.execute()
        return [(jid, state) for jid, state in zip(job_ids, states, strict=True) if state is not None]

    def pending_frames(self) -> int:
        live = [job_id for job_id, state in self.job_states() if state in ("active", "paused")]
        with self._talk():
            pipe = self._client.pipeline(transaction=False)
            for job_id in live:
                pipe.hvals(self._key("job", job_id, "tasks"))
            replies = pipe.execute()
        return sum(task["last"] - task["first"] + 1 for tasks in replies for task in map(json.loads, tasks)
                   if task["state"] == "pending" and task["kind"] == TASK_FRAMES)

    def status(self, job_id: str | None = None, *, job_ids: Sequence[str] | None = None) -> list[JobStatus]:
        with self._talk():
            if job_id is not None:
                job_ids = [job_id]
            elif job_ids is None:
                job_ids = cast(list[str], self._client.zrange(self._key("jobs"), 0, -1))
            else:   # in submission order, as for the whole queue
                scores = self._client.zmscore(self._key("jobs"), list(job_ids)) if job_ids else []
                job_ids = [jid for _, jid in sorted((score, jid) for jid, score in zip(job_ids, scores, strict=True)
                                                   if score is not None)]
            pipe = self._client.pipeline(transaction=True)  # MULTI: one consistent snapshot
            pipe.time()
            for jid in job_ids:
                pipe.hmget(self._key("job", jid), "spec", "state", "priority", "submitted")
            now_reply, *metas = pipe.execute()
            # a job stored as done has final tasks: counted once per process (`_done_rows`); the others'
            # tasks are read now (a job that became done in between is read whole: its tasks are final)
            counted = [jid for jid, (_spec, state, *_rest) in zip(job_ids, metas, strict=True)
                       if not (state == "done" and jid in self._done_rows)]
            pipe = self._client.pipeline(transaction=True)
            for jid in counted:
                pipe.hvals(self._key("job", jid, "tasks"))
                pipe.hgetall(self._key("job", jid, "failures"))
                pipe.smembers(self._key("job", jid, "blocked"))
            replies = pipe.execute() if counted else []
        now_ms = _server_ms(now_reply)
        counts = {jid: replies[3 * index:3 * index + 3] for index, jid in enumerate(counted)}
        result = []
        for jid, (spec, state, priority, submitted) in zip(job_ids, metas, strict=True):
            if spec is None:
                continue
            if jid in counts:
                tasks, failures, blocked = counts[jid]
                rows = [TaskRow(t["kind"], t["first"], t["last"], _task_state(t, now_ms), t.get("error"),
                                int(t.get("published") or 0), _seconds(t.get("started")),
                                _seconds(t.get("finished"))) for t in map(json.loads, tasks)]
                blocks = [(name, int(failures.get(name, 0))) for name in blocked]
                if state == "done":
                    self._done_rows[jid] = (rows, blocks)
            else:
                rows, blocks = self._done_rows[jid]
            stored = json.loads(spec)
            result.append(job_status(jid, stored["name"], state, int(priority), rows, blocks,
                                     submitted=_seconds(submitted), submitted_by=stored.get("submitted_by"),
                                     submitted_host=stored.get("submitted_host")))
        return result

    def tasks(self, job_id: str) -> list[TaskInfo]:
        with self._talk():
            pipe = self._client.pipeline(transaction=True)
            pipe.time()
            pipe.hgetall(self._key("job", job_id, "tasks"))
            now_reply, rows = pipe.execute()
        now_ms = _server_ms(now_reply)
        result = []
        for tid, raw in rows.items():
            t = json.loads(raw)
            result.append(TaskInfo(task_id=tid, kind=t["kind"], first=int(t["first"]), last=int(t["last"]),
                                   state=_task_state(t, now_ms), attempts=int(t.get("attempts") or 0),
                                   worker=t.get("worker"), started=_seconds(t.get("started")),
                                   finished=_seconds(t.get("finished")), error=t.get("error")))
        return sorted(result, key=lambda task: (task.kind == "video", task.first, int(task.task_id)))

    def store_log(self, job_id: str, task_id: str, text: str) -> None:
        key = self._key("job", job_id, "log", task_id)

        def append(pipe: redis.client.Pipeline) -> None:   # WATCHed read, then write: cut by characters
            if not pipe.hexists(self._key("job", job_id, "tasks"), task_id):
                return
            kept = cast(str | None, pipe.get(key)) or ""
            pipe.multi()
            pipe.set(key, (kept + text)[-LOG_CHARS:])

        with self._talk():
            self._client.transaction(append, key)

    def task_log(self, job_id: str, task_id: str) -> str | None:
        with self._talk():
            pipe = self._client.pipeline(transaction=True)
            pipe.hexists(self._key("job", job_id, "tasks"), task_id)
            pipe.get(self._key("job", job_id, "log", task_id))
            known, log = pipe.execute()
        return (log or "") if known else None

    def set_priority(self, job_id: str, priority: int) -> bool:
        with self._talk():
            return bool(self._priority(args=[self._prefix, job_id, str(int(priority))]))

    def pause(self, job_id: str) -> bool:
        with self._talk():
            return bool(self._pause(args=[self._prefix, job_id, "pause"]))

    def resume(self, job_id: str) -> bool:
        with self._talk():
            return bool(self._pause(args=[self._prefix, job_id, "resume"]))

    # -- workers

    def heartbeat(self, worker: str, info: dict[str, Any]) -> bool:
        """Record the worker as alive; True if it has been asked to drain."""
        with self._talk():
            return bool(self._heartbeat(args=[self._prefix, worker, json.dumps(info), _ms(self.worker_drop_s)]))

    def drain(self, worker: str) -> bool:
        with self._talk():
            return bool(self._drain(args=[self._prefix, worker]))

    def claim_notice(self, job_id: str, event: str) -> bool:
        with self._talk():   # one HSETNX: atomic on its own
            return bool(self._client.hsetnx(self._key("job", job_id), f"notice:{event}", "1"))

    def remove_worker(self, worker: str) -> None:
        with self._talk():
            pipe = self._client.pipeline(transaction=True)
            pipe.hdel(self._key("workers"), worker)
            pipe.zrem(self._key("workers:seen"), worker)
            pipe.srem(self._key("drain"), worker)
            pipe.execute()

    def workers(self) -> list[WorkerStatus]:
        with self._talk():
            pipe = self._client.pipeline(transaction=True)
            pipe.time()
            pipe.hgetall(self._key("workers"))
            now_reply, rows = pipe.execute()
        now = _server_ms(now_reply) / 1000
        result = []
        for name in sorted(rows):
            data = json.loads(rows[name])
            age = max(0.0, now - float(data["heartbeat"]))
            if age <= self.worker_drop_s:  # older ones go at the next heartbeat of any worker
                result.append(WorkerStatus(name=name, heartbeat=data["heartbeat"], info=data["info"], age=age))
        return result


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _server_ms(reply: Any) -> int:
    """Redis TIME's (seconds, microseconds) in ms: the clock the scripts use."""
    seconds, micros = reply
    return int(seconds) * 1000 + int(micros) // 1000


def _seconds(ms: Any) -> float | None:
    """A time the scripts stored in ms (server clock), in seconds; None where none was."""
    return None if ms is None else float(ms) / 1000


def _task_state(task: dict[str, Any], now_ms: int) -> str:
    """A task cancelled while leased is "stopping" until its worker reports or its lease runs out."""
    stop_by = task.get("stop_by")
    if task["state"] == "cancelled" and stop_by is not None and float(stop_by) > now_ms:
        return "stopping"
    return str(task["state"])

