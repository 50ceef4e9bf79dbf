-- KEYS: limits, tokens per second (hash), tokens day, spend day, spend month, the call's
--       reservation, the day's tags, and the reset generations of tokens day, spend day,
--       spend month and the tokens hash
-- ARGV: now (epoch s), tokens, spend units, default tokens/minute, default tokens/day,
--       default spend/day, default spend/month, day id, month id, day ttl s, month ttl s,
--       reservation ttl s, tag ('' for none), max tags per day, window s
-- -> "1,<tpm limit>,<tpm used after>,<oldest second counted, -1 none>" |
--    "0,<kind>,<used>,<limit>,<wait s or -1 (never fits)>"
-- Admit one metered call: reserve its estimate against every window it touches, or none.
--!prelude
local now, tokens, spend = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local window = tonumber(ARGV[15])
-- The minute: per-second counts; seconds that left the window are dropped here.
local flat = redis.call('HGETALL', KEYS[2])
local used, stale, live = 0, {}, {}
for i = 1, #flat, 2 do
  local s, v = tonumber(flat[i]), tonumber(flat[i + 1])
  if s <= now - window then stale[#stale + 1] = flat[i]
  else used = used + v; live[#live + 1] = {s, v} end
end
if #stale > 0 then redis.call('HDEL', KEYS[2], unpack(stale)) end
local tpm = limit('tokens_per_minute', ARGV[4])
if tpm >= 0 and tokens > 0 and used + tokens > tpm then
  local wait = -1
  if tokens <= tpm then
    table.sort(live, function(a, b) return a[1] < b[1] end)
    local left = used
    for _, sv in ipairs(live) do
      left = left - sv[2]
      if left + tokens <= tpm then wait = sv[1] + window - now; break end
    end
  end
  return table.concat({0, 'tokens_per_minute', used, tpm, wait}, ',')
end
local checks = {
  {'tokens_per_day', ARGV[5], KEYS[3], tokens},
  {'spend_per_day', ARGV[6], KEYS[4], spend},
  {'spend_per_month', ARGV[7], KEYS[5], spend},
}
for _, c in ipairs(checks) do
  local lim = limit(c[1], c[2])
  if lim >= 0 and c[4] > 0 then
    local have = counter(c[3])
    if have + c[4] > lim then
      return table.concat({0, c[1], have, lim, c[4] > lim and -1 or 0}, ',')
    end
  end
end
local tag = ARGV[13]
if tag ~= '' and redis.call('SISMEMBER', KEYS[7], tag) == 0 then
  local n = redis.call('SCARD', KEYS[7])
  if n >= tonumber(ARGV[14]) then return table.concat({0, 'tags', n, ARGV[14], -1}, ',') end
  redis.call('SADD', KEYS[7], tag)
  redis.call('EXPIRE', KEYS[7], ARGV[10])
end
if tokens > 0 then
  redis.call('HINCRBY', KEYS[2], now, tokens)
  redis.call('EXPIRE', KEYS[2], window * 2)
  redis.call('INCRBY', KEYS[3], tokens)
  redis.call('EXPIRE', KEYS[3], ARGV[10])
end
if spend > 0 then
  redis.call('INCRBY', KEYS[4], spend)
  redis.call('EXPIRE', KEYS[4], ARGV[10])
  redis.call('INCRBY', KEYS[5], spend)
  redis.call('EXPIRE', KEYS[5], ARGV[11])
end
-- What settling needs: the second and buckets charged, and their reset generations then.
redis.call('HSET', KEYS[6], 's', now, 't', tokens, 'c', spend, 'd', ARGV[8], 'm', ARGV[9],
           'g1', redis.call('GET', KEYS[8]) or '0', 'g2', redis.call('GET', KEYS[9]) or '0',
           'g3', redis.call('GET', KEYS[10]) or '0', 'g4', redis.call('GET', KEYS[11]) or '0')
redis.call('EXPIRE', KEYS[6], ARGV[12])
local oldest = tokens > 0 and now or -1
for _, sv in ipairs(live) do
  if oldest < 0 or sv[1] < oldest then oldest = sv[1] end
end
return table.concat({1, tpm, used + tokens, oldest}, ',')
