-- KEYS: limits, slots, day bucket, month bucket, spend month bucket, reservation, open index,
--       the three buckets' reset generations, spend day bucket and its reset generation; for a
--       job created with a gateway API key, also that key's slots, spend day and spend month
-- ARGV: now_ms, job id, video units, spend units, lease_ms, default concurrent, default day,
--       default month, default spend, day id, month id, day ttl s, month ttl s, reservation ttl s,
--       default spend per day, ledger field prefix (user model tag, each quoted, and a space),
--       raw video seconds (thousandths); with a key, its id and its concurrent, spend per day
--       and spend per month limits (-1 unlimited)
-- -> {1, 'reserved'} | {1, 'exists'} | {0, kind, used, limit} (a key's kinds start 'key:')
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
local keyed = KEYS[13] ~= nil
if keyed then
  redis.call('ZREMRANGEBYSCORE', KEYS[13], '-inf', now)
  local kconc, kruns = tonumber(ARGV[19]), redis.call('ZCARD', KEYS[13])
  if kconc >= 0 and kruns + 1 > kconc then return {0, 'key:concurrent_jobs', kruns, kconc} end
  local kchecks = {{'key:spend_per_day', ARGV[20], KEYS[14]},
                   {'key:spend_per_month', ARGV[21], KEYS[15]}}
  for _, c in ipairs(kchecks) do
    local lim, used = tonumber(c[2]), counter(c[3])
    if lim >= 0 and su > 0 and used + su > lim then return {0, c[1], used, lim} end
  end
  redis.call('ZADD', KEYS[13], now + tonumber(ARGV[5]), job)
  if su > 0 then
    redis.call('INCRBY', KEYS[14], su)
    redis.call('EXPIRE', KEYS[14], ARGV[12])
    redis.call('INCRBY', KEYS[15], su)
    redis.call('EXPIRE', KEYS[15], ARGV[13])
  end
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
if keyed then redis.call('HSET', KEYS[6], 'kid', ARGV[18]) end
redis.call('EXPIRE', KEYS[6], ARGV[14])
redis.call('ZADD', KEYS[7], now, job)
return {1, 'reserved'}
