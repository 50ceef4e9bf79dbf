-- KEYS: the API key's record (hash)
-- ARGV: when it was last used (epoch s)
-- Note the use on a record that still exists: a key forgotten while a replica still had it
-- cached must not come back as a hash holding nothing but its last use.
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'last_used', ARGV[1])
end
return 1
