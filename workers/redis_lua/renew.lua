-- renew: extend the lease `worker` holds.
--
-- KEYS: none (key names come from the prefix; see prelude.lua).
-- ARGV[1] key prefix
-- ARGV[2] job id
-- ARGV[3] task id
-- ARGV[4] fencing token of the lease
-- ARGV[5] worker name
-- ARGV[6] lease length from now, ms
-- Writes the task's PEL entry and its deadline in ff:job:<job>:leases.
-- Returns 1, or 0 (and changes nothing) if `worker` does not hold the lease with this
-- token (`owned`, prelude.lua).
--
-- The entry is claimed again by the same consumer (XCLAIM ... JUSTID), which resets its
-- idle time, so XPENDING shows live leases as fresh.

local job, tid, worker = ARGV[2], ARGV[3], ARGV[5]
local t = owned(job, tid, ARGV[4], worker)
if not t then return 0 end
redis.call('XCLAIM', skey(job), GROUP, worker, 0, t.entry, 'JUSTID')  -- resets the idle time
redis.call('ZADD', lkey(job), now_ms() + tonumber(ARGV[6]), tid)
return 1
