//! How long records live: `[dedupe]` and `[ledger]` in every stage's configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The idempotency records a stage keeps (`[dedupe]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupeConfig {
    /// How long an in-flight claim blocks another worker from the same id; after a crash
    /// between claim and side effect, a redelivery or retry can claim again once it expires.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How long a finished id is remembered: a redelivery or retry within this window is a
    /// duplicate and has no side effect.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for DedupeConfig {
    fn default() -> Self {
        DedupeConfig {
            lease: Duration::from_secs(30),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// The per-event status ledger (`[ledger]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerConfig {
    /// How long an event's status stays answerable after its last update.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            ttl: crate::DEFAULT_LEDGER_TTL,
        }
    }
}
