//! One raw message in, one canonical message out: the per-message logic.
//!
//! Order, and why:
//!
//! 1. Decode the `Envelope` and normalize its raw payload. Both are pure and
//!    permanent when they fail: the message is dead-lettered at once with
//!    every field-level reason, never retried, and Redis is not touched.
//! 2. Claim `(normalizer, publisher, event_id)` in Redis. A redelivered raw
//!    message whose canonical twin was already confirmed finds the record
//!    `finished` and is acked without a second publish.
//! 3. Publish the canonical envelope (same `event_id`) to
//!    `canonical.<event_type>`, persistent, mandatory, confirmed, in a
//!    producer span whose context rides in the headers.
//! 4. Only after the confirm: mark the record finished and note `normalized`
//!    in the status ledger, indexed under the contact's normalized email
//!    ([`handoff_events::primary_email`]) for the per-contact timeline; then
//!    the consumer loop acks the raw message.
//!
//! Anything transient (Redis down, broker nack or timeout) releases the claim
//! and answers [`Outcome::RetryLater`]: the message goes through the stage's
//! delay queue and comes back, without holding the consumer.

use std::time::{Duration, Instant};

use handoff_bus::{
    Bus, BusError, Delivery, Failure, Handler, NORMALIZER, Outcome, OutgoingMessage,
};
use handoff_events::v1::{Envelope, ErrorClass, envelope::Payload};
use handoff_events::{CURRENT_SCHEMA_VERSION, EventType, Message, PROTOBUF_CONTENT_TYPE};
use handoff_idempotency::{Claim, DedupeConfig, IdempotencyKey, LedgerUpdate, Store};
use handoff_normalize::{Normalizer, NoteKind, Rejection};
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use crate::metrics;

/// The longest wait between two tries after a transient failure.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(600);

/// How long to wait before try `attempt + 1` after Redis or the broker failed
/// us: 1 s, 2 s, 4 s, … up to ten minutes (the bus rounds up to its delay
/// tiers). With the default 30 attempts that rides out an outage of hours
/// before the message is dead-lettered as `retries_exhausted`, while the
/// first retries come quickly after a blip.
fn retry_delay(attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << exponent).min(MAX_RETRY_DELAY)
}

/// Everything one message needs, shared by all of them.
pub struct NormalizeHandler {
    pub bus: Bus,
    pub store: Store,
    pub normalizer: Normalizer,
    pub dedupe: DedupeConfig,
    pub ledger_ttl: Duration,
}

impl Handler for NormalizeHandler {
    async fn handle(&self, delivery: &Delivery) -> Outcome {
        // The event's identity goes on the bus's consumer span (`record_identity`).
        self.process(delivery).await
    }
}

/// What an envelope that decoded tells about its event, for logs, dead letters and the ledger.
struct Identity {
    event_id: String,
    event_type: String,
    publisher_id: String,
}

impl Identity {
    fn of(envelope: &Envelope) -> Self {
        Identity {
            event_id: envelope.event_id.clone(),
            event_type: envelope.event_type.clone(),
            publisher_id: envelope.publisher_id.clone(),
        }
    }

    fn failure(&self, class: ErrorClass, message: impl Into<String>) -> Failure {
        Failure {
            event_id: self.event_id.clone(),
            event_type: self.event_type.clone(),
            publisher_id: self.publisher_id.clone(),
            ..Failure::new(class, message)
        }
    }
}

impl NormalizeHandler {
    async fn process(&self, delivery: &Delivery) -> Outcome {
        let envelope = match Envelope::decode(delivery.body.as_slice()) {
            Ok(envelope) => envelope,
            Err(err) => {
                metrics::rejected("unknown", ErrorClass::Undecodable);
                warn!(error = %err, "Dead-lettering a message that is not a handoff.v1.Envelope.");
                return Outcome::DeadLetter(Failure::new(
                    ErrorClass::Undecodable,
                    format!("the message is not a handoff.v1.Envelope: {err}"),
                ));
            }
        };
        let id = Identity::of(&envelope);
        handoff_bus::record_identity(&id.event_id, &id.event_type, &id.publisher_id);

        let event_type: EventType = match envelope.event_type.parse() {
            Ok(t) => t,
            Err(_) => {
                let message = format!("unknown event type {:?}", envelope.event_type);
                return self
                    .reject(&id, ErrorClass::Undecodable, message, Vec::new())
                    .await;
            }
        };
        let body = match &envelope.payload {
            Some(Payload::Raw(raw)) => raw.body.as_slice(),
            Some(Payload::Canonical(_) | Payload::Synced(_)) | None => {
                let message = "the envelope carries no raw payload to normalize".to_owned();
                return self
                    .reject(&id, ErrorClass::Undecodable, message, Vec::new())
                    .await;
            }
        };

        let started = Instant::now();
        let normalized = self
            .normalizer
            .normalize(event_type, envelope.schema_version, body);
        metrics::normalize_time(started.elapsed());
        let normalized = match normalized {
            Ok(normalized) => normalized,
            Err(rejection) => return self.rejected(&id, rejection).await,
        };
        for note in &normalized.notes {
            metrics::note(event_type, note.kind);
            match note.kind {
                NoteKind::DroppedInvalid => {
                    warn!(path = %note.path, reason = %note.message, "Dropped a field that could not be normalized.");
                }
                NoteKind::UnmappedPassedThrough => {
                    debug!(path = %note.path, reason = %note.message, "Passed an unmapped value through.");
                }
            }
        }

        let key = IdempotencyKey::new(NORMALIZER, &id.publisher_id, &id.event_id);
        let fingerprint = fingerprint(&envelope, body);
        let token = match self
            .store
            .claim(&key, &fingerprint, self.dedupe.lease)
            .await
        {
            Ok(Claim::Acquired(token)) => token,
            Ok(Claim::Done { fingerprint: seen }) if seen == fingerprint => {
                // Our canonical twin was confirmed before; this is a redelivery.
                metrics::event(event_type, "duplicate");
                debug!("Already normalized; acking the redelivery without publishing.");
                return Outcome::Ack;
            }
            Ok(Claim::Done { .. }) => {
                let message = "this event_id was already normalized with different content";
                return self
                    .reject(&id, ErrorClass::Validation, message.to_owned(), Vec::new())
                    .await;
            }
            Ok(Claim::InFlight { .. }) => {
                // Usually a redelivery racing the first handler, which finishes in
                // milliseconds; after a crash, the claim's lease runs out first.
                metrics::event(event_type, "retry");
                return Outcome::RetryLater {
                    delay: retry_delay(delivery.attempt),
                    error: "another worker is normalizing this event".to_owned(),
                };
            }
            Err(err) => {
                metrics::event(event_type, "retry");
                warn!(error = %err, "Redis is unavailable; retrying later.");
                return Outcome::RetryLater {
                    delay: retry_delay(delivery.attempt),
                    error: format!("the dedupe store is unavailable: {err}"),
                };
            }
        };

        let routing_key = event_type.canonical_routing_key();
        // Who the event is about, for the ledger's email index (the contact timeline).
        let email = handoff_events::primary_email(&normalized.payload).map(str::to_owned);
        let canonical = Envelope {
            schema_version: CURRENT_SCHEMA_VERSION,
            payload: Some(Payload::Canonical(normalized.payload)),
            ..envelope
        };
        let message = OutgoingMessage {
            routing_key: routing_key.clone(),
            body: canonical.encode_to_vec(),
            content_type: Some(PROTOBUF_CONTENT_TYPE.to_owned()),
            message_id: Some(id.event_id.clone()),
            message_type: Some("handoff.v1.Envelope".to_owned()),
            headers: Default::default(),
        };
        if let Err(err) = self.bus.publish(message).await {
            if let Err(release_err) = self.store.release(&key, &token).await {
                debug!(error = %release_err, "Could not release the dedupe claim; it will expire.");
            }
            metrics::event(event_type, "retry");
            warn!(error = %err, "The broker did not take the canonical event; retrying later.");
            let error = match err {
                BusError::Unroutable(_) => format!("canonical route {routing_key} is unroutable"),
                other => format!("publishing the canonical event failed: {other}"),
            };
            return Outcome::RetryLater {
                delay: retry_delay(delivery.attempt),
                error,
            };
        }

        let mut ledger = self
            .ledger_update(&id, "normalized")
            .with_detail("routing_key", routing_key)
            .with_detail("notes", normalized.notes.len());
        if let Some(email) = email {
            ledger = ledger.with_email(email);
        }
        if let Err(err) = self
            .store
            .complete(
                &key,
                &token,
                &fingerprint,
                self.dedupe.retention,
                Some(&ledger),
            )
            .await
        {
            // The canonical event is durable; only the dedupe record is missing. A
            // redelivery would publish a second copy, which the writers dedupe by event id.
            warn!(error = %err, "The canonical event is published but its dedupe record could not be written.");
        }
        metrics::event(event_type, "normalized");
        debug!("Normalized.");
        Outcome::Ack
    }

    async fn rejected(&self, id: &Identity, rejection: Rejection) -> Outcome {
        let fields = rejection
            .field_errors()
            .iter()
            .map(|f| (f.path.clone(), f.message.clone()))
            .collect();
        self.reject(id, rejection.error_class(), rejection.to_string(), fields)
            .await
    }

    /// Dead-letters a permanent failure and notes it in the ledger (best effort:
    /// the dead letter itself is what matters).
    async fn reject(
        &self,
        id: &Identity,
        class: ErrorClass,
        message: String,
        field_errors: Vec<(String, String)>,
    ) -> Outcome {
        metrics::rejected(&id.event_type, class);
        warn!(error_class = class.label(), reason = %message, "Dead-lettering an event that cannot be normalized.");
        if !id.publisher_id.is_empty() && !id.event_id.is_empty() {
            let update = self
                .ledger_update(id, "dead_lettered")
                .with_detail("error_class", class.label())
                .with_detail("reason", message.clone());
            if let Err(err) = self.store.ledger_record(&update).await {
                debug!(error = %err, "Could not note the dead letter in the ledger.");
            }
        }
        Outcome::DeadLetter(Failure {
            field_errors,
            ..id.failure(class, message)
        })
    }

    fn ledger_update(&self, id: &Identity, status: &str) -> LedgerUpdate {
        let mut update = LedgerUpdate::now(&id.publisher_id, &id.event_id, NORMALIZER, status)
            .with_ttl(self.ledger_ttl);
        if !id.event_type.is_empty() {
            update = update.with_event_type(&id.event_type);
        }
        if let Some(trace_id) = handoff_bus::trace::current_trace_id() {
            update = update.with_trace_id(trace_id);
        }
        update
    }
}

/// The event's identity for dedupe: ingest's content hash, or the raw body's
/// SHA-256 if an older producer left it out.
fn fingerprint(envelope: &Envelope, body: &[u8]) -> String {
    if envelope.content_sha256.is_empty() {
        hex::encode(Sha256::digest(body))
    } else {
        hex::encode(&envelope.content_sha256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_ten_minutes() {
        let delays: Vec<u64> = (1..=12).map(|a| retry_delay(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]);
        assert_eq!(retry_delay(0), Duration::from_secs(1));
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY_DELAY);
    }
}
