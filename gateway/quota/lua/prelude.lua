-- Helpers every quota script starts with (prepended by gateway.store.lua).
-- One script per decision, so a decision is atomic on one Redis (or one Cluster slot). Every
-- key a script touches carries the team's hash tag and is passed in KEYS. Limits are read
-- inside the script (an admin override in the team's limits hash, else the default passed in
-- ARGV), so a decision never races a limit change. Amounts are integers; -1 means unlimited.
local function limit(field, default)
  local v = redis.call('HGET', KEYS[1], field)
  if v then return tonumber(v) end
  return tonumber(default)
end
local function counter(key)
  return tonumber(redis.call('GET', key) or '0')
end
