-- After a 429: no slot of this (destination, credential) before now + retry_after.
--
-- KEYS[1]  "{ns}:pace:{destination}:{credential}": the theoretical arrival time (TAT), in µs
-- ARGV[1]  now in µs since the epoch, or "" to use Redis' own clock
-- ARGV[2]  retry_after in µs
-- ARGV[3]  burst tolerance tau in µs
--
-- The earliest send time is TAT - tau, so TAT becomes at least now + retry_after + tau: the first
-- request after the pause goes at once and the next ones are spaced T apart again (no burst). A
-- TAT already further out is kept. Returns the new TAT in µs.
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local target = now + tonumber(ARGV[2]) + tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < target then
  tat = target
end
redis.call('SET', KEYS[1], string.format('%.0f', tat),
  'PX', string.format('%.0f', math.ceil((tat - now) / 1000) + 1000))
return tat
