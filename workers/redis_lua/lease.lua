-- lease: hand `worker` the next task: by priority (high first), then submission order,
-- then frame order.
--
-- KEYS: none (key names come from the prefix; see prelude.lua).
-- ARGV[1] key prefix
-- ARGV[2] worker name (the stream consumer)
-- ARGV[3] lease length, ms
-- ARGV[4..] ids of the jobs this worker skips
-- Walks ff:prio and ff:prio:<level>; reads and writes each job's hash, tasks, stream and
-- leases; reads its blocklist; appends to ff:dead.
-- Returns {job, tid, kind, first, last, token, attempt}, or false when no task is free.
--
-- For each job, its expired leases (deadline passed, oldest first) come first: each is
-- taken over with XCLAIM to this worker, or dead-lettered if it already used
-- `max_attempts` ("lease expired N times (last worker W)"); only then is a new entry
-- read with XREADGROUP. Reclaiming first finishes old work first and keeps an expired
-- task from waiting behind the rest of its job. A skipped job (in ARGV, or with this
-- worker in its blocklist) is passed over; its expired leases are still dead-lettered,
-- since that needs no worker. Each lease adds 1 to the task's
-- attempts and to its fencing token (never reset, so a token is never reused for a
-- task) and sets its deadline.

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
  t.started = now
  t.finished = nil
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
      if redis.call('SISMEMBER', bkey(job), worker) == 1 then skip[job] = true end
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
