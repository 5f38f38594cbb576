-- GCRA: reserve the next send slot of one (destination, credential) and say how long to wait.
-- Runs after pace_state.lua, which defines `now`, the state `s`, `spacing()` and `save()`.
--
-- No arguments of its own.
--
-- The slot is reserved whatever the wait: the caller sleeps `wait` and then sends. The TAT moves
-- on by the adapted interval per reservation, so reservations from every replica are spaced that
-- far apart, with at most `burst` of them at once after an idle spell. Returns the wait in µs
-- (0: send now).
local interval, tau = spacing()
local wait = s.tat - tau - now
if wait < 0 then
  wait = 0
end
s.tat = s.tat + interval
save()
return wait
