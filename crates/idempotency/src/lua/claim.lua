-- Claim an idempotency key: the first caller writes a short-lived "started" record, everyone else
-- gets the record that is there. One script, so "is it there?" and "write it" are one atomic step
-- and one round trip.
--
-- KEYS[1]  the idempotency key
-- ARGV[1]  our record: "started:<fingerprint>:<token>"
-- ARGV[2]  lease in milliseconds (PX rather than EX: sub-second leases in tests and fine tuning)
--
-- Returns nil when we acquired the key, else the existing record.
local current = redis.call('GET', KEYS[1])
if current then
  return current
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
