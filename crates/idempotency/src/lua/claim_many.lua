-- Claim idempotency keys, one item per key: the first caller writes a short-lived "started"
-- record, everyone else gets the record that is there. One script, so "is it there?" and "write
-- it" are one atomic step, and one call answers a whole batch of concurrent claims (the store
-- coalesces them; see batch.rs). Items are handled in order, so a key claimed twice in one batch
-- is acquired by the first item and reported in flight to the second, as with separate calls.
--
-- KEYS[i]       item i's idempotency key
-- ARGV[2i-1]    item i's record: "started:<fingerprint>:<token>"
-- ARGV[2i]      item i's lease in milliseconds (PX rather than EX: sub-second leases in tests and
--               fine tuning)
--
-- Returns one reply per item, in order: nil when the item acquired its key, else the existing
-- record, or an error reply when a command failed for that item (e.g. WRONGTYPE). Commands run
-- through pcall so one item's error stays that item's: the other items are still handled and
-- their replies are still returned, rather than the whole batch failing after some items took
-- effect.
local function failed(reply)
  return type(reply) == 'table' and reply.err ~= nil
end

local results = {}
for i = 1, #KEYS do
  local current = redis.pcall('GET', KEYS[i])
  if failed(current) or current then
    results[i] = current
  else
    local set = redis.pcall('SET', KEYS[i], ARGV[2 * i - 1], 'PX', ARGV[2 * i])
    if failed(set) then
      results[i] = set
    else
      results[i] = false
    end
  end
end
return results
