-- Mark an idempotency key finished and, optionally, apply a ledger update in the same round trip.
--
-- KEYS[1]  the idempotency key
-- KEYS[2]  the ledger hash (only present when a ledger update rides along)
-- ARGV[1]  ":<token>", the suffix that identifies our "started" record
-- ARGV[2]  the finished record: "finished:<fingerprint>"
-- ARGV[3]  retention in milliseconds
-- ARGV[4]  ledger TTL in milliseconds            (only with KEYS[2])
-- ARGV[5]  ledger first_seen_at                   (only with KEYS[2])
-- ARGV[6..] ledger field, value pairs to HSET     (only with KEYS[2])
--
-- Returns what was found:
--   "completed"         our started record, replaced by finished
--   "lease_expired"     nothing (our lease ran out); finished written anyway, because the side
--                       effect did happen and a redelivery must not repeat it
--   "already_finished"  someone finished it already; left untouched
--   "claimed_by_other"  another worker holds a started record (it claimed after our lease ran
--                       out); left untouched, that worker owns the key now and will finish it
local current = redis.call('GET', KEYS[1])
local outcome
if current and string.sub(current, 1, 8) == 'started:'
    and string.sub(current, -string.len(ARGV[1])) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  outcome = 'completed'
elseif not current then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  outcome = 'lease_expired'
elseif string.sub(current, 1, 9) == 'finished:' then
  outcome = 'already_finished'
else
  outcome = 'claimed_by_other'
end

if KEYS[2] then
  redis.call('HSETNX', KEYS[2], 'first_seen_at', ARGV[5])
  redis.call('HSET', KEYS[2], unpack(ARGV, 6))
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
return outcome
