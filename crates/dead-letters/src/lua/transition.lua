-- Moves dead letters from one status to another, all or nothing per dead letter:
-- the status field, the state (with `patch` merged in at the top level), the status
-- indexes and the facet line. Dead letters not in one of the `from` statuses are left
-- alone (a second replay of the same dead letters finds them taken).
--
-- KEYS[1] facet hash, KEYS[2] the all-index
-- ARGV[1] prefix of record keys, ARGV[2] prefix of status indexes, ARGV[3] comma-separated
-- from statuses, ARGV[4] to status, ARGV[5] patch json, ARGV[6] 1 to drop the stored
-- message (purge), ARGV[7] required value of state.replay.job ('' for any), ARGV[8..] ids
-- Returns the ids moved.
local allowed = {}
for s in string.gmatch(ARGV[3], '[^,]+') do allowed[s] = true end
local to, patch = ARGV[4], cjson.decode(ARGV[5])
local moved = {}
for i = 8, #ARGV do
  local id = ARGV[i]
  local key = ARGV[1] .. id
  local f = redis.call('HMGET', key, 'status', 'state')
  if f[1] and allowed[f[1]] then
    local state = cjson.decode(f[2] or '{}')
    local ok = true
    if ARGV[7] ~= '' then
      ok = state.replay ~= nil and state.replay.job == ARGV[7]
    end
    if ok then
      for k, v in pairs(patch) do
        if v == cjson.null then state[k] = nil else state[k] = v end
      end
      state.status = to
      local history = state.history or {}
      history[#history + 1] = {status = to, at = patch.changed_at}
      state.history = history
      state.changed_at = nil
      redis.call('HSET', key, 'status', to, 'state', cjson.encode(state))
      if ARGV[6] == '1' then redis.call('HDEL', key, 'record') end
      local score = redis.call('ZSCORE', KEYS[2], id)
      redis.call('ZREM', ARGV[2] .. f[1], id)
      if score then redis.call('ZADD', ARGV[2] .. to, score, id) end
      local line = redis.call('HGET', KEYS[1], id)
      if line then
        local updated = string.gsub(line, '[^\t]*$', to, 1)
        redis.call('HSET', KEYS[1], id, updated)
      end
      moved[#moved + 1] = id
    end
  end
end
return moved
