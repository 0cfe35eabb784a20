-- requeue: make the job's failed tasks (or, with failed_only 0, every unfinished task)
-- pending again with fresh attempts, and the job active (a paused one stays paused).
--
-- KEYS: none (key names come from the prefix; see prelude.lua).
-- ARGV[1] key prefix
-- ARGV[2] job id
-- ARGV[3] failed_only: 1 for failed tasks only; 0 adds cancelled, pending and leased ones
-- Writes ff:job:<job> (state), its tasks, stream and leases, and the priority index, and
-- deletes its failure counts and blocklist: every worker may take the job again.
-- Returns the number of tasks made pending; 0 for an unknown job.
--
-- A leased task requeued here loses its entry, so its holder is fenced off. Attempts go
-- back to 0 but fencing tokens keep growing, so no old lease becomes valid again.

local job = ARGV[2]
if redis.call('EXISTS', jkey(job)) == 0 then return 0 end
redis.call('DEL', fkey(job), bkey(job))
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
-- queued again in frame order (preview frames first, the video last), behind whatever the job
-- still has pending
table.sort(chosen, function(a, b)
  if (a.kind == 'video') ~= (b.kind == 'video') then return b.kind == 'video' end
  if (a.preview or false) ~= (b.preview or false) then return a.preview == true end
  return a.first < b.first
end)
for _, t in ipairs(chosen) do
  local tid = t.tid
  t.tid = nil
  drop_entry(job, t)  -- a leased one's holder is fenced off: it no longer holds the task
  redis.call('ZREM', lkey(job), tid)
  t.attempts = 0
  t.error = nil
  t.stop_by = nil
  t.published = nil
  if (t.waiting or 0) > 0 then   -- a segment task whose frames tasks are not all done waits again
    t.state = 'waiting'
    put_task(job, tid, t)
  else
    enqueue(job, tid, t)
  end
end
local count = #chosen
if count > 0 and redis.call('HGET', jkey(job), 'state') ~= 'paused' then
  -- a paused job stays paused: its requeued tasks wait for resume
  redis.call('HSET', jkey(job), 'state', 'active')
  activate(job)
end
return count
