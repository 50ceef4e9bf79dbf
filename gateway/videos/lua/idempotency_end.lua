-- KEYS: idempotency key, its in-flight mark.
-- ARGV: 'finish' | 'release' | 'forget', owner token ('finish', 'release') or video id
--       ('forget'), and for 'finish': state, video id, window ttl ms.
-- -> 1 if it changed the key, 0 if the key was not (or no longer) what the caller held.
-- finish: how the owner's create ended, for the rest of the window.
-- release: the owner's create certainly did nothing: the key is free again.
-- forget: a sent create of this video id was refunded (it certainly did nothing), and its
--         end was never recorded: the key is free again.
local op = ARGV[1]
local cur = redis.call('HMGET', KEYS[1], 'state', 'owner', 'video_id')
if op == 'forget' then
  if cur[1] ~= 'sent' or cur[3] ~= ARGV[2] then return 0 end
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
if cur[2] ~= ARGV[2] then return 0 end
if op == 'release' then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'video_id', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('DEL', KEYS[2])
return 1
