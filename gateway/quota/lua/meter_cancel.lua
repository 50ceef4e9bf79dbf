-- KEYS: a metered call's reservation
-- ARGV: the reservation's ttl s
-- -> 1 when the reservation is there (the call is then settled as usual), 0 when it is not:
--    then a mark takes its place, so that a reservation still on its way (written before
--    Redis froze, run after it thawed) finds it and reserves nothing
-- A reservation whose reply was lost may have run or may run yet: settle it, or forbid it.
if redis.call('HEXISTS', KEYS[1], 's') == 1 then return 1 end
redis.call('HSET', KEYS[1], 'x', '1')
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 0
