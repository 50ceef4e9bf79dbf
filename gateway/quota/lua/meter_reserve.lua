-- KEYS: limits, tokens per second (hash), tokens day, spend day, spend month, the call's
--       reservation, the day's tags, and the reset generations of tokens day, spend day,
--       spend month and the tokens hash; for a call made with a gateway API key, also that
--       key's tokens per second (hash), spend day and spend month
-- ARGV: now (epoch s), tokens, spend units, default tokens/minute, default tokens/day,
--       default spend/day, default spend/month, day id, month id, day ttl s, month ttl s,
--       reservation ttl s, tag ('' for none), max tags per day, window s; with a key, its
--       tokens/minute, spend/day and spend/month limits (-1 unlimited)
-- -> "1,<tpm limit>,<tpm used after>,<oldest second counted, -1 none>" (with a key, then
--    ",<key tpm limit>,<key tpm used after>,<key oldest second>") |
--    "0,<kind>,<used>,<limit>,<wait s or -1 (never fits)>" (a key's kinds start with 'key:')
-- Admit one metered call: reserve its estimate against every window it touches (the team's
-- and its key's), or none.
--!prelude
local now, tokens, spend = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local window = tonumber(ARGV[15])
-- The minute: per-second counts; seconds that left the window are dropped here.
local function minute(hash)
  local flat = redis.call('HGETALL', hash)
  local used, stale, live = 0, {}, {}
  for i = 1, #flat, 2 do
    local s, v = tonumber(flat[i]), tonumber(flat[i + 1])
    if s <= now - window then stale[#stale + 1] = flat[i]
    else used = used + v; live[#live + 1] = {s, v} end
  end
  if #stale > 0 then redis.call('HDEL', hash, unpack(stale)) end
  return used, live
end
-- A refusal of the minute (or nil): how long until the call fits, -1 if it never can.
local function over_minute(kind, used, live, tpm)
  if tpm < 0 or tokens <= 0 or used + tokens <= tpm then return nil end
  local wait = -1
  if tokens <= tpm then
    table.sort(live, function(a, b) return a[1] < b[1] end)
    local left = used
    for _, sv in ipairs(live) do
      left = left - sv[2]
      if left + tokens <= tpm then wait = sv[1] + window - now; break end
    end
  end
  return table.concat({0, kind, used, tpm, wait}, ',')
end
local function over_bucket(kind, lim, key, amount)
  if lim < 0 or amount <= 0 then return nil end
  local have = counter(key)
  if have + amount > lim then
    return table.concat({0, kind, have, lim, amount > lim and -1 or 0}, ',')
  end
  return nil
end
local function oldest_of(live)
  local oldest = tokens > 0 and now or -1
  for _, sv in ipairs(live) do
    if oldest < 0 or sv[1] < oldest then oldest = sv[1] end
  end
  return oldest
end
local used, live = minute(KEYS[2])
local tpm = limit('tokens_per_minute', ARGV[4])
local refused = over_minute('tokens_per_minute', used, live, tpm)
  or over_bucket('tokens_per_day', limit('tokens_per_day', ARGV[5]), KEYS[3], tokens)
  or over_bucket('spend_per_day', limit('spend_per_day', ARGV[6]), KEYS[4], spend)
  or over_bucket('spend_per_month', limit('spend_per_month', ARGV[7]), KEYS[5], spend)
if refused then return refused end
local keyed = KEYS[12] ~= nil
local kused, klive, ktpm = 0, {}, -1
if keyed then
  kused, klive = minute(KEYS[12])
  ktpm = tonumber(ARGV[16])
  refused = over_minute('key:tokens_per_minute', kused, klive, ktpm)
    or over_bucket('key:spend_per_day', tonumber(ARGV[17]), KEYS[13], spend)
    or over_bucket('key:spend_per_month', tonumber(ARGV[18]), KEYS[14], spend)
  if refused then return refused end
end
local tag = ARGV[13]
if tag ~= '' and redis.call('SISMEMBER', KEYS[7], tag) == 0 then
  local n = redis.call('SCARD', KEYS[7])
  if n >= tonumber(ARGV[14]) then return table.concat({0, 'tags', n, ARGV[14], -1}, ',') end
  redis.call('SADD', KEYS[7], tag)
  redis.call('EXPIRE', KEYS[7], ARGV[10])
end
local function charge(tpm_hash, spend_day, spend_month, day_tokens)
  if tokens > 0 then
    redis.call('HINCRBY', tpm_hash, now, tokens)
    redis.call('EXPIRE', tpm_hash, window * 2)
    if day_tokens then
      redis.call('INCRBY', day_tokens, tokens)
      redis.call('EXPIRE', day_tokens, ARGV[10])
    end
  end
  if spend > 0 then
    redis.call('INCRBY', spend_day, spend)
    redis.call('EXPIRE', spend_day, ARGV[10])
    redis.call('INCRBY', spend_month, spend)
    redis.call('EXPIRE', spend_month, ARGV[11])
  end
end
charge(KEYS[2], KEYS[4], KEYS[5], KEYS[3])
if keyed then charge(KEYS[12], KEYS[13], KEYS[14], nil) end
-- What settling needs: the second and buckets charged, and their reset generations then.
redis.call('HSET', KEYS[6], 's', now, 't', tokens, 'c', spend, 'd', ARGV[8], 'm', ARGV[9],
           'g1', redis.call('GET', KEYS[8]) or '0', 'g2', redis.call('GET', KEYS[9]) or '0',
           'g3', redis.call('GET', KEYS[10]) or '0', 'g4', redis.call('GET', KEYS[11]) or '0')
if keyed then redis.call('HSET', KEYS[6], 'k', '1') end
redis.call('EXPIRE', KEYS[6], ARGV[12])
local out = table.concat({1, tpm, used + tokens, oldest_of(live)}, ',')
if keyed then out = out .. ',' .. table.concat({ktpm, kused + tokens, oldest_of(klive)}, ',') end
return out
