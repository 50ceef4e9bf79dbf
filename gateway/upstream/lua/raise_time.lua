-- KEYS: the upstream key's health hash
-- ARGV: the field (cooling_until or quarantined_until), the time (epoch s)
-- Raise one of the key's times to the given one unless it already runs longer; the rest of
-- the hash (disabled, lifted_at: an admin's) is left as it is.
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') or 0
if tonumber(ARGV[2]) > current then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return 1
