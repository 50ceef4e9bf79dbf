-- KEYS: limits, slots, day bucket, month bucket, spend month bucket, reservation, open index,
--       the three buckets' reset generations, spend day bucket and its reset generation
-- ARGV: now_ms, job id, video units, spend units, lease_ms, default concurrent, default day,
--       default month, default spend, day id, month id, day ttl s, month ttl s, reservation ttl s,
--       default spend per day, ledger field prefix (user model tag, each quoted, and a space),
--       raw video seconds (thousandths)
-- -> {1, 'reserved'} | {1, 'exists'} | {0, kind, used, limit}
--!prelude
local now, job = tonumber(ARGV[1]), ARGV[2]
local vu, su = tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('EXISTS', KEYS[6]) == 1 then return {1, 'exists'} end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local conc = limit('concurrent_jobs', ARGV[6])
local running = redis.call('ZCARD', KEYS[2])
if conc >= 0 and running + 1 > conc then return {0, 'concurrent_jobs', running, conc} end
local checks = {
  {'video_seconds_per_day', ARGV[7], KEYS[3], vu},
  {'video_seconds_per_month', ARGV[8], KEYS[4], vu},
  {'spend_per_day', ARGV[15], KEYS[11], su},
  {'spend_per_month', ARGV[9], KEYS[5], su},
}
for _, c in ipairs(checks) do
  local lim = limit(c[1], c[2])
  local used = counter(c[3])
  if lim >= 0 and used + c[4] > lim then return {0, c[1], used, lim} end
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), job)
redis.call('INCRBY', KEYS[3], vu)
redis.call('EXPIRE', KEYS[3], ARGV[12])
redis.call('INCRBY', KEYS[4], vu)
redis.call('EXPIRE', KEYS[4], ARGV[13])
redis.call('INCRBY', KEYS[5], su)
redis.call('EXPIRE', KEYS[5], ARGV[13])
redis.call('INCRBY', KEYS[11], su)
redis.call('EXPIRE', KEYS[11], ARGV[12])
-- The buckets' reset generations now: a refund only goes back into the same generation.
redis.call('HSET', KEYS[6], 'state', 'reserved', 'day', ARGV[10], 'month', ARGV[11],
           'vu', vu, 'su', su, 'reserved_ms', now, 'lp', ARGV[16] or '', 'vs', ARGV[17] or '0',
           'g1', redis.call('GET', KEYS[8]) or '0', 'g2', redis.call('GET', KEYS[9]) or '0',
           'g3', redis.call('GET', KEYS[10]) or '0', 'g4', redis.call('GET', KEYS[12]) or '0')
redis.call('EXPIRE', KEYS[6], ARGV[14])
redis.call('ZADD', KEYS[7], now, job)
return {1, 'reserved'}
