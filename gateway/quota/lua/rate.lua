-- KEYS: limits, rate log, video-seconds day bucket, video-seconds month bucket
-- ARGV: now_ms, default rpm, default day, default month, unique member, window_ms, count (0|1)
-- -> "allowed,rpm,used,retry_ms,reset_ms,day_limit,day_used,month_limit,month_used" (one
--    string: the client parses one line instead of nine)
--!prelude
local now, window = tonumber(ARGV[1]), tonumber(ARGV[6])
local rpm = limit('requests_per_minute', ARGV[2])
local allowed, used, retry, reset = 1, 0, 0, 0
if rpm >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
  used = redis.call('ZCARD', KEYS[2])
  if used >= rpm then
    allowed = 0
    if rpm == 0 then
      retry = -1
    else
      -- The entry whose expiry brings the count below the limit.
      local e = redis.call('ZRANGE', KEYS[2], used - rpm, used - rpm, 'WITHSCORES')
      retry = tonumber(e[2]) + window - now
    end
  elseif ARGV[7] == '1' then
    redis.call('ZADD', KEYS[2], now, ARGV[5])
    redis.call('PEXPIRE', KEYS[2], window)
    used = used + 1
  end
  local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  if first[2] then reset = tonumber(first[2]) + window - now end
end
return string.format('%d,%d,%d,%d,%d,%d,%d,%d,%d', allowed, rpm, used, retry, reset,
        limit('video_seconds_per_day', ARGV[3]), counter(KEYS[3]),
        limit('video_seconds_per_month', ARGV[4]), counter(KEYS[4]))
