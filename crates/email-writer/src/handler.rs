//! One message, start to end.
//!
//! decode → `crm.contact.synced` (v1 has no use for it: ack, counted skipped) → route (off: ack)
//! → plan (no email: dead letter `validation`, no claim taken) → claim `email-writer` for the
//! event id (done before: ack the duplicate; another worker on it: defer) → write the member, its
//! tags and its event → publish `email.subscriber.synced` → complete the claim with the ledger
//! (indexed under the member's email) → ack. The steps every writer shares, and how a failure is
//! sorted, are `handoff_delivery::WriterStage`'s.

use std::time::Duration;

use handoff_bus::{
    CRM_CONTACT_SYNCED, Delivery, EMAIL_SUBSCRIBER_SYNCED, EMAIL_WRITER, Handler, Outcome,
};
use handoff_delivery::writer::metrics;
use handoff_delivery::{RestAdapter, WriteError, WriterStage, occurred_at_ms};
use handoff_events::EventType;
use handoff_events::v1::envelope::Payload;
use handoff_events::v1::{CanonicalPayload, Envelope, ErrorClass, Synced, SyncedRecord};
use serde_json::json;
use tracing::debug;

use crate::mailchimp::{self, Applied, ApplyError, Mailchimp, WriteFacts};
use crate::plan::{EventFacts, MemberPlan, PlanError, plan};
use crate::routes::RoutesConfig;

/// How long a message waits when another worker is posting the same member event: long enough
/// for a live worker to finish, short next to the lease a dead worker's claim runs out after.
const EVENT_IN_FLIGHT_DEFER: Duration = Duration::from_secs(5);

/// Where the writer sends events: Mailchimp (the routes and plans of this crate) or an internal
/// tool described by REST templates.
#[derive(Debug, Clone)]
pub enum Adapter {
    /// Members, tags and member events in one audience.
    Mailchimp(Mailchimp),
    /// `[[rest.routes]]` templates.
    Rest(RestAdapter),
}

impl Adapter {
    /// The destination's name, for dead letters and the ledger.
    pub fn destination(&self) -> &'static str {
        match self {
            Adapter::Mailchimp(_) => mailchimp::DESTINATION,
            Adapter::Rest(_) => handoff_delivery::REST_DESTINATION,
        }
    }
}

/// What one event asks of the adapter, worked out before the claim.
enum Work<'a> {
    Member(MemberPlan),
    Rest(&'a CanonicalPayload),
}

/// The email-writer's message handler.
pub struct EmailHandler {
    /// What every writer does around its calls (claim, report, ledger, failure sorting).
    pub stage: WriterStage,
    /// Where the events go.
    pub adapter: Adapter,
    /// What each event type does (the Mailchimp adapter's; the REST adapter has its own).
    pub routes: RoutesConfig,
}

impl Handler for EmailHandler {
    async fn handle(&self, delivery: &Delivery) -> Outcome {
        // The event's identity goes on the bus's consumer span (`record_identity`).
        self.process(delivery).await
    }
}

impl EmailHandler {
    async fn process(&self, delivery: &Delivery) -> Outcome {
        let stage = &self.stage;
        let (envelope, id) = match stage.decode(delivery, self.adapter.destination()) {
            Ok(decoded) => decoded,
            Err(outcome) => return outcome,
        };
        // The crm-writer's reports reach this queue too (every publish is mandatory, so the
        // topology gives them one). v1 has no use for the CRM ids they carry: ack them.
        if envelope.event_type == CRM_CONTACT_SYNCED || delivery.routing_key == CRM_CONTACT_SYNCED {
            return stage.skip(&id);
        }
        let Ok(event_type) = envelope.event_type.parse::<EventType>() else {
            let message = format!("unknown event type {:?}", envelope.event_type);
            return stage
                .reject(&id, ErrorClass::Undecodable, message, None)
                .await;
        };
        let routed = match &self.adapter {
            Adapter::Mailchimp(_) => self.routes.enabled(event_type),
            Adapter::Rest(rest) => rest.handles(event_type.as_str()),
        };
        if !routed {
            return stage.no_route(&id).await;
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
                    occurred_at: envelope.occurred_at.as_ref(),
                };
                match plan(facts, canonical, &self.routes) {
                    Ok(plan) => Work::Member(plan),
                    Err(err) => {
                        let class = match err {
                            PlanError::NoPayload => ErrorClass::Undecodable,
                            _ => ErrorClass::Validation,
                        };
                        return stage.reject(&id, class, err.to_string(), None).await;
                    }
                }
            }
        };

        let claimed = match stage.claim(&id, &envelope, delivery).await {
            Ok(claimed) => claimed,
            Err(outcome) => return outcome,
        };
        let email = canonical
            .and_then(handoff_events::primary_email)
            .map(str::to_owned);
        let mut ledger = stage
            .ledger_update(&id, handoff_idempotency::DELIVERED)
            .with_detail("destination", id.destination);
        if let Some(email) = &email {
            ledger = ledger.with_email(email.clone());
        }

        match (&self.adapter, &work) {
            (Adapter::Mailchimp(mc), Work::Member(plan)) => {
                let facts = WriteFacts {
                    event_id: &id.event_id,
                    event_type: &id.event_type,
                    publisher_id: &id.publisher_id,
                    source: &envelope.source,
                    occurred_at_ms: occurred_at_ms(&envelope),
                };
                let applied = match mc.apply(plan, facts).await {
                    Ok(applied) => applied,
                    Err(ApplyError::Write(err)) => {
                        stage.release(&claimed).await;
                        return stage.failed(&id, delivery, err).await;
                    }
                    Err(ApplyError::EventInFlight) => {
                        stage.release(&claimed).await;
                        metrics::event(EMAIL_WRITER, &id.event_type, "deferred");
                        return Outcome::Defer {
                            delay: EVENT_IN_FLIGHT_DEFER,
                            reason: "another worker is sending this member event".to_owned(),
                        };
                    }
                };
                metrics::record(EMAIL_WRITER, "subscriber", mailchimp::UPSERTED);
                let synced = synced(&envelope, plan, &applied);
                if let Err(outcome) = stage
                    .report(&envelope, EMAIL_SUBSCRIBER_SYNCED, synced)
                    .await
                {
                    stage.release(&claimed).await;
                    return outcome;
                }
                ledger = ledger.with_detail(
                    "records",
                    json!({ "subscriber": { "id": applied.member_id, "status": applied.status } }),
                );
                if let Some(outcome) = applied.member_event {
                    ledger = ledger.with_detail("member_event", outcome.label());
                }
                if !applied.owned_fields.is_empty() {
                    ledger = ledger.with_detail("owned_fields", applied.owned_fields.clone());
                }
                if !applied.stale_fields.is_empty() {
                    ledger = ledger.with_detail("stale_fields", applied.stale_fields.clone());
                }
            }
            (Adapter::Rest(rest), Work::Rest(canonical)) => {
                if let Err(err) = rest.apply(&envelope, canonical).await {
                    stage.release(&claimed).await;
                    return stage.failed(&id, delivery, err).await;
                }
            }
            _ => {
                // `work` is built from `self.adapter` above, so this cannot happen; a retry is
                // still better than a panic.
                stage.release(&claimed).await;
                let err = WriteError::Unexpected("the work does not fit the adapter".to_owned());
                return stage.failed(&id, delivery, err).await;
            }
        }
        debug!("Written to the email platform.");
        stage.delivered(&id, &claimed, &ledger).await
    }
}

/// The `email.subscriber.synced` report: the member, by email, with its Mailchimp id, so the
/// crm-writer can write the subscriber id back onto the CRM contact.
fn synced(envelope: &Envelope, plan: &MemberPlan, applied: &Applied) -> Synced {
    Synced {
        stage: EMAIL_WRITER.to_owned(),
        destination: mailchimp::DESTINATION.to_owned(),
        delivered_event_type: envelope.event_type.clone(),
        records: vec![SyncedRecord {
            kind: "subscriber".to_owned(),
            id: applied.member_id.clone(),
            key_property: "email".to_owned(),
            key: plan.email.clone(),
            disposition: mailchimp::UPSERTED.to_owned(),
        }],
    }
}
