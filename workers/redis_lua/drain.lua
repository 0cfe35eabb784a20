-- drain: ask a worker to drain (finish the frames in flight, release the rest, exit).
--
-- KEYS: none (key names come from the prefix; see prelude.lua).
-- ARGV[1] key prefix
-- ARGV[2] worker name
-- Writes ff:drain; heartbeat.lua tells the worker at its next heartbeat.
-- Returns 1, or 0 (and changes nothing) for a worker not in ff:workers.

if redis.call('HEXISTS', P .. 'workers', ARGV[2]) == 0 then return 0 end
redis.call('SADD', P .. 'drain', ARGV[2])
return 1
