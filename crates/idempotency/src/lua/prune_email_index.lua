-- Remove event ids from an email index when their ledger hash is gone (expired), as a reader
-- found it. The reader's look and this removal are separate round trips, so each ledger is
-- checked again here: one written meanwhile (a late stage reporting on the event) keeps its entry.
--
-- KEYS[1]       the email index (sorted set of event ids)
-- KEYS[i + 1]   the ledger hash of ARGV[i]
-- ARGV[i]       an event id the reader found without a ledger
--
-- Returns how many ids were removed.
local removed = 0
for i = 1, #ARGV do
  if redis.call('EXISTS', KEYS[i + 1]) == 0 then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed
