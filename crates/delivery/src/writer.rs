//! What every writer stage does around its destination calls, so the crm-writer and the
//! email-writer differ only in what they send.
//!
//! One canonical message goes: [`WriterStage::decode`] → (the writer decides its work) →
//! [`WriterStage::claim`] (done before: ack the duplicate; another worker on it: defer) → the
//! writer's calls → [`WriterStage::report`] (a `*.synced` message for write-backs) →
//! [`WriterStage::delivered`] (complete the claim with the ledger) → ack.
//!
//! A failed write releases the claim and goes to [`WriterStage::failed`]: a permanent refusal is
//! dead-lettered at once with the destination's own error; a transient failure goes back through
//! the broker's delay queues after a full-jitter backoff ([`RetryPolicy`]) until the policy gives
//! up (then a dead letter with the attempt history); a rate limit that outlasted the engine's
//! wait is deferred without using an attempt. Every fate is counted in
//! `handoff_writer_events_total{stage,event_type,outcome}` and noted in the ledger.

// `Err(Outcome)` is the message's final answer, returned once per message: its size costs nothing.
#![allow(clippy::result_large_err)]

use std::time::{Duration, SystemTime};

use handoff_bus::{Bus, Delivery, Failure, Outcome, OutgoingMessage};
use handoff_events::v1::envelope::Payload;
use handoff_events::v1::{Envelope, ErrorClass, Synced};
use handoff_events::{Message as _, PROTOBUF_CONTENT_TYPE};
use handoff_idempotency::{Claim, ClaimToken, DedupeConfig, IdempotencyKey, LedgerUpdate, Store};
use tracing::{debug, warn};

use crate::backoff::{RetryDecision, RetryPolicy};
use crate::engine::CallError;

/// Why a write did not go through.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Call(#[from] CallError),
    /// Redis, for the stale guard or a step's claim, is unavailable: retry later.
    #[error("the stale guard is unavailable: {0}")]
    Guard(String),
    /// The destination answered 2xx without what the writer needs (a record id).
    #[error("{0}")]
    Unexpected(String),
    /// A request could not be built from the event (a value it needs is missing): permanent.
    #[error("{0}")]
    Render(String),
}

/// The event's identity, for logs, the ledger and dead letters.
#[derive(Debug, Clone)]
pub struct EventIdentity {
    pub event_id: String,
    pub event_type: String,
    pub publisher_id: String,
    /// The destination the writer feeds (`hubspot`, `mailchimp`, `rest`).
    pub destination: &'static str,
    /// A second piece of work about the same event (e.g. `write-back`, for a `*.synced` report),
    /// with its own claim and its own ledger entry (`{stage}.{step}`), so it never collides with
    /// the event's own.
    pub step: Option<&'static str>,
}

impl EventIdentity {
    /// The same event, for another piece of work (see [`EventIdentity::step`]).
    pub fn for_step(mut self, step: &'static str) -> Self {
        self.step = Some(step);
        self
    }

    fn failure(&self, class: ErrorClass, message: impl Into<String>) -> Failure {
        Failure {
            event_id: self.event_id.clone(),
            event_type: self.event_type.clone(),
            publisher_id: self.publisher_id.clone(),
            destination: self.destination.to_owned(),
            ..Failure::new(class, message)
        }
    }
}

/// A claim this worker holds on one event.
#[derive(Debug)]
pub struct Claimed {
    key: IdempotencyKey,
    token: ClaimToken,
    fingerprint: String,
}

/// How long a redelivery waits when another worker holds the event's claim: long enough for a
/// live worker to finish, short next to the lease a dead worker's claim runs out after.
const IN_FLIGHT_DEFER: Duration = Duration::from_secs(5);

/// The parts of a writer that are the same for every destination.
#[derive(Clone)]
pub struct WriterStage {
    /// The stage's name (`crm-writer`, `email-writer`): idempotency keys, ledger, metrics.
    pub stage: &'static str,
    pub bus: Bus,
    pub store: Store,
    pub retry: RetryPolicy,
    pub dedupe: DedupeConfig,
    pub ledger_ttl: Duration,
}

impl WriterStage {
    /// The stage `stage` on the service's connections.
    pub fn new(
        stage: &'static str,
        runtime: &crate::service::WriterRuntime,
        retry: &RetryPolicy,
        dedupe: &DedupeConfig,
        ledger_ttl: Duration,
    ) -> WriterStage {
        WriterStage {
            stage,
            bus: runtime.bus.clone(),
            store: runtime.store.clone(),
            retry: retry.clone(),
            dedupe: dedupe.clone(),
            ledger_ttl,
        }
    }

    /// Decodes the message's `Envelope`; a message that is not one is dead-lettered.
    pub fn decode(
        &self,
        delivery: &Delivery,
        destination: &'static str,
    ) -> Result<(Envelope, EventIdentity), Outcome> {
        match Envelope::decode(delivery.body.as_slice()) {
            Ok(envelope) => {
                let id = EventIdentity {
                    event_id: envelope.event_id.clone(),
                    event_type: envelope.event_type.clone(),
                    publisher_id: envelope.publisher_id.clone(),
                    destination,
                    step: None,
                };
                handoff_bus::record_identity(&id.event_id, &id.event_type, &id.publisher_id);
                Ok((envelope, id))
            }
            Err(err) => {
                metrics::dead_lettered(self.stage, "unknown", ErrorClass::Undecodable);
                warn!(error = %err, "Dead-lettering a message that is not a handoff.v1.Envelope.");
                Err(Outcome::DeadLetter(Failure {
                    destination: destination.to_owned(),
                    ..Failure::new(
                        ErrorClass::Undecodable,
                        format!("the message is not a handoff.v1.Envelope: {err}"),
                    )
                }))
            }
        }
    }

    /// Counts a message that has nothing to do here (a report this stage does not use, a step
    /// switched off) and acks it, leaving the ledger alone.
    pub fn skip(&self, id: &EventIdentity) -> Outcome {
        metrics::event(self.stage, &id.event_type, "skipped");
        debug!("Nothing to do for this message; acking.");
        Outcome::Ack
    }

    /// An event whose type has no route here: noted in the ledger as `skipped`, so the event's
    /// timeline says this stage saw it and had nothing to send, then counted and acked.
    pub async fn no_route(&self, id: &EventIdentity) -> Outcome {
        let update = self
            .ledger_update(id, "skipped")
            .with_detail("destination", id.destination)
            .with_detail("reason", "no route for this event type");
        self.note(&update).await;
        self.skip(id)
    }

    /// Claims the event for this stage. `Err` is the outcome to return at once: a duplicate is
    /// acked, an event another worker holds is deferred, an unavailable Redis retries.
    pub async fn claim(
        &self,
        id: &EventIdentity,
        envelope: &Envelope,
        delivery: &Delivery,
    ) -> Result<Claimed, Outcome> {
        let key = IdempotencyKey::new(self.stage_of(id), &id.publisher_id, &id.event_id);
        let fingerprint = hex::encode(&envelope.content_sha256);
        match self
            .store
            .claim(&key, &fingerprint, self.dedupe.lease)
            .await
        {
            Ok(Claim::Acquired(token)) => Ok(Claimed {
                key,
                token,
                fingerprint,
            }),
            Ok(Claim::Done { .. }) => {
                metrics::event(self.stage, &id.event_type, "duplicate");
                debug!("Already written; acking the redelivery.");
                Err(Outcome::Ack)
            }
            Ok(Claim::InFlight { .. }) => {
                // Another worker is on it, or died holding the claim until its lease runs out.
                metrics::event(self.stage, &id.event_type, "deferred");
                Err(Outcome::Defer {
                    delay: IN_FLIGHT_DEFER,
                    reason: "another worker is writing this event".to_owned(),
                })
            }
            Err(err) => {
                warn!(error = %err, "Redis is unavailable; retrying later.");
                Err(self
                    .retry_or_give_up(
                        id,
                        delivery,
                        format!("the dedupe store is unavailable: {err}"),
                        None,
                    )
                    .await)
            }
        }
    }

    /// Gives the claim back so a retry can take it. If Redis is away, it is released in the
    /// background once Redis is back, so the retry does not wait out the lease.
    pub async fn release(&self, claimed: &Claimed) {
        if let Err(err) = self.store.release(&claimed.key, &claimed.token).await {
            debug!(error = %err, "Could not release the claim yet; retrying in the background.");
            self.store
                .release_in_background(&claimed.key, &claimed.token, self.dedupe.lease);
        }
    }

    /// Completes the claim with the ledger's `delivered` in one round trip (retried briefly),
    /// counts the event and acks it. If Redis stays away, the destination has the records but
    /// neither the dedupe record nor the ledger says so: the completion goes on in the background
    /// and the message is retried, so the ledger is never left without the delivery (the retry
    /// finds the event done once the completion lands, or repeats idempotent writes).
    pub async fn delivered(
        &self,
        id: &EventIdentity,
        claimed: &Claimed,
        ledger: &LedgerUpdate,
    ) -> Outcome {
        let mut pause = Duration::from_millis(50);
        let mut last_error = None;
        for _ in 0..3 {
            match self
                .store
                .complete(
                    &claimed.key,
                    &claimed.token,
                    &claimed.fingerprint,
                    self.dedupe.retention,
                    Some(ledger),
                )
                .await
            {
                Ok(()) => {
                    metrics::event(self.stage, &id.event_type, "delivered");
                    return Outcome::Ack;
                }
                Err(err) => last_error = Some(err),
            }
            tokio::time::sleep(pause).await;
            pause *= 4;
        }
        let error = last_error.map(|e| e.to_string()).unwrap_or_default();
        warn!(%error, "Written, but the dedupe record and the ledger could not be written; retrying the message.");
        self.store.complete_in_background(
            &claimed.key,
            &claimed.token,
            &claimed.fingerprint,
            self.dedupe.retention,
            Some(ledger.clone()),
            self.dedupe.lease,
        );
        metrics::event(self.stage, &id.event_type, "retry");
        Outcome::RetryLater {
            delay: self.retry.base,
            error: format!("written, but the completion could not be recorded: {error}"),
        }
    }

    /// Publishes a writer's report (`Synced`) about `envelope` to `routing_key`, with the event's
    /// id, publisher and times. A failed publish retries the message: the repeat is harmless.
    pub async fn report(
        &self,
        envelope: &Envelope,
        routing_key: &str,
        synced: Synced,
    ) -> Result<(), Outcome> {
        let report = Envelope {
            event_id: envelope.event_id.clone(),
            event_type: routing_key.to_owned(),
            schema_version: envelope.schema_version,
            occurred_at: envelope.occurred_at,
            received_at: envelope.received_at,
            source: envelope.source.clone(),
            publisher_id: envelope.publisher_id.clone(),
            content_sha256: envelope.content_sha256.clone(),
            attributes: envelope.attributes.clone(),
            payload: Some(Payload::Synced(synced)),
        };
        let message = OutgoingMessage {
            routing_key: routing_key.to_owned(),
            body: report.encode_to_vec(),
            content_type: Some(PROTOBUF_CONTENT_TYPE.to_owned()),
            message_id: Some(envelope.event_id.clone()),
            message_type: Some("handoff.v1.Envelope".to_owned()),
            headers: Default::default(),
        };
        match self.bus.publish(message).await {
            Ok(()) => Ok(()),
            Err(err) => {
                warn!(error = %err, routing_key, "Could not publish the report; retrying the event.");
                Err(Outcome::RetryLater {
                    delay: self.retry.base,
                    error: format!("publishing {routing_key} failed: {err}"),
                })
            }
        }
    }

    /// Sorts a failed write: permanent → dead letter, rate limited → defer, else retry or give up.
    pub async fn failed(
        &self,
        id: &EventIdentity,
        delivery: &Delivery,
        err: WriteError,
    ) -> Outcome {
        match err {
            WriteError::Call(CallError::RateLimited { retry_after, .. }) => {
                metrics::event(self.stage, &id.event_type, "deferred");
                Outcome::Defer {
                    delay: retry_after,
                    reason: "the destination's quota is spent".to_owned(),
                }
            }
            WriteError::Call(CallError::Permanent { status, reason, .. }) => {
                let code = status.map(|s| s.to_string());
                self.reject(id, ErrorClass::Permanent, reason, code).await
            }
            WriteError::Call(CallError::AlreadyExists { reason, .. }) => {
                self.reject(id, ErrorClass::Permanent, reason, Some("409".into()))
                    .await
            }
            WriteError::Call(CallError::Transient {
                reason,
                retry_after,
                operation,
            }) => {
                self.retry_or_give_up(id, delivery, format!("{operation}: {reason}"), retry_after)
                    .await
            }
            WriteError::Render(reason) => {
                self.reject(id, ErrorClass::Validation, reason, None).await
            }
            other @ (WriteError::Guard(_) | WriteError::Unexpected(_)) => {
                self.retry_or_give_up(id, delivery, other.to_string(), None)
                    .await
            }
        }
    }

    /// A transient failure: back through the delay queues after a full-jitter delay (ledger
    /// `retrying` with the attempt and the next try), or a dead letter once the policy gives up.
    pub async fn retry_or_give_up(
        &self,
        id: &EventIdentity,
        delivery: &Delivery,
        error: String,
        retry_after: Option<Duration>,
    ) -> Outcome {
        let now = SystemTime::now();
        let first_failed_at = delivery
            .first_failed_at
            .map(SystemTime::from)
            .unwrap_or(now);
        let decision = self.retry.decide(
            delivery.attempt,
            first_failed_at,
            now,
            retry_after,
            &mut rand::rng(),
        );
        match decision {
            RetryDecision::RetryAt(delay) => {
                metrics::event(self.stage, &id.event_type, "retry");
                warn!(attempt = delivery.attempt, delay_ms = delay.as_millis() as u64, %error, "Retrying later.");
                let next = (time::OffsetDateTime::now_utc() + delay)
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default();
                let update = self
                    .ledger_update(id, handoff_idempotency::RETRYING)
                    .with_detail("destination", id.destination)
                    .with_detail("attempt", delivery.attempt)
                    .with_detail("next_try_at", next)
                    .with_detail("reason", error.clone());
                self.note(&update).await;
                Outcome::RetryLater { delay, error }
            }
            RetryDecision::GiveUp { reason } => {
                let message = format!("{reason}: {error}");
                self.reject(id, ErrorClass::RetriesExhausted, message, None)
                    .await
            }
        }
    }

    /// Dead-letters the event and notes it in the ledger (best effort).
    pub async fn reject(
        &self,
        id: &EventIdentity,
        class: ErrorClass,
        message: String,
        code: Option<String>,
    ) -> Outcome {
        metrics::event(self.stage, &id.event_type, "dead_lettered");
        metrics::dead_lettered(self.stage, &id.event_type, class);
        warn!(error_class = class.label(), reason = %message, "Dead-lettering an event the destination cannot take.");
        let update = self
            .ledger_update(id, "dead_lettered")
            .with_detail("destination", id.destination)
            .with_detail("error_class", class.label())
            .with_detail("reason", message.clone());
        self.note(&update).await;
        Outcome::DeadLetter(Failure {
            code: code.unwrap_or_default(),
            ..id.failure(class, message)
        })
    }

    /// Writes one ledger update, best effort (the ledger informs; it never blocks delivery).
    pub async fn note(&self, update: &LedgerUpdate) {
        if update.publisher_id.is_empty() || update.event_id.is_empty() {
            return;
        }
        if let Err(err) = self.store.ledger_record(update).await {
            debug!(error = %err, "Could not write the ledger.");
        }
    }

    /// The name claims and the ledger use for `id`'s work: the stage, or `{stage}.{step}`.
    fn stage_of(&self, id: &EventIdentity) -> String {
        match id.step {
            Some(step) => format!("{}.{step}", self.stage),
            None => self.stage.to_owned(),
        }
    }

    /// A ledger update from this stage about `id`, with its type, trace id and the ledger's TTL.
    pub fn ledger_update(&self, id: &EventIdentity, status: &str) -> LedgerUpdate {
        let mut update =
            LedgerUpdate::now(&id.publisher_id, &id.event_id, self.stage_of(id), status)
                .with_ttl(self.ledger_ttl);
        // A step's message (a `*.synced` report) is not the event: it leaves the type alone.
        if !id.event_type.is_empty() && id.step.is_none() {
            update = update.with_event_type(&id.event_type);
        }
        if let Some(trace_id) = handoff_bus::trace::current_trace_id() {
            update = update.with_trace_id(trace_id);
        }
        update
    }
}

/// The `occurred_at` of an envelope in Unix milliseconds (0 when absent), the stale guard's clock.
pub fn occurred_at_ms(envelope: &Envelope) -> i64 {
    envelope
        .occurred_at
        .as_ref()
        .and_then(handoff_events::to_offset_date_time)
        .and_then(|at| i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok())
        .unwrap_or_default()
}

/// The writers' metrics, one family per fact with a `stage` label, so one dashboard covers both.
pub mod metrics {
    use handoff_events::v1::ErrorClass;

    /// An event's fate: `delivered`, `duplicate`, `retry`, `deferred`, `dead_lettered`, `skipped`.
    pub fn event(stage: &'static str, event_type: &str, outcome: &'static str) {
        metrics::counter!(
            "handoff_writer_events_total",
            "stage" => stage,
            "event_type" => event_type.to_owned(),
            "outcome" => outcome
        )
        .increment(1);
    }

    /// A dead-lettered event, by error class.
    pub fn dead_lettered(stage: &'static str, event_type: &str, class: ErrorClass) {
        metrics::counter!(
            "handoff_writer_dead_letters_total",
            "stage" => stage,
            "event_type" => event_type.to_owned(),
            "error_class" => class.label()
        )
        .increment(1);
    }

    /// Fields left out because a newer event had already written them (out-of-order delivery).
    pub fn stale_skipped(stage: &'static str, event_type: &str, record: &'static str, n: usize) {
        metrics::counter!(
            "handoff_writer_stale_fields_skipped_total",
            "stage" => stage,
            "event_type" => event_type.to_owned(),
            "record" => record
        )
        .increment(n as u64);
    }

    /// A field left out because another system owns it.
    pub fn owned_field_skipped(stage: &'static str, owner: &str) {
        metrics::counter!(
            "handoff_writer_owned_fields_skipped_total",
            "stage" => stage,
            "owner" => owner.to_owned()
        )
        .increment(1);
    }

    /// Event fields left out because no mapping names a destination field for them.
    pub fn unmapped_fields(stage: &'static str, event_type: &str, n: usize) {
        metrics::counter!(
            "handoff_writer_unmapped_fields_total",
            "stage" => stage,
            "event_type" => event_type.to_owned()
        )
        .increment(n as u64);
    }

    /// Records created or updated, by kind and disposition.
    pub fn record(stage: &'static str, kind: &'static str, disposition: &'static str) {
        metrics::counter!(
            "handoff_writer_records_total",
            "stage" => stage,
            "record" => kind,
            "disposition" => disposition
        )
        .increment(1);
    }
}
