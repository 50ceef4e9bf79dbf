-- KEYS: the leader key. ARGV: this replica's token, lease ms.
-- Take or keep the lead: only the holder's own token extends it. -> 1 led, 0 not
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
