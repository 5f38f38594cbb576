//! One canonical message, start to end.
//!
//! decode → route (off: ack) → plan (no identifier: dead letter) → claim `crm-writer` for the
//! event id (done before: ack the duplicate; another worker on it: defer) → write the plan →
//! publish `crm.contact.synced` → complete the claim with the ledger → ack.
//!
//! A failed write releases the claim and is sorted by what the engine says: a permanent refusal
//! is dead-lettered at once with the CRM's own error; a transient failure goes back through the
//! broker's delay queues after a full-jitter backoff ([`RetryPolicy`]), until the policy gives up
//! (then a dead letter with the attempt history); a rate limit that outlasted the engine's wait
//! is deferred without using an attempt.

use std::time::{Duration, SystemTime};

use handoff_bus::{
    Bus, CRM_CONTACT_SYNCED, CRM_WRITER, Delivery, Failure, Handler, Outcome, OutgoingMessage,
};
use handoff_delivery::{CallError, RetryDecision, RetryPolicy};
use handoff_events::v1::envelope::Payload;
use handoff_events::v1::{Envelope, ErrorClass, Synced, SyncedRecord};
use handoff_events::{EventType, Message as _, PROTOBUF_CONTENT_TYPE};
use handoff_idempotency::{Claim, DedupeConfig, IdempotencyKey, LedgerUpdate, Store};
use tracing::{Instrument as _, debug, field, warn};

use crate::hubspot::{ApplyError, HubSpot, Touched, WriteFacts};
use crate::metrics;
use crate::plan::{EventFacts, ObjectKind, Plan, plan};
use crate::rest::RestAdapter;
use crate::routes::RoutesConfig;

/// Where the writer sends events: HubSpot (the routes and plans of this crate) or an internal
/// tool described by REST templates.
#[derive(Debug, Clone)]
pub enum Adapter {
    HubSpot(HubSpot),
    Rest(RestAdapter),
}

impl Adapter {
    /// The destination's name, for dead letters and the ledger.
    pub fn destination(&self) -> &'static str {
        match self {
            Adapter::HubSpot(_) => crate::hubspot::DESTINATION,
            Adapter::Rest(_) => crate::rest::DESTINATION,
        }
    }
}

/// What one event asks of the adapter, worked out before the claim.
enum Work<'a> {
    Plan(Plan),
    Rest(&'a handoff_events::v1::CanonicalPayload),
}

/// How long a redelivery waits when another worker holds the event's claim: long enough for a
/// live worker to finish, short next to the lease a dead worker's claim runs out after.
const IN_FLIGHT_DEFER: Duration = Duration::from_secs(5);

/// The crm-writer's message handler.
pub struct CrmHandler {
    pub bus: Bus,
    pub store: Store,
    pub adapter: Adapter,
    pub routes: RoutesConfig,
    pub retry: RetryPolicy,
    pub dedupe: DedupeConfig,
    pub ledger_ttl: Duration,
}

impl Handler for CrmHandler {
    async fn handle(&self, delivery: &Delivery) -> Outcome {
        let span = tracing::info_span!(
            "crm.write",
            otel.kind = "internal",
            event_id = field::Empty,
            event_type = field::Empty,
            publisher_id = field::Empty,
        );
        self.process(delivery).instrument(span).await
    }
}

/// The event's identity, for logs, the ledger and dead letters.
struct Identity {
    event_id: String,
    event_type: String,
    publisher_id: String,
    destination: &'static str,
}

impl Identity {
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

impl CrmHandler {
    async fn process(&self, delivery: &Delivery) -> Outcome {
        let envelope = match Envelope::decode(delivery.body.as_slice()) {
            Ok(envelope) => envelope,
            Err(err) => {
                metrics::dead_lettered("unknown", ErrorClass::Undecodable);
                warn!(error = %err, "Dead-lettering a message that is not a handoff.v1.Envelope.");
                return Outcome::DeadLetter(Failure::new(
                    ErrorClass::Undecodable,
                    format!("the message is not a handoff.v1.Envelope: {err}"),
                ));
            }
        };
        let id = Identity {
            event_id: envelope.event_id.clone(),
            event_type: envelope.event_type.clone(),
            publisher_id: envelope.publisher_id.clone(),
            destination: self.adapter.destination(),
        };
        let span = tracing::Span::current();
        span.record("event_id", id.event_id.as_str());
        span.record("event_type", id.event_type.as_str());
        span.record("publisher_id", id.publisher_id.as_str());

        let Ok(event_type) = envelope.event_type.parse::<EventType>() else {
            let message = format!("unknown event type {:?}", envelope.event_type);
            return self
                .reject(&id, ErrorClass::Undecodable, message, None)
                .await;
        };
        let routed = match &self.adapter {
            Adapter::HubSpot(_) => self.routes.route(event_type).enabled,
            Adapter::Rest(rest) => rest.handles(event_type.as_str()),
        };
        if !routed {
            metrics::event(&id.event_type, "skipped");
            debug!("No CRM route for this event type; acking.");
            return Outcome::Ack;
        }
        let canonical = match &envelope.payload {
            Some(Payload::Canonical(canonical)) => Some(canonical),
            _ => None,
        };
        let work = match (&self.adapter, canonical) {
            (Adapter::Rest(_), Some(canonical)) => Work::Rest(canonical),
            _ => {
                let facts = EventFacts {
                    event_type,
                    event_id: &id.event_id,
                };
                match plan(facts, canonical, &self.routes.values) {
                    Ok(plan) => Work::Plan(plan),
                    Err(err) => {
                        let class = match canonical {
                            None => ErrorClass::Undecodable,
                            Some(_) => ErrorClass::Validation,
                        };
                        return self.reject(&id, class, err.to_string(), None).await;
                    }
                }
            }
        };

        let key = IdempotencyKey::new(CRM_WRITER, &id.publisher_id, &id.event_id);
        let fingerprint = hex::encode(&envelope.content_sha256);
        let token = match self
            .store
            .claim(&key, &fingerprint, self.dedupe.lease)
            .await
        {
            Ok(Claim::Acquired(token)) => token,
            Ok(Claim::Done { .. }) => {
                metrics::event(&id.event_type, "duplicate");
                debug!("Already written to the CRM; acking the redelivery.");
                return Outcome::Ack;
            }
            Ok(Claim::InFlight { .. }) => {
                // Another worker is on it, or died holding the claim until its lease runs out.
                metrics::event(&id.event_type, "deferred");
                return Outcome::Defer {
                    delay: IN_FLIGHT_DEFER,
                    reason: "another worker is writing this event".to_owned(),
                };
            }
            Err(err) => {
                warn!(error = %err, "Redis is unavailable; retrying later.");
                return self
                    .retry_or_give_up(
                        &id,
                        delivery,
                        format!("the dedupe store is unavailable: {err}"),
                        None,
                    )
                    .await;
            }
        };

        let occurred_at_ms = envelope
            .occurred_at
            .as_ref()
            .and_then(handoff_events::to_offset_date_time)
            .and_then(|at| i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok())
            .unwrap_or_default();
        let write = WriteFacts {
            event_id: &id.event_id,
            event_type: &id.event_type,
            source: &envelope.source,
            occurred_at_ms,
        };
        let applied = match (&self.adapter, &work) {
            (Adapter::HubSpot(hubspot), Work::Plan(plan)) => hubspot.apply(plan, write).await,
            (Adapter::Rest(rest), Work::Rest(canonical)) => {
                rest.apply(&envelope, canonical).await.map(|_| Vec::new())
            }
            _ => Err(ApplyError::Unexpected(
                "the work does not fit the adapter".to_owned(),
            )),
        };
        let touched = match applied {
            Ok(touched) => touched,
            Err(err) => {
                if let Err(release_err) = self.store.release(&key, &token).await {
                    debug!(error = %release_err, "Could not release the claim; it will expire.");
                }
                return self.failed(&id, delivery, err).await;
            }
        };
        for t in &touched {
            metrics::record(t.key.kind.label(), t.disposition);
        }

        if let Err(outcome) = self.publish_synced(&envelope, &touched).await {
            if let Err(release_err) = self.store.release(&key, &token).await {
                debug!(error = %release_err, "Could not release the claim; it will expire.");
            }
            return outcome;
        }
        let ledger = self
            .ledger_update(&id, "delivered")
            .with_detail("destination", id.destination)
            .with_detail("records", records_detail(&touched));
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
            // The CRM has the records; a redelivery repeats upserts by natural key, never a create.
            warn!(error = %err, "Written to the CRM, but the dedupe record could not be written.");
        }
        metrics::event(&id.event_type, "delivered");
        debug!(records = touched.len(), "Written to the CRM.");
        Outcome::Ack
    }

    /// Publishes `crm.contact.synced` when the event touched a contact (the write-back and the
    /// ledger's source for CRM ids). A failed publish retries the message: the repeat is harmless.
    async fn publish_synced(
        &self,
        envelope: &Envelope,
        touched: &[Touched],
    ) -> Result<(), Outcome> {
        if !touched.iter().any(|t| t.key.kind == ObjectKind::Contact) {
            return Ok(());
        }
        let synced = Synced {
            stage: CRM_WRITER.to_owned(),
            destination: self.adapter.destination().to_owned(),
            delivered_event_type: envelope.event_type.clone(),
            records: touched
                .iter()
                .map(|t| SyncedRecord {
                    kind: t.key.kind.label().to_owned(),
                    id: t.id.clone().unwrap_or_default(),
                    key_property: t.key.id_property.clone(),
                    key: t.key.id.clone(),
                    disposition: t.disposition.to_owned(),
                })
                .collect(),
        };
        let report = Envelope {
            event_id: envelope.event_id.clone(),
            event_type: CRM_CONTACT_SYNCED.to_owned(),
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
            routing_key: CRM_CONTACT_SYNCED.to_owned(),
            body: report.encode_to_vec(),
            content_type: Some(PROTOBUF_CONTENT_TYPE.to_owned()),
            message_id: Some(envelope.event_id.clone()),
            message_type: Some("handoff.v1.Envelope".to_owned()),
            headers: Default::default(),
        };
        match self.bus.publish(message).await {
            Ok(()) => Ok(()),
            Err(err) => {
                warn!(error = %err, "Could not publish crm.contact.synced; retrying the event.");
                Err(Outcome::RetryLater {
                    delay: self.retry.base,
                    error: format!("publishing crm.contact.synced failed: {err}"),
                })
            }
        }
    }

    /// Sorts a failed write: permanent → dead letter, rate limited → defer, else retry or give up.
    async fn failed(&self, id: &Identity, delivery: &Delivery, err: ApplyError) -> Outcome {
        match err {
            ApplyError::Call(CallError::RateLimited { retry_after, .. }) => {
                metrics::event(&id.event_type, "deferred");
                Outcome::Defer {
                    delay: retry_after,
                    reason: "the CRM's quota is spent".to_owned(),
                }
            }
            ApplyError::Call(CallError::Permanent { status, reason, .. }) => {
                let code = status.map(|s| s.to_string());
                self.reject(id, ErrorClass::Permanent, reason, code).await
            }
            ApplyError::Call(CallError::AlreadyExists { reason, .. }) => {
                self.reject(id, ErrorClass::Permanent, reason, Some("409".into()))
                    .await
            }
            ApplyError::Call(CallError::Transient {
                reason,
                retry_after,
                operation,
            }) => {
                self.retry_or_give_up(id, delivery, format!("{operation}: {reason}"), retry_after)
                    .await
            }
            ApplyError::Render(reason) => {
                self.reject(id, ErrorClass::Validation, reason, None).await
            }
            other @ (ApplyError::Guard(_) | ApplyError::Unexpected(_)) => {
                self.retry_or_give_up(id, delivery, other.to_string(), None)
                    .await
            }
        }
    }

    async fn retry_or_give_up(
        &self,
        id: &Identity,
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
                metrics::event(&id.event_type, "retry");
                warn!(attempt = delivery.attempt, delay_ms = delay.as_millis() as u64, %error, "Retrying later.");
                let next = (time::OffsetDateTime::now_utc() + delay)
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default();
                let update = self
                    .ledger_update(id, "retrying")
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
    async fn reject(
        &self,
        id: &Identity,
        class: ErrorClass,
        message: String,
        code: Option<String>,
    ) -> Outcome {
        metrics::event(&id.event_type, "dead_lettered");
        metrics::dead_lettered(&id.event_type, class);
        warn!(error_class = class.label(), reason = %message, "Dead-lettering an event the CRM cannot take.");
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

    async fn note(&self, update: &LedgerUpdate) {
        if update.publisher_id.is_empty() || update.event_id.is_empty() {
            return;
        }
        if let Err(err) = self.store.ledger_record(update).await {
            debug!(error = %err, "Could not write the ledger.");
        }
    }

    fn ledger_update(&self, id: &Identity, status: &str) -> LedgerUpdate {
        let mut update = LedgerUpdate::now(&id.publisher_id, &id.event_id, CRM_WRITER, status)
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

/// The ledger's view of the records: `{"contact": {"id": "…", "disposition": "created"}, …}`.
fn records_detail(touched: &[Touched]) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for t in touched {
        map.insert(
            t.key.kind.label().to_owned(),
            serde_json::json!({
                "id": t.id,
                "key": format!("{}={}", t.key.id_property, t.key.id),
                "disposition": t.disposition,
            }),
        );
    }
    serde_json::Value::Object(map)
}
