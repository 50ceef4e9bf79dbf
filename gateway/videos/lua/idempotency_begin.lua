-- KEYS: idempotency key, its in-flight mark. ARGV: fingerprint, pending ttl ms, owner token.
-- -> {} when this call claimed it (as the owner), else {state, fp, video_id, in flight 0|1}
local cur = redis.call('HMGET', KEYS[1], 'state', 'fp', 'video_id')
if not cur[1] then
  redis.call('HSET', KEYS[1], 'state', 'pending', 'fp', ARGV[1], 'owner', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {}
end
return {cur[1], cur[2] or '', cur[3] or '', redis.call('EXISTS', KEYS[2])}
