-- KEYS: limits, tokens per second (hash), tokens day, spend day, spend month, the day's
--       tags, and the reset generations of tokens day, spend day, spend month and the
--       tokens hash; then, with flag 'r' (the call's rate check folded in), the rate log and
--       the video-seconds day and month buckets (and with 'q', the key's rate log); then,
--       with flag 'k' (a call made with a gateway API key that has token or spend limits of
--       its own), that key's tokens per second (hash), spend day and spend month (the rate
--       group holds the key's rate log only with flag 'q': a key without a request limit
--       keeps no log); last, the call's reservation (the one key that differs between the
--       calls of one team on one day)
-- ARGV: now (epoch s), tokens, spend units, default tokens/minute, default tokens/day,
--       default spend/day, default spend/month, day id, month id, day ttl s, month ttl s,
--       reservation ttl s, tag ('' for none), max tags per day, window s, flags (any of 'r',
--       'q', 'k', 'x': the call may settle above its estimate, so a spend bucket already at
--       its limit refuses it even when its estimate is nothing); with 'r': now_ms, default rpm, default video day, default video month,
--       unique member, rate window ms (and with 'q', the key's rpm); with 'k': the key's
--       tokens/minute, spend/day and spend/month limits (-1 unlimited)
-- -> "1,<tpm limit>,<tpm used after>,<oldest second counted, -1 none>" (with a key, then
--    ",<key tpm limit>,<key tpm used after>,<key oldest second>") |
--    "0,<kind>,<used>,<limit>,<wait s or -1 (never fits)>" (a key's kinds start with 'key:');
--    with 'r', followed by "|" and the rate reply (rate_decide in the prelude), or "R|" and
--    the rate reply when the request rate refused the call (then nothing else was checked);
--    "C" when the call was given up on before this ran (meter_cancel.lua): nothing is done
-- Admit one metered call: reserve its estimate against every window it touches (the team's
-- and its key's), or none; with 'r', first count it against the request rate, as the rate
-- script would have (counted even when a budget then refuses it, like any request).
--!prelude
local now, tokens, spend = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local window = tonumber(ARGV[15])
local flags = ARGV[16] or ''
local function flag(f) return string.find(flags, f, 1, true) ~= nil end
local keyed, rated, key_rated, open_ended = flag('k'), flag('r'), flag('q'), flag('x')
local ki, ai = 11, 17  -- the next optional KEYS and ARGV
local call = KEYS[#KEYS]
-- Given up on before it ran (its reply lost to a frozen Redis): nothing, not even the rate.
if redis.call('EXISTS', call) == 1 then return 'C' end
local rate_reply = nil
if rated then
  local key_log = nil
  if key_rated then key_log = KEYS[ki + 3] end
  local krpm = key_rated and tonumber(ARGV[ai + 6]) or -1
  local ok
  ok, rate_reply = rate_decide(KEYS[ki], KEYS[ki + 1], KEYS[ki + 2], key_log, tonumber(ARGV[ai]),
                               tonumber(ARGV[ai + 5]), ARGV[ai + 1], ARGV[ai + 2], ARGV[ai + 3],
                               ARGV[ai + 4], '1', krpm)
  if ok == 0 then return 'R|' .. rate_reply end
  ki, ai = ki + (key_rated and 4 or 3), ai + (key_rated and 7 or 6)
end
-- The reply, with the rate decision when it was folded in.
local function answer(text)
  if rate_reply then return text .. '|' .. rate_reply end
  return text
end
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
local function over_bucket(kind, lim, key, amount, open)
  if lim < 0 or (amount <= 0 and not open) then return nil end
  local have = counter(key)
  if have + amount > lim or (open and have >= lim) then
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
  or over_bucket('spend_per_day', limit('spend_per_day', ARGV[6]), KEYS[4], spend, open_ended)
  or over_bucket('spend_per_month', limit('spend_per_month', ARGV[7]), KEYS[5], spend,
                 open_ended)
if refused then return answer(refused) end
local kused, klive, ktpm = 0, {}, -1
if keyed then
  kused, klive = minute(KEYS[ki])
  ktpm = tonumber(ARGV[ai])
  refused = over_minute('key:tokens_per_minute', kused, klive, ktpm)
    or over_bucket('key:spend_per_day', tonumber(ARGV[ai + 1]), KEYS[ki + 1], spend, open_ended)
    or over_bucket('key:spend_per_month', tonumber(ARGV[ai + 2]), KEYS[ki + 2], spend,
                   open_ended)
  if refused then return answer(refused) end
end
local tag = ARGV[13]
if tag ~= '' and redis.call('SISMEMBER', KEYS[6], tag) == 0 then
  local n = redis.call('SCARD', KEYS[6])
  if n >= tonumber(ARGV[14]) then
    return answer(table.concat({0, 'tags', n, ARGV[14], -1}, ','))
  end
  redis.call('SADD', KEYS[6], tag)
  redis.call('EXPIRE', KEYS[6], ARGV[10])
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
if keyed then charge(KEYS[ki], KEYS[ki + 1], KEYS[ki + 2], nil) end
-- What settling needs: the second and buckets charged, and their reset generations then.
redis.call('HSET', call, 's', now, 't', tokens, 'c', spend, 'd', ARGV[8], 'm', ARGV[9],
           'g1', redis.call('GET', KEYS[7]) or '0', 'g2', redis.call('GET', KEYS[8]) or '0',
           'g3', redis.call('GET', KEYS[9]) or '0', 'g4', redis.call('GET', KEYS[10]) or '0')
if keyed then redis.call('HSET', call, 'k', '1') end
redis.call('EXPIRE', call, ARGV[12])
local out = table.concat({1, tpm, used + tokens, oldest_of(live)}, ',')
if keyed then out = out .. ',' .. table.concat({ktpm, kused + tokens, oldest_of(klive)}, ',') end
return answer(out)
