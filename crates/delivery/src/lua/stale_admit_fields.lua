-- Admit or refuse each field of one update of one destination record by its event's occurred_at,
-- atomically: the field-level twin of stale_admit.lua.
--
-- KEYS[1]  "{ns}:stale:{destination}:{record_key}", a hash: "f:<field>" -> occurred_at (ms) of
--          the newest event that wrote the field
-- ARGV[1]  the event's occurred_at in milliseconds since the epoch
-- ARGV[2]  TTL of the record in milliseconds
-- ARGV[3]  the event id (kept as "event" for whoever debugs a skipped field)
-- ARGV[4…] the fields the update would write
--
-- Returns {applied fields, stale fields, newest occurred_at seen among the stale ones (or 0)}. A
-- field applies when no newer event wrote it (an equal occurred_at applies, so a redelivery is
-- never its own "stale"); an applied field takes the event's occurred_at as its mark.
local incoming = tonumber(ARGV[1])
local applied, stale = {}, {}
local newest = 0
for i = 4, #ARGV do
  local field = ARGV[i]
  local stored = tonumber(redis.call('HGET', KEYS[1], 'f:' .. field))
  if stored and stored > incoming then
    stale[#stale + 1] = field
    if stored > newest then
      newest = stored
    end
  else
    applied[#applied + 1] = field
    redis.call('HSET', KEYS[1], 'f:' .. field, ARGV[1])
  end
end
if #applied > 0 then
  redis.call('HSET', KEYS[1], 'event', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return {applied, stale, newest}
