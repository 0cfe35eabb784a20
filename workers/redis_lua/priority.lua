-- priority: move a job to another priority level.
--
-- KEYS: none (key names come from the prefix; see prelude.lua).
-- ARGV[1] key prefix
-- ARGV[2] job id
-- ARGV[3] the new priority
-- Writes ff:job:<job> (priority) and the priority index (an active job moves to the new
-- level; lease.lua drops it again if it has no work).
-- Returns 1, or 0 for an unknown job.

local job = ARGV[2]
if redis.call('EXISTS', jkey(job)) == 0 then return 0 end
deactivate(job)
redis.call('HSET', jkey(job), 'priority', ARGV[3])
if redis.call('HGET', jkey(job), 'state') == 'active' then activate(job) end
return 1
