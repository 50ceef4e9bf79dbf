"""The Lua scripts: one per decision, so a decision is atomic on one Redis (or one Cluster slot).

Every key a script touches carries the team's hash tag and is passed in KEYS. Limits are read
inside the script (an admin override in the team's limits hash, else the default passed in
ARGV), so a decision never races a limit change. Amounts are integers; -1 means unlimited.
"""

from __future__ import annotations

# Shared helpers, prepended to each script.
_PRELUDE = """
local function limit(field, default)
  local v = redis.call('HGET', KEYS[1], field)
  if v then return tonumber(v) end
  return tonumber(default)
end
local function counter(key)
  return tonumber(redis.call('GET', key) or '0')
end
"""

# KEYS: limits, rate log, video-seconds day bucket, video-seconds month bucket
# ARGV: now_ms, default rpm, default day, default month, unique member, window_ms, count (0|1)
# -> "allowed,rpm,used,retry_ms,reset_ms,day_limit,day_used,month_limit,month_used" (one
#    string: the client parses one line instead of nine)
RATE = (
    _PRELUDE
    + """
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
"""
)

# KEYS: limits, slots, day bucket, month bucket, spend month bucket, reservation, open index,
#       and the three buckets' reset generations
# ARGV: now_ms, job id, video units, spend units, lease_ms, default concurrent, default day,
#       default month, default spend, day id, month id, day ttl s, month ttl s, reservation ttl s
# -> {1, 'reserved'} | {1, 'exists'} | {0, kind, used, limit}
RESERVE = (
    _PRELUDE
    + """
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
-- The buckets' reset generations now: a refund only goes back into the same generation.
redis.call('HSET', KEYS[6], 'state', 'reserved', 'day', ARGV[10], 'month', ARGV[11],
           'vu', vu, 'su', su, 'reserved_ms', now,
           'g1', redis.call('GET', KEYS[8]) or '0', 'g2', redis.call('GET', KEYS[9]) or '0',
           'g3', redis.call('GET', KEYS[10]) or '0')
redis.call('EXPIRE', KEYS[6], ARGV[14])
redis.call('ZADD', KEYS[7], now, job)
return {1, 'reserved'}
"""
)

# KEYS: reservation, slots, day bucket, month bucket, spend month bucket, open index, and the
#       three buckets' reset generations
# ARGV: job id, outcome ('kept' | 'refunded'), now_ms, day id, month id
# -> 1 when this call settled it, 0 when it was already settled (or never reserved)
SETTLE = """
local res = KEYS[1]
if redis.call('HGET', res, 'state') ~= 'reserved' then return 0 end
if redis.call('HGET', res, 'day') ~= ARGV[4] or redis.call('HGET', res, 'month') ~= ARGV[5] then
  return redis.error_reply('reservation buckets do not match')
end
if ARGV[2] == 'refunded' then
  local vu = tonumber(redis.call('HGET', res, 'vu'))
  local su = tonumber(redis.call('HGET', res, 'su'))
  for i, pair in ipairs({{KEYS[3], vu}, {KEYS[4], vu}, {KEYS[5], su}}) do
    -- Not into a bucket that has expired (it would only hold a negative), nor into one an
    -- admin reset after this job was charged (its charge is already gone).
    local now_gen = redis.call('GET', KEYS[6 + i]) or '0'
    local then_gen = redis.call('HGET', res, 'g' .. i) or '0'
    if redis.call('EXISTS', pair[1]) == 1 and now_gen == then_gen then
      if redis.call('DECRBY', pair[1], pair[2]) < 0 then
        redis.call('SET', pair[1], 0, 'KEEPTTL')
      end
    end
  end
end
redis.call('HSET', res, 'state', ARGV[2], 'settled_ms', ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
return 1
"""

# KEYS: slots, open index. ARGV: job id, new expiry ms, now_ms.
# A job seen running: extend its lease (only one that exists) and note when it was last seen,
# so the reconciler leaves it alone while somebody is polling it.
RENEW = """
redis.call('ZADD', KEYS[2], 'XX', ARGV[3], ARGV[1])
return redis.call('ZADD', KEYS[1], 'XX', 'CH', ARGV[2], ARGV[1])
"""

# KEYS: reservation. ARGV: field, value. Sets a field of a reservation that exists.
MARK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
"""
