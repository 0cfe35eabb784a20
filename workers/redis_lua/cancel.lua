-- cancel: mark the job cancelled, drop its pending tasks and fence off its leased ones.
--
-- KEYS: none (key names come from the prefix; see prelude.lua).
-- ARGV[1] key prefix
-- ARGV[2] job id
-- Writes ff:job:<job> (state) and its tasks, deletes its stream and leases, and takes
-- the job out of the priority index. A leased task keeps its lease deadline as stop_by:
-- it is "stopping" until its worker reports what it published (stopped.lua) or then.
-- Returns the number of tasks dropped (pending) or fenced off (leased); 0 for an
-- unknown job.

local job = ARGV[2]
if redis.call('EXISTS', jkey(job)) == 0 then return 0 end
redis.call('HSET', jkey(job), 'state', 'cancelled')
local all = redis.call('HGETALL', tkey(job))
local count = 0
for i = 1, #all, 2 do
  local t = cjson.decode(all[i + 1])
  if t.state == 'pending' or t.state == 'leased' or t.state == 'waiting' then
    if t.state == 'leased' then
      t.stop_by = tonumber(redis.call('ZSCORE', lkey(job), all[i]))
    end
    t.published = 0
    t.state = 'cancelled'
    t.entry = nil
    put_task(job, all[i], t)
    count = count + 1
  end
end
-- the stream goes with its group and PEL: leased tasks then fail the ownership check too
redis.call('DEL', skey(job), lkey(job))
deactivate(job)
return count
