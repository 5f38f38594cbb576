//! The status ledger: what each stage last reported about one event, for `GET /v1/events/{id}`.
//!
//! One Redis hash per event, `"{ns}:ledger:{publisher_id}:{event_id}"`, with fields `event_type`,
//! `trace_id`, `first_seen_at` (set once, by the first write) and one `"stage:{stage}"` field per
//! stage holding JSON `{"status","at","detail"}`. Every write refreshes the hash's TTL, so a ledger
//! lives `ttl` after the last news about its event. Stages never overwrite each other's fields, so
//! writers in different services need no coordination; within a stage the last write wins.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Hash field holding the time of the first write.
pub(crate) const FIRST_SEEN_AT: &str = "first_seen_at";
/// Hash field holding the event type.
pub(crate) const EVENT_TYPE: &str = "event_type";
/// Hash field holding the trace id of the latest write that carried one.
pub(crate) const TRACE_ID: &str = "trace_id";
/// Prefix of the per-stage hash fields.
pub(crate) const STAGE_PREFIX: &str = "stage:";

/// How long a ledger is kept after its last update unless the caller says otherwise: long enough
/// for a publisher or an SRE to ask what became of an event weeks later.
pub const DEFAULT_LEDGER_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// One stage's news about one event.
#[derive(Debug, Clone)]
pub struct LedgerUpdate {
    /// The publisher that sent the event (ledgers are per publisher: event ids are theirs).
    pub publisher_id: String,
    /// The publisher's event id.
    pub event_id: String,
    /// Written when present (the latest value wins).
    pub event_type: Option<String>,
    /// Written when present (the latest value wins): the trace that carried this update.
    pub trace_id: Option<String>,
    /// The stage reporting, e.g. `ingest`, `normalizer`, `crm-writer`.
    pub stage: String,
    /// The stage's status, e.g. `accepted`, `delivered`, `retrying`, `dead_lettered`.
    pub status: String,
    /// When it happened, RFC 3339.
    pub at: String,
    /// Stage-specific details (destination record id, error class, attempt number, ...).
    pub detail: serde_json::Map<String, serde_json::Value>,
    /// Time to live of the whole ledger, refreshed by this write.
    pub ttl: Duration,
}

impl LedgerUpdate {
    /// An update stamped with the current time, no detail, and [`DEFAULT_LEDGER_TTL`].
    pub fn now(
        publisher_id: impl Into<String>,
        event_id: impl Into<String>,
        stage: impl Into<String>,
        status: impl Into<String>,
    ) -> Self {
        LedgerUpdate {
            publisher_id: publisher_id.into(),
            event_id: event_id.into(),
            event_type: None,
            trace_id: None,
            stage: stage.into(),
            status: status.into(),
            at: now_rfc3339(),
            detail: serde_json::Map::new(),
            ttl: DEFAULT_LEDGER_TTL,
        }
    }

    /// Sets [`LedgerUpdate::event_type`].
    pub fn with_event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = Some(event_type.into());
        self
    }

    /// Sets [`LedgerUpdate::trace_id`].
    pub fn with_trace_id(mut self, trace_id: impl Into<String>) -> Self {
        self.trace_id = Some(trace_id.into());
        self
    }

    /// Adds one entry to [`LedgerUpdate::detail`].
    pub fn with_detail(
        mut self,
        key: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Self {
        self.detail.insert(key.into(), value.into());
        self
    }

    /// Sets [`LedgerUpdate::ttl`].
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The hash fields this update writes (everything but `first_seen_at`, which is set only once).
    pub(crate) fn fields(&self) -> Vec<(String, String)> {
        let mut fields = Vec::with_capacity(3);
        if let Some(t) = &self.event_type {
            fields.push((EVENT_TYPE.to_owned(), t.clone()));
        }
        if let Some(t) = &self.trace_id {
            fields.push((TRACE_ID.to_owned(), t.clone()));
        }
        let stage = StageStatus {
            status: self.status.clone(),
            at: self.at.clone(),
            detail: self.detail.clone(),
        };
        // Serialising strings and a JSON map cannot fail.
        let json = serde_json::to_string(&stage).unwrap_or_default();
        fields.push((format!("{STAGE_PREFIX}{}", self.stage), json));
        fields
    }
}

/// Everything known about one event, as `GET /v1/events/{event_id}` reports it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Ledger {
    /// The publisher's event id.
    pub event_id: String,
    /// The publisher that sent it.
    pub publisher_id: String,
    /// The event type, once a stage recorded it.
    pub event_type: Option<String>,
    /// The trace id of the latest update that carried one.
    pub trace_id: Option<String>,
    /// When the first update arrived (RFC 3339), as the first writer stamped it.
    pub first_seen_at: Option<String>,
    /// Each stage's latest status, by stage name.
    pub stages: BTreeMap<String, StageStatus>,
}

/// One stage's latest status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StageStatus {
    /// e.g. `accepted`, `delivered`, `retrying`, `dead_lettered`.
    pub status: String,
    /// When, RFC 3339.
    pub at: String,
    /// Stage-specific details.
    #[serde(default)]
    pub detail: serde_json::Map<String, serde_json::Value>,
}

impl Ledger {
    /// Rebuilds a ledger from its hash fields; `None` when the hash is empty (unknown or expired).
    pub(crate) fn from_hash(
        key: &str,
        publisher_id: &str,
        event_id: &str,
        hash: std::collections::HashMap<String, String>,
    ) -> Result<Option<Ledger>, crate::StoreError> {
        if hash.is_empty() {
            return Ok(None);
        }
        let mut ledger = Ledger {
            event_id: event_id.to_owned(),
            publisher_id: publisher_id.to_owned(),
            event_type: None,
            trace_id: None,
            first_seen_at: None,
            stages: BTreeMap::new(),
        };
        for (field, value) in hash {
            if let Some(stage) = field.strip_prefix(STAGE_PREFIX) {
                let status: StageStatus = serde_json::from_str(&value).map_err(|err| {
                    crate::StoreError::Corrupt(format!("{key} field {field:?}: {err}"))
                })?;
                ledger.stages.insert(stage.to_owned(), status);
            } else {
                match field.as_str() {
                    EVENT_TYPE => ledger.event_type = Some(value),
                    TRACE_ID => ledger.trace_id = Some(value),
                    FIRST_SEEN_AT => ledger.first_seen_at = Some(value),
                    // Fields added by a newer version are ignored rather than failing reads.
                    _ => {}
                }
            }
        }
        Ok(Some(ledger))
    }
}

/// The current time as RFC 3339 (UTC), the format every `at` uses.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
