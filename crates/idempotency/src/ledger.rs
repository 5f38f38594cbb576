//! The status ledger: what each stage last reported about one event, for `GET /v1/events/{id}`.
//!
//! One Redis hash per event, `"{ns}:ledger:{publisher_id}:{event_id}"`, with fields `event_type`,
//! `trace_id`, `email`, `first_seen_at` (set once, by the first write) and one `"stage:{stage}"`
//! field per stage holding JSON `{"status","at","detail"}`. Every write refreshes the hash's TTL, so
//! a ledger lives `ttl` after the last news about its event. Stages never overwrite each other's
//! fields, so writers in different services need no coordination; within a stage the last write
//! wins.
//!
//! The email index, for `GET /v1/contacts/{email}/events`: an update that carries the normalized
//! email of the person its event is about ([`LedgerUpdate::with_email`]) also adds the event id to
//! the sorted set `"{ns}:ledger-email:{publisher_id}:{email}"`, scored by the update's time in unix
//! milliseconds, in the same round trip as the hash. `ZADD NX` keeps an event's first score, so a
//! timeline orders events by when they were first seen under that email however many stages report
//! on them later. The set keeps the newest [`LEDGER_EMAIL_INDEX_MAX`] ids and lives as long as the
//! ledger TTL after its latest update; ids whose ledger expired before the index did are left out
//! of reads and pruned then ([`crate::Store::ledger_by_email`]).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Hash field holding the time of the first write.
pub(crate) const FIRST_SEEN_AT: &str = "first_seen_at";
/// Hash field holding the event type.
pub(crate) const EVENT_TYPE: &str = "event_type";
/// Hash field holding the trace id of the latest write that carried one.
pub(crate) const TRACE_ID: &str = "trace_id";
/// Hash field holding the normalized email of the latest write that carried one.
pub(crate) const EMAIL: &str = "email";
/// Prefix of the per-stage hash fields.
pub(crate) const STAGE_PREFIX: &str = "stage:";

/// A stage's status while it waits to try again. [`crate::Store::ledger_record`] never lets it
/// replace [`DELIVERED`].
pub const RETRYING: &str = "retrying";

/// A stage's status once its side effect is done and recorded.
pub const DELIVERED: &str = "delivered";

/// How long a ledger is kept after its last update unless the caller says otherwise: long enough
/// for a publisher or an SRE to ask what became of an event weeks later.
pub const DEFAULT_LEDGER_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// How many event ids one email index keeps (the newest by first-seen time). A contact's timeline
/// is read a page at a time (at most 100 in ingest), and a person with more than a thousand events
/// within a ledger TTL is an integration loop rather than a customer; the cap bounds both the
/// memory of such a key and the cost of trimming it.
pub const LEDGER_EMAIL_INDEX_MAX: usize = 1000;

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
    /// The normalized email of the person the event is about. When present (and not empty) it is
    /// written to the hash (the latest value wins) and the event is indexed under it for
    /// [`crate::Store::ledger_by_email`]. Used verbatim in the index key: callers pass the
    /// normalizer's canonical form (trimmed, lower-cased, punycode domain), and readers look it up
    /// in the same form.
    pub email: Option<String>,
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
            email: None,
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

    /// Sets [`LedgerUpdate::email`]: `normalized_email` must already be in canonical form (the
    /// store does not normalize it; it becomes part of a Redis key as given).
    pub fn with_email(mut self, normalized_email: impl Into<String>) -> Self {
        self.email = Some(normalized_email.into());
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

    /// The email this update indexes its event under, if any (an empty one indexes nothing).
    pub(crate) fn indexed_email(&self) -> Option<&str> {
        self.email.as_deref().filter(|email| !email.is_empty())
    }

    /// The update's time in unix milliseconds, the event's score in the email index: `at` when it
    /// is RFC 3339 (it always is when built by [`LedgerUpdate::now`]), else the current time.
    pub(crate) fn at_unix_ms(&self) -> i64 {
        let at =
            time::OffsetDateTime::parse(&self.at, &time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
        i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
    }

    /// The hash fields this update writes (everything but `first_seen_at`, which is set only once).
    pub(crate) fn fields(&self) -> Vec<(String, String)> {
        let mut fields = self.event_fields();
        fields.push(self.stage_field());
        fields
    }

    /// The event's own fields this update carries (type, trace, email), without the stage's.
    pub(crate) fn event_fields(&self) -> Vec<(String, String)> {
        let mut fields = Vec::with_capacity(4);
        if let Some(t) = &self.event_type {
            fields.push((EVENT_TYPE.to_owned(), t.clone()));
        }
        if let Some(t) = &self.trace_id {
            fields.push((TRACE_ID.to_owned(), t.clone()));
        }
        if let Some(email) = self.indexed_email() {
            fields.push((EMAIL.to_owned(), email.to_owned()));
        }
        fields
    }

    /// The stage's field: `stage:<stage>` and its status as JSON.
    pub(crate) fn stage_field(&self) -> (String, String) {
        let stage = StageStatus {
            status: self.status.clone(),
            at: self.at.clone(),
            detail: self.detail.clone(),
        };
        // Serialising strings and a JSON map cannot fail.
        let json = serde_json::to_string(&stage).unwrap_or_default();
        (format!("{STAGE_PREFIX}{}", self.stage), json)
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
    /// The normalized email of the person the event is about, once a stage recorded it (the
    /// normalizer does, from the canonical record). Left out of the JSON when unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
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
            email: None,
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
                    EMAIL => ledger.email = Some(value),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_score_is_the_updates_time_in_unix_ms() {
        let mut update = LedgerUpdate::now("pub-1", "ev-1", "ingest", "accepted");
        update.at = "2026-03-19T10:15:22.123Z".to_owned();
        assert_eq!(update.at_unix_ms(), 1_773_915_322_123);
        update.at = "2026-03-19T11:15:22+01:00".to_owned();
        assert_eq!(update.at_unix_ms(), 1_773_915_322_000);
        // Not RFC 3339: the current time rather than a failed write.
        update.at = "yesterday".to_owned();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!((update.at_unix_ms() / 1000 - now).abs() <= 5);
    }

    #[test]
    fn an_email_is_written_to_the_hash_and_an_empty_one_is_not() {
        let update = LedgerUpdate::now("pub-1", "ev-1", "normalizer", "normalized")
            .with_email("a@example.com");
        assert_eq!(update.indexed_email(), Some("a@example.com"));
        assert!(
            update
                .fields()
                .contains(&(EMAIL.to_owned(), "a@example.com".to_owned()))
        );
        let blank = LedgerUpdate::now("pub-1", "ev-1", "normalizer", "normalized").with_email("");
        assert_eq!(blank.indexed_email(), None);
        assert!(blank.fields().iter().all(|(field, _)| field != EMAIL));
    }

    #[test]
    fn an_unknown_email_is_left_out_of_the_json() {
        let mut hash = std::collections::HashMap::new();
        hash.insert(EVENT_TYPE.to_owned(), "lead.created".to_owned());
        let ledger = Ledger::from_hash("k", "pub-1", "ev-1", hash.clone())
            .ok()
            .flatten()
            .expect("a ledger");
        let json = serde_json::to_value(&ledger).expect("json");
        assert!(json.get("email").is_none(), "{json}");
        hash.insert(EMAIL.to_owned(), "a@example.com".to_owned());
        let ledger = Ledger::from_hash("k", "pub-1", "ev-1", hash)
            .ok()
            .flatten()
            .expect("a ledger");
        assert_eq!(ledger.email.as_deref(), Some("a@example.com"));
        let json = serde_json::to_value(&ledger).expect("json");
        assert_eq!(json["email"], "a@example.com");
    }
}
