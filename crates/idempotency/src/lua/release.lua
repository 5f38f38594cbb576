-- Delete our "started" record after a failed side effect, so a retry can claim at once instead of
-- waiting out the lease. Anything else (another worker's claim, a finished record) is left alone.
--
-- KEYS[1]  the idempotency key
-- ARGV[1]  ":<token>", the suffix that identifies our "started" record
--
-- Returns 1 when the record was ours and is gone, 0 otherwise.
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, 8) == 'started:'
    and string.sub(current, -string.len(ARGV[1])) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
