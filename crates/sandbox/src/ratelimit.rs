//! A rolling-window rate limiter per credential, the way HubSpot enforces its
//! `TEN_SECONDLY_ROLLING` policy: at most `requests` in any window of length `per`, where the
//! window ends at the request being judged (not fixed buckets that reset on the second).
//!
//! Rejected requests count too by default (`count_rejected = true`): the brief's vendor note says
//! HubSpot counts the requests it answers with 429, so a client that keeps hammering stays locked
//! out, and `Retry-After` is when enough entries have left the window for a slot to free. Set it to
//! `false` to count only admitted requests. Either way [`Limiter::max_admitted`] counts admitted
//! requests only: that is the number the quota tests compare with the quota.
//!
//! Time is `tokio::time::Instant`, so the unit tests below run with paused time.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// `[hubspot.rate_limit]`: the quota each credential gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests allowed in any rolling window; HubSpot's default for private apps is 100.
    pub requests: u32,
    /// Length of the rolling window; HubSpot's is 10 s.
    #[serde(with = "humantime_serde")]
    pub per: Duration,
    /// Whether requests answered 429 take a place in the window (HubSpot's behaviour, default).
    pub count_rejected: bool,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            requests: 100,
            per: Duration::from_secs(10),
            count_rejected: true,
        }
    }
}

/// What the limiter decided about one request, with what the `X-HubSpot-RateLimit-*` headers say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// False: answer 429.
    pub allowed: bool,
    /// `X-HubSpot-RateLimit-Max`.
    pub max: u32,
    /// `X-HubSpot-RateLimit-Remaining`: places left in the window after this request.
    pub remaining: u32,
    /// `X-HubSpot-RateLimit-Interval-Milliseconds`.
    pub interval: Duration,
    /// For a rejection: how long until a place frees (what `Retry-After` is rounded up from).
    pub retry_after: Option<Duration>,
}

impl Verdict {
    /// `Retry-After` in whole seconds, rounded up and at least 1, as HTTP requires.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after.map(ceil_secs)
    }
}

/// Whole seconds, rounded up, at least 1: a client that waits this long finds a free slot.
pub fn ceil_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

#[derive(Debug, Default)]
struct Window {
    /// Requests that occupy a place (admitted ones, plus rejected ones when they count).
    counted: VecDeque<Instant>,
    /// Admitted requests only, for the "never more than the quota" statistic.
    admitted: VecDeque<Instant>,
    max_admitted: usize,
}

fn prune(q: &mut VecDeque<Instant>, now: Instant, per: Duration) {
    while q.front().is_some_and(|t| now.duration_since(*t) >= per) {
        q.pop_front();
    }
}

/// Rolling windows per credential key. Not synchronised: the sandbox keeps it behind its lock.
#[derive(Debug)]
pub struct Limiter {
    cfg: RateLimitConfig,
    windows: HashMap<String, Window>,
}

impl Limiter {
    /// An empty limiter with the quota `cfg`.
    pub fn new(cfg: RateLimitConfig) -> Self {
        Limiter {
            cfg,
            windows: HashMap::new(),
        }
    }

    /// Judges one request by `key` arriving at `now`, and records it.
    pub fn check(&mut self, key: &str, now: Instant) -> Verdict {
        let per = self.cfg.per;
        let max = self.cfg.requests;
        let count_rejected = self.cfg.count_rejected;
        let w = self.windows.entry(key.to_owned()).or_default();
        prune(&mut w.counted, now, per);
        prune(&mut w.admitted, now, per);
        let limit = max as usize;
        if w.counted.len() < limit {
            w.counted.push_back(now);
            w.admitted.push_back(now);
            w.max_admitted = w.max_admitted.max(w.admitted.len());
            return Verdict {
                allowed: true,
                max,
                remaining: remaining(limit, w.counted.len()),
                interval: per,
                retry_after: None,
            };
        }
        // `counted.len() - limit` entries must leave before there is room for one more; the entry at
        // that index leaves last among them.
        let retry_after = w
            .counted
            .get(w.counted.len() - limit)
            .map(|t| (*t + per).saturating_duration_since(now))
            .unwrap_or(per);
        if count_rejected {
            w.counted.push_back(now);
        }
        Verdict {
            allowed: false,
            max,
            remaining: 0,
            interval: per,
            retry_after: Some(retry_after),
        }
    }

    /// The headers' view for `key` without counting a request (for answers the sandbox's faults
    /// produced before the limiter ran).
    pub fn peek(&mut self, key: &str, now: Instant) -> Verdict {
        let per = self.cfg.per;
        let w = self.windows.entry(key.to_owned()).or_default();
        prune(&mut w.counted, now, per);
        Verdict {
            allowed: true,
            max: self.cfg.requests,
            remaining: remaining(self.cfg.requests as usize, w.counted.len()),
            interval: per,
            retry_after: None,
        }
    }

    /// The most admitted requests seen in any rolling window, per key.
    pub fn max_admitted(&self) -> BTreeMap<String, u64> {
        self.windows
            .iter()
            .filter(|(_, w)| w.max_admitted > 0)
            .map(|(k, w)| (k.clone(), w.max_admitted as u64))
            .collect()
    }

    /// Forgets every window, as at start-up.
    pub fn reset(&mut self) {
        self.windows.clear();
    }
}

fn remaining(limit: usize, used: usize) -> u32 {
    u32::try_from(limit.saturating_sub(used)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(requests: u32, per_ms: u64, count_rejected: bool) -> Limiter {
        Limiter::new(RateLimitConfig {
            requests,
            per: Duration::from_millis(per_ms),
            count_rejected,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn allows_the_quota_then_rejects_with_time_until_a_slot_frees() {
        let mut l = limiter(3, 1000, false);
        let start = Instant::now();
        for i in 0..3 {
            let v = l.check("t", Instant::now());
            assert!(v.allowed);
            assert_eq!(v.remaining, 2 - i);
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        // At t=300ms the first request (t=0) leaves the window at t=1000ms.
        let v = l.check("t", Instant::now());
        assert!(!v.allowed);
        assert_eq!(v.retry_after, Some(Duration::from_millis(700)));
        assert_eq!(v.retry_after_secs(), Some(1));
        tokio::time::advance(Duration::from_millis(700)).await;
        assert!(l.check("t", Instant::now()).allowed, "the window rolled");
        assert!(!l.check("t", Instant::now()).allowed, "only one slot freed");
        assert_eq!(start.elapsed(), Duration::from_millis(1000));
        assert_eq!(l.max_admitted().get("t"), Some(&3));
    }

    #[tokio::test(start_paused = true)]
    async fn keys_have_separate_windows() {
        let mut l = limiter(1, 1000, true);
        assert!(l.check("a", Instant::now()).allowed);
        assert!(l.check("b", Instant::now()).allowed);
        assert!(!l.check("a", Instant::now()).allowed);
    }

    #[tokio::test(start_paused = true)]
    async fn counted_rejections_keep_a_hammering_client_out() {
        let mut l = limiter(2, 1000, true);
        assert!(l.check("t", Instant::now()).allowed);
        assert!(l.check("t", Instant::now()).allowed);
        tokio::time::advance(Duration::from_millis(900)).await;
        let v = l.check("t", Instant::now());
        assert!(!v.allowed);
        assert_eq!(v.retry_after, Some(Duration::from_millis(100)));
        tokio::time::advance(Duration::from_millis(100)).await;
        // The two admitted requests left, but the rejected one at 900ms still counts: one slot.
        assert!(l.check("t", Instant::now()).allowed);
        let v = l.check("t", Instant::now());
        assert!(!v.allowed);
        assert_eq!(v.retry_after, Some(Duration::from_millis(900)));
        assert_eq!(l.max_admitted().get("t"), Some(&2));
    }

    #[tokio::test(start_paused = true)]
    async fn uncounted_rejections_leave_the_window_alone() {
        let mut l = limiter(1, 1000, false);
        assert!(l.check("t", Instant::now()).allowed);
        for _ in 0..5 {
            assert!(!l.check("t", Instant::now()).allowed);
        }
        tokio::time::advance(Duration::from_millis(1000)).await;
        let v = l.check("t", Instant::now());
        assert!(v.allowed);
        assert_eq!(v.remaining, 0);
        assert_eq!(l.peek("t", Instant::now()).remaining, 0);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1000)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1001)), 2);
        assert_eq!(ceil_secs(Duration::ZERO), 1);
    }
}
