//! `handoff-idempotency`: Redis-backed idempotency records and the per-event status ledger.
//!
//! Effectively-once side effects rest on a two-state record per `(stage, scope, id)` (the svix
//! pattern):
//!
//! 1. [`Store::claim`] writes `started:<fingerprint>:<token>` with a short lease if the key is free,
//!    atomically, or reports [`Claim::InFlight`] / [`Claim::Done`] with the fingerprint found.
//! 2. The caller performs its side effect (publish with confirm, destination upsert).
//! 3. On success [`Store::complete`] swaps the record for `finished:<fingerprint>` with a long
//!    retention (and can write the [`Ledger`] in the same round trip); on failure
//!    [`Store::release`] deletes the claim so a retry can claim again at once.
//!
//! A crash between 1 and 3 leaves the `started` record until its lease runs out; the redelivered
//! message then claims again. Records and ledgers live under a namespace (`"{ns}:idem:..."`,
//! `"{ns}:ledger:..."`, and the per-email index of ledgers `"{ns}:ledger-email:..."`), so several
//! deployments or tests share one Redis without colliding.
//!
//! Code map: `store.rs` (the [`Store`] and its Lua scripts in `lua/`), `batch.rs` (coalescing
//! concurrent claims and completions into batch script calls), `ledger.rs` (the ledger
//! types and the email index), `config.rs` ([`RedisConfig`]), `error.rs` ([`StoreError`]).

mod batch;
mod config;
mod error;
mod ledger;
mod policy;
mod store;

pub use config::RedisConfig;
pub use error::StoreError;
pub use ledger::{
    DEFAULT_LEDGER_TTL, DELIVERED, LEDGER_EMAIL_INDEX_MAX, Ledger, LedgerUpdate, RETRYING,
    StageStatus, now_rfc3339,
};
pub use policy::{DedupeConfig, LedgerConfig};
#[doc(hidden)]
pub use store::BatchStats;
pub use store::Store;

/// What an idempotency record protects: one `stage`'s side effect for one `id` within a `scope`
/// (the publisher, or a destination). Redis key `"{ns}:idem:{stage}:{scope}:{id}"`.
///
/// The parts are joined with `:`; callers keep `:` out of them (event ids are validated at ingest)
/// so two different keys cannot map to the same Redis key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    /// The stage doing the side effect, e.g. `ingest`, `crm-writer`.
    pub stage: String,
    /// Who the id belongs to, e.g. the publisher id.
    pub scope: String,
    /// The id itself, usually the event id.
    pub id: String,
}

impl IdempotencyKey {
    /// Builds a key from its three parts.
    pub fn new(stage: impl Into<String>, scope: impl Into<String>, id: impl Into<String>) -> Self {
        IdempotencyKey {
            stage: stage.into(),
            scope: scope.into(),
            id: id.into(),
        }
    }
}

/// Proof of a successful [`Store::claim`]: a random token that only its holder can
/// [`Store::complete`] or [`Store::release`] with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToken(String);

impl ClaimToken {
    /// A fresh random token (a UUID v4 in simple form: 32 hex digits, no `:`).
    pub(crate) fn generate() -> Self {
        ClaimToken(uuid::Uuid::new_v4().simple().to_string())
    }

    /// The token as stored at the end of the `started` record.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `":<token>"`, how the scripts recognise our record whatever the fingerprint is.
    pub(crate) fn suffix(&self) -> String {
        format!(":{}", self.0)
    }
}

/// The result of [`Store::claim`].
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The key was free and is now ours until the lease runs out: do the side effect, then
    /// complete or release.
    Acquired(ClaimToken),
    /// Someone else holds a live claim (a concurrent retry, or a worker that died less than a lease
    /// ago). Do not repeat the side effect now; try again later.
    InFlight {
        /// The fingerprint the other claim was made with.
        fingerprint: String,
    },
    /// The side effect was already done.
    Done {
        /// The fingerprint it was done with.
        fingerprint: String,
    },
}

impl Claim {
    /// For `InFlight`/`Done`: whether the existing record has `fingerprint` (a retry of the same
    /// payload) rather than another payload under the same id. `Acquired` always matches.
    pub fn matches(&self, fingerprint: &str) -> bool {
        match self {
            Claim::Acquired(_) => true,
            Claim::InFlight { fingerprint: f } | Claim::Done { fingerprint: f } => f == fingerprint,
        }
    }
}

/// What [`Store::complete_with_outcome`] found at the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Our `started` record, now `finished`.
    Completed,
    /// Nothing: our lease ran out. `finished` was written anyway (the side effect did happen).
    LeaseExpired,
    /// Already `finished` (by another worker); left as it was.
    AlreadyFinished,
    /// Another worker's live claim; left as it was.
    ClaimedByOther,
}
