-- The vendor's headers said few requests are left: space requests at least `slow` apart until
-- the vendor's interval has passed. Runs after pace_state.lua.
--
-- ARGV[6]  the spacing in µs (the vendor's interval / the requests it says are left)
-- ARGV[7]  the vendor's interval in µs: how long the spacing applies (by then its window has
--          rolled over, and the answers since will have said what is left)
--
-- The latest answer wins: a new observation replaces the previous slowdown. The next slot is at
-- least one spacing after now (the answer came back about when the last request went out).
-- Returns the TAT in µs.
s.slow = tonumber(ARGV[6])
s.slow_until = now + tonumber(ARGV[7])
local target = now + s.slow
if s.tat < target then
  s.tat = target
end
save()
return s.tat
