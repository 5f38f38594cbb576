//! [`Pacer`]: a destination's quota, shared by every replica through Redis (GCRA).
//!
//! The generic cell rate algorithm keeps one number per (destination, credential), the
//! theoretical arrival time (TAT), at `"{ns}:pace:{destination}:{credential}"`. Each
//! [`Pacer::acquire`] reserves the next slot in one Lua script (`lua/pace_acquire.lua`) and returns
//! how long the caller must wait before sending; slots are spaced `per / limit` apart across all
//! replicas, with at most `burst` at once after an idle spell. Because the slot is reserved rather
//! than polled for, no replica starves and Redis sees one call per request. After a 429,
//! [`Pacer::penalize`] pushes the TAT out so nobody sends before the server's `Retry-After`.
//!
//! Time comes from Redis' own clock (`TIME` inside the script) unless the caller passes one
//! ([`Pacer::acquire_at`], for tests): replicas' clocks may disagree by more than the spacing of a
//! fast quota, Redis' clock is the same for all of them.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use handoff_idempotency::StoreError;
use redis::Script;
use serde::{Deserialize, Serialize};

use crate::RedisHandle;

static PACE_ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/pace_acquire.lua")));
static PACE_PENALIZE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/pace_penalize.lua")));

/// A destination's send rate (`[pacing]` in a writer's TOML file): at most `limit` requests per
/// `per`, shared by every replica and every task using the same credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PacingConfig {
    /// Requests allowed per `per`. Defaults to HubSpot's private-app quota (100 per 10 s); set it
    /// a little below the vendor's number to leave room for clock and network jitter.
    pub limit: u32,
    /// The period `limit` is counted over (humantime).
    #[serde(with = "humantime_serde")]
    pub per: Duration,
    /// Requests that may go at once after an idle spell. 1 (the default) spaces every request
    /// evenly, which never exceeds a rolling-window quota; more gives lower latency to the first
    /// requests after a pause, at the price of up to `burst - 1` extra requests in one window.
    pub burst: u32,
}

impl Default for PacingConfig {
    fn default() -> Self {
        PacingConfig {
            limit: 100,
            per: Duration::from_secs(10),
            burst: 1,
        }
    }
}

impl PacingConfig {
    /// Checks what serde cannot: a positive rate whose spacing is at least a microsecond, and a
    /// burst of at least one.
    pub fn validate(&self) -> Result<(), String> {
        if self.limit == 0 {
            return Err("limit: must be at least 1".to_owned());
        }
        if self.per.is_zero() {
            return Err("per: must be more than zero".to_owned());
        }
        if self.interval_micros() < 1 {
            return Err("limit: more than one request per microsecond".to_owned());
        }
        if self.burst == 0 {
            return Err("burst: must be at least 1".to_owned());
        }
        Ok(())
    }

    /// The spacing of requests, `per / limit`, in microseconds.
    fn interval_micros(&self) -> i64 {
        let per = i64::try_from(self.per.as_micros()).unwrap_or(i64::MAX);
        per / i64::from(self.limit.max(1))
    }
}

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

/// The shared rate limiter of one namespace at one rate. Cheap to clone; clones share the
/// [`RedisHandle`].
#[derive(Debug, Clone)]
pub struct Pacer {
    redis: RedisHandle,
    namespace: String,
    interval_us: i64,
    tau_us: i64,
}

impl Pacer {
    /// A pacer at `cfg`'s rate whose keys start with `"{namespace}:pace:"`. Does no I/O; `cfg` is
    /// expected to have passed [`PacingConfig::validate`] (a zero limit is read as one).
    pub fn new(redis: RedisHandle, namespace: &str, cfg: &PacingConfig) -> Pacer {
        let interval_us = cfg.interval_micros().max(1);
        Pacer {
            redis,
            namespace: namespace.to_owned(),
            interval_us,
            tau_us: interval_us.saturating_mul(i64::from(cfg.burst.max(1)) - 1),
        }
    }

    /// The Redis key of a quota: `"{namespace}:pace:{destination}:{credential}"`.
    pub fn key(&self, key: &PaceKey) -> String {
        format!(
            "{}:pace:{}:{}",
            self.namespace, key.destination, key.credential
        )
    }

    /// Reserves the next send slot of `key` on Redis' clock and returns how long to wait before
    /// sending (zero: send now). The slot is taken even if the caller then gives up on it.
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
    /// requests after it are spaced normally again. A later reservation already made is kept.
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

    async fn acquire_with(
        &self,
        key: &PaceKey,
        now: Option<SystemTime>,
    ) -> Result<Duration, PacingError> {
        let redis_key = self.checked_key(key)?;
        let mut invocation = PACE_ACQUIRE.key(&redis_key);
        invocation
            .arg(now.map(micros_since_epoch).unwrap_or_default())
            .arg(self.interval_us)
            .arg(self.tau_us);
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
        // A day at most: past that the number is nonsense, and µs must stay below 2^53 in Lua.
        let retry_after_us = retry_after.min(Duration::from_secs(86_400)).as_micros();
        let mut invocation = PACE_PENALIZE.key(&redis_key);
        invocation
            .arg(now.map(micros_since_epoch).unwrap_or_default())
            .arg(u64::try_from(retry_after_us).unwrap_or(u64::MAX))
            .arg(self.tau_us);
        let _tat: i64 = self
            .redis
            .run(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await?;
        Ok(())
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
        assert_eq!(cfg.interval_micros(), 100_000);
        let parsed: PacingConfig =
            serde_json::from_str(r#"{"limit":20,"per":"1s","burst":3}"#).expect("valid");
        assert_eq!(parsed.interval_micros(), 50_000);
        assert!(serde_json::from_str::<PacingConfig>(r#"{"rate":1}"#).is_err());
        let bad = |cfg: PacingConfig| cfg.validate().expect_err("invalid");
        assert!(
            bad(PacingConfig {
                limit: 0,
                ..PacingConfig::default()
            })
            .starts_with("limit:")
        );
        assert!(
            bad(PacingConfig {
                per: Duration::ZERO,
                ..PacingConfig::default()
            })
            .starts_with("per:")
        );
        assert!(
            bad(PacingConfig {
                limit: 2_000_000,
                per: Duration::from_secs(1),
                burst: 1
            })
            .starts_with("limit:")
        );
        assert!(
            bad(PacingConfig {
                burst: 0,
                ..PacingConfig::default()
            })
            .starts_with("burst:")
        );
    }
}
