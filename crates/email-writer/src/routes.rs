//! `[routes]`: what each canonical event type does to the Mailchimp member, which canonical
//! fields fill which merge fields, and the status a new member gets. Every route can be switched
//! off; an event type whose route is off is acked and counted as skipped.
//!
//! | event type | default | member writes |
//! |---|---|---|
//! | `lead.created` | on | upsert with merge fields; tags: `source:` / `medium:` / `campaign:` from the UTM attribution, and the journey enrollment tag (`journey:lead-nurture`) |
//! | `customer.converted` | on | upsert with merge fields (PLAN, COMPANY, OWNER, …); tag `customer` |
//! | `payment.failed` | on | upsert, then the member event `payment_failed`, sent once per invoice |
//! | `contact.updated` | on | upsert with merge fields |
//! | `meeting.booked` | off | (switched on) upsert with the contact's merge fields |
//! | `deal.stage_changed` | off | (switched on) upsert with the contact's and company's merge fields |
//!
//! Every upsert sends `status_if_new` from [`ConsentConfig`] and never `status`: consent is the
//! email platform's, so a member who unsubscribed or was cleaned stays so.

use std::collections::BTreeMap;
use std::time::Duration;

use handoff_events::EventType;
use serde::{Deserialize, Serialize};

/// Per event type routes of the Mailchimp adapter, and the values they write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutesConfig {
    /// `lead.created` → upsert the member, tag it with its attribution and the journey tag.
    pub lead_created: LeadRoute,
    /// `meeting.booked` → upsert the member; off by default (the meeting is the CRM's business).
    pub meeting_booked: Route,
    /// `customer.converted` → upsert the member with its plan, company and owner; tag it.
    pub customer_converted: TagRoute,
    /// `deal.stage_changed` → upsert the member; off by default (deal stages are the CRM's).
    pub deal_stage_changed: Route,
    /// `payment.failed` → upsert the member, then post one member event per invoice.
    pub payment_failed: EventRoute,
    /// `contact.updated` → upsert the member.
    pub contact_updated: Route,
    /// Merge tag → the canonical field that fills it (`FNAME = "contact.first_name"`); see
    /// [`MERGE_SOURCES`]. Fields an event does not carry are not written: an event never blanks
    /// a merge field. A configured table replaces the default as a whole. Each tag must exist in
    /// the audience (Mailchimp answers 400 for an unknown one, a dead letter).
    pub merge_fields: BTreeMap<String, String>,
    /// The status a member gets when the upsert creates it.
    pub consent: ConsentConfig,
}

/// A route that only upserts the member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Off: events of this type are acked without a Mailchimp call (and counted as skipped).
    pub enabled: bool,
}

/// `lead.created`: the upsert plus tags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeadRoute {
    /// Off: leads are acked without a Mailchimp call (and counted as skipped).
    pub enabled: bool,
    /// Tags every new lead gets: the lifecycle journey it is enrolled in (a Customer Journey
    /// starts on "tag added"). Empty: none.
    pub tags: Vec<String>,
    /// Tag the member `source:<utm_source>`, `medium:<utm_medium>`, `campaign:<utm_campaign>`
    /// for the UTM values the lead carries, so segments can be built by acquisition channel.
    pub attribution_tags: bool,
}

impl Default for LeadRoute {
    fn default() -> Self {
        LeadRoute {
            enabled: true,
            tags: vec!["journey:lead-nurture".to_owned()],
            attribution_tags: true,
        }
    }
}

/// `customer.converted`: the upsert plus tags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TagRoute {
    /// Off: these events are acked without a Mailchimp call (and counted as skipped).
    pub enabled: bool,
    /// Tags the member gets.
    pub tags: Vec<String>,
}

impl Default for TagRoute {
    fn default() -> Self {
        TagRoute {
            enabled: true,
            tags: vec!["customer".to_owned()],
        }
    }
}

/// `payment.failed`: the upsert plus one member event per invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventRoute {
    /// Off: these events are acked without a Mailchimp call (and counted as skipped).
    pub enabled: bool,
    /// The member event's name (Mailchimp: 2 to 30 letters, digits, `_` or `-`); automations
    /// (a dunning email) start on it.
    pub event: String,
    /// How long an invoice's event is remembered as sent (humantime). A redelivery, a retry, a
    /// second event about the same invoice or a replay of a dead letter within this time never
    /// posts it again. A year outlasts any dunning cycle and any replay; it costs one small Redis
    /// key per failed invoice.
    #[serde(with = "humantime_serde")]
    pub remember_for: Duration,
}

impl Default for EventRoute {
    fn default() -> Self {
        EventRoute {
            enabled: true,
            event: "payment_failed".to_owned(),
            remember_for: Duration::from_secs(365 * 24 * 3600),
        }
    }
}

/// `status_if_new` of every upsert. Consent is the email platform's: the writer never sends
/// `status`, so these only apply to a member the upsert creates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsentConfig {
    /// A new member whose contact has `marketing_opt_in = true`: `subscribed`, or `pending` for
    /// double opt-in (Mailchimp sends the confirmation email).
    pub opted_in: NewMemberStatus,
    /// A new member without a recorded opt-in (false or unknown: consent is never assumed):
    /// `transactional` receives transactional email only.
    pub otherwise: NewMemberStatus,
}

impl Default for ConsentConfig {
    fn default() -> Self {
        ConsentConfig {
            opted_in: NewMemberStatus::Subscribed,
            otherwise: NewMemberStatus::Transactional,
        }
    }
}

/// The statuses a writer may give a member it creates (never `unsubscribed` or `cleaned`: those
/// are the platform's verdicts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NewMemberStatus {
    Subscribed,
    Pending,
    Transactional,
}

impl NewMemberStatus {
    /// As Mailchimp spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            NewMemberStatus::Subscribed => "subscribed",
            NewMemberStatus::Pending => "pending",
            NewMemberStatus::Transactional => "transactional",
        }
    }
}

/// The canonical fields a merge field can take its value from; besides these,
/// `contact.custom_properties.<name>` reads one of the contact's custom properties.
pub const MERGE_SOURCES: &[&str] = &[
    "contact.first_name",
    "contact.last_name",
    "contact.phone",
    "contact.job_title",
    "contact.country",
    "contact.timezone",
    "contact.lifecycle_stage",
    "contact.owner_email",
    "contact.external_id",
    "contact.crm_contact_id",
    "company.name",
    "company.domain",
    "company.industry",
    "company.country",
    "subscription.plan",
    "subscription.status",
    "subscription.billing_interval",
    "subscription.subscription_id",
];

/// The prefix of a merge source naming a contact custom property.
pub const CUSTOM_PROPERTY_SOURCE: &str = "contact.custom_properties.";

/// Mailchimp's longest tag name.
pub const MAX_TAG_CHARS: usize = 100;

impl Default for RoutesConfig {
    fn default() -> Self {
        let merge_fields = [
            ("FNAME", "contact.first_name"),
            ("LNAME", "contact.last_name"),
            ("PHONE", "contact.phone"),
            ("COUNTRY", "contact.country"),
            ("COMPANY", "company.name"),
            ("PLAN", "subscription.plan"),
            ("OWNER", "contact.owner_email"),
        ]
        .into_iter()
        .map(|(tag, source)| (tag.to_owned(), source.to_owned()))
        .collect();
        RoutesConfig {
            lead_created: LeadRoute::default(),
            meeting_booked: Route { enabled: false },
            customer_converted: TagRoute::default(),
            deal_stage_changed: Route { enabled: false },
            payment_failed: EventRoute::default(),
            contact_updated: Route { enabled: true },
            merge_fields,
            consent: ConsentConfig::default(),
        }
    }
}

impl RoutesConfig {
    /// Whether events of `event_type` are written.
    pub fn enabled(&self, event_type: EventType) -> bool {
        match event_type {
            EventType::LeadCreated => self.lead_created.enabled,
            EventType::MeetingBooked => self.meeting_booked.enabled,
            EventType::CustomerConverted => self.customer_converted.enabled,
            EventType::DealStageChanged => self.deal_stage_changed.enabled,
            EventType::PaymentFailed => self.payment_failed.enabled,
            EventType::ContactUpdated => self.contact_updated.enabled,
        }
    }

    /// Checks what serde cannot: merge tags and their sources, tag names, the event name.
    /// Messages start with the sub-key (`merge_fields.FNAME: …`).
    pub fn validate(&self) -> Result<(), String> {
        for (tag, source) in &self.merge_fields {
            if !valid_merge_tag(tag) {
                return Err(format!(
                    "merge_fields.{tag}: a merge tag is upper-case letters, digits and '_'"
                ));
            }
            if !is_merge_source(source) {
                return Err(format!(
                    "merge_fields.{tag}: {source:?} is not a canonical field (one of {}, or {CUSTOM_PROPERTY_SOURCE}<name>)",
                    MERGE_SOURCES.join(", ")
                ));
            }
        }
        for (key, tags) in [
            ("lead_created.tags", &self.lead_created.tags),
            ("customer_converted.tags", &self.customer_converted.tags),
        ] {
            for tag in tags {
                if tag.trim().is_empty() || tag.chars().count() > MAX_TAG_CHARS {
                    return Err(format!(
                        "{key}: {tag:?} must be 1 to {MAX_TAG_CHARS} characters"
                    ));
                }
            }
        }
        if !valid_event_name(&self.payment_failed.event) {
            return Err(format!(
                "payment_failed.event: {:?} must be 2 to 30 letters, digits, '_' or '-' (Mailchimp's rule)",
                self.payment_failed.event
            ));
        }
        if self.payment_failed.remember_for < Duration::from_millis(1) {
            return Err("payment_failed.remember_for: must be at least 1ms".to_owned());
        }
        Ok(())
    }
}

/// Whether `source` names a canonical field a merge field can take.
pub fn is_merge_source(source: &str) -> bool {
    MERGE_SOURCES.contains(&source)
        || source
            .strip_prefix(CUSTOM_PROPERTY_SOURCE)
            .is_some_and(|name| !name.is_empty())
}

fn valid_merge_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Mailchimp's rule for event names: 2 to 30 letters, digits, `_` or `-`.
pub fn valid_event_name(name: &str) -> bool {
    (2..=30).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_switch_the_crm_routes_off() {
        let routes = RoutesConfig::default();
        assert_eq!(routes.validate(), Ok(()));
        assert!(routes.enabled(EventType::LeadCreated));
        assert!(routes.enabled(EventType::CustomerConverted));
        assert!(routes.enabled(EventType::PaymentFailed));
        assert!(routes.enabled(EventType::ContactUpdated));
        assert!(!routes.enabled(EventType::MeetingBooked));
        assert!(!routes.enabled(EventType::DealStageChanged));
    }

    #[test]
    fn bad_values_are_refused_with_their_key() {
        type Tweak = fn(&mut RoutesConfig);
        let rows: &[(Tweak, &str)] = &[
            (
                |r| {
                    r.merge_fields
                        .insert("fname".into(), "contact.first_name".into());
                },
                "merge_fields.fname",
            ),
            (
                |r| {
                    r.merge_fields
                        .insert("X".into(), "contact.shoe_size".into());
                },
                "merge_fields.X",
            ),
            (
                |r| {
                    r.merge_fields
                        .insert("X".into(), CUSTOM_PROPERTY_SOURCE.into());
                },
                "merge_fields.X",
            ),
            (
                |r| r.lead_created.tags.push(" ".into()),
                "lead_created.tags",
            ),
            (
                |r| r.customer_converted.tags.push("x".repeat(101)),
                "customer_converted.tags",
            ),
            (
                |r| r.payment_failed.event = "payment failed".into(),
                "payment_failed.event",
            ),
            (
                |r| r.payment_failed.remember_for = Duration::ZERO,
                "payment_failed.remember_for",
            ),
        ];
        for (tweak, key) in rows {
            let mut routes = RoutesConfig::default();
            tweak(&mut routes);
            let err = routes.validate().expect_err(key);
            assert!(err.starts_with(key), "{key}: {err}");
        }
        let mut custom = RoutesConfig::default();
        custom
            .merge_fields
            .insert("TIER".into(), "contact.custom_properties.tier".into());
        assert_eq!(custom.validate(), Ok(()));
    }
}
