-- Counts of the dead letters matching every filter: per fingerprint (count, first and
-- last seen), per stage and error class among the parked (count, oldest), per status.
--
-- KEYS[1] scratch key, KEYS[2] facet hash, KEYS[3..] the filters' sorted sets.
-- ARGV: min score, max score
-- Returns JSON: {groups = {fp = {n, first, last, parked}}, parked = {"stage|class" = {n, oldest}},
--                status = {status = n}, total = n}
local src = KEYS[3]
if #KEYS > 3 then
  local filters = {}
  for i = 3, #KEYS do filters[#filters + 1] = KEYS[i] end
  redis.call('ZINTERSTORE', KEYS[1], #filters, unpack(filters))
  redis.call('PEXPIRE', KEYS[1], 60000)
  src = KEYS[1]
end
local groups, parked, status = {}, {}, {}
local total = 0
local offset, chunk = 0, 5000
while true do
  local page = redis.call('ZRANGE', src, ARGV[1], ARGV[2], 'BYSCORE', 'LIMIT', offset, chunk, 'WITHSCORES')
  if #page == 0 then break end
  local ids = {}
  for i = 1, #page, 2 do ids[#ids + 1] = page[i] end
  local facets = redis.call('HMGET', KEYS[2], unpack(ids))
  for i, line in ipairs(facets) do
    if line then
      local score = tonumber(page[2 * i])
      local fp, stage, class, st = string.match(line, '^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)$')
      if fp then
        total = total + 1
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
  offset = offset + chunk
end
if #KEYS > 3 then redis.call('DEL', KEYS[1]) end
return cjson.encode({groups = groups, parked = parked, status = status, total = total})
