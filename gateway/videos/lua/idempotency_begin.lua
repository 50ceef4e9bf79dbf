-- KEYS: idempotency key. ARGV: fingerprint, pending ttl ms.
-- -> {} when this call claimed it, else {state, fp, video_id, sent_at ms ('' when not sent)}
local cur = redis.call('HMGET', KEYS[1], 'state', 'fp', 'video_id', 'sent_at')
if not cur[1] then
  redis.call('HSET', KEYS[1], 'state', 'pending', 'fp', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {}
end
return {cur[1], cur[2] or '', cur[3] or '', cur[4] or ''}
