-- Admit or refuse one update of one destination record by its event's occurred_at, atomically.
--
-- KEYS[1]  "{ns}:stale:{destination}:{record_key}", a hash: at (occurred_at, ms), event (its id)
-- ARGV[1]  the event's occurred_at in milliseconds since the epoch
-- ARGV[2]  TTL of the record in milliseconds
-- ARGV[3]  the event id (kept for whoever debugs a skipped update)
--
-- Returns {1, at} when the update applies (nothing newer was seen; an equal occurred_at applies,
-- so a redelivered event is never its own "stale"), and {0, newer} when a newer update was
-- already admitted. An applied update stores its occurred_at and refreshes the TTL.
local incoming = tonumber(ARGV[1])
local stored = tonumber(redis.call('HGET', KEYS[1], 'at'))
if stored and stored > incoming then
  return {0, stored}
end
redis.call('HSET', KEYS[1], 'at', ARGV[1], 'event', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, incoming}
