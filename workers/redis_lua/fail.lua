-- fail: record the task's error; the task is pending again, or dead-lettered if this
-- was its last attempt.
--
-- KEYS: none (key names come from the prefix; see prelude.lua).
-- ARGV[1] key prefix
-- ARGV[2] job id
-- ARGV[3] task id
-- ARGV[4] fencing token of the lease
-- ARGV[5] worker name
-- ARGV[6] the error (RedisQueue has already cut it to ERROR_CHARS)
-- ARGV[7] block_after: blocklist the worker on the job once it has failed it this many
--         times; '' never
-- Writes the job's tasks, stream, leases, failure counts and blocklist, the priority index
-- and, when dead, ff:dead.
-- Returns 1 if the task is now dead-lettered; 0 if it is pending again, or if `worker`
-- does not hold the lease with this token (`owned`, prelude.lua; nothing changes then).
--
-- A retry gets a new entry at the end of the job's stream, so it tends to go to another
-- worker, after the job's other frames.

local job, tid, err = ARGV[2], ARGV[3], ARGV[6]
local t = owned(job, tid, ARGV[4], ARGV[5])
if not t then return 0 end
t.finished = now_ms()
local failures = redis.call('HINCRBY', fkey(job), ARGV[5], 1)
local block_after = tonumber(ARGV[7])
if block_after and failures >= block_after then redis.call('SADD', bkey(job), ARGV[5]) end
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
