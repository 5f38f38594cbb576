-- One page of dead letters matching every filter, newest first, with the total.
--
-- KEYS[1] scratch key (deleted before returning), KEYS[2..] the filters' sorted sets
-- (one per filter; the all-index when there is none). Scores are dead-lettered-at ms,
-- equal in every index, so an intersection keeps them.
-- ARGV: min score, max score, offset, limit, prefix of record keys
-- Returns {total, {id, summary, state, status}, ...}
local src = KEYS[2]
if #KEYS > 2 then
  local filters = {}
  for i = 2, #KEYS do filters[#filters + 1] = KEYS[i] end
  redis.call('ZINTERSTORE', KEYS[1], #filters, unpack(filters))
  redis.call('PEXPIRE', KEYS[1], 60000)
  src = KEYS[1]
end
local total = redis.call('ZCOUNT', src, ARGV[1], ARGV[2])
local ids = redis.call('ZRANGE', src, ARGV[2], ARGV[1], 'BYSCORE', 'REV', 'LIMIT', ARGV[3], ARGV[4])
local out = {total}
for _, id in ipairs(ids) do
  local f = redis.call('HMGET', ARGV[5] .. id, 'summary', 'state', 'status')
  if f[1] then
    out[#out + 1] = {id, f[1], f[2] or '{}', f[3] or ''}
  end
end
if #KEYS > 2 then redis.call('DEL', KEYS[1]) end
return out
