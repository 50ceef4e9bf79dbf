-- KEYS: limits, rate log, video-seconds day bucket, video-seconds month bucket, and for a call
--       made with a gateway API key, that key's rate log
-- ARGV: now_ms, default rpm, default day, default month, unique member, window_ms, count (0|1),
--       and with the key's rate log, the key's rpm (-1 unlimited)
-- -> the reply of rate_decide (prelude): one string, so the client parses one line
--!prelude
local _, reply = rate_decide(KEYS[2], KEYS[3], KEYS[4], KEYS[5], tonumber(ARGV[1]),
                             tonumber(ARGV[6]), ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[7],
                             tonumber(ARGV[8] or '-1'))
return reply
