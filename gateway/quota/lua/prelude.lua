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
-- The per-request rate decision: a sliding log of the team's requests (and of the gateway
-- key's, when the call came with one), counted in both or in neither. Shared by the rate
-- script and the metering reservation, which folds a metered call's rate check into its
-- one decision. Returns allowed (0|1) and the reply
-- "allowed,rpm,used,retry_ms,reset_ms,day_limit,day_used,month_limit,month_used" (video
-- seconds), with a key then ",key_refused,key_rpm,key_used,key_retry_ms,key_reset_ms".
local function rate_decide(team_log, vday, vmonth, key_log, now, window, d_rpm, d_day, d_month,
                           member, count, krpm)
  -- Entries that left the window are swept at most SWEEP per call: after a burst, a lone
  -- request would otherwise pay for removing the whole burst (measured: 1-2 ms of Redis per
  -- request for a second of 4,000 req/s). Each call adds at most one, so the rest still go,
  -- and the key expires a window after its last admitted request. The rest are skipped by rank.
  local SWEEP = 64
  local function check(log, rpm)  -- {used, retry_ms (0 fits, -1 never), reset_ms, stale}
    if rpm < 0 then return {0, 0, 0, 0} end
    local stale = redis.call('ZCOUNT', log, '-inf', now - window)
    if stale > 0 then
      local swept = math.min(stale, SWEEP)
      redis.call('ZREMRANGEBYRANK', log, 0, swept - 1)
      stale = stale - swept
    end
    local used, retry = redis.call('ZCARD', log) - stale, 0
    if used >= rpm then
      if rpm == 0 then
        retry = -1
      else
        -- The entry whose expiry brings the count below the limit.
        local at = stale + used - rpm
        local e = redis.call('ZRANGE', log, at, at, 'WITHSCORES')
        retry = tonumber(e[2]) + window - now
      end
    end
    return {used, retry, 0, stale}
  end
  local function add(log, rpm, c)
    if rpm >= 0 and count == '1' then
      redis.call('ZADD', log, now, member)
      redis.call('PEXPIRE', log, window)
      c[1] = c[1] + 1
    end
  end
  local function reset(log, rpm, c)
    if rpm < 0 then return end
    local first = redis.call('ZRANGE', log, c[4], c[4], 'WITHSCORES')
    if first[2] then c[3] = tonumber(first[2]) + window - now end
  end
  local rpm = limit('requests_per_minute', d_rpm)
  local team = check(team_log, rpm)
  local key = nil
  if key_log then
    if team[2] == 0 then key = check(key_log, krpm) else key = {0, 0, 0, 0} end
  end
  local key_refused = (key and key[2] ~= 0) and 1 or 0
  local allowed = (team[2] == 0 and key_refused == 0) and 1 or 0
  if allowed == 1 then
    add(team_log, rpm, team)
    if key then add(key_log, krpm, key) end
  end
  reset(team_log, rpm, team)
  local out = string.format('%d,%d,%d,%d,%d,%d,%d,%d,%d', allowed, rpm, team[1], team[2],
          team[3], limit('video_seconds_per_day', d_day), counter(vday),
          limit('video_seconds_per_month', d_month), counter(vmonth))
  if key then
    reset(key_log, krpm, key)
    out = out .. string.format(',%d,%d,%d,%d,%d', key_refused, krpm, key[1], key[2], key[3])
  end
  return allowed, out
end
