//! Accepting one event: dedupe on `event_id`, publish the envelope with a
//! confirm, and only then commit the dedupe record.
//!
//! The order is the point. The claim stops two concurrent sends of one id from
//! both publishing; the `finished` record is written only after the broker's
//! confirm, so a publisher retrying after a 503 is never told "duplicate" for
//! an event that was not stored.

use std::time::{Duration, SystemTime};

use handoff_bus::{Bus, BusError, OutgoingMessage};
use handoff_events::v1::{Envelope, RawPayload, envelope::Payload};
use handoff_events::{EventType, Message, PROTOBUF_CONTENT_TYPE, Timestamp};
use handoff_idempotency::{Claim, IdempotencyKey, LedgerUpdate, Store};
use serde_json::Value;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::{debug, warn};

use crate::contract::CheckedEvent;
use crate::error::ApiError;
use crate::metrics;

/// The stage name ingest records under, in idempotency keys and the ledger.
pub const STAGE: &str = "ingest";

/// What became of an event that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub enum Accepted {
    /// Published and confirmed now.
    New { trace_id: String },
    /// Accepted earlier with the same content; nothing published.
    Duplicate,
}

/// Everything the accept step needs, shared by all requests.
#[derive(Clone)]
pub struct Acceptor {
    pub bus: Bus,
    pub store: Store,
    pub lease: Duration,
    pub retention: Duration,
    pub ledger_ttl: Duration,
    pub retry_after: Duration,
}

/// One event ready to accept: checked, with its canonical fingerprint.
pub struct Candidate<'a> {
    pub publisher_id: &'a str,
    pub event_type: EventType,
    pub checked: CheckedEvent,
    /// The publisher's JSON, forwarded as is.
    pub body: Vec<u8>,
    pub fingerprint: [u8; 32],
}

impl Acceptor {
    /// Dedupes, publishes and records one event. Errors are answers for the publisher.
    pub async fn accept(&self, candidate: Candidate<'_>) -> Result<Accepted, ApiError> {
        let event_id = candidate.checked.event_id.as_str().to_owned();
        let fingerprint = hex::encode(candidate.fingerprint);
        let key = IdempotencyKey {
            stage: STAGE.to_owned(),
            scope: candidate.publisher_id.to_owned(),
            id: event_id.clone(),
        };
        let token = match self.store.claim(&key, &fingerprint, self.lease).await {
            Ok(Claim::Acquired(token)) => token,
            Ok(Claim::Done { fingerprint: seen }) if seen == fingerprint => {
                return Ok(Accepted::Duplicate);
            }
            Ok(Claim::InFlight { fingerprint: seen }) if seen == fingerprint => {
                return Err(ApiError::in_flight(&event_id));
            }
            Ok(Claim::Done { .. } | Claim::InFlight { .. }) => {
                return Err(ApiError::conflict(&event_id));
            }
            Err(err) => {
                warn!(event_id = %event_id, error = %err, "Redis is unavailable; refusing the event.");
                return Err(ApiError::unavailable("the dedupe store", self.retry_after));
            }
        };

        let received_at = OffsetDateTime::now_utc();
        let envelope = Envelope {
            event_id: event_id.clone(),
            event_type: candidate.event_type.as_str().to_owned(),
            schema_version: candidate.checked.schema_version,
            occurred_at: Some(timestamp(candidate.checked.occurred_at)),
            received_at: Some(timestamp(received_at)),
            source: candidate.checked.source.clone().unwrap_or_default(),
            publisher_id: candidate.publisher_id.to_owned(),
            content_sha256: candidate.fingerprint.to_vec(),
            attributes: Default::default(),
            payload: Some(Payload::Raw(RawPayload {
                content_type: "application/json".to_owned(),
                body: candidate.body,
            })),
        };
        let routing_key = candidate.event_type.raw_routing_key();
        let message = OutgoingMessage {
            routing_key: routing_key.clone(),
            body: envelope.encode_to_vec(),
            content_type: Some(PROTOBUF_CONTENT_TYPE.to_owned()),
            message_id: Some(event_id.clone()),
            message_type: Some("handoff.v1.Envelope".to_owned()),
            headers: Default::default(),
        };
        let published = self.bus.publish(message).await;
        if let Err(err) = published {
            if let Err(release_err) = self.store.release(&key, &token).await {
                debug!(event_id = %event_id, error = %release_err, "Could not release the dedupe claim; it will expire.");
            }
            warn!(event_id = %event_id, error = %err, "The broker did not take the event.");
            metrics::publish_failed(&err);
            return Err(match err {
                BusError::Unroutable(_) => {
                    ApiError::unavailable("the event route", self.retry_after)
                }
                BusError::ConfirmTimeout(waited) => ApiError::unconfirmed(waited, self.retry_after),
                BusError::Unconfirmed(_) => ApiError::maybe_stored(
                    "the connection to the message broker failed before it confirmed the event",
                    self.retry_after,
                ),
                BusError::Nacked => ApiError::refused(self.retry_after),
                BusError::Unavailable | BusError::Amqp(_) => {
                    ApiError::unavailable("the message broker", self.retry_after)
                }
            });
        }

        let trace_id = handoff_bus::trace::current_trace_id().unwrap_or_default();
        let mut detail = serde_json::Map::new();
        detail.insert("routing_key".into(), Value::String(routing_key));
        let ledger = LedgerUpdate {
            publisher_id: candidate.publisher_id.to_owned(),
            event_id: event_id.clone(),
            event_type: Some(candidate.event_type.as_str().to_owned()),
            trace_id: Some(trace_id.clone()).filter(|t| !t.is_empty()),
            // Ingest holds the raw email only; the normalizer indexes the canonical one.
            email: None,
            stage: STAGE.to_owned(),
            status: "accepted".to_owned(),
            at: received_at.format(&Rfc3339).unwrap_or_default(),
            detail,
            ttl: self.ledger_ttl,
        };
        if let Err(err) = self
            .store
            .complete(&key, &token, &fingerprint, self.retention, Some(&ledger))
            .await
        {
            // The event is durable; only the dedupe record is missing. A retry
            // would publish a second copy, which later stages dedupe by event id.
            warn!(event_id = %event_id, error = %err, "The event is stored but its dedupe record could not be written.");
        }
        Ok(Accepted::New { trace_id })
    }
}

fn timestamp(at: OffsetDateTime) -> Timestamp {
    let at: SystemTime = at.into();
    Timestamp::from(at)
}

/// SHA-256 of `value` in canonical form: object keys sorted, no whitespace.
///
/// Two bodies that differ only in key order or spacing are the same event.
pub fn fingerprint(value: &Value) -> [u8; 32] {
    let mut hasher = Sha256::new();
    write_canonical(value, &mut hasher);
    hasher.finalize().into()
}

fn write_canonical(value: &Value, out: &mut Sha256) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.update(b"{");
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.update(b",");
                }
                write_json(key, out);
                out.update(b":");
                write_canonical(item, out);
            }
            out.update(b"}");
        }
        Value::Array(items) => {
            out.update(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.update(b",");
                }
                write_canonical(item, out);
            }
            out.update(b"]");
        }
        scalar => write_json(scalar, out),
    }
}

/// Streams `value`'s JSON text into the hash without an intermediate string.
fn write_json<T: serde::Serialize + ?Sized>(value: &T, out: &mut Sha256) {
    struct HashWriter<'a>(&'a mut Sha256);
    impl std::io::Write for HashWriter<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    // Writing JSON into a hasher cannot fail: the writer never errors and
    // every `Value` serializes.
    let _ = serde_json::to_writer(HashWriter(out), value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fingerprint_ignores_key_order_and_whitespace() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"y":[1,2],"x":"s"}}"#).expect("json");
        let b: Value = serde_json::from_str("{ \"a\" : {\"x\":\"s\", \"y\":[1, 2]},\n \"b\":1 }")
            .expect("json");
        assert_eq!(fingerprint(&a), fingerprint(&b));
    }

    #[test]
    fn fingerprint_is_the_sha256_of_sorted_compact_json() {
        let value = json!({"b": "x\"y", "a": [1, 2.5, null, true], "c": {"z": 1, "y": {}}});
        let canonical = br#"{"a":[1,2.5,null,true],"b":"x\"y","c":{"y":{},"z":1}}"#;
        let expected: [u8; 32] = Sha256::digest(canonical).into();
        assert_eq!(fingerprint(&value), expected);
    }

    #[test]
    fn fingerprint_sees_every_value() {
        let base = json!({"a": {"x": "s", "y": [1, 2]}});
        for changed in [
            json!({"a": {"x": "t", "y": [1, 2]}}),
            json!({"a": {"x": "s", "y": [2, 1]}}),
            json!({"a": {"x": "s", "y": [1, 2], "z": null}}),
            json!({"a": {"x": "s"}, "y": [1, 2]}),
        ] {
            assert_ne!(fingerprint(&base), fingerprint(&changed), "{changed}");
        }
    }
}
