-- The pacing state of one (destination, credential): read, brought up to `now`, written back.
-- Prepended to pace_acquire.lua, pace_penalize.lua and pace_observe.lua (Lua has no imports in
-- Redis), so the three agree on the fields and on how the rate recovers.
--
-- KEYS[1]  "{ns}:pace:{destination}:{credential}", a hash (every number in µs since the epoch,
--          or in millionths of the configured limit for `rate`):
--            tat         the theoretical arrival time of GCRA: the next free slot
--            rate        the adapted rate (absent: 1000000, the configured limit)
--            since       when `rate` last changed; recovery counts whole periods from here
--            hold        until when a further 429 does not lower the rate again
--            slow        the spacing the vendor's rate-limit headers asked for (0: none)
--            slow_until  when `slow` stops applying
-- ARGV[1]  now in µs since the epoch, or "" to use Redis' own clock (one clock for all replicas)
-- ARGV[2]  the base emission interval T in µs (period / limit: the spacing at the full rate)
-- ARGV[3]  burst - 1 (the burst tolerance is that many intervals)
-- ARGV[4]  the period in µs (the limit's `per`: the recovery step is counted per period)
-- ARGV[5]  the recovery per period, in millionths of the limit (additive increase)
-- ARGV[6..] belong to the script this is prepended to.
--
-- The key lives as long as it says more than a missing key would: until its TAT is past, the rate
-- is back to full and any slowdown is over, plus 1 s. A missing key is an idle quota at full rate.

local FULL = 1000000

local function fmt(n)
  -- '%.0f' keeps every digit: a Lua number as a plain argument would be written as "%.14g".
  return string.format('%.0f', n)
end

local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local base = tonumber(ARGV[2])
local burst_extra = tonumber(ARGV[3])
local per = tonumber(ARGV[4])
local step = tonumber(ARGV[5])

local h = redis.call('HMGET', KEYS[1], 'tat', 'rate', 'since', 'hold', 'slow', 'slow_until')
local s = {
  tat = tonumber(h[1]) or now,
  rate = tonumber(h[2]) or FULL,
  since = tonumber(h[3]) or now,
  hold = tonumber(h[4]) or 0,
  slow = tonumber(h[5]) or 0,
  slow_until = tonumber(h[6]) or 0,
}
if s.tat < now then
  s.tat = now
end
-- A rate outside (0, full] was not written by these scripts: start over at the full rate.
if s.rate <= 0 or s.rate > FULL then
  s.rate = FULL
end
-- Additive increase: `step` for every whole period since the last change, never above the full
-- rate. Counted lazily here rather than by a timer, so an idle quota recovers too.
if s.rate < FULL and step > 0 and now > s.since then
  local periods = math.floor((now - s.since) / per)
  if periods > 0 then
    s.rate = math.min(FULL, s.rate + periods * step)
    s.since = s.since + periods * per
  end
end
if s.slow_until <= now then
  s.slow = 0
  s.slow_until = 0
end

-- The spacing at the adapted rate and the burst tolerance that goes with it. While the vendor's
-- headers ask for a wider spacing, that spacing applies and bursts do not: the few requests left
-- must not go at once.
local function spacing()
  local interval = math.floor(base * FULL / s.rate)
  if s.slow > interval then
    return s.slow, 0
  end
  return interval, interval * burst_extra
end

local function save()
  local keep = s.tat - now
  if s.rate < FULL and step > 0 then
    local full_at = s.since + math.ceil((FULL - s.rate) / step) * per
    keep = math.max(keep, full_at - now)
  end
  if s.slow > 0 then
    keep = math.max(keep, s.slow_until - now)
  end
  redis.call('HSET', KEYS[1], 'tat', fmt(s.tat), 'rate', fmt(s.rate), 'since', fmt(s.since),
    'hold', fmt(s.hold), 'slow', fmt(s.slow), 'slow_until', fmt(s.slow_until))
  redis.call('PEXPIRE', KEYS[1], fmt(math.ceil(keep / 1000) + 1000))
end

