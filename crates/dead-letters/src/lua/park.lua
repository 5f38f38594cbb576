-- Parks one dead letter, once: the record hash, every index entry, the facet line the
-- group and stats scans read, and the group's description (first seen wins).
-- A dead letter already parked (a redelivery after a crash) changes nothing.
-- An earlier dead letter of the same event and stage that was replayed learns that
-- its replay failed again.
--
-- KEYS[1] record hash, KEYS[2] facet hash, KEYS[3] groups hash,
-- KEYS[4] the event's index (may be a placeholder), KEYS[5..] index sorted sets
-- ARGV: id, score, summary json, record bytes, state json, facet line, fingerprint,
--       group json, stage, prefix of record keys, now (rfc3339), origin routing key
-- ("the same event and stage" also means the same message kind: a write-back's report
-- failing is not the event's own replay failing again).
-- Returns 1 if parked now, 0 if it was already there.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local id, score = ARGV[1], ARGV[2]
redis.call('HSET', KEYS[1], 'summary', ARGV[3], 'record', ARGV[4], 'state', ARGV[5], 'status', 'parked')
for i = 5, #KEYS do
  redis.call('ZADD', KEYS[i], score, id)
end
redis.call('HSET', KEYS[2], id, ARGV[6])
redis.call('HSETNX', KEYS[3], ARGV[7], ARGV[8])
if ARGV[9] ~= '' then
  local earlier = redis.call('ZRANGE', KEYS[4], 0, -1)
  for _, other in ipairs(earlier) do
    if other ~= id then
      local key = ARGV[10] .. other
      local fields = redis.call('HMGET', key, 'status', 'state', 'summary')
      if fields[1] == 'replayed' and fields[3] then
        local summary = cjson.decode(fields[3])
        if summary.stage == ARGV[9] and (summary.origin_routing_key or '') == ARGV[12] then
          local state = cjson.decode(fields[2])
          if state.replay and (state.replay.outcome == 'sent' or state.replay.outcome == nil) then
            state.replay.outcome = 'failed_again'
            state.replay.failed_again_as = id
            state.replay.failed_again_at = ARGV[11]
            redis.call('HSET', key, 'state', cjson.encode(state))
          end
        end
      end
    end
  end
end
return 1
