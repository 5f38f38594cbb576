//! `[routes]`: what each canonical event type does in the CRM, and the CRM values it uses
//! (pipelines, stages, the health property). Every route can be switched off; an event type
//! whose route is off is acked and counted as skipped.

use std::collections::BTreeMap;

use handoff_events::EventType;
use serde::{Deserialize, Serialize};

/// Per event type routes of the HubSpot adapter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutesConfig {
    /// `lead.created` → upsert the contact, upsert its company and associate them.
    pub lead_created: Route,
    /// `meeting.booked` → upsert the contact and create the meeting's deal once.
    pub meeting_booked: Route,
    /// `customer.converted` → the contact becomes `customer_lifecycle_stage` with its plan; its
    /// deal (when the event names one) moves to `won_deal_stage`.
    pub customer_converted: Route,
    /// `deal.stage_changed` → move the deal (upserted by its id).
    pub deal_stage_changed: Route,
    /// `payment.failed` → the contact's health becomes at-risk and one ticket opens per invoice.
    pub payment_failed: Route,
    /// `contact.updated` → upsert the contact.
    pub contact_updated: Route,
    /// `email.subscriber.synced` (the email-writer's report) → the subscriber id onto the
    /// contact's `handoff_email_subscriber_id`, found by email.
    pub email_subscriber_synced: Route,
    /// The HubSpot values the routes write.
    pub values: CrmValues,
}

/// One event type's route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Route {
    /// Off: events of this type are acked without a CRM call (and counted as skipped).
    pub enabled: bool,
}

impl Default for Route {
    fn default() -> Self {
        Route { enabled: true }
    }
}

/// The CRM-side values the routes use; the defaults are HubSpot's out-of-the-box pipelines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CrmValues {
    /// The deal pipeline used when an event names none (HubSpot's is `default`).
    pub deal_pipeline: String,
    /// The stage of the deal a booked meeting creates.
    pub meeting_deal_stage: String,
    /// The lifecycle stage a converted customer gets.
    pub customer_lifecycle_stage: String,
    /// The stage a converted customer's deal moves to.
    pub won_deal_stage: String,
    /// The contact property that says a customer is at risk, and its value after a failed payment.
    pub health_property: String,
    pub health_at_risk: String,
    /// The ticket pipeline failed-payment tickets open in (HubSpot's support pipeline is `0`).
    pub ticket_pipeline: String,
    /// Canonical ticket status → the pipeline's stage id (HubSpot's support pipeline: 1 new,
    /// 2 waiting on contact, 3 waiting on us, 4 closed). A new ticket without a status opens in
    /// the stage of `new`.
    pub ticket_stages: BTreeMap<String, String>,
    /// Priority of a failed-payment ticket whose event names none (`LOW`, `MEDIUM`, `HIGH`,
    /// `URGENT`).
    pub ticket_priority: String,
    /// A contact's custom properties → the HubSpot contact properties they are written to. HubSpot
    /// refuses a whole write naming a property the portal does not define, so only mapped ones
    /// are written; the rest are left out, counted and listed in the ledger. `"*" = "*"` writes
    /// every one under its own name (the portal must define them all). Empty by default.
    pub custom_properties: BTreeMap<String, String>,
}

impl Default for CrmValues {
    fn default() -> Self {
        CrmValues {
            deal_pipeline: "default".to_owned(),
            meeting_deal_stage: "appointmentscheduled".to_owned(),
            customer_lifecycle_stage: "customer".to_owned(),
            won_deal_stage: "closedwon".to_owned(),
            health_property: "handoff_health".to_owned(),
            health_at_risk: "at_risk".to_owned(),
            ticket_pipeline: "0".to_owned(),
            ticket_stages: BTreeMap::from(
                [
                    ("new", "1"),
                    ("waiting_on_contact", "2"),
                    ("waiting_on_us", "3"),
                    ("closed", "4"),
                ]
                .map(|(k, v)| (k.to_owned(), v.to_owned())),
            ),
            ticket_priority: "HIGH".to_owned(),
            custom_properties: BTreeMap::new(),
        }
    }
}

impl RoutesConfig {
    /// The route of `event_type`.
    pub fn route(&self, event_type: EventType) -> &Route {
        match event_type {
            EventType::LeadCreated => &self.lead_created,
            EventType::MeetingBooked => &self.meeting_booked,
            EventType::CustomerConverted => &self.customer_converted,
            EventType::DealStageChanged => &self.deal_stage_changed,
            EventType::PaymentFailed => &self.payment_failed,
            EventType::ContactUpdated => &self.contact_updated,
        }
    }

    /// Checks what serde cannot: no value the routes write is blank, and new tickets have a stage.
    pub fn validate(&self) -> Result<(), String> {
        let v = &self.values;
        for (key, value) in [
            ("deal_pipeline", &v.deal_pipeline),
            ("meeting_deal_stage", &v.meeting_deal_stage),
            ("customer_lifecycle_stage", &v.customer_lifecycle_stage),
            ("won_deal_stage", &v.won_deal_stage),
            ("health_property", &v.health_property),
            ("health_at_risk", &v.health_at_risk),
            ("ticket_pipeline", &v.ticket_pipeline),
            ("ticket_priority", &v.ticket_priority),
        ] {
            if value.trim().is_empty() {
                return Err(format!("values.{key}: must not be empty"));
            }
        }
        if !v.ticket_stages.contains_key("new") {
            return Err(
                "values.ticket_stages: needs a stage for \"new\" (where tickets open)".into(),
            );
        }
        for (name, property) in &v.custom_properties {
            let all = crate::plan::ALL_CUSTOM;
            if name.trim().is_empty() || property.trim().is_empty() {
                return Err("values.custom_properties: names must not be empty".into());
            }
            if (name == all) != (property == all) {
                return Err(format!(
                    "values.custom_properties: {name:?} = {property:?}: \"*\" maps only to \"*\""
                ));
            }
        }
        Ok(())
    }
}
