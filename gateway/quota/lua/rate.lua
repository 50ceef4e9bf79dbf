-- KEYS: limits, rate log, video-seconds day bucket, video-seconds month bucket, and for a call
--       made with a gateway API key, that key's rate log
-- ARGV: now_ms, default rpm, default day, default month, unique member, window_ms, count (0|1),
--       and with the key's rate log, the key's rpm (-1 unlimited)
-- -> "allowed,rpm,used,retry_ms,reset_ms,day_limit,day_used,month_limit,month_used" (one
--    string: the client parses one line instead of nine), and with a key
--    ",key_refused,key_rpm,key_used,key_retry_ms,key_reset_ms". A request is counted in both
--    logs or in neither: the team's refusal is reported first, then the key's.
--!prelude
local now, window = tonumber(ARGV[1]), tonumber(ARGV[6])
-- One sliding log: {used, retry_ms (0: fits, -1: never), reset_ms}.
local function check(log, rpm)
  if rpm < 0 then return {0, 0, 0} end
  redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
  local used, retry = redis.call('ZCARD', log), 0
  if used >= rpm then
    if rpm == 0 then
      retry = -1
    else
      -- The entry whose expiry brings the count below the limit.
      local e = redis.call('ZRANGE', log, used - rpm, used - rpm, 'WITHSCORES')
      retry = tonumber(e[2]) + window - now
    end
  end
  return {used, retry, 0}
end
local function count(log, rpm, c)
  if rpm < 0 then return end
  if ARGV[7] == '1' then
    redis.call('ZADD', log, now, ARGV[5])
    redis.call('PEXPIRE', log, window)
    c[1] = c[1] + 1
  end
end
local function reset(log, rpm, c)
  if rpm < 0 then return end
  local first = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
  if first[2] then c[3] = tonumber(first[2]) + window - now end
end
local rpm = limit('requests_per_minute', ARGV[2])
local team = check(KEYS[2], rpm)
local allowed = team[2] == 0 and 1 or 0
local krpm, key = -1, nil
if KEYS[5] then
  krpm = tonumber(ARGV[8])
  if allowed == 1 then key = check(KEYS[5], krpm) else key = {0, 0, 0} end
end
local key_refused = (key and key[2] ~= 0) and 1 or 0
if allowed == 1 and key_refused == 0 then
  count(KEYS[2], rpm, team)
  if key then count(KEYS[5], krpm, key) end
end
allowed = (allowed == 1 and key_refused == 0) and 1 or 0
reset(KEYS[2], rpm, team)
local out = string.format('%d,%d,%d,%d,%d,%d,%d,%d,%d', allowed, rpm, team[1], team[2], team[3],
        limit('video_seconds_per_day', ARGV[3]), counter(KEYS[3]),
        limit('video_seconds_per_month', ARGV[4]), counter(KEYS[4]))
if key then
  reset(KEYS[5], krpm, key)
  out = out .. string.format(',%d,%d,%d,%d,%d', key_refused, krpm, key[1], key[2], key[3])
end
return out
