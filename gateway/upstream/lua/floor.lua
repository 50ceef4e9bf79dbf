-- KEYS: the upstream key's health hash
-- ARGV: the stamp of the last admin decision a replica knows of
-- Redis lost that decision (its lifted_at is older): keep the stamp as a floor, so that the
-- next decision is stamped above it whatever Redis's clock says, and every replica takes it.
local decided = tonumber(redis.call('HGET', KEYS[1], 'lifted_at') or '0') or 0
local floor = tonumber(redis.call('HGET', KEYS[1], 'floor') or '0') or 0
if tonumber(ARGV[1]) > decided and tonumber(ARGV[1]) > floor then
  redis.call('HSET', KEYS[1], 'floor', ARGV[1])
end
return 1
