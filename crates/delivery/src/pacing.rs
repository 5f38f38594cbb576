//! [`Pacer`]: a destination's quota, shared by every replica through Redis (GCRA), adapting its
//! rate to what the destination says.
//!
//! The generic cell rate algorithm keeps one number per (destination, credential), the
//! theoretical arrival time (TAT), in the hash at `"{ns}:pace:{destination}:{credential}"`. Each
//! [`Pacer::acquire`] reserves the next slot in one Lua script (`lua/pace_acquire.lua`) and returns
//! how long the caller must wait before sending; slots are spaced `per / limit` apart across all
//! replicas, with at most `burst` at once after an idle spell. Because the slot is reserved rather
//! than polled for, no replica starves and Redis sees one call per request.
//!
//! The rate adapts, and the adapted rate lives in the same hash so every replica paces at it:
//!
//! - **429** ([`Pacer::penalize`]): no slot starts before the server's `Retry-After`, and the rate
//!   drops to `backoff_percent` of what it was (multiplicative decrease), never below
//!   `floor_percent` of `limit`. 429s within `backoff_window` (or the `Retry-After`, if longer) of
//!   the last decrease answer requests that were already on their way, so they do not lower it
//!   again.
//! - **Clean periods**: for every whole `per` since the last decrease the rate rises by
//!   `recover_percent` of `limit` (additive increase), never above `limit`. The increase is
//!   counted lazily from the time of the last change, so it needs no timer, and an idle quota
//!   recovers as well as a busy one. AIMD is the rule TCP uses for the same problem: it finds the
//!   rate the destination will bear (shared quotas, a vendor's lower limit than configured) and
//!   backs off fast but probes back slowly.
//! - **Few requests left** ([`Pacer::observe`]): HubSpot says on every answer how many requests
//!   are left in its interval. When fewer than `slow_below_percent` of its maximum are left, the
//!   pacer spreads them over a whole interval (spacing `interval / remaining`; with none left, one
//!   request per interval), because when the vendor's window frees up is not known. The slowdown
//!   lasts one interval and the latest such answer replaces it; answers with enough left cost no
//!   Redis call and leave it to run out. It does not change the adapted rate: it is the vendor's
//!   number for now, not something learned.
//!
//! Time comes from Redis' own clock (`TIME` inside the script) unless the caller passes one
//! ([`Pacer::acquire_at`], for tests): replicas' clocks may disagree by more than the spacing of a
//! fast quota, Redis' clock is the same for all of them.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use handoff_idempotency::StoreError;
use redis::Script;
use serde::{Deserialize, Serialize};

use crate::{RateInfo, RedisHandle};

/// The state handling every pacing script starts with (see the file for the hash's fields).
const PACE_STATE: &str = include_str!("lua/pace_state.lua");

static PACE_ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(&[PACE_STATE, include_str!("lua/pace_acquire.lua")].concat()));
static PACE_PENALIZE: LazyLock<Script> =
    LazyLock::new(|| Script::new(&[PACE_STATE, include_str!("lua/pace_penalize.lua")].concat()));
static PACE_OBSERVE: LazyLock<Script> =
    LazyLock::new(|| Script::new(&[PACE_STATE, include_str!("lua/pace_observe.lua")].concat()));

/// The full rate in the scripts' unit, millionths of the configured limit.
const FULL_RATE: u64 = 1_000_000;

/// A destination's send rate (`[pacing]` in a writer's TOML file): at most `limit` requests per
/// `per`, shared by every replica and every task using the same credential, slowed down when the
/// destination pushes back.
///
/// ```toml
/// [pacing]
/// limit = 97                # requests per `per`, a little below the vendor's number
/// per = "10s"
/// burst = 1
/// backoff_percent = 70      # after a 429 the rate becomes 70 % of what it was (100: fixed rate)
/// floor_percent = 10        # and never less than 10 % of `limit`
/// recover_percent = 5       # + 5 % of `limit` per `per` without a 429, up to `limit`
/// backoff_window = "1s"     # 429s this soon after a decrease do not decrease it again
/// slow_below_percent = 0    # on (e.g. 10): spread the vendor's last 10 % over its interval
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PacingConfig {
    /// Requests allowed per `per`. The default, 97 per 10 s, is HubSpot's private-app quota (100)
    /// less 3 %: slots are spaced exactly, but requests reach the vendor a few milliseconds early
    /// or late, and at exactly the vendor's number the first one that is late meets a 429 (under
    /// `make bench`, 9.999 s after the first request), which a quota that counts rejected
    /// requests then turns into a lockout. The adapted rate never goes above it.
    pub limit: u32,
    /// The period `limit` is counted over (humantime); also the period of the recovery step.
    #[serde(with = "humantime_serde")]
    pub per: Duration,
    /// Requests that may go at once after an idle spell. 1 (the default) spaces every request
    /// evenly, which never exceeds a rolling-window quota; more gives lower latency to the first
    /// requests after a pause, at the price of up to `burst - 1` extra requests in one window.
    pub burst: u32,
    /// After a 429 the rate becomes this percent of what it was (multiplicative decrease). 70
    /// halves the rate in two 429s, fast enough to stop a storm and mild enough that one 429 from
    /// a neighbour on a shared quota costs little. 100 turns adaptation off: a 429 then only
    /// pauses until its `Retry-After`.
    pub backoff_percent: u32,
    /// The rate never drops below this percent of `limit`, so a destination that answers 429 for
    /// a while (a storm, a misconfigured quota) is still probed and the backlog still drains.
    pub floor_percent: u32,
    /// For every `per` without a 429 the rate rises by this percent of `limit` (additive
    /// increase) until it is back at `limit`. 5 brings the floor back to the full rate in 18
    /// periods (three minutes with HubSpot's 10 s), slow enough not to run straight into the
    /// next 429.
    pub recover_percent: u32,
    /// 429s within this long of the last decrease (or within its `Retry-After`, if that is
    /// longer) answer requests that were on their way before it, so they pause but do not lower
    /// the rate again (humantime). A second is about the slowest answer a healthy API gives.
    #[serde(with = "humantime_serde")]
    pub backoff_window: Duration,
    /// [`Pacer::observe`] slows down when the vendor says fewer than this percent of its maximum
    /// are left in its interval, spreading what is left over a whole interval; 0 (the default)
    /// turns it off. It is for a quota shared with other clients. Alone on a quota, paced just
    /// under the vendor's number, a rolling window always reads nearly empty (1–2 left of 100),
    /// and spreading those over a whole interval starved the writer under `make bench`.
    pub slow_below_percent: u32,
}

impl Default for PacingConfig {
    fn default() -> Self {
        PacingConfig {
            limit: 97,
            per: Duration::from_secs(10),
            burst: 1,
            backoff_percent: 70,
            floor_percent: 10,
            recover_percent: 5,
            backoff_window: Duration::from_secs(1),
            slow_below_percent: 0,
        }
    }
}

impl PacingConfig {
    /// Checks what serde cannot: a positive rate whose spacing is at least a microsecond, a burst
    /// of at least one, and percentages in range.
    pub fn validate(&self) -> Result<(), String> {
        if self.limit == 0 {
            return Err("limit: must be at least 1".to_owned());
        }
        if self.per.is_zero() {
            return Err("per: must be more than zero".to_owned());
        }
        if self.per > MAX_SPAN {
            return Err("per: must be at most a day".to_owned());
        }
        if self.interval_micros() < 1 {
            return Err("limit: more than one request per microsecond".to_owned());
        }
        if self.burst == 0 {
            return Err("burst: must be at least 1".to_owned());
        }
        let percent = |key: &str, value: u32, min: u32| {
            if (min..=100).contains(&value) {
                Ok(())
            } else {
                Err(format!("{key}: must be between {min} and 100"))
            }
        };
        percent("backoff_percent", self.backoff_percent, 1)?;
        percent("floor_percent", self.floor_percent, 1)?;
        percent("recover_percent", self.recover_percent, 1)?;
        percent("slow_below_percent", self.slow_below_percent, 0)?;
        if self.backoff_window > MAX_SPAN {
            return Err("backoff_window: must be at most a day".to_owned());
        }
        Ok(())
    }

    /// The spacing of requests at the full rate, `per / limit`, in microseconds.
    fn interval_micros(&self) -> i64 {
        let per = i64::try_from(self.per.as_micros()).unwrap_or(i64::MAX);
        per / i64::from(self.limit.max(1))
    }
}

/// The longest span the scripts take (a period, a pause, a window): past a day the numbers are
/// nonsense, and µs must stay well below 2^53 in Lua.
const MAX_SPAN: Duration = Duration::from_secs(86_400);

/// Which quota a request draws on: one destination used with one credential. `credential` names
/// the credential (a config key, an app id, a hash); it is part of a Redis key, so it must never be
/// the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PaceKey {
    /// The destination, e.g. `hubspot`; no `:` in it.
    pub destination: String,
    /// The credential's name or id, never the secret.
    pub credential: String,
}

impl PaceKey {
    /// Builds a key from its two parts.
    pub fn new(destination: impl Into<String>, credential: impl Into<String>) -> Self {
        PaceKey {
            destination: destination.into(),
            credential: credential.into(),
        }
    }
}

/// Why the pacer could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PacingError {
    /// Redis could not be reached or answered with an error; see [`StoreError::is_transient`].
    #[error(transparent)]
    Redis(#[from] StoreError),
    /// A key that would make an ambiguous Redis key: a bug in the caller, never worth retrying.
    #[error("invalid pacing key: {0}")]
    InvalidKey(String),
}

impl PacingError {
    /// True when trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            PacingError::Redis(err) => err.is_transient(),
            PacingError::InvalidKey(_) => false,
        }
    }
}

/// The shared, adaptive rate limiter of one namespace at one configured rate. Cheap to clone;
/// clones share the [`RedisHandle`]. Every replica must use the same [`PacingConfig`] for a key:
/// the adapted rate in Redis is a share of each replica's own `limit`.
#[derive(Debug, Clone)]
pub struct Pacer {
    redis: RedisHandle,
    namespace: String,
    /// The spacing at the full rate, µs.
    interval_us: i64,
    /// `burst - 1`: the burst tolerance is that many (adapted) intervals.
    burst_extra: i64,
    /// The period, µs.
    per_us: i64,
    /// The recovery per period, in millionths of the limit.
    recover_ppm: u64,
    /// The new rate after a 429, in millionths of the old one.
    backoff_ppm: u64,
    /// The lowest rate, in millionths of the limit.
    floor_ppm: u64,
    /// The decrease window, µs.
    backoff_window_us: i64,
    /// [`PacingConfig::slow_below_percent`].
    slow_below_percent: u32,
    /// [`PacingConfig::limit`], the vendor's maximum when its headers do not say.
    limit: u32,
}

impl Pacer {
    /// A pacer at `cfg`'s rate whose keys start with `"{namespace}:pace:"`. Does no I/O; `cfg` is
    /// expected to have passed [`PacingConfig::validate`] (out-of-range numbers are clamped).
    pub fn new(redis: RedisHandle, namespace: &str, cfg: &PacingConfig) -> Pacer {
        let ppm = |percent: u32| u64::from(percent.clamp(1, 100)) * (FULL_RATE / 100);
        Pacer {
            redis,
            namespace: namespace.to_owned(),
            interval_us: cfg.interval_micros().max(1),
            burst_extra: i64::from(cfg.burst.max(1)) - 1,
            per_us: micros(cfg.per.min(MAX_SPAN)).max(1),
            recover_ppm: ppm(cfg.recover_percent),
            backoff_ppm: ppm(cfg.backoff_percent),
            floor_ppm: ppm(cfg.floor_percent),
            backoff_window_us: micros(cfg.backoff_window.min(MAX_SPAN)),
            slow_below_percent: cfg.slow_below_percent.min(100),
            limit: cfg.limit.max(1),
        }
    }

    /// The Redis key of a quota: `"{namespace}:pace:{destination}:{credential}"`, a hash with the
    /// schedule and the adapted rate (fields in `lua/pace_state.lua`).
    pub fn key(&self, key: &PaceKey) -> String {
        format!(
            "{}:pace:{}:{}",
            self.namespace, key.destination, key.credential
        )
    }

    /// Reserves the next send slot of `key` on Redis' clock, at the adapted rate, and returns how
    /// long to wait before sending (zero: send now). The slot is taken even if the caller then
    /// gives up on it.
    pub async fn acquire(&self, key: &PaceKey) -> Result<Duration, PacingError> {
        self.acquire_with(key, None).await
    }

    /// [`Pacer::acquire`] at the caller's `now` instead of Redis' clock (tests, simulations).
    pub async fn acquire_at(
        &self,
        key: &PaceKey,
        now: SystemTime,
    ) -> Result<Duration, PacingError> {
        self.acquire_with(key, Some(now)).await
    }

    /// After a 429: no slot of `key` starts before `retry_after` from now (Redis' clock); the
    /// requests after it are spaced at the lowered rate (see the module doc). A later reservation
    /// already made is kept.
    pub async fn penalize(&self, key: &PaceKey, retry_after: Duration) -> Result<(), PacingError> {
        self.penalize_with(key, retry_after, None).await
    }

    /// [`Pacer::penalize`] at the caller's `now` instead of Redis' clock.
    pub async fn penalize_at(
        &self,
        key: &PaceKey,
        retry_after: Duration,
        now: SystemTime,
    ) -> Result<(), PacingError> {
        self.penalize_with(key, retry_after, Some(now)).await
    }

    /// Feeds the rate-limit headers of an answer (any status) to the pacer: when they say fewer
    /// than `slow_below_percent` of the vendor's maximum are left, requests of `key` are spread
    /// over the vendor's interval for one interval (see the module doc). Answers that leave
    /// enough, or do not carry `remaining` and `interval`, cost nothing.
    pub async fn observe(&self, key: &PaceKey, info: &RateInfo) -> Result<(), PacingError> {
        self.observe_with(key, info, None).await
    }

    /// [`Pacer::observe`] at the caller's `now` instead of Redis' clock.
    pub async fn observe_at(
        &self,
        key: &PaceKey,
        info: &RateInfo,
        now: SystemTime,
    ) -> Result<(), PacingError> {
        self.observe_with(key, info, Some(now)).await
    }

    /// The spacing an answer's headers ask for, if they say few requests are left:
    /// `interval / remaining`, or the whole interval when none are left.
    fn slow_spacing(&self, info: &RateInfo) -> Option<Duration> {
        let (remaining, interval) = (info.remaining?, info.interval?);
        if self.slow_below_percent == 0 || interval.is_zero() {
            return None;
        }
        if remaining == 0 {
            return Some(interval);
        }
        let max = info.max.filter(|&m| m > 0).unwrap_or(self.limit);
        let few = u64::from(remaining) * 100 < u64::from(max) * u64::from(self.slow_below_percent);
        few.then(|| interval / remaining)
    }

    async fn acquire_with(
        &self,
        key: &PaceKey,
        now: Option<SystemTime>,
    ) -> Result<Duration, PacingError> {
        let redis_key = self.checked_key(key)?;
        let mut invocation = PACE_ACQUIRE.key(&redis_key);
        self.state_args(&mut invocation, now);
        let wait_us: i64 = self
            .redis
            .run(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await?;
        Ok(Duration::from_micros(u64::try_from(wait_us).unwrap_or(0)))
    }

    async fn penalize_with(
        &self,
        key: &PaceKey,
        retry_after: Duration,
        now: Option<SystemTime>,
    ) -> Result<(), PacingError> {
        let redis_key = self.checked_key(key)?;
        let mut invocation = PACE_PENALIZE.key(&redis_key);
        self.state_args(&mut invocation, now);
        invocation
            .arg(micros(retry_after.min(MAX_SPAN)))
            .arg(self.backoff_ppm)
            .arg(self.floor_ppm)
            .arg(self.backoff_window_us);
        let _rate: i64 = self
            .redis
            .run(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await?;
        Ok(())
    }

    async fn observe_with(
        &self,
        key: &PaceKey,
        info: &RateInfo,
        now: Option<SystemTime>,
    ) -> Result<(), PacingError> {
        let redis_key = self.checked_key(key)?;
        let Some(spacing) = self.slow_spacing(info) else {
            return Ok(());
        };
        let interval = info.interval.unwrap_or_default().min(MAX_SPAN);
        let mut invocation = PACE_OBSERVE.key(&redis_key);
        self.state_args(&mut invocation, now);
        invocation
            .arg(micros(spacing.min(MAX_SPAN)).max(1))
            .arg(micros(interval));
        let _tat: i64 = self
            .redis
            .run(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await?;
        Ok(())
    }

    /// `ARGV[1..=5]` of every pacing script (`lua/pace_state.lua`).
    fn state_args(&self, invocation: &mut redis::ScriptInvocation<'_>, now: Option<SystemTime>) {
        invocation
            .arg(now.map(micros_since_epoch).unwrap_or_default())
            .arg(self.interval_us)
            .arg(self.burst_extra)
            .arg(self.per_us)
            .arg(self.recover_ppm);
    }

    fn checked_key(&self, key: &PaceKey) -> Result<String, PacingError> {
        if key.destination.is_empty() || key.destination.contains(':') {
            return Err(PacingError::InvalidKey(format!(
                "destination {:?} must be non-empty and free of ':'",
                key.destination
            )));
        }
        if key.credential.is_empty() {
            return Err(PacingError::InvalidKey("empty credential name".to_owned()));
        }
        Ok(self.key(key))
    }
}

/// `d` in whole microseconds (saturating).
fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// `now` as decimal microseconds since the epoch, the script's `now` argument ("" = Redis' clock
/// is what `None` becomes); a time before the epoch is read as the epoch.
fn micros_since_epoch(now: SystemTime) -> String {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_validation() {
        let cfg = PacingConfig::default();
        assert_eq!(cfg.validate(), Ok(()));
        // 97 per 10 s: HubSpot's 100 less a margin for jitter.
        assert_eq!(cfg.interval_micros(), 103_092);
        assert_eq!(cfg.slow_below_percent, 0, "off unless the quota is shared");
        let parsed: PacingConfig =
            serde_json::from_str(r#"{"limit":20,"per":"1s","burst":3}"#).expect("valid");
        assert_eq!(parsed.interval_micros(), 50_000);
        assert_eq!(parsed.backoff_percent, 70);
        let parsed: PacingConfig = serde_json::from_str(
            r#"{"backoff_percent":50,"floor_percent":20,"recover_percent":10,"backoff_window":"2s","slow_below_percent":0}"#,
        )
        .expect("valid");
        assert_eq!(parsed.backoff_window, Duration::from_secs(2));
        assert_eq!(parsed.slow_below_percent, 0);
        assert_eq!(parsed.validate(), Ok(()));
        assert!(serde_json::from_str::<PacingConfig>(r#"{"rate":1}"#).is_err());
        let bad = |cfg: PacingConfig| cfg.validate().expect_err("invalid");
        let d = PacingConfig::default;
        // (config, the key the message must start with)
        let rows: Vec<(PacingConfig, &str)> = vec![
            (PacingConfig { limit: 0, ..d() }, "limit:"),
            (
                PacingConfig {
                    per: Duration::ZERO,
                    ..d()
                },
                "per:",
            ),
            (
                PacingConfig {
                    per: Duration::from_secs(86_401),
                    ..d()
                },
                "per:",
            ),
            (
                PacingConfig {
                    limit: 2_000_000,
                    per: Duration::from_secs(1),
                    ..d()
                },
                "limit:",
            ),
            (PacingConfig { burst: 0, ..d() }, "burst:"),
            (
                PacingConfig {
                    backoff_percent: 0,
                    ..d()
                },
                "backoff_percent:",
            ),
            (
                PacingConfig {
                    backoff_percent: 101,
                    ..d()
                },
                "backoff_percent:",
            ),
            (
                PacingConfig {
                    floor_percent: 0,
                    ..d()
                },
                "floor_percent:",
            ),
            (
                PacingConfig {
                    recover_percent: 0,
                    ..d()
                },
                "recover_percent:",
            ),
            (
                PacingConfig {
                    slow_below_percent: 101,
                    ..d()
                },
                "slow_below_percent:",
            ),
            (
                PacingConfig {
                    backoff_window: Duration::from_secs(90_000),
                    ..d()
                },
                "backoff_window:",
            ),
        ];
        for (cfg, key) in rows {
            let err = bad(cfg.clone());
            assert!(err.starts_with(key), "{cfg:?}: {err}");
        }
    }

    #[test]
    fn few_remaining_requests_ask_for_a_wider_spacing() {
        let redis = RedisHandle::new(&handoff_idempotency::RedisConfig::default()).expect("url");
        let on = PacingConfig {
            limit: 100,
            slow_below_percent: 10,
            ..PacingConfig::default()
        };
        let pacer = Pacer::new(redis, "t", &on);
        let info = |max, remaining, interval_ms: Option<u64>| RateInfo {
            max,
            remaining,
            interval: interval_ms.map(Duration::from_millis),
            retry_after: None,
        };
        let ms = |n: u64| Some(Duration::from_millis(n));
        // (max, remaining, interval ms, spacing asked for)
        type Row = (Option<u32>, Option<u32>, Option<u64>, Option<Duration>);
        let rows: &[Row] = &[
            (Some(100), Some(50), Some(10_000), None),
            (Some(100), Some(10), Some(10_000), None),
            (
                Some(100),
                Some(9),
                Some(10_000),
                Some(Duration::from_nanos(1_111_111_111)),
            ),
            (Some(100), Some(2), Some(10_000), ms(5_000)),
            (Some(100), Some(0), Some(10_000), ms(10_000)),
            (Some(1_000), Some(50), Some(1_000), ms(20)),
            // Without the vendor's maximum, the configured limit (100) stands in for it.
            (None, Some(5), Some(10_000), ms(2_000)),
            (None, Some(50), Some(10_000), None),
            (Some(100), None, Some(10_000), None),
            (Some(100), Some(0), None, None),
            (Some(100), Some(0), Some(0), None),
        ];
        for (max, remaining, interval, want) in rows {
            let got = pacer.slow_spacing(&info(*max, *remaining, *interval));
            assert_eq!(
                got, *want,
                "max {max:?} remaining {remaining:?} interval {interval:?}"
            );
        }
        let off = Pacer::new(
            pacer.redis.clone(),
            "t",
            &PacingConfig {
                slow_below_percent: 0,
                ..PacingConfig::default()
            },
        );
        assert_eq!(
            off.slow_spacing(&info(Some(100), Some(0), Some(10_000))),
            None
        );
    }
}
