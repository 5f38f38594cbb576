-- Counts over one chunk of the dead letters in a set (a filter's index, or the
-- intersection of several, made by the caller): per fingerprint (count, first and last
-- seen, of which parked), per stage and error class among the parked (count, oldest),
-- per status. The caller walks the set chunk by chunk and adds them up, so Redis serves
-- others in between rather than being held by one scan of everything.
--
-- KEYS[1] the set, KEYS[2] the facet hash
-- ARGV: first and last rank of the chunk (by rank, not score: no skipping to an offset)
-- Returns JSON: {groups = {fp = {n, first, last, parked}}, parked = {"stage|class" = {n, oldest}},
--                status = {status = n}, total = n scanned}
local groups, parked, status = {}, {}, {}
local total = 0
local page = redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2], 'WITHSCORES')
if #page > 0 then
  local ids = {}
  for i = 1, #page, 2 do ids[#ids + 1] = page[i] end
  local facets = redis.call('HMGET', KEYS[2], unpack(ids))
  for i = 1, #ids do
    total = total + 1
    local line = facets[i]
    if line then
      local score = tonumber(page[2 * i])
      local fp, stage, class, st = string.match(line, '^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)$')
      if fp then
        local g = groups[fp]
        if not g then
          g = {n = 0, first = score, last = score, parked = 0}
          groups[fp] = g
        end
        g.n = g.n + 1
        if score < g.first then g.first = score end
        if score > g.last then g.last = score end
        status[st] = (status[st] or 0) + 1
        if st == 'parked' then
          g.parked = g.parked + 1
          local k = stage .. '|' .. class
          local p = parked[k]
          if not p then
            p = {n = 0, oldest = score}
            parked[k] = p
          end
          p.n = p.n + 1
          if score < p.oldest then p.oldest = score end
        end
      end
    end
  end
end
return cjson.encode({groups = groups, parked = parked, status = status, total = total})
