-- KEYS: the job's record. ARGV: the number of fields to set, then field, value pairs, then the
-- fields to delete.
-- -> 1 when written; else the record as it stands (HGETALL), whose status is already final.
-- A job's end is written once: a poll that was in flight when another caller (or the
-- deadline) ended the job must not write a different end, or any state, over it.
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'completed' or status == 'failed' then
  return redis.call('HGETALL', KEYS[1])
end
local n = tonumber(ARGV[1])
if n > 0 then redis.call('HSET', KEYS[1], unpack(ARGV, 2, 1 + 2 * n)) end
if #ARGV > 1 + 2 * n then redis.call('HDEL', KEYS[1], unpack(ARGV, 2 + 2 * n)) end
return 1
