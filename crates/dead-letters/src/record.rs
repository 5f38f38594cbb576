//! What is kept of a dead letter and how it is found again: the [`Summary`] every list
//! shows, its id, its cause's [`fingerprint`], and the index values the query model
//! files it under. Pure: no I/O.

use handoff_events::v1::{self, ErrorClass};
use handoff_events::{Message, Timestamp};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::fingerprint;

/// The searchable facts of one parked dead letter, immutable once parked. The record
/// itself (original bytes, headers, attempts) is kept beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// `dl-` and 24 hex digits of the message's hash: the same message parked twice
    /// (a redelivery after a crash) gets the same id, so it is parked once.
    pub id: String,
    pub event_id: String,
    pub event_type: String,
    pub publisher_id: String,
    /// The stage that gave up: `normalizer`, `crm-writer`, `email-writer`, or the
    /// queue's stage for a message the broker dead-lettered.
    pub stage: String,
    /// `ErrorClass::label`: `validation`, `permanent`, `retries_exhausted`, `broker`, …
    pub error_class: String,
    pub error_message: String,
    /// Vendor code or HTTP status, or the broker's reason (`delivery_limit`).
    pub error_code: String,
    /// `hubspot`, `mailchimp`, or empty.
    pub destination: String,
    /// The normalized email the event is about, when it names one.
    pub email: String,
    /// Groups "the same failure": see [`fingerprint::of`].
    pub fingerprint: String,
    /// The cause with the event's own values masked: what a group is called.
    pub cause: String,
    pub attempts: u32,
    /// RFC 3339.
    pub first_failed_at: String,
    /// RFC 3339; the time every time filter and sort uses.
    pub dead_lettered_at: String,
    pub trace_id: String,
    pub origin_queue: String,
    pub origin_exchange: String,
    pub origin_routing_key: String,
}

impl Summary {
    /// The summary of `record` as it arrived in a message whose bytes were `body` (plus
    /// `x-death`, which tells two broker dead-letterings of one message apart).
    pub fn of(record: &v1::DeadLetter, message_key: &[u8]) -> Summary {
        let class = ErrorClass::try_from(record.error_class).unwrap_or(ErrorClass::Unspecified);
        let cause = fingerprint::cause(record);
        let dead_lettered_at = record
            .dead_lettered_at
            .as_ref()
            .or(record.last_failed_at.as_ref())
            .and_then(to_time)
            .unwrap_or_else(OffsetDateTime::now_utc);
        // A record made without the handler's help (retries exhausted, the broker's own
        // dead letters) names nothing: the envelope it carries does.
        let envelope = envelope_of(record).unwrap_or_default();
        let or_envelope = |own: &str, from_envelope: &str| {
            if own.is_empty() { from_envelope } else { own }.to_owned()
        };
        Summary {
            id: id_of(message_key),
            event_id: or_envelope(&record.event_id, &envelope.event_id),
            event_type: or_envelope(&record.event_type, &envelope.event_type),
            publisher_id: or_envelope(&record.publisher_id, &envelope.publisher_id),
            stage: record.stage.clone(),
            error_class: class.label().to_owned(),
            error_message: record.error_message.clone(),
            error_code: record.error_code.clone(),
            destination: record.destination.clone(),
            email: email_of(record).unwrap_or_default(),
            fingerprint: fingerprint::of(record, &cause),
            cause,
            attempts: u32::try_from(record.attempts.len()).unwrap_or(u32::MAX),
            first_failed_at: record
                .first_failed_at
                .as_ref()
                .and_then(to_time)
                .map(rfc3339)
                .unwrap_or_default(),
            dead_lettered_at: rfc3339(dead_lettered_at),
            trace_id: record.trace_id.clone(),
            origin_queue: record.origin_queue.clone(),
            origin_exchange: record.origin_exchange.clone(),
            origin_routing_key: record.origin_routing_key.clone(),
        }
    }

    /// Unix milliseconds of `dead_lettered_at`: the score of every index.
    pub fn score(&self) -> i64 {
        OffsetDateTime::parse(&self.dead_lettered_at, &Rfc3339)
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
            .unwrap_or_default()
    }

    /// The (dimension, value) pairs this dead letter is indexed under; empty values are
    /// left out (a filter on "no destination" is not something anyone asks for).
    pub fn index_entries(&self) -> Vec<(Dimension, &str)> {
        [
            (Dimension::Stage, self.stage.as_str()),
            (Dimension::EventType, &self.event_type),
            (Dimension::ErrorClass, &self.error_class),
            (Dimension::Destination, &self.destination),
            (Dimension::Code, &self.error_code),
            (Dimension::Publisher, &self.publisher_id),
            (Dimension::Email, &self.email),
            (Dimension::Fingerprint, &self.fingerprint),
            (Dimension::Event, &self.event_id),
        ]
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .collect()
    }
}

/// What a dead letter can be filtered by; each is one family of Redis sorted sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    Stage,
    EventType,
    ErrorClass,
    Destination,
    Code,
    Publisher,
    Email,
    Fingerprint,
    Event,
    Status,
}

impl Dimension {
    /// The key segment: `{ns}:dlq:ix:{segment}:{value}`.
    pub fn segment(self) -> &'static str {
        match self {
            Dimension::Stage => "stage",
            Dimension::EventType => "type",
            Dimension::ErrorClass => "class",
            Dimension::Destination => "dest",
            Dimension::Code => "code",
            Dimension::Publisher => "pub",
            Dimension::Email => "email",
            Dimension::Fingerprint => "fp",
            Dimension::Event => "event",
            Dimension::Status => "status",
        }
    }
}

/// Where a dead letter is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for an operator.
    Parked,
    /// Taken by a replay job that has not sent it yet (or was cut off while sending).
    Replaying,
    /// Sent again by a replay job; the outcome is in its state.
    Replayed,
    /// Removed by an operator; the summary stays for the audit, the message is gone.
    Purged,
}

impl Status {
    pub const ALL: [Status; 4] = [
        Status::Parked,
        Status::Replaying,
        Status::Replayed,
        Status::Purged,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Status::Parked => "parked",
            Status::Replaying => "replaying",
            Status::Replayed => "replayed",
            Status::Purged => "purged",
        }
    }

    pub fn parse(label: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.label() == label)
    }
}

/// `dl-` + 24 hex digits of SHA-256 over the message.
pub fn id_of(message_key: &[u8]) -> String {
    let digest = Sha256::digest(message_key);
    format!("dl-{}", &hex::encode(digest)[..24])
}

/// The original message as an `Envelope`, when it is one.
pub fn envelope_of(record: &v1::DeadLetter) -> Option<v1::Envelope> {
    v1::Envelope::decode(record.original_body.as_slice()).ok()
}

/// The normalized email the failed event is about: the canonical contact's, or the
/// first `email` in a raw event's JSON, normalized as the normalizer would.
pub fn email_of(record: &v1::DeadLetter) -> Option<String> {
    use v1::envelope::Payload;
    let envelope = envelope_of(record)?;
    let found = match envelope.payload? {
        Payload::Canonical(canonical) => handoff_events::primary_email(&canonical)?.to_owned(),
        Payload::Raw(raw) => {
            let json: serde_json::Value = serde_json::from_slice(&raw.body).ok()?;
            first_email(&json, 0)?.to_owned()
        }
        Payload::Synced(_) => return None,
    };
    // Canonical emails are normalized already; this changes nothing there.
    Some(
        handoff_normalize::field::email(&found, false)
            .unwrap_or_else(|_| found.trim().to_lowercase()),
    )
}

/// The first string under a key named `email`, breadth-first, a few levels deep.
fn first_email(value: &serde_json::Value, depth: usize) -> Option<&str> {
    let serde_json::Value::Object(map) = value else {
        return None;
    };
    if let Some(serde_json::Value::String(email)) = map.get("email")
        && !email.trim().is_empty()
    {
        return Some(email);
    }
    if depth >= 3 {
        return None;
    }
    map.values().find_map(|v| first_email(v, depth + 1))
}

pub(crate) fn to_time(ts: &Timestamp) -> Option<OffsetDateTime> {
    let nanos = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_envelope(json: &str) -> Vec<u8> {
        v1::Envelope {
            event_id: "evt-1".into(),
            event_type: "lead.created".into(),
            publisher_id: "acme".into(),
            payload: Some(v1::envelope::Payload::Raw(v1::RawPayload {
                content_type: "application/json".into(),
                body: json.as_bytes().to_vec(),
            })),
            ..v1::Envelope::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn a_broker_dead_letter_takes_type_publisher_and_email_from_the_envelope() {
        let record = v1::DeadLetter {
            stage: "normalizer".into(),
            error_class: ErrorClass::Broker as i32,
            error_code: "delivery_limit".into(),
            original_body: raw_envelope(r#"{"contact": {"email": "  Alex@Example.COM "}}"#),
            dead_lettered_at: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            ..v1::DeadLetter::default()
        };
        let summary = Summary::of(&record, b"message");
        assert_eq!(summary.event_type, "lead.created");
        assert_eq!(summary.publisher_id, "acme");
        assert_eq!(summary.email, "alex@example.com");
        assert_eq!(summary.error_class, "broker");
        assert_eq!(summary.score(), 1_700_000_000_000);
        assert_eq!(summary.dead_lettered_at, "2023-11-14T22:13:20Z");
        assert!(summary.id.starts_with("dl-") && summary.id.len() == 27);
    }

    #[test]
    fn the_same_message_gets_the_same_id_and_another_one_another() {
        assert_eq!(id_of(b"a"), id_of(b"a"));
        assert_ne!(id_of(b"a"), id_of(b"b"));
    }

    #[test]
    fn empty_values_are_not_indexed() {
        let summary = Summary::of(&v1::DeadLetter::default(), b"x");
        let dims: Vec<Dimension> = summary.index_entries().iter().map(|(d, _)| *d).collect();
        assert_eq!(dims, vec![Dimension::ErrorClass, Dimension::Fingerprint]);
    }
}
