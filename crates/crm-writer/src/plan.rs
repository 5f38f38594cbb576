//! From a canonical event to the CRM writes it needs: a [`Plan`] of upserts by natural key and the
//! associations between them. Pure: no I/O, so every route is tested row by row.
//!
//! Every record is addressed by a natural key, never created blind, so that a redelivered or
//! replayed event repeats an upsert and never a create:
//!
//! | record | key, in order of preference |
//! |---|---|
//! | contact | `email`, else `handoff_external_id`, else the CRM id (`crm_contact_id`, update only) |
//! | company | the CRM id, else `handoff_external_id` = the external id, else `domain:<domain>` |
//! | deal | the CRM id, else `handoff_deal_id` = the deal id (a booked meeting's deal: `meeting:<id>`, else `event:<event id>`) |
//! | ticket | `handoff_ticket_key` = `invoice:<invoice id>`: one ticket per invoice, whatever is redelivered |
//!
//! Property names are HubSpot's where HubSpot has one (`firstname`, `lifecyclestage`, `dealstage`,
//! …) and custom `handoff_*` properties otherwise (UTM fields, click ids, the subscription).
//! Fields an event does not carry are not written: an event never blanks a CRM field.

use std::collections::BTreeMap;

use handoff_events::EventType;
use handoff_events::v1::canonical_payload::Event;
use handoff_events::v1::{
    Attribution, CanonicalPayload, Company, Contact, Deal, Meeting, Payment, Subscription, Ticket,
};

use crate::routes::CrmValues;

/// The CRM object types the writer touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    Contact,
    Company,
    Deal,
    Ticket,
}

impl ObjectKind {
    /// The object type's path segment in HubSpot's CRM API.
    pub fn api_name(self) -> &'static str {
        match self {
            ObjectKind::Contact => "contacts",
            ObjectKind::Company => "companies",
            ObjectKind::Deal => "deals",
            ObjectKind::Ticket => "tickets",
        }
    }

    /// Singular, for logs, metrics and the synced event.
    pub fn label(self) -> &'static str {
        match self {
            ObjectKind::Contact => "contact",
            ObjectKind::Company => "company",
            ObjectKind::Deal => "deal",
            ObjectKind::Ticket => "ticket",
        }
    }
}

/// The property that holds a record's own CRM id; a key on it can only update.
pub const CRM_ID: &str = "hs_object_id";

/// A record addressed by a unique property's value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKey {
    pub kind: ObjectKind,
    /// A unique property (`email`, `handoff_deal_id`, …) or [`CRM_ID`].
    pub id_property: String,
    pub id: String,
}

impl RecordKey {
    fn new(kind: ObjectKind, id_property: &str, id: impl Into<String>) -> Self {
        RecordKey {
            kind,
            id_property: id_property.to_owned(),
            id: id.into(),
        }
    }

    /// The stale guard's name for the record: kind, key property and value (lower-cased, as
    /// HubSpot compares unique values of emails case-insensitively).
    pub fn guard_key(&self) -> String {
        format!(
            "{}:{}:{}",
            self.kind.label(),
            self.id_property,
            self.id.to_lowercase()
        )
    }

    /// True when the key is the CRM's own id: the record must exist, it can only be updated.
    pub fn is_crm_id(&self) -> bool {
        self.id_property == CRM_ID
    }
}

/// One record to create or update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upsert {
    pub key: RecordKey,
    /// Property name → value, as HubSpot takes them (strings).
    pub properties: BTreeMap<String, String>,
}

/// The writes of one event, in the order they are made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Companies first, then the contact, then deals and tickets, so associations can use ids.
    pub upserts: Vec<Upsert>,
    /// `(from, to)` pairs, associated with HubSpot's default association type.
    pub associations: Vec<(RecordKey, RecordKey)>,
    /// The contact's custom properties `[routes.values.custom_properties]` does not map: left
    /// out (HubSpot refuses a whole write that names a property the portal lacks), counted and
    /// listed in the ledger.
    pub unmapped: Vec<String>,
}

/// Why an event cannot be written at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the envelope carries no canonical payload")]
    NoPayload,
    #[error("the payload is a {actual} event but the envelope says {declared}")]
    Mismatch {
        declared: &'static str,
        actual: &'static str,
    },
    #[error("{0} has no identifier the CRM can find it by (email, external id or CRM id)")]
    NoIdentifier(&'static str),
    #[error("the report names no subscriber with an email and an id")]
    NoSubscriber,
}

/// The CRM contact property that holds the email platform's subscriber id.
pub const SUBSCRIBER_ID_PROPERTY: &str = "handoff_email_subscriber_id";

/// The write-back of an `email.subscriber.synced` report: the subscriber id onto the contact,
/// found by the member's email (an upsert, so a report that arrives before the contact's own
/// event creates the contact, and that event then updates it rather than making a second one).
pub fn write_back_plan(synced: &handoff_events::v1::Synced) -> Result<Plan, PlanError> {
    let subscriber = synced
        .records
        .iter()
        .find(|r| r.kind == "subscriber" && r.key_property == "email")
        .filter(|r| !r.id.trim().is_empty() && r.key.contains('@'))
        .ok_or(PlanError::NoSubscriber)?;
    let email = subscriber.key.trim().to_lowercase();
    let mut properties = BTreeMap::new();
    properties.insert("email".to_owned(), email.clone());
    properties.insert(SUBSCRIBER_ID_PROPERTY.to_owned(), subscriber.id.clone());
    Ok(Plan {
        upserts: vec![Upsert {
            key: RecordKey::new(ObjectKind::Contact, "email", email),
            properties,
        }],
        associations: Vec::new(),
        unmapped: Vec::new(),
    })
}

/// What the planner needs besides the payload.
#[derive(Debug, Clone, Copy)]
pub struct EventFacts<'a> {
    pub event_type: EventType,
    pub event_id: &'a str,
}

/// Builds the plan of one canonical event.
pub fn plan(
    facts: EventFacts<'_>,
    payload: Option<&CanonicalPayload>,
    values: &CrmValues,
) -> Result<Plan, PlanError> {
    let event = payload
        .and_then(|p| p.event.as_ref())
        .ok_or(PlanError::NoPayload)?;
    let actual = event_type_of(event);
    if actual != facts.event_type {
        return Err(PlanError::Mismatch {
            declared: facts.event_type.as_str(),
            actual: actual.as_str(),
        });
    }
    let mut b = Builder::default();
    match event {
        Event::LeadCreated(e) => {
            let company = b.company(e.company.as_ref());
            let mut props = contact_properties(
                e.contact.as_ref(),
                e.company.as_ref(),
                &values.custom_properties,
                &mut b.unmapped,
            );
            attribution_properties(e.attribution.as_ref(), &mut props);
            if let Some(form) = &e.form_id {
                props.insert("handoff_form_id".into(), form.clone());
            }
            let contact = b.contact(e.contact.as_ref(), props)?;
            b.associate_both(&contact, company.as_ref());
        }
        Event::MeetingBooked(e) => {
            let mut props = contact_properties(
                e.contact.as_ref(),
                None,
                &values.custom_properties,
                &mut b.unmapped,
            );
            attribution_properties(e.attribution.as_ref(), &mut props);
            let contact = b.contact(e.contact.as_ref(), props)?;
            let deal = b.meeting_deal(facts, e.meeting.as_ref(), e.contact.as_ref(), values);
            b.associations.push((deal, contact));
        }
        Event::CustomerConverted(e) => {
            let company = b.company(e.company.as_ref());
            let mut props = contact_properties(
                e.contact.as_ref(),
                e.company.as_ref(),
                &values.custom_properties,
                &mut b.unmapped,
            );
            attribution_properties(e.attribution.as_ref(), &mut props);
            subscription_properties(e.subscription.as_ref(), &mut props);
            props.insert(
                "lifecyclestage".into(),
                values.customer_lifecycle_stage.clone(),
            );
            let contact = b.contact(e.contact.as_ref(), props)?;
            b.associate_both(&contact, company.as_ref());
            if let Some(deal) = e.deal.as_ref() {
                let mut deal = deal.clone();
                deal.stage = Some(values.won_deal_stage.clone());
                if let Some(key) =
                    b.deal(&deal, None, e.contact.as_ref(), e.company.as_ref(), values)
                {
                    b.associations.push((key.clone(), contact));
                    if let Some(company) = company {
                        b.associations.push((key, company));
                    }
                }
            }
        }
        Event::DealStageChanged(e) => {
            let deal = e.deal.as_ref().ok_or(PlanError::NoIdentifier("the deal"))?;
            let company = b.company(e.company.as_ref());
            let key = b
                .deal(deal, None, e.contact.as_ref(), e.company.as_ref(), values)
                .ok_or(PlanError::NoIdentifier("the deal"))?;
            if let Some(contact) = e.contact.as_ref().and_then(contact_key) {
                // Only associate a contact the event identifies; its fields are not this event's.
                b.associations.push((key.clone(), contact));
            }
            if let Some(company) = company {
                b.associations.push((key, company));
            }
        }
        Event::PaymentFailed(e) => {
            let mut props = contact_properties(
                e.contact.as_ref(),
                None,
                &values.custom_properties,
                &mut b.unmapped,
            );
            subscription_properties(e.subscription.as_ref(), &mut props);
            props.insert(
                values.health_property.clone(),
                values.health_at_risk.clone(),
            );
            let contact = b.contact(e.contact.as_ref(), props)?;
            if let Some(ticket) = b.ticket(
                e.payment.as_ref(),
                e.ticket.as_ref(),
                e.subscription.as_ref(),
                values,
            ) {
                b.associations.push((ticket, contact));
            }
        }
        Event::ContactUpdated(e) => {
            let company = b.company(e.company.as_ref());
            let props = contact_properties(
                e.contact.as_ref(),
                e.company.as_ref(),
                &values.custom_properties,
                &mut b.unmapped,
            );
            let contact = b.contact(e.contact.as_ref(), props)?;
            b.associate_both(&contact, company.as_ref());
        }
    }
    Ok(b.finish())
}

fn event_type_of(event: &Event) -> EventType {
    match event {
        Event::LeadCreated(_) => EventType::LeadCreated,
        Event::MeetingBooked(_) => EventType::MeetingBooked,
        Event::CustomerConverted(_) => EventType::CustomerConverted,
        Event::DealStageChanged(_) => EventType::DealStageChanged,
        Event::PaymentFailed(_) => EventType::PaymentFailed,
        Event::ContactUpdated(_) => EventType::ContactUpdated,
    }
}

#[derive(Default)]
struct Builder {
    companies: Vec<Upsert>,
    contacts: Vec<Upsert>,
    others: Vec<Upsert>,
    associations: Vec<(RecordKey, RecordKey)>,
    unmapped: Vec<String>,
}

impl Builder {
    fn finish(mut self) -> Plan {
        // Custom properties come from a map without order: sorted, so the ledger reads the same.
        self.unmapped.sort();
        self.unmapped.dedup();
        let mut upserts = self.companies;
        upserts.extend(self.contacts);
        upserts.extend(self.others);
        Plan {
            upserts,
            associations: self.associations,
            unmapped: self.unmapped,
        }
    }

    fn contact(
        &mut self,
        contact: Option<&Contact>,
        properties: BTreeMap<String, String>,
    ) -> Result<RecordKey, PlanError> {
        let key = contact
            .and_then(contact_key)
            .ok_or(PlanError::NoIdentifier("the contact"))?;
        self.contacts.push(Upsert {
            key: key.clone(),
            properties,
        });
        Ok(key)
    }

    fn company(&mut self, company: Option<&Company>) -> Option<RecordKey> {
        let company = company?;
        let key = company_key(company)?;
        let mut props = BTreeMap::new();
        put(&mut props, "name", company.name.as_deref());
        put(&mut props, "domain", company.domain.as_deref());
        put(&mut props, "industry", company.industry.as_deref());
        put(&mut props, "country", company.country.as_deref());
        if let Some(n) = company.employee_count {
            props.insert("handoff_employee_count".into(), n.to_string());
        }
        if key.id_property == "handoff_external_id" {
            props.insert("handoff_external_id".into(), key.id.clone());
        }
        self.companies.push(Upsert {
            key: key.clone(),
            properties: props,
        });
        Some(key)
    }

    fn associate_both(&mut self, contact: &RecordKey, company: Option<&RecordKey>) {
        if let Some(company) = company {
            self.associations.push((contact.clone(), company.clone()));
        }
    }

    /// The deal of a booked meeting: created once per meeting (or per event without a meeting id).
    fn meeting_deal(
        &mut self,
        facts: EventFacts<'_>,
        meeting: Option<&Meeting>,
        contact: Option<&Contact>,
        values: &CrmValues,
    ) -> RecordKey {
        let deal_id = match meeting.and_then(|m| m.meeting_id.as_deref()) {
            Some(id) => format!("meeting:{id}"),
            None => format!("event:{}", facts.event_id),
        };
        let deal = Deal {
            deal_id: Some(deal_id),
            stage: Some(values.meeting_deal_stage.clone()),
            ..Deal::default()
        };
        let mut extra = BTreeMap::new();
        if let Some(m) = meeting {
            put(
                &mut extra,
                "handoff_meeting_type",
                m.meeting_type.as_deref(),
            );
            put(
                &mut extra,
                "handoff_meeting_owner",
                m.owner_email.as_deref(),
            );
            if let Some(at) = m.starts_at.as_ref().and_then(rfc3339) {
                extra.insert("handoff_meeting_starts_at".into(), at);
            }
        }
        // A meeting deal always has a key: the meeting's id or the event's.
        self.deal(&deal, Some(extra), contact, None, values)
            .unwrap_or_else(|| RecordKey::new(ObjectKind::Deal, "handoff_deal_id", facts.event_id))
    }

    fn deal(
        &mut self,
        deal: &Deal,
        extra: Option<BTreeMap<String, String>>,
        contact: Option<&Contact>,
        company: Option<&Company>,
        values: &CrmValues,
    ) -> Option<RecordKey> {
        let key = if let Some(id) = &deal.crm_deal_id {
            RecordKey::new(ObjectKind::Deal, CRM_ID, id.clone())
        } else {
            RecordKey::new(ObjectKind::Deal, "handoff_deal_id", deal.deal_id.clone()?)
        };
        let mut props = extra.unwrap_or_default();
        let name = deal.name.clone().or_else(|| {
            // HubSpot needs a name to create a deal; say whose it is.
            let who = company
                .and_then(|c| c.name.clone())
                .or_else(|| contact.and_then(|c| c.email.clone()))?;
            Some(format!(
                "{who} – {}",
                deal.deal_id.as_deref().unwrap_or("deal")
            ))
        });
        put(&mut props, "dealname", name.as_deref());
        props.insert(
            "pipeline".into(),
            deal.pipeline
                .clone()
                .unwrap_or_else(|| values.deal_pipeline.clone()),
        );
        put(&mut props, "dealstage", deal.stage.as_deref());
        if let Some(minor) = deal.amount_minor {
            props.insert("amount".into(), minor_to_decimal(minor));
        }
        put(&mut props, "handoff_currency", deal.currency.as_deref());
        if let Some(at) = deal.close_date.as_ref().and_then(rfc3339) {
            props.insert("closedate".into(), at);
        }
        if key.id_property == "handoff_deal_id" {
            props.insert("handoff_deal_id".into(), key.id.clone());
        }
        self.others.push(Upsert {
            key: key.clone(),
            properties: props,
        });
        Some(key)
    }

    fn ticket(
        &mut self,
        payment: Option<&Payment>,
        ticket: Option<&Ticket>,
        subscription: Option<&Subscription>,
        values: &CrmValues,
    ) -> Option<RecordKey> {
        let invoice = payment.and_then(|p| p.invoice_id.as_deref())?;
        let key = RecordKey::new(
            ObjectKind::Ticket,
            "handoff_ticket_key",
            format!("invoice:{invoice}"),
        );
        let mut props = BTreeMap::new();
        props.insert("handoff_ticket_key".into(), key.id.clone());
        let subject = ticket
            .and_then(|t| t.subject.clone())
            .unwrap_or_else(|| format!("Payment failed: invoice {invoice}"));
        props.insert("subject".into(), subject);
        props.insert("content".into(), payment_summary(payment, subscription));
        let pipeline = ticket
            .and_then(|t| t.pipeline.clone())
            .unwrap_or_else(|| values.ticket_pipeline.clone());
        props.insert("hs_pipeline".into(), pipeline);
        let status = ticket.and_then(|t| t.status.as_deref()).unwrap_or("new");
        let stage = values
            .ticket_stages
            .get(status)
            .or_else(|| values.ticket_stages.get("new"))
            .cloned()
            .unwrap_or_else(|| "1".to_owned());
        props.insert("hs_pipeline_stage".into(), stage);
        let priority = ticket
            .and_then(|t| t.priority.as_deref())
            .map(str::to_uppercase)
            .unwrap_or_else(|| values.ticket_priority.clone());
        props.insert("hs_ticket_priority".into(), priority);
        put(&mut props, "handoff_invoice_id", Some(invoice));
        if let Some(p) = payment {
            put(
                &mut props,
                "handoff_failure_code",
                p.failure_code.as_deref(),
            );
            if let Some(n) = p.attempt_count {
                props.insert("handoff_payment_attempts".into(), n.to_string());
            }
        }
        self.others.push(Upsert {
            key: key.clone(),
            properties: props,
        });
        Some(key)
    }
}

/// The contact's natural key: email, else external id, else its CRM id.
pub fn contact_key(contact: &Contact) -> Option<RecordKey> {
    if let Some(email) = non_empty(contact.email.as_deref()) {
        return Some(RecordKey::new(ObjectKind::Contact, "email", email));
    }
    if let Some(id) = non_empty(contact.external_id.as_deref()) {
        return Some(RecordKey::new(
            ObjectKind::Contact,
            "handoff_external_id",
            id,
        ));
    }
    non_empty(contact.crm_contact_id.as_deref())
        .map(|id| RecordKey::new(ObjectKind::Contact, CRM_ID, id))
}

fn company_key(company: &Company) -> Option<RecordKey> {
    if let Some(id) = non_empty(company.crm_company_id.as_deref()) {
        return Some(RecordKey::new(ObjectKind::Company, CRM_ID, id));
    }
    if let Some(id) = non_empty(company.external_id.as_deref()) {
        return Some(RecordKey::new(
            ObjectKind::Company,
            "handoff_external_id",
            id,
        ));
    }
    non_empty(company.domain.as_deref()).map(|d| {
        RecordKey::new(
            ObjectKind::Company,
            "handoff_external_id",
            format!("domain:{}", d.to_lowercase()),
        )
    })
}

fn contact_properties(
    contact: Option<&Contact>,
    company: Option<&Company>,
    custom: &BTreeMap<String, String>,
    unmapped: &mut Vec<String>,
) -> BTreeMap<String, String> {
    let mut props = BTreeMap::new();
    let Some(c) = contact else {
        return props;
    };
    put(&mut props, "email", c.email.as_deref());
    put(&mut props, "firstname", c.first_name.as_deref());
    put(&mut props, "lastname", c.last_name.as_deref());
    put(&mut props, "phone", c.phone.as_deref());
    put(&mut props, "jobtitle", c.job_title.as_deref());
    put(&mut props, "country", c.country.as_deref());
    put(&mut props, "handoff_timezone", c.timezone.as_deref());
    put(&mut props, "lifecyclestage", c.lifecycle_stage.as_deref());
    put(&mut props, "handoff_owner_email", c.owner_email.as_deref());
    put(&mut props, "handoff_external_id", c.external_id.as_deref());
    put(
        &mut props,
        SUBSCRIBER_ID_PROPERTY,
        c.email_subscriber_id.as_deref(),
    );
    if let Some(opt_in) = c.marketing_opt_in {
        props.insert("handoff_marketing_opt_in".into(), opt_in.to_string());
    }
    if let Some(name) = company.and_then(|co| co.name.as_deref()) {
        props.insert("company".into(), name.to_owned());
    }
    for (name, value) in &c.custom_properties {
        let target = custom.get(name).or_else(|| {
            custom
                .get(ALL_CUSTOM)
                .filter(|t| *t == ALL_CUSTOM)
                .map(|_| name)
        });
        match target {
            Some(target) => {
                props.entry(target.clone()).or_insert_with(|| value.clone());
            }
            None => unmapped.push(name.clone()),
        }
    }
    props
}

/// `"*" = "*"` in `[routes.values.custom_properties]`: every custom property under its own name.
pub const ALL_CUSTOM: &str = "*";

fn attribution_properties(attribution: Option<&Attribution>, props: &mut BTreeMap<String, String>) {
    let Some(a) = attribution else {
        return;
    };
    put(props, "handoff_utm_source", a.utm_source.as_deref());
    put(props, "handoff_utm_medium", a.utm_medium.as_deref());
    put(props, "handoff_utm_campaign", a.utm_campaign.as_deref());
    put(props, "handoff_utm_term", a.utm_term.as_deref());
    put(props, "handoff_utm_content", a.utm_content.as_deref());
    put(props, "handoff_landing_url", a.landing_url.as_deref());
    put(props, "handoff_referrer", a.referrer.as_deref());
    put(props, "handoff_gclid", a.gclid.as_deref());
    put(props, "handoff_fbclid", a.fbclid.as_deref());
}

fn subscription_properties(
    subscription: Option<&Subscription>,
    props: &mut BTreeMap<String, String>,
) {
    let Some(s) = subscription else {
        return;
    };
    put(props, "plan", s.plan.as_deref());
    put(
        props,
        "handoff_subscription_id",
        s.subscription_id.as_deref(),
    );
    put(props, "handoff_subscription_status", s.status.as_deref());
    put(
        props,
        "handoff_billing_interval",
        s.billing_interval.as_deref(),
    );
    if let Some(mrr) = s.mrr_minor {
        props.insert("handoff_mrr".into(), minor_to_decimal(mrr));
    }
}

fn payment_summary(payment: Option<&Payment>, subscription: Option<&Subscription>) -> String {
    let mut parts = Vec::new();
    if let Some(p) = payment {
        if let Some(amount) = p.amount_minor {
            let currency = p.currency.as_deref().unwrap_or("");
            parts.push(
                format!("Amount: {} {currency}", minor_to_decimal(amount))
                    .trim_end()
                    .to_owned(),
            );
        }
        if let Some(code) = &p.failure_code {
            parts.push(format!("Failure code: {code}"));
        }
        if let Some(message) = &p.failure_message {
            parts.push(format!("Reason: {message}"));
        }
        if let Some(n) = p.attempt_count {
            parts.push(format!("Attempt: {n}"));
        }
    }
    if let Some(plan) = subscription.and_then(|s| s.plan.as_deref()) {
        parts.push(format!("Plan: {plan}"));
    }
    if parts.is_empty() {
        "A payment failed.".to_owned()
    } else {
        parts.join("\n")
    }
}

fn put(props: &mut BTreeMap<String, String>, name: &str, value: Option<&str>) {
    if let Some(v) = non_empty(value) {
        props.insert(name.to_owned(), v.to_owned());
    }
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.trim().is_empty())
}

/// Minor units to a decimal string with two places ("123456" → "1234.56"), as HubSpot's amounts.
fn minor_to_decimal(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

fn rfc3339(ts: &handoff_events::Timestamp) -> Option<String> {
    let at = handoff_events::to_offset_date_time(ts)?;
    at.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use handoff_events::v1::{
        ContactUpdated, CustomerConverted, DealStageChanged, LeadCreated, MeetingBooked,
        PaymentFailed,
    };

    fn facts(event_type: EventType) -> EventFacts<'static> {
        EventFacts {
            event_type,
            event_id: "evt-1",
        }
    }

    fn payload(event: Event) -> CanonicalPayload {
        CanonicalPayload { event: Some(event) }
    }

    fn alex() -> Contact {
        Contact {
            email: Some("alex@example.com".into()),
            first_name: Some("Alex".into()),
            last_name: Some("Kim".into()),
            ..Contact::default()
        }
    }

    fn keys(plan: &Plan) -> Vec<String> {
        plan.upserts.iter().map(|u| u.key.guard_key()).collect()
    }

    #[test]
    fn lead_created_upserts_company_then_contact_and_associates_them() {
        let event = Event::LeadCreated(LeadCreated {
            contact: Some(alex()),
            company: Some(Company {
                name: Some("Acme".into()),
                domain: Some("Acme.example".into()),
                ..Company::default()
            }),
            attribution: Some(Attribution {
                utm_source: Some("google".into()),
                gclid: Some("abc".into()),
                ..Attribution::default()
            }),
            form_id: Some("demo".into()),
        });
        let plan = plan(
            facts(EventType::LeadCreated),
            Some(&payload(event)),
            &CrmValues::default(),
        )
        .expect("plan");
        assert_eq!(
            keys(&plan),
            [
                "company:handoff_external_id:domain:acme.example",
                "contact:email:alex@example.com"
            ]
        );
        let contact = &plan.upserts[1].properties;
        assert_eq!(contact["firstname"], "Alex");
        assert_eq!(contact["company"], "Acme");
        assert_eq!(contact["handoff_utm_source"], "google");
        assert_eq!(contact["handoff_gclid"], "abc");
        assert_eq!(contact["handoff_form_id"], "demo");
        assert!(
            !contact.contains_key("phone"),
            "absent fields are not written"
        );
        assert_eq!(plan.associations.len(), 1);
    }

    #[test]
    fn meeting_booked_creates_one_deal_keyed_by_the_meeting() {
        let event = Event::MeetingBooked(MeetingBooked {
            contact: Some(alex()),
            meeting: Some(Meeting {
                meeting_id: Some("m-7".into()),
                ..Meeting::default()
            }),
            attribution: None,
        });
        let plan = plan(
            facts(EventType::MeetingBooked),
            Some(&payload(event)),
            &CrmValues::default(),
        )
        .expect("plan");
        let deal = &plan.upserts[1];
        assert_eq!(deal.key.guard_key(), "deal:handoff_deal_id:meeting:m-7");
        assert_eq!(deal.properties["dealstage"], "appointmentscheduled");
        assert_eq!(deal.properties["pipeline"], "default");
        assert_eq!(
            deal.properties["dealname"],
            "alex@example.com – meeting:m-7"
        );
    }

    #[test]
    fn meeting_without_an_id_keys_its_deal_by_the_event() {
        let event = Event::MeetingBooked(MeetingBooked {
            contact: Some(alex()),
            ..MeetingBooked::default()
        });
        let plan = plan(
            facts(EventType::MeetingBooked),
            Some(&payload(event)),
            &CrmValues::default(),
        )
        .expect("plan");
        assert_eq!(plan.upserts[1].key.id, "event:evt-1");
    }

    #[test]
    fn customer_converted_sets_stage_plan_and_wins_the_deal() {
        let event = Event::CustomerConverted(CustomerConverted {
            contact: Some(alex()),
            company: Some(Company {
                name: Some("Example Co".into()),
                ..Company::default()
            }),
            deal: Some(Deal {
                deal_id: Some("D-9001".into()),
                amount_minor: Some(123_456),
                ..Deal::default()
            }),
            subscription: Some(Subscription {
                plan: Some("pro".into()),
                ..Subscription::default()
            }),
            attribution: None,
        });
        let plan = plan(
            facts(EventType::CustomerConverted),
            Some(&payload(event)),
            &CrmValues::default(),
        )
        .expect("plan");
        // A company with a name only has no key to upsert by: the contact's `company` says it.
        assert_eq!(
            keys(&plan),
            [
                "contact:email:alex@example.com",
                "deal:handoff_deal_id:d-9001"
            ]
        );
        let contact = &plan.upserts[0].properties;
        assert_eq!(contact["lifecyclestage"], "customer");
        assert_eq!(contact["plan"], "pro");
        assert_eq!(contact["company"], "Example Co");
        let deal = &plan.upserts[1].properties;
        assert_eq!(deal["dealstage"], "closedwon");
        assert_eq!(deal["amount"], "1234.56");
        assert_eq!(deal["dealname"], "Example Co – D-9001");
        assert_eq!(plan.associations.len(), 1);
    }

    #[test]
    fn deal_stage_changed_moves_the_deal_only() {
        let event = Event::DealStageChanged(DealStageChanged {
            deal: Some(Deal {
                deal_id: Some("D-1".into()),
                stage: Some("contractsent".into()),
                ..Deal::default()
            }),
            contact: Some(alex()),
            company: None,
        });
        let plan = plan(
            facts(EventType::DealStageChanged),
            Some(&payload(event)),
            &CrmValues::default(),
        )
        .expect("plan");
        assert_eq!(keys(&plan), ["deal:handoff_deal_id:d-1"]);
        assert_eq!(plan.upserts[0].properties["dealstage"], "contractsent");
        assert_eq!(plan.associations.len(), 1, "deal → contact");
    }

    #[test]
    fn payment_failed_flags_the_contact_and_opens_one_ticket_per_invoice() {
        let event = Event::PaymentFailed(PaymentFailed {
            contact: Some(alex()),
            payment: Some(Payment {
                invoice_id: Some("in_42".into()),
                amount_minor: Some(4_900),
                currency: Some("USD".into()),
                failure_code: Some("card_declined".into()),
                ..Payment::default()
            }),
            subscription: None,
            ticket: Some(Ticket {
                priority: Some("urgent".into()),
                ..Ticket::default()
            }),
        });
        let plan = plan(
            facts(EventType::PaymentFailed),
            Some(&payload(event)),
            &CrmValues::default(),
        )
        .expect("plan");
        assert_eq!(
            keys(&plan),
            [
                "contact:email:alex@example.com",
                "ticket:handoff_ticket_key:invoice:in_42"
            ]
        );
        assert_eq!(plan.upserts[0].properties["handoff_health"], "at_risk");
        let ticket = &plan.upserts[1].properties;
        assert_eq!(ticket["hs_pipeline"], "0");
        assert_eq!(ticket["hs_pipeline_stage"], "1");
        assert_eq!(ticket["hs_ticket_priority"], "URGENT");
        assert_eq!(ticket["subject"], "Payment failed: invoice in_42");
        assert!(
            ticket["content"].contains("49.00 USD"),
            "{}",
            ticket["content"]
        );
        assert!(ticket["content"].contains("card_declined"));
    }

    #[test]
    fn contact_keys_prefer_email_then_external_then_crm_id() {
        let by_crm = Contact {
            crm_contact_id: Some("12345".into()),
            ..Contact::default()
        };
        assert_eq!(contact_key(&by_crm).expect("key").id_property, CRM_ID);
        let by_ext = Contact {
            external_id: Some("u-1".into()),
            ..by_crm.clone()
        };
        assert_eq!(
            contact_key(&by_ext).expect("key").id_property,
            "handoff_external_id"
        );
        let by_email = Contact {
            email: Some("a@b.example".into()),
            ..by_ext
        };
        assert_eq!(contact_key(&by_email).expect("key").id_property, "email");
        assert_eq!(contact_key(&Contact::default()), None);
    }

    #[test]
    fn contact_updated_without_identifier_is_refused() {
        let event = Event::ContactUpdated(ContactUpdated {
            contact: Some(Contact {
                first_name: Some("Nobody".into()),
                ..Contact::default()
            }),
            company: None,
        });
        let err = plan(
            facts(EventType::ContactUpdated),
            Some(&payload(event)),
            &CrmValues::default(),
        )
        .expect_err("no identifier");
        assert_eq!(err, PlanError::NoIdentifier("the contact"));
    }

    #[test]
    fn a_payload_of_another_type_is_refused() {
        let event = Event::ContactUpdated(ContactUpdated {
            contact: Some(alex()),
            company: None,
        });
        let err = plan(
            facts(EventType::LeadCreated),
            Some(&payload(event)),
            &CrmValues::default(),
        )
        .expect_err("mismatch");
        assert!(matches!(err, PlanError::Mismatch { .. }));
        assert_eq!(
            plan(facts(EventType::LeadCreated), None, &CrmValues::default()),
            Err(PlanError::NoPayload)
        );
    }

    #[test]
    fn amounts_keep_two_decimals() {
        assert_eq!(minor_to_decimal(0), "0.00");
        assert_eq!(minor_to_decimal(5), "0.05");
        assert_eq!(minor_to_decimal(-1999), "-19.99");
    }

    #[test]
    fn a_subscriber_report_becomes_one_contact_upsert_by_email() {
        use handoff_events::v1::{Synced, SyncedRecord};
        let record = |kind: &str, id: &str, key_property: &str, key: &str| SyncedRecord {
            kind: kind.to_owned(),
            id: id.to_owned(),
            key_property: key_property.to_owned(),
            key: key.to_owned(),
            disposition: "updated".to_owned(),
        };
        let synced = |records| Synced {
            stage: "email-writer".to_owned(),
            destination: "mailchimp".to_owned(),
            delivered_event_type: "lead.created".to_owned(),
            records,
        };
        let plan = write_back_plan(&synced(vec![record(
            "subscriber",
            "62eeb292278cc15f5817cb78f7790b08",
            "email",
            "Alex@Example.com",
        )]))
        .expect("a plan");
        assert!(plan.associations.is_empty());
        assert_eq!(plan.upserts.len(), 1);
        let upsert = &plan.upserts[0];
        assert_eq!(
            upsert.key,
            RecordKey::new(ObjectKind::Contact, "email", "alex@example.com")
        );
        assert_eq!(
            upsert
                .properties
                .get(SUBSCRIBER_ID_PROPERTY)
                .map(String::as_str),
            Some("62eeb292278cc15f5817cb78f7790b08")
        );
        for bad in [
            vec![],
            vec![record("contact", "1", "email", "a@b.c")],
            vec![record("subscriber", "", "email", "a@b.c")],
            vec![record("subscriber", "x", "email", "not-an-email")],
        ] {
            assert_eq!(write_back_plan(&synced(bad)), Err(PlanError::NoSubscriber));
        }
    }

    #[test]
    fn only_mapped_custom_properties_are_written_and_the_rest_are_listed() {
        let contact = Contact {
            email: Some("kim@example.com".into()),
            custom_properties: [("team_size", "11-50"), ("nps", "9"), ("tier", "gold")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into_iter()
                .collect(),
            ..Contact::default()
        };
        let event = CanonicalPayload {
            event: Some(Event::ContactUpdated(ContactUpdated {
                contact: Some(contact),
                company: None,
            })),
        };
        let facts = EventFacts {
            event_type: EventType::ContactUpdated,
            event_id: "e1",
        };
        let mut values = CrmValues::default();
        let plan_with = |values: &CrmValues| plan(facts, Some(&event), values).expect("a plan");

        // Nothing mapped (the default): all left out, listed.
        let p = plan_with(&values);
        assert_eq!(p.unmapped, ["nps", "team_size", "tier"]);
        assert!(!p.upserts[0].properties.contains_key("team_size"));

        // Mapped ones under their HubSpot names; the rest listed.
        values.custom_properties = [("team_size", "team_size"), ("nps", "hs_nps")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into_iter()
            .collect();
        let p = plan_with(&values);
        let props = &p.upserts[0].properties;
        assert_eq!(props.get("team_size").map(String::as_str), Some("11-50"));
        assert_eq!(props.get("hs_nps").map(String::as_str), Some("9"));
        assert!(!props.contains_key("nps"));
        assert_eq!(p.unmapped, ["tier"]);

        // "*" = "*": every one under its own name.
        values.custom_properties = [("*".to_owned(), "*".to_owned())].into_iter().collect();
        let p = plan_with(&values);
        assert!(p.unmapped.is_empty());
        assert_eq!(
            p.upserts[0].properties.get("tier").map(String::as_str),
            Some("gold")
        );
    }
}
