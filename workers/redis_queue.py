"""The farm queue on Redis Streams: workers on many hosts share one Redis server.

Key layout (prefix `ff:`; `<job>` is a job id, `<tid>` a task id within its job):

    ff:seq                    counter: submission order of jobs
    ff:jobs                   zset job id -> submission seq (what `status()` lists)
    ff:job:<job>              hash: spec (JobSpec as JSON: data, never code), state
                              (active | done | cancelled), priority, max_attempts, video,
                              frame_start, frame_end, seq, remaining (tasks not done yet),
                              next_task (task id counter), video_queued
    ff:job:<job>:tasks        hash tid -> JSON {kind, first, last, state (pending | leased |
                              done | failed | cancelled), attempts, token, worker, error, entry}
    ff:job:<job>:stream       stream, one entry {task: tid} per pending task, consumer group
                              "farm"; the consumer is the worker name
    ff:job:<job>:leases       zset tid -> lease deadline (ms, Redis server clock)
    ff:prio                   zset of the priority levels that have jobs with work (score = level)
    ff:prio:<level>           zset job id -> seq: the jobs of that level that may have work
    ff:dead                   stream of dead-lettered tasks {job, task, kind, first, last, error, ...}
    ff:workers                hash worker name -> JSON {heartbeat, info}

One stream per *job* rather than per priority level: `lease` walks the levels high to
low and, within a level, the jobs in submission order, and reads each job's stream
with XREADGROUP `>`, which delivers entries in frame order. So the order is priority,
then submission, then frames, and a worker that skips a job (`skip_jobs`) simply never
reads that job's stream: nothing is delivered to it and handed back, and no job loses
its place.

Invariants: a pending task has exactly one undelivered entry in its job's stream; a
leased task has exactly one entry in the group's PEL, owned by the worker holding it,
and a deadline in the leases zset; done, failed and cancelled tasks have no entry.

Every check-and-act step is one Lua script, so it is atomic on the server:
- lease: for each job (see above): first its expired leases (deadline passed, oldest
  first) are taken over with XCLAIM to the new worker, or dead-lettered if they already
  used `max_attempts` ("lease expired N times (last worker W)"); then a new entry is
  read with XREADGROUP. Reclaiming before reading new entries finishes old work first
  and keeps an expired task from waiting behind the rest of its job. Each lease adds 1
  to the task's attempts and to its fencing token (never reset, so a token is never
  reused for a task) and sets the deadline.
- renew / ack / fail / release first check that the job is active, that the task is
  leased to this worker with this token and that its entry is still in the PEL for
  this consumer; otherwise they change nothing (a worker whose lease was taken over,
  requeued or cancelled is fenced off). renew moves the deadline and resets the entry's
  idle time (XCLAIM to the same consumer, JUSTID), so XPENDING shows live leases as
  fresh. ack XACKs; the last ack of a job enqueues its video task or marks it done.
  fail and release XACK the old entry and XADD a new one at the end of the job's
  stream (a retry then tends to go to another worker after the job's other frames);
  release takes the attempt back.
- Expiry is decided by the deadline, not by the PEL idle time, because workers may
  lease with different lease lengths; the deadline uses the Redis server clock (TIME),
  so clocks of the worker hosts do not matter.

A job that has no unread entry and no lease is dropped from the priority index by the
lease that notices it; any step that makes one of its tasks pending adds it back.
Scripts compute key names at run time, so this needs one Redis server (replicas are
fine), not Redis Cluster; tested with Redis 7.0.

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
from typing import Any

import redis
from redis.backoff import ConstantBackoff
from redis.retry import Retry

from pipeline.errors import JobError

from .queue import TASK_FRAMES, JobSpec, JobStatus, QueueUnavailable, Task, WorkerStatus, redact

# Transient: the worker backs off and tries again (BusyLoadingError is a ConnectionError:
# Redis loading its data after a restart; ReadOnlyError: a failover in progress).
_UNAVAILABLE: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError)
# Configuration, not weather: retrying forever with a wrong password helps nobody.
_REFUSED: tuple[type[Exception], ...] = (redis.AuthenticationError, redis.exceptions.AuthorizationError)

_ERROR_CHARS = 2000
_COUNTED = ("done", "leased", "pending", "failed")  # JobStatus fields; cancelled tasks are not counted

# Helpers shared by every script. ARGV[1] is always the key prefix.
_LUA_PRELUDE = """
local P = ARGV[1]
local GROUP = 'farm'
local function jkey(job) return P .. 'job:' .. job end
local function tkey(job) return P .. 'job:' .. job .. ':tasks' end
local function skey(job) return P .. 'job:' .. job .. ':stream' end
local function lkey(job) return P .. 'job:' .. job .. ':leases' end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function get_task(job, tid)
  local raw = redis.call('HGET', tkey(job), tid)
  if not raw then return nil end
  return cjson.decode(raw)
end

local function put_task(job, tid, t)
  redis.call('HSET', tkey(job), tid, cjson.encode(t))
end

local function ensure_group(job)
  -- BUSYGROUP (it exists) is the usual answer; pcall keeps it from aborting the script
  redis.pcall('XGROUP', 'CREATE', skey(job), GROUP, '0', 'MKSTREAM')
end

-- the job may have work: put it (back) in the priority index
local function activate(job)
  local meta = redis.call('HMGET', jkey(job), 'priority', 'seq')
  redis.call('ZADD', P .. 'prio', meta[1], meta[1])
  redis.call('ZADD', P .. 'prio:' .. meta[1], meta[2], job)
end

local function deactivate(job, level)
  level = level or redis.call('HGET', jkey(job), 'priority')
  if not level then return end
  redis.call('ZREM', P .. 'prio:' .. level, job)
  if redis.call('ZCARD', P .. 'prio:' .. level) == 0 then
    redis.call('ZREM', P .. 'prio', level)
  end
end

-- a new stream entry for the task: it is pending again, behind the job's other entries
local function enqueue(job, tid, t)
  ensure_group(job)
  t.entry = redis.call('XADD', skey(job), '*', 'task', tid)
  t.state = 'pending'
  put_task(job, tid, t)
end

-- forget the task's entry: out of the PEL (if delivered) and out of the stream
local function drop_entry(job, t)
  if t.entry then
    redis.pcall('XACK', skey(job), GROUP, t.entry)
    redis.pcall('XDEL', skey(job), t.entry)
    t.entry = nil
  end
end

local function dead_letter(job, tid, t, err)
  drop_entry(job, t)
  redis.call('ZREM', lkey(job), tid)
  t.state = 'failed'
  t.error = err
  put_task(job, tid, t)
  redis.call('XADD', P .. 'dead', 'MAXLEN', '~', 10000, '*', 'job', job, 'task', tid, 'kind', t.kind,
             'first', t.first, 'last', t.last, 'error', err, 'worker', t.worker or '', 'attempts', t.attempts)
end

-- the task if `worker` holds its lease with `token`, else nil
local function owned(job, tid, token, worker)
  if redis.call('HGET', jkey(job), 'state') ~= 'active' then return nil end
  local t = get_task(job, tid)
  if not t or t.state ~= 'leased' or t.token ~= tonumber(token) or t.worker ~= worker or not t.entry then
    return nil
  end
  local pel = redis.pcall('XPENDING', skey(job), GROUP, t.entry, t.entry, 1, worker)
  if type(pel) ~= 'table' or pel.err or #pel == 0 then return nil end
  return t
end
"""

# ARGV: prefix, job, spec JSON, priority, max_attempts, video (0/1), frame_start, frame_end,
# chunks JSON [[first, last], ...]. Returns 0 if the job id is taken.
_SUBMIT = _LUA_PRELUDE + """
local job = ARGV[2]
if redis.call('EXISTS', jkey(job)) == 1 then return 0 end
local seq = redis.call('INCR', P .. 'seq')
local chunks = cjson.decode(ARGV[9])
redis.call('HSET', jkey(job), 'spec', ARGV[3], 'state', 'active', 'priority', ARGV[4],
           'max_attempts', ARGV[5], 'video', ARGV[6], 'frame_start', ARGV[7], 'frame_end', ARGV[8],
           'seq', seq, 'remaining', #chunks, 'next_task', #chunks, 'video_queued', 0)
redis.call('ZADD', P .. 'jobs', seq, job)
for i, chunk in ipairs(chunks) do
  enqueue(job, tostring(i), {kind = 'frames', first = chunk[1], last = chunk[2], attempts = 0, token = 0})
end
activate(job)
return 1
"""

# ARGV: prefix, worker, lease_ms, skipped job ids...
# Returns {job, tid, kind, first, last, token, attempt} or false.
_LEASE = _LUA_PRELUDE + """
local worker = ARGV[2]
local lease_ms = tonumber(ARGV[3])
local skip = {}
for i = 4, #ARGV do skip[ARGV[i]] = true end
local now = now_ms()

local function grant(job, tid, t)
  t.state = 'leased'
  t.attempts = t.attempts + 1
  t.token = t.token + 1
  t.worker = worker
  put_task(job, tid, t)
  redis.call('ZADD', lkey(job), now + lease_ms, tid)
  return {job, tid, t.kind, t.first, t.last, t.token, t.attempts}
end

for _, level in ipairs(redis.call('ZREVRANGE', P .. 'prio', 0, -1)) do
  for _, job in ipairs(redis.call('ZRANGE', P .. 'prio:' .. level, 0, -1)) do
    local meta = redis.call('HMGET', jkey(job), 'state', 'max_attempts')
    if meta[1] ~= 'active' then
      deactivate(job, level)
    else
      local max_attempts = tonumber(meta[2])
      -- expired leases first; dead-letter those out of attempts even for a worker that skips the job
      for _, tid in ipairs(redis.call('ZRANGEBYSCORE', lkey(job), '-inf', now)) do
        local t = get_task(job, tid)
        if not t or t.state ~= 'leased' then
          redis.call('ZREM', lkey(job), tid)
        elseif t.attempts >= max_attempts then
          dead_letter(job, tid, t, string.format('lease expired %d times (last worker %s)', t.attempts,
                                                 tostring(t.worker)))
        elseif not skip[job] then
          local claimed = redis.pcall('XCLAIM', skey(job), GROUP, worker, 0, t.entry)
          if type(claimed) == 'table' and not claimed.err and #claimed > 0 then
            return grant(job, tid, t)
          end
          -- the entry is gone from the PEL (should not happen): queue the task afresh
          redis.call('ZREM', lkey(job), tid)
          drop_entry(job, t)
          enqueue(job, tid, t)
        end
      end
      if not skip[job] then
        while true do
          local read = redis.pcall('XREADGROUP', 'GROUP', GROUP, worker, 'COUNT', 1,
                                   'STREAMS', skey(job), '>')
          if type(read) == 'table' and read.err then
            ensure_group(job)  -- the group was lost: recreate it at 0, its entries come next time
            break
          end
          if not read then
            if redis.call('ZCARD', lkey(job)) == 0 then deactivate(job, level) end
            break
          end
          local entry, fields = read[1][2][1][1], read[1][2][1][2]
          local tid = nil
          for i = 1, #fields, 2 do
            if fields[i] == 'task' then tid = fields[i + 1] end
          end
          local t = tid and get_task(job, tid)
          if t and t.state == 'pending' and t.entry == entry then
            return grant(job, tid, t)
          end
          -- a stale entry (its task moved on): discard it and read the next
          redis.call('XACK', skey(job), GROUP, entry)
          redis.call('XDEL', skey(job), entry)
        end
      end
    end
  end
end
return false
"""

# ARGV: prefix, job, tid, token, worker, lease_ms
_RENEW = _LUA_PRELUDE + """
local job, tid, worker = ARGV[2], ARGV[3], ARGV[5]
local t = owned(job, tid, ARGV[4], worker)
if not t then return 0 end
redis.call('XCLAIM', skey(job), GROUP, worker, 0, t.entry, 'JUSTID')  -- resets the idle time
redis.call('ZADD', lkey(job), now_ms() + tonumber(ARGV[6]), tid)
return 1
"""

# ARGV: prefix, job, tid, token, worker
_ACK = _LUA_PRELUDE + """
local job, tid = ARGV[2], ARGV[3]
local t = owned(job, tid, ARGV[4], ARGV[5])
if not t then return 0 end
drop_entry(job, t)
redis.call('ZREM', lkey(job), tid)
t.state = 'done'
t.error = nil
put_task(job, tid, t)
if redis.call('HINCRBY', jkey(job), 'remaining', -1) > 0 then return 1 end
local meta = redis.call('HMGET', jkey(job), 'video', 'video_queued', 'frame_start', 'frame_end')
if meta[1] == '1' and meta[2] ~= '1' then
  local video = tostring(redis.call('HINCRBY', jkey(job), 'next_task', 1))
  redis.call('HSET', jkey(job), 'video_queued', 1)
  redis.call('HINCRBY', jkey(job), 'remaining', 1)
  enqueue(job, video, {kind = 'video', first = tonumber(meta[3]), last = tonumber(meta[4]),
                       attempts = 0, token = 0})
  activate(job)
else
  redis.call('HSET', jkey(job), 'state', 'done')
  deactivate(job)
  redis.call('DEL', skey(job), lkey(job))
end
return 1
"""

# ARGV: prefix, job, tid, token, worker, error. Returns 1 if dead-lettered.
_FAIL = _LUA_PRELUDE + """
local job, tid, err = ARGV[2], ARGV[3], ARGV[6]
local t = owned(job, tid, ARGV[4], ARGV[5])
if not t then return 0 end
if t.attempts >= tonumber(redis.call('HGET', jkey(job), 'max_attempts')) then
  dead_letter(job, tid, t, err)
  return 1
end
drop_entry(job, t)
redis.call('ZREM', lkey(job), tid)
t.error = err
enqueue(job, tid, t)
activate(job)
return 0
"""

# ARGV: prefix, job, tid, token, worker
_RELEASE = _LUA_PRELUDE + """
local job, tid = ARGV[2], ARGV[3]
local t = owned(job, tid, ARGV[4], ARGV[5])
if not t then return 0 end
drop_entry(job, t)
redis.call('ZREM', lkey(job), tid)
t.attempts = t.attempts - 1  -- giving back is not an attempt
enqueue(job, tid, t)
activate(job)
return 1
"""

# ARGV: prefix, job. Returns the number of tasks dropped (pending) or fenced off (leased).
_CANCEL = _LUA_PRELUDE + """
local job = ARGV[2]
if redis.call('EXISTS', jkey(job)) == 0 then return 0 end
redis.call('HSET', jkey(job), 'state', 'cancelled')
local all = redis.call('HGETALL', tkey(job))
local count = 0
for i = 1, #all, 2 do
  local t = cjson.decode(all[i + 1])
  if t.state == 'pending' or t.state == 'leased' then
    t.state = 'cancelled'
    t.entry = nil
    put_task(job, all[i], t)
    count = count + 1
  end
end
-- the stream goes with its group and PEL: leased tasks then fail the ownership check too
redis.call('DEL', skey(job), lkey(job))
deactivate(job)
return count
"""

# ARGV: prefix, job, failed_only (0/1). Returns the number of tasks made pending.
_REQUEUE = _LUA_PRELUDE + """
local job = ARGV[2]
if redis.call('EXISTS', jkey(job)) == 0 then return 0 end
local states = {failed = true}
if ARGV[3] == '0' then
  states = {failed = true, cancelled = true, pending = true, leased = true}
end
local all = redis.call('HGETALL', tkey(job))
local chosen = {}
for i = 1, #all, 2 do
  local t = cjson.decode(all[i + 1])
  if states[t.state] then
    t.tid = all[i]
    table.insert(chosen, t)
  end
end
-- queued again in frame order (the video last), behind whatever the job still has pending
table.sort(chosen, function(a, b)
  if (a.kind == 'video') ~= (b.kind == 'video') then return b.kind == 'video' end
  return a.first < b.first
end)
for _, t in ipairs(chosen) do
  local tid = t.tid
  t.tid = nil
  drop_entry(job, t)  -- a leased one's holder is fenced off: it no longer holds the task
  redis.call('ZREM', lkey(job), tid)
  t.attempts = 0
  t.error = nil
  enqueue(job, tid, t)
end
local count = #chosen
if count > 0 then
  redis.call('HSET', jkey(job), 'state', 'active')
  activate(job)
end
return count
"""


class RedisQueue:
    """`TaskQueue` on Redis Streams; one instance may be shared by threads (redis-py's
    connection pool hands each call its own connection)."""

    def __init__(self, url: str, *, prefix: str = "ff:") -> None:
        self._where = redact(url)  # the URL itself (and its password) is kept only inside redis-py
        self._prefix = prefix
        try:
            self._client: redis.Redis = redis.Redis.from_url(
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
                                         error[:_ERROR_CHARS]]))

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
            job_ids = [job_id] if job_id is not None else self._client.zrange(self._key("jobs"), 0, -1)
            pipe = self._client.pipeline(transaction=True)  # MULTI: one consistent snapshot
            for jid in job_ids:
                pipe.hmget(self._key("job", jid), "spec", "state", "priority")
                pipe.hvals(self._key("job", jid, "tasks"))
            replies = pipe.execute()
        result = []
        for jid, (spec, state, priority), tasks in zip(job_ids, replies[0::2], replies[1::2], strict=True):
            if spec is None:
                continue
            status = JobStatus(job_id=jid, name=json.loads(spec)["name"], state=state, priority=int(priority))
            for task in sorted((json.loads(raw) for raw in tasks), key=lambda t: (t["first"], t["last"])):
                if task["kind"] != TASK_FRAMES or task["state"] not in _COUNTED:
                    continue
                frames = task["last"] - task["first"] + 1
                setattr(status, task["state"], getattr(status, task["state"]) + frames)
                if task["state"] == "failed":
                    status.errors.append({"first": task["first"], "last": task["last"],
                                          "error": task.get("error")})
            result.append(status)
        return result

    # -- workers

    def heartbeat(self, worker: str, info: dict[str, Any]) -> None:
        with self._talk():
            self._client.hset(self._key("workers"), worker,
                              json.dumps({"heartbeat": time.time(), "info": info}))

    def workers(self) -> list[WorkerStatus]:
        with self._talk():
            rows = self._client.hgetall(self._key("workers"))
        result = []
        for name in sorted(rows):
            data = json.loads(rows[name])
            result.append(WorkerStatus(name=name, heartbeat=data["heartbeat"], info=data["info"]))
        return result


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
