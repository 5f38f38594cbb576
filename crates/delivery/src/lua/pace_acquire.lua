-- GCRA: reserve the next send slot of one (destination, credential) and say how long to wait.
--
-- KEYS[1]  "{ns}:pace:{destination}:{credential}": the theoretical arrival time (TAT), in µs
-- ARGV[1]  now in µs since the epoch, or "" to use Redis' own clock (one clock for all replicas)
-- ARGV[2]  emission interval T in µs (the per-request spacing: period / limit)
-- ARGV[3]  burst tolerance tau in µs ((burst - 1) * T)
--
-- The slot is reserved whatever the wait: the caller sleeps `wait` and then sends. The TAT moves
-- on by T per reservation, so reservations from every replica are spaced T apart, with at most
-- `burst` of them at once after an idle spell. Returns the wait in µs (0: send now).
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local interval = tonumber(ARGV[2])
local tau = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then
  tat = now
end
local wait = tat - tau - now
if wait < 0 then
  wait = 0
end
local new_tat = tat + interval
-- '%.0f' keeps every digit: a Lua number as a plain argument would be written as "%.14g".
-- The key lives until its TAT is in the past (then it says no more than a missing key) plus 1 s.
redis.call('SET', KEYS[1], string.format('%.0f', new_tat),
  'PX', string.format('%.0f', math.ceil((new_tat - now) / 1000) + 1000))
return wait
