-- KEYS: tokens per second (hash), tokens day, spend day, spend month, the ledger of the
--       reservation's day, and the reset generations of tokens day, spend day, spend month
--       and the tokens hash; for a call made with a gateway API key, also that key's tokens
--       per second (hash), spend day and spend month; last, the call's reservation
-- ARGV: tokens used, spend units charged, day id, month id, ledger ttl s, day ttl s,
--       month ttl s, then ledger field / amount pairs
-- -> 1 when this call settled it, 0 when it was settled before (or expired)
-- Settle one metered call to what it really consumed, exactly once, and write the ledger.
local call = KEYS[#KEYS]
local r = redis.call('HMGET', call, 's', 't', 'c', 'd', 'm', 'g1', 'g2', 'g3', 'g4', 'k')
if not r[1] then return 0 end
if r[4] ~= ARGV[3] or r[5] ~= ARGV[4] then
  return redis.error_reply('reservation buckets do not match')
end
redis.call('DEL', call)
local dt = tonumber(ARGV[1]) - tonumber(r[2])
local ds = tonumber(ARGV[2]) - tonumber(r[3])
local function second(hash)
  if redis.call('HEXISTS', hash, r[1]) == 1 then
    if redis.call('HINCRBY', hash, r[1], dt) <= 0 then redis.call('HDEL', hash, r[1]) end
  end
end
local function bucket(key, delta, ttl)
  if redis.call('EXISTS', key) == 1 then
    if redis.call('INCRBY', key, delta) < 0 then redis.call('SET', key, 0, 'KEEPTTL') end
  elseif delta > 0 then
    -- A charge above an estimate of nothing (a route added in config whose answer reports
    -- tokens): the bucket the reservation never touched starts here.
    redis.call('SET', key, delta, 'EX', ttl)
  end
end
-- The difference goes back to the buckets the estimate was charged to, unless one expired
-- or an admin reset it since (then the charge it would correct is already gone).
local function same(gen_key, then_gen) return (redis.call('GET', gen_key) or '0') == then_gen end
if dt ~= 0 and tonumber(r[2]) > 0 and same(KEYS[9], r[9]) then second(KEYS[1]) end
local fixes = {{KEYS[2], dt, KEYS[6], r[6], r[2], ARGV[6]},
               {KEYS[3], ds, KEYS[7], r[7], r[3], ARGV[6]},
               {KEYS[4], ds, KEYS[8], r[8], r[3], ARGV[7]}}
for _, f in ipairs(fixes) do
  if f[2] ~= 0 and (tonumber(f[5]) > 0 or f[2] > 0) and same(f[3], f[4]) then
    bucket(f[1], f[2], f[6])
  end
end
-- A key's counters have no admin reset: only expiry can have taken what they held.
if r[10] == '1' and #KEYS == 13 then
  if dt ~= 0 and tonumber(r[2]) > 0 then second(KEYS[10]) end
  if ds ~= 0 and (tonumber(r[3]) > 0 or ds > 0) then
    bucket(KEYS[11], ds, ARGV[6])
    bucket(KEYS[12], ds, ARGV[7])
  end
end
for i = 8, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[5], ARGV[i], ARGV[i + 1])
end
if #ARGV >= 8 then redis.call('EXPIRE', KEYS[5], ARGV[5]) end
return 1
