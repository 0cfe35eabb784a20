-- holds: does `worker` still hold the lease with this token? Reads only (renew.lua
-- without the renewal): the worker asks at every frame boundary, so that a cancel or a
-- requeue stops its render before the next frame is published.
--
-- KEYS: none (key names come from the prefix; see prelude.lua).
-- ARGV[1] key prefix
-- ARGV[2] job id
-- ARGV[3] task id
-- ARGV[4] fencing token of the lease
-- ARGV[5] worker name
-- Writes nothing.
-- Returns 1 if `owned` (prelude.lua) finds the lease, else 0.

if owned(ARGV[2], ARGV[3], ARGV[4], ARGV[5]) then return 1 end
return 0
