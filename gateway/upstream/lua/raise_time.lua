-- KEYS: the upstream key's health hash
-- ARGV: the field (cooling_until or quarantined_until), the time (epoch s), the stamp of the
--       last admin decision the replica knew of when it made its verdict (lifted_at)
-- Raise one of the key's times to the given one unless it already runs longer, or an admin
-- has decided on the key since (a verdict written after a later lift must not undo it); the
-- rest of the hash (disabled, lifted_at: an admin's) is left as it is.
local decided = tonumber(redis.call('HGET', KEYS[1], 'lifted_at') or '0') or 0
if decided > tonumber(ARGV[3]) then
  return 0
end
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') or 0
if tonumber(ARGV[2]) > current then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], ARGV[1] .. '_seen', ARGV[3])
end
return 1
