-- submit: store a job and queue one pending task per chunk of frames; its video segment
-- tasks wait (state "waiting", no stream entry) until ack.lua has counted down the frames
-- tasks each waits for.
--
-- KEYS: none (key names come from the prefix; see prelude.lua).
-- ARGV[1] key prefix
-- ARGV[2] job id
-- ARGV[3] the JobSpec as JSON
-- ARGV[4] priority
-- ARGV[5] max_attempts
-- ARGV[6] video: 1 if the job wants an MP4 (a video task follows the last frames), else 0
-- ARGV[7] frame_start
-- ARGV[8] frame_end
-- ARGV[9] the chunks as JSON, [[first, last, preview], ...] in the order they are to be leased (a
--         `--preview` frame first, preview = 1); task ids are 1..#chunks in that order
-- ARGV[10] idempotency key, or '' for none
-- ARGV[11] the segment tasks as JSON, [[first, last, [chunk index (0-based), ...]], ...]: each
--          segment with the chunks whose frames it waits for; task ids #chunks+1.. (may be '[]')
-- Writes ff:seq, ff:jobs, ff:job:<job>, its tasks and stream, the priority index, and
-- ff:idempotency (hash key -> job id).
-- Returns the job id; the earlier job's id (and changes nothing) if the key was seen;
-- 0 (and changes nothing) if the job id is taken.

local job = ARGV[2]
local key = ARGV[10]
if key ~= '' then
  local seen = redis.call('HGET', P .. 'idempotency', key)
  if seen then return seen end
end
if redis.call('EXISTS', jkey(job)) == 1 then return 0 end
if key ~= '' then redis.call('HSET', P .. 'idempotency', key, job) end
local seq = redis.call('INCR', P .. 'seq')
local chunks = cjson.decode(ARGV[9])
local parts = cjson.decode(ARGV[11])
local tasks = #chunks + #parts
redis.call('HSET', jkey(job), 'spec', ARGV[3], 'state', 'active', 'priority', ARGV[4],
           'max_attempts', ARGV[5], 'video', ARGV[6], 'frame_start', ARGV[7], 'frame_end', ARGV[8],
           'seq', seq, 'remaining', tasks, 'next_task', tasks, 'video_queued', 0, 'submitted', now_ms())
redis.call('ZADD', P .. 'jobs', seq, job)
local unblocks = {}
for s, part in ipairs(parts) do
  put_task(job, tostring(#chunks + s), {kind = 'segment', first = part[1], last = part[2], attempts = 0,
                                        token = 0, state = 'waiting', waiting = #part[3]})
  for _, c in ipairs(part[3]) do
    unblocks[c + 1] = unblocks[c + 1] or {}
    table.insert(unblocks[c + 1], tostring(#chunks + s))
  end
end
for i, chunk in ipairs(chunks) do
  enqueue(job, tostring(i), {kind = 'frames', first = chunk[1], last = chunk[2], attempts = 0, token = 0,
                             preview = chunk[3] == 1 or nil, unblocks = unblocks[i]})
end
activate(job)
return job
