//! Fault injection: what can go wrong with a SaaS API, switched on per run through `[faults]` in
//! the config or `/_sandbox/faults` at run time.
//!
//! Every vendor request asks [`Faults::decide`] first, in this order:
//! 1. **outage**: every request answers `status` (503) until the window ends;
//! 2. **storm**: the next `requests` requests, or every request for `for`, answer 429 with the
//!    vendor's rate-limit body and the given `Retry-After`;
//! 3. **timeout**: a matching request is held for `hold`, then the connection is dropped without an
//!    answer (`drop`), or the request is served late (`late`), or it is served and the answer is
//!    dropped after the hold (`apply_then_drop`: the write happened but the client never learns it);
//! 4. **latency**: a delay drawn from `fixed + uniform(0, jitter)` or from a percentile table;
//! 5. **errors**: with probability `rate`, a 5xx drawn from `statuses`, after the latency.
//!
//! Faulted answers come before authentication and the rate limiter, so they never use quota.
//! Draws come from one `StdRng` seeded with `seed` (or a random seed, reported by
//! `GET /_sandbox/faults` so a failing run can be repeated): the same sequence of requests gets the
//! same faults.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// The faults to inject. Each is optional; `None` means that fault is off.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Seed of the fault RNG, so a run is repeatable; random when absent.
    pub seed: Option<u64>,
    pub latency: Option<Latency>,
    pub errors: Option<ErrorRate>,
    pub storm: Option<Storm>,
    pub timeout: Option<Timeout>,
    pub outage: Option<Outage>,
}

/// Added delay on every request that is not answered by an outage or a storm.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Latency {
    /// Always added.
    #[serde(with = "humantime_serde")]
    pub fixed: Duration,
    /// Plus a uniform draw in `[0, jitter)`.
    #[serde(with = "humantime_serde")]
    pub jitter: Duration,
    /// Instead of fixed + jitter when non-empty: `(percentile, latency)` points, e.g. p50 = 20 ms,
    /// p99 = 400 ms, p100 = 2 s; draws interpolate linearly between neighbouring points.
    pub percentiles: Vec<LatencyPoint>,
}

/// One point of a latency distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyPoint {
    /// Percentile in `(0, 100]`.
    pub p: f64,
    #[serde(with = "humantime_serde")]
    pub latency: Duration,
}

/// Random server errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ErrorRate {
    /// Probability in `[0, 1]` that a request answers a 5xx.
    pub rate: f64,
    /// Which 5xx statuses, drawn uniformly.
    pub statuses: Vec<u16>,
}

impl Default for ErrorRate {
    fn default() -> Self {
        ErrorRate {
            rate: 0.0,
            statuses: vec![500, 502, 503],
        }
    }
}

/// A burst of 429s regardless of the real quota. With neither `requests` nor `for`, it lasts until
/// cleared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Storm {
    /// The next N requests answer 429.
    pub requests: Option<u64>,
    /// Every request answers 429 for this long (from when the fault was set).
    #[serde(rename = "for", with = "humantime_serde::option")]
    pub for_: Option<Duration>,
    /// The `Retry-After` sent (whole seconds, rounded up).
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
}

impl Default for Storm {
    fn default() -> Self {
        Storm {
            requests: None,
            for_: None,
            retry_after: Duration::from_secs(10),
        }
    }
}

/// Requests that hang. Scope as for [`Storm`]; `rate` picks among the requests in scope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeout {
    pub requests: Option<u64>,
    #[serde(rename = "for", with = "humantime_serde::option")]
    pub for_: Option<Duration>,
    /// Probability in `[0, 1]` that a request in scope hangs (1 by default).
    pub rate: f64,
    /// How long the request is held.
    #[serde(with = "humantime_serde")]
    pub hold: Duration,
    pub mode: TimeoutMode,
}

impl Default for Timeout {
    fn default() -> Self {
        Timeout {
            requests: None,
            for_: None,
            rate: 1.0,
            hold: Duration::from_secs(30),
            mode: TimeoutMode::Drop,
        }
    }
}

/// What happens after a timeout's hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutMode {
    /// Close the connection without an answer; nothing was done.
    #[default]
    Drop,
    /// Serve the request normally after the hold.
    Late,
    /// Serve the request (its writes happen), hold, then close without an answer: the case that
    /// makes blind retries create duplicates.
    ApplyThenDrop,
}

/// Every request answers `status` until the window ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Outage {
    #[serde(rename = "for", with = "humantime_serde")]
    pub for_: Duration,
    pub status: u16,
    /// Sent as `Retry-After` when set.
    #[serde(with = "humantime_serde::option")]
    pub retry_after: Option<Duration>,
}

impl Default for Outage {
    fn default() -> Self {
        Outage {
            for_: Duration::from_secs(60),
            status: 503,
            retry_after: None,
        }
    }
}

fn check_rate(name: &str, rate: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&rate) {
        Ok(())
    } else {
        Err(format!("{name}.rate must be between 0 and 1, not {rate}"))
    }
}

impl FaultConfig {
    /// Every request answered after `fixed` plus a uniform draw below `jitter`, and no other
    /// fault: what tests use to keep work in flight or to shuffle the order answers come back in.
    pub fn slow(fixed: Duration, jitter: Duration) -> FaultConfig {
        FaultConfig {
            latency: Some(Latency {
                fixed,
                jitter,
                ..Latency::default()
            }),
            ..FaultConfig::default()
        }
    }

    /// Checks ranges serde cannot: probabilities, statuses, percentile order.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(e) = &self.errors {
            check_rate("errors", e.rate)?;
            if e.statuses.is_empty() || e.statuses.iter().any(|s| !(500..=599).contains(s)) {
                return Err("errors.statuses must be a non-empty list of 5xx statuses".into());
            }
        }
        if let Some(t) = &self.timeout {
            check_rate("timeout", t.rate)?;
        }
        if let Some(o) = &self.outage
            && !(500..=599).contains(&o.status)
        {
            return Err("outage.status must be a 5xx status".into());
        }
        if let Some(l) = &self.latency {
            let mut last = 0.0;
            for point in &l.percentiles {
                if !(point.p > last && point.p <= 100.0) {
                    return Err(
                        "latency.percentiles must rise strictly, within (0, 100]".to_owned()
                    );
                }
                last = point.p;
            }
        }
        Ok(())
    }
}

/// What to do with one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Answer `status` at once (outage).
    Outage {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// Answer 429 at once (storm).
    Storm { retry_after: Duration },
    /// Go on, after `delay`; maybe hang, maybe answer a 5xx instead of serving.
    Proceed {
        delay: Duration,
        timeout: Option<(Duration, TimeoutMode)>,
        error: Option<u16>,
    },
}

/// A scope that runs out: after N requests, or at a time, or never.
#[derive(Debug, Clone, Copy)]
struct Scope {
    left: Option<u64>,
    until: Option<Instant>,
}

impl Scope {
    fn new(requests: Option<u64>, for_: Option<Duration>, now: Instant) -> Self {
        Scope {
            left: requests,
            until: for_.map(|d| now + d),
        }
    }

    fn active(&self, now: Instant) -> bool {
        self.left.is_none_or(|n| n > 0) && self.until.is_none_or(|t| now < t)
    }

    fn take(&mut self) {
        if let Some(n) = &mut self.left {
            *n = n.saturating_sub(1);
        }
    }

    fn remaining_for(&self, now: Instant) -> Option<Duration> {
        self.until.map(|t| t.saturating_duration_since(now))
    }
}

/// The live fault state: the configured faults with their scopes counting down, and the RNG.
#[derive(Debug)]
pub struct Faults {
    cfg: FaultConfig,
    seed: u64,
    rng: StdRng,
    storm: Option<Scope>,
    timeout: Option<Scope>,
    outage_until: Option<Instant>,
}

impl Faults {
    /// Faults as configured, with windows starting `now`.
    pub fn new(cfg: FaultConfig, now: Instant) -> Self {
        let seed = cfg.seed.unwrap_or_else(|| rand::rng().random());
        let mut faults = Faults {
            cfg: FaultConfig::default(),
            seed,
            rng: StdRng::seed_from_u64(seed),
            storm: None,
            timeout: None,
            outage_until: None,
        };
        faults.merge(cfg, now);
        faults
    }

    /// Replaces every fault set in `patch` (windows start `now`), keeps the others. A new seed
    /// reseeds the RNG.
    pub fn merge(&mut self, patch: FaultConfig, now: Instant) {
        if let Some(seed) = patch.seed {
            self.seed = seed;
            self.cfg.seed = Some(seed);
            self.rng = StdRng::seed_from_u64(seed);
        }
        if let Some(l) = patch.latency {
            self.cfg.latency = Some(l);
        }
        if let Some(e) = patch.errors {
            self.cfg.errors = Some(e);
        }
        if let Some(s) = patch.storm {
            self.storm = Some(Scope::new(s.requests, s.for_, now));
            self.cfg.storm = Some(s);
        }
        if let Some(t) = patch.timeout {
            self.timeout = Some(Scope::new(t.requests, t.for_, now));
            self.cfg.timeout = Some(t);
        }
        if let Some(o) = patch.outage {
            self.outage_until = Some(now + o.for_);
            self.cfg.outage = Some(o);
        }
    }

    /// Turns off the named fault (`latency`, `errors`, `storm`, `timeout`, `outage`); false if the
    /// name is not one of them.
    pub fn clear(&mut self, name: &str) -> bool {
        match name {
            "latency" => self.cfg.latency = None,
            "errors" => self.cfg.errors = None,
            "storm" => {
                self.cfg.storm = None;
                self.storm = None;
            }
            "timeout" => {
                self.cfg.timeout = None;
                self.timeout = None;
            }
            "outage" => {
                self.cfg.outage = None;
                self.outage_until = None;
            }
            "seed" => {}
            _ => return false,
        }
        true
    }

    /// The faults still in force, with scopes as they stand `now` (`requests` left, `for` left) and
    /// the seed in use.
    pub fn view(&mut self, now: Instant) -> FaultConfig {
        self.expire(now);
        let mut view = self.cfg.clone();
        view.seed = Some(self.seed);
        if let (Some(s), Some(scope)) = (&mut view.storm, &self.storm) {
            s.requests = scope.left;
            s.for_ = scope.remaining_for(now);
        }
        if let (Some(t), Some(scope)) = (&mut view.timeout, &self.timeout) {
            t.requests = scope.left;
            t.for_ = scope.remaining_for(now);
        }
        if let (Some(o), Some(until)) = (&mut view.outage, self.outage_until) {
            o.for_ = until.saturating_duration_since(now);
        }
        view
    }

    fn expire(&mut self, now: Instant) {
        if self.storm.is_some_and(|s| !s.active(now)) {
            self.storm = None;
            self.cfg.storm = None;
        }
        if self.timeout.is_some_and(|s| !s.active(now)) {
            self.timeout = None;
            self.cfg.timeout = None;
        }
        if self.outage_until.is_some_and(|t| now >= t) {
            self.outage_until = None;
            self.cfg.outage = None;
        }
    }

    /// Decides the fate of one request arriving `now`, consuming scopes and RNG draws.
    pub fn decide(&mut self, now: Instant) -> Decision {
        self.expire(now);
        if let Some(o) = &self.cfg.outage {
            return Decision::Outage {
                status: o.status,
                retry_after: o.retry_after,
            };
        }
        if let (Some(storm), Some(scope)) = (&self.cfg.storm, &mut self.storm) {
            scope.take();
            return Decision::Storm {
                retry_after: storm.retry_after,
            };
        }
        let mut timeout = None;
        if let (Some(t), Some(scope)) = (&self.cfg.timeout, &mut self.timeout) {
            let hit = t.rate >= 1.0 || self.rng.random::<f64>() < t.rate;
            if hit {
                scope.take();
                timeout = Some((t.hold, t.mode));
            }
        }
        let delay = match &self.cfg.latency {
            Some(l) => sample_latency(l, &mut self.rng),
            None => Duration::ZERO,
        };
        let error = match &self.cfg.errors {
            Some(e) if e.rate > 0.0 && self.rng.random::<f64>() < e.rate => {
                let i = self.rng.random_range(0..e.statuses.len().max(1));
                e.statuses.get(i).copied()
            }
            _ => None,
        };
        Decision::Proceed {
            delay,
            timeout,
            error,
        }
    }
}

fn sample_latency(l: &Latency, rng: &mut StdRng) -> Duration {
    if l.percentiles.is_empty() {
        let jitter = if l.jitter.is_zero() {
            Duration::ZERO
        } else {
            l.jitter.mul_f64(rng.random::<f64>())
        };
        return l.fixed + jitter;
    }
    let u = rng.random::<f64>() * 100.0;
    let mut prev = (0.0, l.percentiles[0].latency);
    for point in &l.percentiles {
        if u <= point.p {
            let span = point.p - prev.0;
            let frac = if span > 0.0 { (u - prev.0) / span } else { 1.0 };
            let (a, b) = (prev.1.as_secs_f64(), point.latency.as_secs_f64());
            return Duration::from_secs_f64((a + (b - a) * frac).max(0.0));
        }
        prev = (point.p, point.latency);
    }
    prev.1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded(cfg: FaultConfig) -> Faults {
        Faults::new(
            FaultConfig {
                seed: Some(42),
                ..cfg
            },
            Instant::now(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn same_seed_same_faults() {
        let cfg = FaultConfig {
            latency: Some(Latency {
                fixed: Duration::from_millis(10),
                jitter: Duration::from_millis(50),
                percentiles: vec![],
            }),
            errors: Some(ErrorRate {
                rate: 0.3,
                ..ErrorRate::default()
            }),
            ..FaultConfig::default()
        };
        let mut a = seeded(cfg.clone());
        let mut b = seeded(cfg);
        let now = Instant::now();
        let da: Vec<_> = (0..200).map(|_| a.decide(now)).collect();
        let db: Vec<_> = (0..200).map(|_| b.decide(now)).collect();
        assert_eq!(da, db);
        let errors = da
            .iter()
            .filter(|d| matches!(d, Decision::Proceed { error: Some(_), .. }))
            .count();
        assert!(
            (30..=90).contains(&errors),
            "about 30% of 200, got {errors}"
        );
        for d in &da {
            let Decision::Proceed { delay, .. } = d else {
                panic!("{d:?}")
            };
            assert!(*delay >= Duration::from_millis(10) && *delay < Duration::from_millis(60));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn storm_by_count_then_gone() {
        let mut f = seeded(FaultConfig {
            storm: Some(Storm {
                requests: Some(2),
                ..Storm::default()
            }),
            ..FaultConfig::default()
        });
        let now = Instant::now();
        assert!(matches!(f.decide(now), Decision::Storm { .. }));
        assert_eq!(f.view(now).storm.and_then(|s| s.requests), Some(1));
        assert!(matches!(f.decide(now), Decision::Storm { .. }));
        assert!(matches!(f.decide(now), Decision::Proceed { .. }));
        assert!(f.view(now).storm.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn outage_window_ends_on_time() {
        let mut f = seeded(FaultConfig {
            outage: Some(Outage {
                for_: Duration::from_secs(120),
                ..Outage::default()
            }),
            ..FaultConfig::default()
        });
        tokio::time::advance(Duration::from_secs(119)).await;
        assert!(matches!(
            f.decide(Instant::now()),
            Decision::Outage { status: 503, .. }
        ));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(f.decide(Instant::now()), Decision::Proceed { .. }));
    }

    #[test]
    fn percentile_table_is_interpolated_within_bounds() {
        let l = Latency {
            percentiles: vec![
                LatencyPoint {
                    p: 50.0,
                    latency: Duration::from_millis(20),
                },
                LatencyPoint {
                    p: 99.0,
                    latency: Duration::from_millis(400),
                },
                LatencyPoint {
                    p: 100.0,
                    latency: Duration::from_millis(2000),
                },
            ],
            ..Latency::default()
        };
        let mut rng = StdRng::seed_from_u64(1);
        let mut draws: Vec<Duration> = (0..10_000).map(|_| sample_latency(&l, &mut rng)).collect();
        draws.sort();
        assert_eq!(draws[0], Duration::from_millis(20));
        assert_eq!(draws[4_900], Duration::from_millis(20));
        assert!(draws[9_800] <= Duration::from_millis(400));
        assert!(draws[9_999] <= Duration::from_millis(2000));
        assert!(draws[9_999] > Duration::from_millis(400));
    }

    #[test]
    fn validation_names_the_fault() {
        let bad = FaultConfig {
            errors: Some(ErrorRate {
                rate: 0.1,
                statuses: vec![404],
            }),
            ..FaultConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("errors.statuses"));
    }
}
