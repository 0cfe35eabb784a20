"""The farm queue on Redis Streams: workers on many hosts share one Redis server.

Each job has its own stream, read through one consumer group whose consumers are the
workers, so `lease` can take jobs by priority, then submission order, and pass over a
job a worker skips without delivering anything from it. Every check-and-act step
(submit, lease, renew, ack, fail, release, cancel, requeue) is one Lua script in
workers/redis_lua/, so it is atomic on the server: redis_lua/prelude.lua documents the
key layout and the invariants the scripts keep, and each script's header its arguments
and its reply. This module passes arguments in and turns replies and errors into the
queue's types.

Errors: connection loss, timeouts, a server still loading its data and a read-only
replica during a failover raise `QueueUnavailable` (the worker backs off and retries);
a refused password raises `JobError` (retrying cannot fix it). Messages name the URL
only through `redact`; the password lives only in redis-py's connection pool.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from importlib import resources
from typing import Any, cast

import redis
from redis.backoff import ConstantBackoff
from redis.retry import Retry

from pipeline.errors import JobError

from .tasks import ERROR_CHARS, JobSpec, JobStatus, QueueUnavailable, Task, TaskRow, WorkerStatus, job_status, redact

# Transient: the worker backs off and tries again (BusyLoadingError is a ConnectionError:
# Redis loading its data after a restart; ReadOnlyError: a failover in progress).
_UNAVAILABLE: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError)
# Configuration, not weather: retrying forever with a wrong password helps nobody.
_REFUSED: tuple[type[Exception], ...] = (redis.AuthenticationError, redis.exceptions.AuthorizationError)


def _script(name: str) -> str:
    """redis_lua/<name>.lua after the helpers every script shares (redis_lua/prelude.lua)."""
    folder = resources.files("workers") / "redis_lua"
    return "\n".join((folder / f"{part}.lua").read_text(encoding="utf-8") for part in ("prelude", name))


# Read once, at import, so a missing script fails when the backend is opened, not at its first use.
_SUBMIT, _LEASE, _RENEW = _script("submit"), _script("lease"), _script("renew")
_ACK, _FAIL, _RELEASE = _script("ack"), _script("fail"), _script("release")
_CANCEL, _REQUEUE = _script("cancel"), _script("requeue")


class RedisQueue:
    """`TaskQueue` on Redis Streams; one instance may be shared by threads (redis-py's
    connection pool hands each call its own connection)."""

    def __init__(self, url: str, *, prefix: str = "ff:") -> None:
        self._where = redact(url)  # the URL itself (and its password) is kept only inside redis-py
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
            raise JobError("--queue", self._where, "expected redis://[:password@]host:port/db "
                           "or rediss://[:password@]host:port/db") from None
        register = self._client.register_script
        self._submit, self._lease, self._renew = register(_SUBMIT), register(_LEASE), register(_RENEW)
        self._ack, self._fail, self._release = register(_ACK), register(_FAIL), register(_RELEASE)
        self._cancel, self._requeue = register(_CANCEL), register(_REQUEUE)
        with self._talk():
            self._client.ping()  # fail at open, not at the first lease

    def __repr__(self) -> str:
        return f"RedisQueue({self._where!r})"

    @contextlib.contextmanager
    def _talk(self) -> Iterator[None]:
        """Turn redis-py's connection errors into ours; messages carry the redacted URL only."""
        try:
            yield
        except _REFUSED as err:
            raise JobError("--queue", self._where, f"Redis refused to authenticate ({err}); give the "
                           "password as redis://[USER]:PASSWORD@host:port/db") from None
        except _UNAVAILABLE as err:
            raise QueueUnavailable(f"Redis at {self._where}: {type(err).__name__}: {err}") from None

    def _key(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    def close(self) -> None:
        with contextlib.suppress(redis.RedisError):
            self._client.close()

    # -- jobs

    def submit(self, spec: JobSpec) -> None:
        with self._talk():
            created = self._submit(args=[
                self._prefix, spec.job_id, json.dumps(spec.as_dict()), str(int(spec.priority)),
                spec.max_attempts, int(spec.video), spec.frame_start, spec.frame_end,
                json.dumps(spec.chunks())])
        if not created:
            raise JobError("job", spec.job_id, "a job with this id is already in the queue")

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

    def ack(self, task: Task, worker: str) -> bool:
        with self._talk():
            return bool(self._ack(args=[self._prefix, task.job_id, task.task_id, task.token, worker]))

    def fail(self, task: Task, worker: str, error: str) -> bool:
        """Record the error; True if the task is now dead-lettered (it used its last attempt)."""
        with self._talk():
            return bool(self._fail(args=[self._prefix, task.job_id, task.task_id, task.token, worker,
                                         error[:ERROR_CHARS]]))

    def release(self, task: Task, worker: str) -> None:
        with self._talk():
            self._release(args=[self._prefix, task.job_id, task.task_id, task.token, worker])

    # -- operators

    def cancel(self, job_id: str) -> int:
        with self._talk():
            return int(self._cancel(args=[self._prefix, job_id]))

    def requeue(self, job_id: str, failed_only: bool) -> int:
        with self._talk():
            return int(self._requeue(args=[self._prefix, job_id, int(failed_only)]))

    def status(self, job_id: str | None = None) -> list[JobStatus]:
        with self._talk():
            job_ids = [job_id] if job_id is not None else cast(list[str], self._client.zrange(self._key("jobs"), 0, -1))
            pipe = self._client.pipeline(transaction=True)  # MULTI: one consistent snapshot
            for jid in job_ids:
                pipe.hmget(self._key("job", jid), "spec", "state", "priority")
                pipe.hvals(self._key("job", jid, "tasks"))
            replies = pipe.execute()
        result = []
        for jid, (spec, state, priority), tasks in zip(job_ids, replies[0::2], replies[1::2], strict=True):
            if spec is None:
                continue
            rows = (TaskRow(t["kind"], t["first"], t["last"], t["state"], t.get("error"))
                    for t in map(json.loads, tasks))
            result.append(job_status(jid, json.loads(spec)["name"], state, int(priority), rows))
        return result

    # -- workers

    def heartbeat(self, worker: str, info: dict[str, Any]) -> None:
        with self._talk():
            self._client.hset(self._key("workers"), worker,
                              json.dumps({"heartbeat": time.time(), "info": info}))

    def workers(self) -> list[WorkerStatus]:
        with self._talk():
            rows = cast(dict[str, str], self._client.hgetall(self._key("workers")))
        result = []
        for name in sorted(rows):
            data = json.loads(rows[name])
            result.append(WorkerStatus(name=name, heartbeat=data["heartbeat"], info=data["info"]))
        return result


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))

