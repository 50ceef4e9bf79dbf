-- KEYS: reservation. ARGV: field, value. Sets a field of a reservation that exists.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
