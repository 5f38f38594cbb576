//! One canonical message, start to end.
//!
//! decode → route (off: ack) → plan (no identifier: dead letter) → claim `crm-writer` for the
//! event id (done before: ack the duplicate; another worker on it: defer) → write the plan →
//! publish `crm.contact.synced` → complete the claim with the ledger → ack. The steps every
//! writer shares, and how a failure is sorted, are `handoff_delivery::WriterStage`'s.

use handoff_bus::{
    CRM_CONTACT_SYNCED, CRM_WRITER, Delivery, EMAIL_SUBSCRIBER_SYNCED, Handler, Outcome,
};
use handoff_delivery::writer::metrics;
use handoff_delivery::{EventIdentity, RestAdapter, WriteError, WriterStage, occurred_at_ms};
use handoff_events::EventType;
use handoff_events::v1::envelope::Payload;
use handoff_events::v1::{CanonicalPayload, Envelope, ErrorClass, Synced, SyncedRecord};
use tracing::debug;

use crate::hubspot::{HubSpot, Touched, WriteFacts};
use crate::plan::{EventFacts, ObjectKind, Plan, plan, write_back_plan};
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
            Adapter::Rest(_) => handoff_delivery::REST_DESTINATION,
        }
    }
}

/// What one event asks of the adapter, worked out before the claim.
enum Work<'a> {
    Plan(Plan),
    Rest(&'a CanonicalPayload),
}

/// The crm-writer's message handler.
pub struct CrmHandler {
    pub stage: WriterStage,
    pub adapter: Adapter,
    pub routes: RoutesConfig,
}

impl Handler for CrmHandler {
    async fn handle(&self, delivery: &Delivery) -> Outcome {
        // The event's identity goes on the bus's consumer span (`record_identity`).
        self.process(delivery).await
    }
}

impl CrmHandler {
    async fn process(&self, delivery: &Delivery) -> Outcome {
        let stage = &self.stage;
        let (envelope, id) = match stage.decode(delivery, self.adapter.destination()) {
            Ok(decoded) => decoded,
            Err(outcome) => return outcome,
        };
        if envelope.event_type == EMAIL_SUBSCRIBER_SYNCED {
            return self
                .write_back(delivery, &envelope, id.for_step("write-back"))
                .await;
        }
        let Ok(event_type) = envelope.event_type.parse::<EventType>() else {
            let message = format!("unknown event type {:?}", envelope.event_type);
            return stage
                .reject(&id, ErrorClass::Undecodable, message, None)
                .await;
        };
        let routed = match &self.adapter {
            Adapter::HubSpot(_) => self.routes.route(event_type).enabled,
            Adapter::Rest(rest) => rest.handles(event_type.as_str()),
        };
        if !routed {
            return stage.no_route(&id).await;
        }
        let work = match self.work(&id, event_type, &envelope) {
            Ok(work) => work,
            Err((class, message)) => return stage.reject(&id, class, message, None).await,
        };

        let claimed = match stage.claim(&id, &envelope, delivery).await {
            Ok(claimed) => claimed,
            Err(outcome) => return outcome,
        };
        let write = WriteFacts {
            event_id: &id.event_id,
            event_type: &id.event_type,
            source: &envelope.source,
            occurred_at_ms: occurred_at_ms(&envelope),
        };
        let applied = match (&self.adapter, &work) {
            (Adapter::HubSpot(hubspot), Work::Plan(plan)) => hubspot.apply(plan, write).await,
            (Adapter::Rest(rest), Work::Rest(canonical)) => {
                rest.apply(&envelope, canonical).await.map(|_| Vec::new())
            }
            _ => Err(WriteError::Unexpected(
                "the work does not fit the adapter".to_owned(),
            )),
        };
        let touched = match applied {
            Ok(touched) => touched,
            Err(err) => {
                stage.release(&claimed).await;
                return stage.failed(&id, delivery, err).await;
            }
        };
        for t in &touched {
            metrics::record(CRM_WRITER, t.key.kind.label(), t.disposition);
        }

        if touched.iter().any(|t| t.key.kind == ObjectKind::Contact) {
            let synced = self.synced(&envelope, &touched);
            if let Err(outcome) = stage.report(&envelope, CRM_CONTACT_SYNCED, synced).await {
                stage.release(&claimed).await;
                return outcome;
            }
        }
        let mut ledger = stage
            .ledger_update(&id, handoff_idempotency::DELIVERED)
            .with_detail("destination", id.destination)
            .with_detail("records", records_detail(&touched));
        if let Work::Plan(plan) = &work
            && !plan.unmapped.is_empty()
        {
            metrics::unmapped_fields(CRM_WRITER, &id.event_type, plan.unmapped.len());
            ledger = ledger.with_detail("unmapped_custom_properties", plan.unmapped.clone());
        }
        debug!(records = touched.len(), "Written to the CRM.");
        stage.delivered(&id, &claimed, &ledger).await
    }

    /// An `email.subscriber.synced` report: the subscriber id onto the CRM contact, under its own
    /// claim and ledger entry (`crm-writer.write-back`). The stale guard orders it by the original
    /// event's `occurred_at`, so a report about an older event never overwrites a newer id.
    async fn write_back(
        &self,
        delivery: &Delivery,
        envelope: &Envelope,
        id: EventIdentity,
    ) -> Outcome {
        let stage = &self.stage;
        let hubspot = match &self.adapter {
            Adapter::HubSpot(hubspot) if self.routes.email_subscriber_synced.enabled => hubspot,
            // A REST tool has no contact to write back onto.
            _ => return stage.skip(&id),
        };
        let synced = match &envelope.payload {
            Some(Payload::Synced(synced)) => synced,
            _ => {
                let message = "an email.subscriber.synced message without a Synced report";
                return stage
                    .reject(&id, ErrorClass::Undecodable, message.to_owned(), None)
                    .await;
            }
        };
        let plan = match write_back_plan(synced) {
            Ok(plan) => plan,
            Err(err) => {
                return stage
                    .reject(&id, ErrorClass::Validation, err.to_string(), None)
                    .await;
            }
        };
        let claimed = match stage.claim(&id, envelope, delivery).await {
            Ok(claimed) => claimed,
            Err(outcome) => return outcome,
        };
        let write = WriteFacts {
            event_id: &id.event_id,
            event_type: &id.event_type,
            source: &envelope.source,
            occurred_at_ms: occurred_at_ms(envelope),
        };
        let touched = match hubspot.apply(&plan, write).await {
            Ok(touched) => touched,
            Err(err) => {
                stage.release(&claimed).await;
                return stage.failed(&id, delivery, err).await;
            }
        };
        for t in &touched {
            metrics::record(CRM_WRITER, t.key.kind.label(), t.disposition);
        }
        let ledger = stage
            .ledger_update(&id, handoff_idempotency::DELIVERED)
            .with_detail("destination", id.destination)
            .with_detail("records", records_detail(&touched));
        debug!("Wrote the subscriber id back onto the CRM contact.");
        stage.delivered(&id, &claimed, &ledger).await
    }

    /// The plan (HubSpot) or the payload (REST); `Err` is a dead letter's class and reason.
    fn work<'e>(
        &self,
        id: &EventIdentity,
        event_type: EventType,
        envelope: &'e Envelope,
    ) -> Result<Work<'e>, (ErrorClass, String)> {
        let canonical = match &envelope.payload {
            Some(Payload::Canonical(canonical)) => Some(canonical),
            _ => None,
        };
        match (&self.adapter, canonical) {
            (Adapter::Rest(_), Some(canonical)) => Ok(Work::Rest(canonical)),
            _ => {
                let facts = EventFacts {
                    event_type,
                    event_id: &id.event_id,
                };
                plan(facts, canonical, &self.routes.values)
                    .map(Work::Plan)
                    .map_err(|err| {
                        let class = match canonical {
                            None => ErrorClass::Undecodable,
                            Some(_) => ErrorClass::Validation,
                        };
                        (class, err.to_string())
                    })
            }
        }
    }

    /// The `crm.contact.synced` report: every record the event touched, with its CRM id.
    fn synced(&self, envelope: &Envelope, touched: &[Touched]) -> Synced {
        Synced {
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
        }
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
