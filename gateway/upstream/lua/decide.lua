-- KEYS: the upstream key's health hash
-- ARGV: cooling_until, quarantined_until, disabled ("1"/"0"), the deciding replica's clock
-- -> the decision's stamp (lifted_at)
-- An admin's decision: the whole hash, stamped later than every decision before it and than
-- the deciding replica's clock, so that the later of two decisions wins on every replica
-- whatever their clocks and whatever each had read.
local prev = tonumber(redis.call('HGET', KEYS[1], 'lifted_at') or '0') or 0
local stamp = string.format('%.17g', math.max(prev + 0.001, tonumber(ARGV[4])))
redis.call('HSET', KEYS[1], 'cooling_until', ARGV[1], 'quarantined_until', ARGV[2],
  'disabled', ARGV[3], 'lifted_at', stamp)
return stamp
