-- KEYS: the team's cooling claim
-- ARGV: the upstream key id, the hold (ms)
-- -> the key id the team holds the claim for
-- Take the claim for this key unless the team holds it for another; held for this key, it
-- lasts at least the hold. One step: two replicas never both take a claim that expired
-- between one's reads.
local held = redis.call('GET', KEYS[1])
if not held then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
if held == ARGV[1] and redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return held
