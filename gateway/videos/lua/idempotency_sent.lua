-- KEYS: idempotency key, its in-flight mark.
-- ARGV: owner token, video id, window ttl ms, in-flight ttl ms.
-- -> 1 when the owner's pending claim is now sent (kept for the window, in flight for a
--    while by Redis's clock), 0 when the claim is no longer this owner's (it expired while
--    the request stalled, and another may hold the key now): the create must not leave.
local cur = redis.call('HMGET', KEYS[1], 'state', 'owner')
if cur[1] ~= 'pending' or cur[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'sent', 'video_id', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[4])
return 1
