-- Mark idempotency keys finished and, optionally per item, apply a ledger update in the same
-- call. One call answers a whole batch of concurrent completions (the store coalesces them; see
-- batch.rs); items are handled in order, each exactly as a lone completion would be.
--
-- Per item, in order, KEYS holds:
--   the idempotency key
--   the ledger hash                                (only when the item has a ledger update)
--   the email index (sorted set)                   (only when the ledger update carries an email)
-- and ARGV holds:
--   "0" without a ledger update, "1" with one, "2" with one that carries an email
--   ":<token>", the suffix that identifies our "started" record
--   the finished record: "finished:<fingerprint>"
--   retention in milliseconds
--   ledger TTL in milliseconds                     (only with a ledger update)
--   ledger first_seen_at                           (only with a ledger update)
--   n, the number of ledger fields                 (only with a ledger update)
--   n field, value pairs to HSET                   (only with a ledger update)
--   the event id, the index member                 (only with an email)
--   its score: the update's time in unix ms        (only with an email)
--   how many members the index keeps               (only with an email)
--
-- The email index gets the event id with ZADD NX (an event keeps the score it was first indexed
-- with), is trimmed to its newest members, and gets the ledger's TTL, as `Store::ledger_record`
-- does in its MULTI.
--
-- Returns one reply per item, in order, saying what was found:
--   "completed"         our started record, replaced by finished
--   "lease_expired"     nothing (our lease ran out); finished written anyway, because the side
--                       effect did happen and a redelivery must not repeat it
--   "already_finished"  someone finished it already; left untouched
--   "claimed_by_other"  another worker holds a started record (it claimed after our lease ran
--                       out); left untouched, that worker owns the key now and will finish it
-- or an error reply when a command failed for that item; that item stops at the failed command
-- (as a lone script call would), the other items are still handled.
local function failed(reply)
  return type(reply) == 'table' and reply.err ~= nil
end

local function complete(key, suffix, finished, retention, ledger)
  local current = redis.pcall('GET', key)
  if failed(current) then
    return current
  end
  local outcome
  if current and string.sub(current, 1, 8) == 'started:'
      and string.sub(current, -string.len(suffix)) == suffix then
    outcome = 'completed'
  elseif not current then
    outcome = 'lease_expired'
  elseif string.sub(current, 1, 9) == 'finished:' then
    outcome = 'already_finished'
  else
    outcome = 'claimed_by_other'
  end
  if outcome == 'completed' or outcome == 'lease_expired' then
    local set = redis.pcall('SET', key, finished, 'PX', retention)
    if failed(set) then
      return set
    end
  end

  if ledger then
    local reply = redis.pcall('HSETNX', ledger.key, 'first_seen_at', ledger.first_seen_at)
    if failed(reply) then
      return reply
    end
    reply = redis.pcall('HSET', ledger.key, unpack(ledger.fields))
    if failed(reply) then
      return reply
    end
    reply = redis.pcall('PEXPIRE', ledger.key, ledger.ttl)
    if failed(reply) then
      return reply
    end
    local index = ledger.index
    if index then
      reply = redis.pcall('ZADD', index.key, 'NX', index.score, index.member)
      if failed(reply) then
        return reply
      end
      reply = redis.pcall('ZREMRANGEBYRANK', index.key, 0, -(tonumber(index.max) + 1))
      if failed(reply) then
        return reply
      end
      reply = redis.pcall('PEXPIRE', index.key, ledger.ttl)
      if failed(reply) then
        return reply
      end
    end
  end
  return outcome
end

local results = {}
local k, a = 1, 1
while k <= #KEYS do
  local key = KEYS[k]
  local has_ledger = ARGV[a] == '1' or ARGV[a] == '2'
  local has_index = ARGV[a] == '2'
  local suffix, finished, retention = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  k, a = k + 1, a + 4
  local ledger = nil
  if has_ledger then
    ledger = { key = KEYS[k], ttl = ARGV[a], first_seen_at = ARGV[a + 1], fields = {} }
    local n = tonumber(ARGV[a + 2])
    a = a + 3
    for j = 1, 2 * n do
      ledger.fields[j] = ARGV[a + j - 1]
    end
    k, a = k + 1, a + 2 * n
    if has_index then
      ledger.index = { key = KEYS[k], member = ARGV[a], score = ARGV[a + 1], max = ARGV[a + 2] }
      k, a = k + 1, a + 3
    end
  end
  results[#results + 1] = complete(key, suffix, finished, retention, ledger)
end
return results
