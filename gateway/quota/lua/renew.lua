-- KEYS: slots, open index, and for a job created with a gateway API key, that key's slots.
-- ARGV: job id, new expiry ms, now_ms.
-- A job seen running: extend its lease (only one that exists) and note when it was last seen,
-- so the reconciler leaves it alone while somebody is polling it.
redis.call('ZADD', KEYS[2], 'XX', ARGV[3], ARGV[1])
if KEYS[3] then redis.call('ZADD', KEYS[3], 'XX', ARGV[2], ARGV[1]) end
return redis.call('ZADD', KEYS[1], 'XX', 'CH', ARGV[2], ARGV[1])
