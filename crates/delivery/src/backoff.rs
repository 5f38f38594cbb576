//! [`RetryPolicy`]: when a transient failure is tried again, and when it is given up.
//!
//! Delays are AWS's "full jitter": attempt `n` waits a uniformly random time in
//! `[0, min(cap, base · 2^(n-1))]`. Spreading retries over the whole window (rather than around
//! the exponential value) is what keeps many workers that failed together from retrying together
//! and storming a destination that has just come back. A server's `Retry-After` is a floor for the
//! delay, never shortened by the jitter. The policy is pure: the caller passes the clock and the
//! random source, so tests are deterministic; the writers carry the attempt number and the
//! first-failure time in message headers, which makes the retry state survive restarts.

use std::fmt;
use std::time::{Duration, SystemTime};

use rand::Rng;
use serde::{Deserialize, Serialize};

/// How transient failures are retried (`[retry]` in a writer's TOML file). The defaults are the
/// issue's: base 1 s, cap 10 min, give up after 30 attempts or 24 h, whichever comes first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// The ceiling of the first retry's delay; each further attempt doubles it (humantime).
    /// One second lets a blip pass without making a real outage wait long for its first retry.
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    /// The largest ceiling any delay can have (humantime). Ten minutes keeps an outage's retries
    /// frequent enough to notice the recovery, and far apart enough not to add to the load.
    #[serde(with = "humantime_serde")]
    pub cap: Duration,
    /// Give up once this many attempts (the first delivery included) have failed.
    pub max_attempts: u32,
    /// Give up once this long has passed since the first failure (humantime). A day rides out a
    /// vendor's worst outage; anything older is better handled by a person from the dead letters.
    #[serde(with = "humantime_serde")]
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(10 * 60),
            max_attempts: 30,
            max_elapsed: Duration::from_secs(24 * 60 * 60),
        }
    }
}

/// What to do after a failed attempt, as decided by [`RetryPolicy::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again after this delay (jittered, and never shorter than the server's `Retry-After`).
    RetryAt(Duration),
    /// Stop retrying: the message goes to the dead letters with its attempt history.
    GiveUp {
        /// Which limit was reached, for the dead-letter record and the log.
        reason: GiveUpReason,
    },
}

/// Why [`RetryPolicy::decide`] gave up; `Display` is a short lower-case sentence for the
/// dead-letter record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUpReason {
    /// `max_attempts` attempts have failed.
    AttemptsExhausted {
        /// The number of the attempt that just failed.
        attempts: u32,
    },
    /// More than `max_elapsed` has passed since the first failure.
    DeadlineExceeded {
        /// Time since the first failure.
        elapsed: Duration,
    },
}

impl fmt::Display for GiveUpReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GiveUpReason::AttemptsExhausted { attempts } => {
                write!(f, "gave up after {attempts} attempts")
            }
            GiveUpReason::DeadlineExceeded { elapsed } => {
                write!(f, "gave up {}s after the first failure", elapsed.as_secs())
            }
        }
    }
}

impl RetryPolicy {
    /// Checks what serde cannot: `base` and `max_elapsed` are more than zero, `cap` is at least
    /// `base`, and at least one attempt is allowed. The message names the sub-key
    /// (`cap: ...`); a service prefixes it with its own key, e.g. `retry.cap: ...`.
    pub fn validate(&self) -> Result<(), String> {
        if self.base.is_zero() {
            return Err("base: must be more than zero".to_owned());
        }
        if self.cap < self.base {
            return Err(format!(
                "cap: must be at least base ({:?} < {:?})",
                self.cap, self.base
            ));
        }
        if self.max_attempts == 0 {
            return Err("max_attempts: must be at least 1".to_owned());
        }
        if self.max_elapsed.is_zero() {
            return Err("max_elapsed: must be more than zero".to_owned());
        }
        Ok(())
    }

    /// The upper end of attempt `attempt`'s delay window: `min(cap, base · 2^(attempt-1))`.
    /// Attempt numbers start at 1 (0 is read as 1); any attempt number is safe from overflow.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1);
        // 2^32 already exceeds any representable ratio between `cap` and a non-zero `base`
        // in nanoseconds (both fit in u128 nanos, below 2^94), so larger exponents saturate.
        let grown = 2u128
            .checked_pow(exponent)
            .and_then(|factor| self.base.as_nanos().checked_mul(factor));
        let nanos = match grown {
            Some(nanos) => nanos.min(self.cap.as_nanos()),
            None => self.cap.as_nanos(),
        };
        duration_from_nanos(nanos)
    }

    /// A full-jitter delay for attempt `attempt`: uniform in `[0, ceiling(attempt)]`.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt);
        let max = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=max))
    }

    /// Decides what follows the failure of attempt number `attempt` (1 for the first delivery),
    /// given when the first failure happened, the current time and the server's `Retry-After`.
    ///
    /// Gives up once `attempt` reaches `max_attempts` or `now - first_failed_at` reaches
    /// `max_elapsed`; otherwise retries after a full-jitter delay raised to `retry_after` when the
    /// server asked for more. A clock that went backwards counts as no time elapsed.
    pub fn decide(
        &self,
        attempt: u32,
        first_failed_at: SystemTime,
        now: SystemTime,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> RetryDecision {
        if attempt >= self.max_attempts {
            return RetryDecision::GiveUp {
                reason: GiveUpReason::AttemptsExhausted { attempts: attempt },
            };
        }
        let elapsed = now.duration_since(first_failed_at).unwrap_or_default();
        if elapsed >= self.max_elapsed {
            return RetryDecision::GiveUp {
                reason: GiveUpReason::DeadlineExceeded { elapsed },
            };
        }
        let jittered = self.delay(attempt, rng);
        RetryDecision::RetryAt(retry_after.map_or(jittered, |floor| jittered.max(floor)))
    }
}

/// `Duration` from u128 nanoseconds, saturating at `Duration::MAX`.
fn duration_from_nanos(nanos: u128) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let secs = u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX);
    // The remainder is below 10^9, so it fits in u32.
    let sub = u32::try_from(nanos % NANOS_PER_SEC).unwrap_or(0);
    Duration::new(secs, sub)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(0x5eed)
    }

    #[test]
    fn ceilings_double_from_base_up_to_cap() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.ceiling(0), Duration::from_secs(1));
        assert_eq!(policy.ceiling(1), Duration::from_secs(1));
        assert_eq!(policy.ceiling(2), Duration::from_secs(2));
        assert_eq!(policy.ceiling(5), Duration::from_secs(16));
        assert_eq!(policy.ceiling(10), Duration::from_secs(512));
        // 2^10 s = 1024 s is past the 600 s cap.
        assert_eq!(policy.ceiling(11), Duration::from_secs(600));
        assert_eq!(policy.ceiling(u32::MAX), Duration::from_secs(600));
    }

    #[test]
    fn delays_stay_within_bounds_for_every_attempt() {
        let policy = RetryPolicy::default();
        let mut rng = rng();
        for attempt in 0..=40 {
            let ceiling = policy.ceiling(attempt);
            assert!(ceiling <= policy.cap, "attempt {attempt}: {ceiling:?}");
            for _ in 0..200 {
                let delay = policy.delay(attempt, &mut rng);
                assert!(
                    delay <= ceiling,
                    "attempt {attempt}: {delay:?} > {ceiling:?}"
                );
            }
        }
    }

    #[test]
    fn huge_attempts_and_extreme_policies_do_not_overflow() {
        let mut rng = rng();
        let extreme = RetryPolicy {
            base: Duration::MAX,
            cap: Duration::MAX,
            ..RetryPolicy::default()
        };
        for attempt in [
            1,
            2,
            63,
            64,
            65,
            127,
            128,
            129,
            1_000,
            u32::MAX - 1,
            u32::MAX,
        ] {
            assert_eq!(extreme.ceiling(attempt), Duration::MAX, "attempt {attempt}");
            let _ = extreme.delay(attempt, &mut rng);
            let tiny = RetryPolicy {
                base: Duration::from_nanos(1),
                ..RetryPolicy::default()
            };
            assert!(tiny.delay(attempt, &mut rng) <= tiny.cap);
        }
    }

    #[test]
    fn jitter_is_uniform_over_the_whole_window() {
        let policy = RetryPolicy::default();
        let mut rng = rng();
        let attempt = 6; // ceiling 32 s
        let ceiling = policy.ceiling(attempt).as_secs_f64();
        let samples: Vec<f64> = (0..10_000)
            .map(|_| policy.delay(attempt, &mut rng).as_secs_f64())
            .collect();
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
        let max = samples.iter().copied().fold(0.0, f64::max);
        let half = ceiling / 2.0;
        assert!((mean - half).abs() <= 0.05 * half, "mean {mean} vs {half}");
        assert!(min <= 0.01 * ceiling, "min {min}");
        assert!(max >= 0.99 * ceiling && max <= ceiling, "max {max}");
        // Each tenth of the window gets about a tenth of the samples (1000 ± 15%).
        let mut deciles = [0u32; 10];
        for sample in &samples {
            let bucket = ((sample / ceiling) * 10.0) as usize;
            deciles[bucket.min(9)] += 1;
        }
        for (i, count) in deciles.iter().enumerate() {
            assert!((850..=1150).contains(count), "decile {i}: {count}");
        }
    }

    #[test]
    fn same_seed_same_delays() {
        let policy = RetryPolicy::default();
        let a: Vec<_> = (1..20).map(|n| policy.delay(n, &mut rng())).collect();
        let b: Vec<_> = (1..20).map(|n| policy.delay(n, &mut rng())).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn retry_after_is_a_floor() {
        let policy = RetryPolicy::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut rng = rng();
        for _ in 0..100 {
            // Attempt 1's window is [0, 1 s]: a 30 s Retry-After always wins.
            let decision = policy.decide(1, t0, t0, Some(Duration::from_secs(30)), &mut rng);
            assert_eq!(decision, RetryDecision::RetryAt(Duration::from_secs(30)));
            // A Retry-After below the window never shortens the jittered delay.
            let floor = Duration::from_millis(1);
            match policy.decide(12, t0, t0, Some(floor), &mut rng) {
                RetryDecision::RetryAt(delay) => assert!(delay >= floor && delay <= policy.cap),
                other => panic!("{other:?}"),
            }
        }
        // A Retry-After above the cap is still honoured: the server knows best.
        let long = Duration::from_secs(3600);
        assert_eq!(
            policy.decide(3, t0, t0, Some(long), &mut rng),
            RetryDecision::RetryAt(long)
        );
    }

    #[test]
    fn gives_up_after_max_attempts_or_max_elapsed() {
        let policy = RetryPolicy::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut rng = rng();
        assert!(matches!(
            policy.decide(29, t0, t0, None, &mut rng),
            RetryDecision::RetryAt(_)
        ));
        assert_eq!(
            policy.decide(30, t0, t0, None, &mut rng),
            RetryDecision::GiveUp {
                reason: GiveUpReason::AttemptsExhausted { attempts: 30 }
            }
        );
        let almost = t0 + Duration::from_secs(24 * 3600 - 1);
        assert!(matches!(
            policy.decide(2, t0, almost, None, &mut rng),
            RetryDecision::RetryAt(_)
        ));
        let day = t0 + Duration::from_secs(24 * 3600);
        let decision = policy.decide(2, t0, day, None, &mut rng);
        assert_eq!(
            decision,
            RetryDecision::GiveUp {
                reason: GiveUpReason::DeadlineExceeded {
                    elapsed: Duration::from_secs(24 * 3600)
                }
            }
        );
        if let RetryDecision::GiveUp { reason } = decision {
            assert_eq!(reason.to_string(), "gave up 86400s after the first failure");
        }
        // A clock that went backwards is no elapsed time, not a give-up.
        let before = t0 - Duration::from_secs(60);
        assert!(matches!(
            policy.decide(2, t0, before, None, &mut rng),
            RetryDecision::RetryAt(_)
        ));
    }

    #[test]
    fn config_defaults_humantime_and_validation() {
        assert_eq!(RetryPolicy::default().validate(), Ok(()));
        let parsed: RetryPolicy =
            serde_json::from_str(r#"{"base":"250ms","cap":"5m","max_elapsed":"2h"}"#)
                .expect("valid policy");
        assert_eq!(parsed.base, Duration::from_millis(250));
        assert_eq!(parsed.cap, Duration::from_secs(300));
        assert_eq!(parsed.max_attempts, 30);
        assert_eq!(parsed.max_elapsed, Duration::from_secs(7200));
        assert!(serde_json::from_str::<RetryPolicy>(r#"{"jitter":"none"}"#).is_err());
        let json = serde_json::to_string(&RetryPolicy::default()).expect("serializes");
        assert!(json.contains("\"10m\""), "{json}");

        let bad = |policy: RetryPolicy| policy.validate().expect_err("invalid");
        let zero_base = RetryPolicy {
            base: Duration::ZERO,
            ..RetryPolicy::default()
        };
        assert!(bad(zero_base).starts_with("base:"));
        let small_cap = RetryPolicy {
            cap: Duration::from_millis(10),
            ..RetryPolicy::default()
        };
        assert!(bad(small_cap).starts_with("cap:"));
        let no_attempts = RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::default()
        };
        assert!(bad(no_attempts).starts_with("max_attempts:"));
        let no_time = RetryPolicy {
            max_elapsed: Duration::ZERO,
            ..RetryPolicy::default()
        };
        assert!(bad(no_time).starts_with("max_elapsed:"));
    }
}
