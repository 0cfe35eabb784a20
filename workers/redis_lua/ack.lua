-- ack: the task is done. A frames task counts down the segment tasks waiting for it
-- (its `unblocks`); one that reaches 0 is queued. The last ack of a job queues its video
-- task (if the job wants one and it is not queued yet) or marks the job done.
--
-- KEYS: none (key names come from the prefix; see prelude.lua).
-- ARGV[1] key prefix
-- ARGV[2] job id
-- ARGV[3] task id
-- ARGV[4] fencing token of the lease
-- ARGV[5] worker name
-- Writes ff:job:<job> (remaining, state, next_task, video_queued), its tasks, stream and
-- leases, and the priority index.
-- Returns 1, or 0 (and changes nothing) if `worker` does not hold the lease with this
-- token (`owned`, prelude.lua).

local job, tid = ARGV[2], ARGV[3]
local t = owned(job, tid, ARGV[4], ARGV[5])
if not t then return 0 end
drop_entry(job, t)
redis.call('ZREM', lkey(job), tid)
t.state = 'done'
t.error = nil
t.finished = now_ms()
put_task(job, tid, t)
for _, sid in ipairs(t.unblocks or {}) do   -- a task is acked once (owned), so each counts down once
  local s = get_task(job, sid)
  if s and s.waiting then
    s.waiting = s.waiting - 1
    if s.waiting <= 0 and s.state == 'waiting' then
      enqueue(job, sid, s)
      activate(job)
    else
      put_task(job, sid, s)
    end
  end
end
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
