-- pause: stop handing out a job's tasks (its leased ones finish), or resume it.
--
-- KEYS: none (key names come from the prefix; see prelude.lua).
-- ARGV[1] key prefix
-- ARGV[2] job id
-- ARGV[3] "pause" (active -> paused) or "resume" (paused -> active)
-- Writes ff:job:<job> (state) and the priority index: a paused job leaves it, so lease.lua
-- never reads its stream; resume puts it back.
-- Returns 1 if the job changed state, 0 if it was not in the state the step starts from.

local job = ARGV[2]
local from, to = 'active', 'paused'
if ARGV[3] == 'resume' then from, to = 'paused', 'active' end
if redis.call('HGET', jkey(job), 'state') ~= from then return 0 end
redis.call('HSET', jkey(job), 'state', to)
if to == 'active' then activate(job) else deactivate(job) end
return 1
