-- release: give the task back untouched (a draining worker); the attempt is taken back.
--
-- KEYS: none (key names come from the prefix; see prelude.lua).
-- ARGV[1] key prefix
-- ARGV[2] job id
-- ARGV[3] task id
-- ARGV[4] fencing token of the lease
-- ARGV[5] worker name
-- Writes the job's tasks, stream and leases, and the priority index.
-- Returns 1, or 0 (and changes nothing) if `worker` does not hold the lease with this
-- token (`owned`, prelude.lua).
--
-- Like a retry, the task gets a new entry at the end of the job's stream.

local job, tid = ARGV[2], ARGV[3]
local t = owned(job, tid, ARGV[4], ARGV[5])
if not t then return 0 end
drop_entry(job, t)
redis.call('ZREM', lkey(job), tid)
t.attempts = t.attempts - 1  -- giving back is not an attempt
enqueue(job, tid, t)
activate(job)
return 1
