//! [`StaleGuard`]: out-of-order delivery must never roll a destination record back.
//!
//! Per (destination, record) Redis keeps the newest `occurred_at` admitted so far, in a hash at
//! `"{ns}:stale:{destination}:{record_key}"` (fields `at`, `event`) with a TTL. A writer calls
//! [`StaleGuard::admit`] before it writes a record: an event older than the one already admitted
//! is [`Admission::Stale`] (skipped and counted, not written); an equal or newer one is
//! [`Admission::Apply`] and becomes the new mark. Equal timestamps apply, so a redelivery or a
//! retry of the event that set the mark goes through. The compare-and-set is one Lua script
//! (`lua/stale_admit.lua`), so concurrent writers on several replicas cannot interleave between
//! the read and the write.
//!
//! [`StaleGuard::admit_fields`] does the same per field (`"f:<field>"` in the same hash,
//! `lua/stale_admit_fields.lua`): an older event may still fill in fields no newer event has
//! written, so events that carry different parts of a record (a lead's name, a later meeting's
//! stage) all land whatever order they arrive in, and no field ever goes back in time.
//!
//! The mark is set when the update is admitted, before the destination has applied it. An update
//! that then fails permanently (and is dead-lettered) still holds the mark, so an older event is
//! skipped even though the newer one never landed: replaying the dead letter (which has the newer
//! `occurred_at`) is what repairs the record.
//!
//! Admission is not the write: an older update admitted first could still land after a newer
//! one admitted later (its request slower, or waiting on pacing). [`StaleGuard::lock_record`]
//! closes that window within a writer process: it holds one record's admission and write in
//! turn, so the destination sees a record's updates in the order they were admitted. Two
//! replicas writing the same record at the same moment can still land out of order.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::Duration;

use handoff_idempotency::StoreError;
use redis::Script;
use serde::{Deserialize, Serialize};

use crate::RedisHandle;

static STALE_ADMIT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/stale_admit.lua")));
static STALE_ADMIT_FIELDS: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/stale_admit_fields.lua")));

/// The largest `|occurred_at|` the guard accepts: Lua compares numbers as doubles, which hold
/// every integer up to 2^53 exactly (about 285,000 years of milliseconds).
const MAX_OCCURRED_AT: i64 = 1 << 53;

/// Settings of the stale-update guard (`[stale]` in a writer's TOML file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StaleConfig {
    /// How long a record's mark is kept after its last admitted update (humantime). Out-of-order
    /// deliveries arrive within the retry window (a day at most) or a replay; thirty days covers
    /// both with room, and bounds Redis memory to the records touched in that time.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for StaleConfig {
    fn default() -> Self {
        StaleConfig {
            ttl: Duration::from_secs(30 * 24 * 60 * 60),
        }
    }
}

impl StaleConfig {
    /// Checks what serde cannot: the TTL is at least one millisecond (Redis' `PEXPIRE` unit).
    pub fn validate(&self) -> Result<(), String> {
        if self.ttl < Duration::from_millis(1) {
            return Err("ttl: must be at least 1ms".to_owned());
        }
        Ok(())
    }
}

/// Whether an update may be written, as decided by [`StaleGuard::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Nothing newer was admitted for this record: write it (it is now the newest).
    Apply,
    /// A newer update was admitted already: skip this one so the record is not rolled back.
    Stale {
        /// The `occurred_at` (ms since the epoch) of the newest update admitted so far.
        newer_seen: i64,
    },
}

/// Why [`StaleGuard::admit`] could not decide.
/// The verdict of [`StaleGuard::admit_fields`] on one update.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldAdmission {
    /// Fields no newer event has written: write them.
    pub apply: Vec<String>,
    /// Fields a newer event has written: leave them out (and count them).
    pub stale: Vec<String>,
    /// The newest `occurred_at` (ms) among the stale fields' marks; 0 when none is stale.
    pub newer_seen: i64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StaleError {
    /// Redis could not be reached or answered with an error; see [`StoreError::is_transient`].
    #[error(transparent)]
    Redis(#[from] StoreError),
    /// A caller passed a destination or record key that would make an ambiguous Redis key, or an
    /// `occurred_at` out of range: a bug in the caller, never worth retrying.
    #[error("invalid stale-guard input: {0}")]
    InvalidInput(String),
}

impl StaleError {
    /// True when trying again later may succeed (Redis unavailable, timed out, or a server error).
    pub fn is_transient(&self) -> bool {
        match self {
            StaleError::Redis(err) => err.is_transient(),
            StaleError::InvalidInput(_) => false,
        }
    }
}

/// The stale-update guard of one namespace. Cheap to clone; clones share the [`RedisHandle`].
#[derive(Debug, Clone)]
pub struct StaleGuard {
    redis: RedisHandle,
    namespace: String,
    ttl_ms: i64,
    records: RecordLocks,
}

/// The records being written by this process, each behind its own lock; an entry goes once
/// nobody holds or waits for its lock.
#[derive(Debug, Clone, Default)]
struct RecordLocks(Arc<Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>>);

/// Entries kept before the map is swept of unused ones: far more records than a writer's
/// prefetch has in flight, so a sweep is rare and short.
const RECORD_LOCKS_SWEEP_AT: usize = 4096;

/// One record's turn to be admitted and written: hold it until the destination answered.
#[derive(Debug)]
pub struct RecordTurn {
    _held: tokio::sync::OwnedMutexGuard<()>,
}

impl StaleGuard {
    /// Waits for `record_key`'s turn at `destination` in this process (see the module doc):
    /// take it before [`StaleGuard::admit_fields`] and keep it until the write is answered.
    pub async fn lock_record(&self, destination: &str, record_key: &str) -> RecordTurn {
        let lock = {
            let mut map = self
                .records
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if map.len() >= RECORD_LOCKS_SWEEP_AT {
                map.retain(|_, lock| lock.strong_count() > 0);
            }
            let key = format!("{destination}:{record_key}");
            match map.get(&key).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key, Arc::downgrade(&lock));
                    lock
                }
            }
        };
        RecordTurn {
            _held: lock.lock_owned().await,
        }
    }

    /// A guard whose keys start with `"{namespace}:stale:"`, talking to Redis through `redis`
    /// (which may be shared with other components). Does no I/O.
    pub fn new(redis: RedisHandle, namespace: &str, cfg: &StaleConfig) -> StaleGuard {
        StaleGuard {
            redis,
            namespace: namespace.to_owned(),
            // At least 1 ms (a zero PEXPIRE would delete the mark at once); saturating for huge TTLs.
            ttl_ms: i64::try_from(cfg.ttl.as_millis())
                .unwrap_or(i64::MAX)
                .max(1),
            records: RecordLocks::default(),
        }
    }

    /// The Redis key of a record's mark: `"{namespace}:stale:{destination}:{record_key}"`.
    pub fn key(&self, destination: &str, record_key: &str) -> String {
        format!("{}:stale:{destination}:{record_key}", self.namespace)
    }

    /// Admits the update of `record_key` at `destination` made by event `event_id`, which
    /// occurred at `occurred_at_millis` (ms since the epoch), unless a newer update of the same
    /// record was admitted before. One atomic round trip; an admitted update refreshes the TTL.
    ///
    /// `destination` must not contain `:` (so `("a:b", "c")` and `("a", "b:c")` cannot share a
    /// key); record keys (emails, external ids) may.
    pub async fn admit(
        &self,
        destination: &str,
        record_key: &str,
        occurred_at_millis: i64,
        event_id: &str,
    ) -> Result<Admission, StaleError> {
        check_input(destination, record_key, occurred_at_millis)?;
        let key = self.key(destination, record_key);
        let mut invocation = STALE_ADMIT.key(&key);
        invocation
            .arg(occurred_at_millis)
            .arg(self.ttl_ms)
            .arg(event_id);
        let (applied, at): (i64, i64) = self
            .redis
            .run(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await?;
        if applied == 1 {
            Ok(Admission::Apply)
        } else {
            Ok(Admission::Stale { newer_seen: at })
        }
    }

    /// Per field of one update of `record_key` at `destination`: which fields apply (no newer
    /// event wrote them; they take `occurred_at_millis` as their mark) and which are stale. One
    /// atomic script, like [`StaleGuard::admit`].
    pub async fn admit_fields(
        &self,
        destination: &str,
        record_key: &str,
        occurred_at_millis: i64,
        event_id: &str,
        fields: &[&str],
    ) -> Result<FieldAdmission, StaleError> {
        check_input(destination, record_key, occurred_at_millis)?;
        if fields.is_empty() {
            return Ok(FieldAdmission::default());
        }
        let key = self.key(destination, record_key);
        let mut invocation = STALE_ADMIT_FIELDS.key(&key);
        invocation
            .arg(occurred_at_millis)
            .arg(self.ttl_ms)
            .arg(event_id)
            .arg(fields);
        let (apply, stale, newer_seen): (Vec<String>, Vec<String>, i64) = self
            .redis
            .run(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await?;
        Ok(FieldAdmission {
            apply,
            stale,
            newer_seen,
        })
    }
}

/// The checks both admissions make before touching Redis.
fn check_input(
    destination: &str,
    record_key: &str,
    occurred_at_millis: i64,
) -> Result<(), StaleError> {
    if destination.is_empty() || destination.contains(':') {
        return Err(StaleError::InvalidInput(format!(
            "destination {destination:?} must be non-empty and free of ':'"
        )));
    }
    if record_key.is_empty() {
        return Err(StaleError::InvalidInput("empty record key".to_owned()));
    }
    if occurred_at_millis.unsigned_abs() > MAX_OCCURRED_AT.unsigned_abs() {
        return Err(StaleError::InvalidInput(format!(
            "occurred_at {occurred_at_millis} ms is out of range"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_validation() {
        let cfg = StaleConfig::default();
        assert_eq!(cfg.ttl, Duration::from_secs(2_592_000));
        assert_eq!(cfg.validate(), Ok(()));
        let parsed: StaleConfig = serde_json::from_str(r#"{"ttl":"7days"}"#).expect("valid");
        assert_eq!(parsed.ttl, Duration::from_secs(7 * 86_400));
        assert!(serde_json::from_str::<StaleConfig>(r#"{"ttl_days":7}"#).is_err());
        let zero = StaleConfig {
            ttl: Duration::ZERO,
        };
        assert!(zero.validate().expect_err("invalid").starts_with("ttl:"));
    }

    #[tokio::test]
    async fn bad_input_is_refused_before_any_io() {
        // An unroutable address: any I/O would fail with a connection error, not InvalidInput.
        let cfg = handoff_idempotency::RedisConfig {
            url: "redis://127.0.0.1:1/".to_owned(),
            op_timeout: Duration::from_millis(200),
        };
        let guard = StaleGuard::new(
            RedisHandle::new(&cfg).expect("valid url"),
            "ns",
            &StaleConfig::default(),
        );
        assert_eq!(guard.key("hubspot", "a@b.c"), "ns:stale:hubspot:a@b.c");
        for (destination, record, at) in [
            ("hub:spot", "a@b.c", 1),
            ("", "a@b.c", 1),
            ("hubspot", "", 1),
            ("hubspot", "a@b.c", i64::MAX),
            ("hubspot", "a@b.c", i64::MIN),
        ] {
            let err = guard
                .admit(destination, record, at, "e1")
                .await
                .expect_err("refused");
            assert!(matches!(err, StaleError::InvalidInput(_)), "{err}");
            assert!(!err.is_transient());
        }
        let err = guard
            .admit("hubspot", "a@b.c", 1, "e1")
            .await
            .expect_err("no redis there");
        assert!(err.is_transient(), "{err}");
    }
}
