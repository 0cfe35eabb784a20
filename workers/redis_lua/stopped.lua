-- stopped: the worker of a task cancelled under it reports how many of the task's
-- frames it had published when it stopped; they count as done in `status`, the rest as
-- cancelled, and the task is no longer "stopping".
--
-- KEYS: none (key names come from the prefix; see prelude.lua).
-- ARGV[1] key prefix
-- ARGV[2] job id
-- ARGV[3] task id
-- ARGV[4] fencing token of the lease the worker held
-- ARGV[5] worker name
-- ARGV[6] frames published
-- Writes the task.
-- Returns 1, or 0 (and changes nothing) unless the task is cancelled and was last leased
-- to `worker` with this token (a requeue since, or another lease, makes the report stale).

local job, tid = ARGV[2], ARGV[3]
local t = get_task(job, tid)
if not t or t.state ~= 'cancelled' or t.token ~= tonumber(ARGV[4]) or t.worker ~= ARGV[5] then
  return 0
end
t.published = math.max(0, tonumber(ARGV[6]))
t.stop_by = nil
put_task(job, tid, t)
return 1
