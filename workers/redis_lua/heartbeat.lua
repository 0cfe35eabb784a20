-- heartbeat: record a worker as alive, by the Redis server's clock, and drop the workers
-- that have been silent for longer than the drop time.
--
-- KEYS: none (key names come from the prefix; see prelude.lua).
-- ARGV[1] key prefix
-- ARGV[2] worker name
-- ARGV[3] the worker's info, as JSON (stored as given, inside {heartbeat, info})
-- ARGV[4] drop time, ms
-- Writes ff:workers, ff:workers:seen and ff:drain (dropped workers leave it).
-- Returns 1 if this worker has been asked to drain (ff:drain), else 0.

local now = now_ms()
redis.call('HSET', P .. 'workers', ARGV[2],
           '{"heartbeat":' .. string.format('%.3f', now / 1000) .. ',"info":' .. ARGV[3] .. '}')
redis.call('ZADD', P .. 'workers:seen', now, ARGV[2])
local cutoff = now - tonumber(ARGV[4])
local silent = redis.call('ZRANGEBYSCORE', P .. 'workers:seen', '-inf', '(' .. cutoff)
for _, name in ipairs(silent) do
  redis.call('HDEL', P .. 'workers', name)
  redis.call('SREM', P .. 'drain', name)
end
redis.call('ZREMRANGEBYSCORE', P .. 'workers:seen', '-inf', '(' .. cutoff)
return redis.call('SISMEMBER', P .. 'drain', ARGV[2])
