-- KEYS: reservation, slots, day bucket, month bucket, spend month bucket, open index, the
--       three buckets' reset generations, spend day bucket and its reset generation, the
--       ledger of the reservation's day; for a job created with a gateway API key (its 'kid'),
--       also that key's slots, spend day and spend month
-- ARGV: job id, outcome ('kept' | 'refunded'), now_ms, day id, month id, ledger ttl s
-- -> 1 when this call settled it, 0 when it was already settled (or never reserved)
local res = KEYS[1]
if redis.call('HGET', res, 'state') ~= 'reserved' then return 0 end
if redis.call('HGET', res, 'day') ~= ARGV[4] or redis.call('HGET', res, 'month') ~= ARGV[5] then
  return redis.error_reply('reservation buckets do not match')
end
if ARGV[2] == 'refunded' then
  local vu = tonumber(redis.call('HGET', res, 'vu'))
  local su = tonumber(redis.call('HGET', res, 'su'))
  local buckets = {{KEYS[3], vu, KEYS[7]}, {KEYS[4], vu, KEYS[8]}, {KEYS[5], su, KEYS[9]}}
  -- Reserved before the day's spend bucket existed (an older gateway): no g4, not charged.
  if redis.call('HEXISTS', res, 'g4') == 1 then
    buckets[4] = {KEYS[10], su, KEYS[11]}
  end
  for i, pair in ipairs(buckets) do
    -- Not into a bucket that has expired (it would only hold a negative), nor into one an
    -- admin reset after this job was charged (its charge is already gone).
    local now_gen = redis.call('GET', pair[3]) or '0'
    local then_gen = redis.call('HGET', res, 'g' .. i) or '0'
    if redis.call('EXISTS', pair[1]) == 1 and now_gen == then_gen then
      if redis.call('DECRBY', pair[1], pair[2]) < 0 then
        redis.call('SET', pair[1], 0, 'KEEPTTL')
      end
    end
  end
end
-- A key's counters: its slot is freed either way, its spend refunded with the team's.
if KEYS[13] and redis.call('HGET', res, 'kid') then
  redis.call('ZREM', KEYS[13], ARGV[1])
  if ARGV[2] == 'refunded' then
    local su = tonumber(redis.call('HGET', res, 'su'))
    for _, key in ipairs({KEYS[14], KEYS[15]}) do
      if su > 0 and redis.call('EXISTS', key) == 1 then
        if redis.call('DECRBY', key, su) < 0 then redis.call('SET', key, 0, 'KEEPTTL') end
      end
    end
  end
end
-- A kept job enters the usage ledger once, in the same step as its charge is kept.
local lp = redis.call('HGET', res, 'lp')
if ARGV[2] == 'kept' and lp and lp ~= '' and KEYS[12] then
  redis.call('HINCRBY', KEYS[12], lp .. 'requests', 1)
  local vs = tonumber(redis.call('HGET', res, 'vs') or '0')
  if vs > 0 then redis.call('HINCRBY', KEYS[12], lp .. 'video_seconds', vs) end
  local su = tonumber(redis.call('HGET', res, 'su'))
  if su > 0 then redis.call('HINCRBY', KEYS[12], lp .. 'spend', su) end
  redis.call('EXPIRE', KEYS[12], ARGV[6])
end
redis.call('HSET', res, 'state', ARGV[2], 'settled_ms', ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
return 1
