-- KEYS: the upstream key's health hash
-- ARGV: cooling_until, quarantined_until, disabled ("1"/"0")
-- -> the decision's stamp (lifted_at)
-- An admin's decision: the whole hash, stamped later than every decision before it, by
-- Redis's own clock: one clock for every replica's decisions, so that the later of two wins
-- everywhere, and still after Redis has lost its data (a stamp from a replica whose clock
-- ran ahead outranked every decision made after it).
local prev = tonumber(redis.call('HGET', KEYS[1], 'lifted_at') or '0') or 0
prev = math.max(prev, tonumber(redis.call('HGET', KEYS[1], 'floor') or '0') or 0)
local now = redis.call('TIME')
local stamp = math.max(prev + 0.001, tonumber(now[1]) + tonumber(now[2]) / 1000000)
local text = string.format('%.17g', stamp)
redis.call('HSET', KEYS[1], 'cooling_until', ARGV[1], 'quarantined_until', ARGV[2],
  'disabled', ARGV[3], 'lifted_at', text)
return text
