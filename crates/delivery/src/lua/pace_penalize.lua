-- After a 429: no slot of this (destination, credential) before now + retry_after, and the rate
-- drops (multiplicative decrease). Runs after pace_state.lua.
--
-- ARGV[6]  retry_after in µs
-- ARGV[7]  the decrease: the new rate in millionths of the old one (1000000: no decrease)
-- ARGV[8]  the floor of the rate, in millionths of the limit
-- ARGV[9]  the decrease window in µs: 429s within max(window, retry_after) of the last decrease
--          answer requests sent before it, so they do not lower the rate again
--
-- The earliest send time is TAT - tau, so TAT becomes at least now + retry_after + tau: the first
-- request after the pause goes at once and the next ones are spaced at the new rate (no burst). A
-- TAT already further out is kept. Returns the rate in millionths of the limit.
local retry_after = tonumber(ARGV[6])
local decrease = tonumber(ARGV[7])
local floor = tonumber(ARGV[8])
local window = tonumber(ARGV[9])
if decrease < FULL and now >= s.hold then
  s.rate = math.max(floor, math.floor(s.rate * decrease / FULL))
  s.since = now
  s.hold = now + math.max(window, retry_after)
end
local _, tau = spacing()
local target = now + retry_after + tau
if s.tat < target then
  s.tat = target
end
save()
return s.rate
