-- The helpers every script shares, and the key layout they share.
--
-- RedisQueue (workers/redis_queue.py) registers each script as this file followed by
-- the script's own file, so what is defined here is in scope there. Every check-and-act
-- step of the queue is one script, so it runs atomically on the server.
--
-- KEYS: none. Every script receives the key prefix as ARGV[1] (`ff:` unless RedisQueue
-- is given another) and computes key names from it at run time; that is why the farm
-- needs one Redis server (replicas are fine), not Redis Cluster. Tested with Redis 7.0.
--
-- Key layout (prefix `ff:`; `<job>` is a job id, `<tid>` a task id within its job):
--
--   ff:seq                    counter: submission order of jobs
--   ff:jobs                   zset job id -> submission seq (what `status()` lists)
--   ff:job:<job>              hash: spec (JobSpec as JSON: data, never code), state
--                             (active | paused | done | cancelled), submitted (ms), priority, max_attempts, video,
--                             frame_start, frame_end, seq, remaining (tasks not done yet),
--                             next_task (task id counter), video_queued
--                             (and notice:<event> = 1 once a worker claimed that webhook event: HSETNX)
--   ff:job:<job>:tasks        hash tid -> JSON {kind (frames | segment | video), first, last, state
--                             (pending | leased | done | failed | cancelled | waiting: a segment
--                             task before its frames are done), attempts, token, worker, error, entry,
--                             preview (true: a `--preview` frame, queued before the job's other tasks),
--                             unblocks (a frames task: the segment task ids waiting for it), waiting
--                             (a segment task: how many of its frames tasks are not acked yet),
--                             started (ms: its latest lease began), finished (ms: acked or failed),
--                             and for a task cancelled while leased: stop_by (its lease deadline,
--                             ms: "stopping" until then, unless its worker reports first) and
--                             published (the frames its worker had published when it stopped)}
--   ff:job:<job>:log:<tid>    string: the task's log, its attempts one after another, the last 64 KiB
--                             (written by RedisQueue.store_log in a WATCH transaction, not a script)
--   ff:job:<job>:stream       stream, one entry {task: tid} per pending task, consumer group
--                             "farm"; the consumer is the worker name
--   ff:job:<job>:leases       zset tid -> lease deadline (ms, Redis server clock)
--   ff:job:<job>:failures     hash worker -> failures of this job on that worker (fail.lua)
--   ff:job:<job>:blocked      set of the workers blocklisted on this job: lease.lua passes the job
--                             over for them; requeue.lua deletes both keys
--   ff:prio                   zset of the priority levels that have jobs with work (score = level)
--   ff:prio:<level>           zset job id -> seq: the jobs of that level that may have work
--   ff:dead                   stream of dead-lettered tasks {job, task, kind, first, last, error,
--                             worker, attempts}, capped near 10000 entries
--   ff:workers                hash worker name -> JSON {heartbeat (s, server clock), info} (heartbeat.lua)
--   ff:workers:seen           zset worker name -> last heartbeat (ms, server clock): heartbeat.lua
--                             drops the workers silent for longer than the drop time it is given
--   ff:drain                  set of the workers asked to drain (the monitor); heartbeat.lua tells them
--   ff:idempotency            hash idempotency key -> job id (`render submit --idempotency-key`; submit.lua)
--
-- One stream per *job* rather than per priority level: lease.lua walks the levels high
-- to low and, within a level, the jobs in submission order, and reads each job's stream
-- with XREADGROUP `>`, which delivers entries in frame order. So the order is priority,
-- then submission, then frames, and a worker that skips a job simply never reads that
-- job's stream: nothing is delivered to it and handed back, and no job loses its place.
--
-- Invariants: a pending task has exactly one undelivered entry in its job's stream; a
-- leased task has exactly one entry in the group's PEL, owned by the worker holding it,
-- and a deadline in the leases zset; done, failed, cancelled and waiting tasks have no entry.
-- A segment task's `waiting` is the number of its frames tasks not acked: a task is acked
-- once, so it only counts down, and the segment is queued when it reaches 0.
--
-- Expiry is decided by the deadline, not by the PEL idle time, because workers may lease
-- with different lease lengths; the deadline uses the Redis server clock (TIME), so the
-- clocks of the worker hosts do not matter.
--
-- A job that has no unread entry and no lease is dropped from the priority index
-- (ff:prio, ff:prio:<level>) by the lease that notices it; any step that makes one of
-- its tasks pending adds it back (`activate`).

local P = ARGV[1]
local GROUP = 'farm'
local function jkey(job) return P .. 'job:' .. job end
local function tkey(job) return P .. 'job:' .. job .. ':tasks' end
local function skey(job) return P .. 'job:' .. job .. ':stream' end
local function lkey(job) return P .. 'job:' .. job .. ':leases' end
local function fkey(job) return P .. 'job:' .. job .. ':failures' end
local function bkey(job) return P .. 'job:' .. job .. ':blocked' end

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

-- The task if `worker` holds its lease with `token`, else nil. renew, ack, fail and release
-- change nothing without it: the job must be active (or paused), the task leased to this worker with
-- this token, and its entry still in this consumer's PEL, so a worker whose lease was
-- taken over, requeued or cancelled is fenced off.
local function owned(job, tid, token, worker)
  local state = redis.call('HGET', jkey(job), 'state')
  if state ~= 'active' and state ~= 'paused' then return nil end  -- a paused job's leased tasks finish
  local t = get_task(job, tid)
  if not t or t.state ~= 'leased' or t.token ~= tonumber(token) or t.worker ~= worker or not t.entry then
    return nil
  end
  local pel = redis.pcall('XPENDING', skey(job), GROUP, t.entry, t.entry, 1, worker)
  if type(pel) ~= 'table' or pel.err or #pel == 0 then return nil end
  return t
end
