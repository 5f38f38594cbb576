//! From a canonical event to the Mailchimp writes it needs: a [`MemberPlan`] (the member upsert,
//! its tags, at most one member event) and the request bodies that carry it. Pure: no I/O, so
//! every route is tested row by row.
//!
//! The member is addressed by its subscriber hash, the MD5 of the lower-cased email, so every
//! write is an upsert by natural key and a redelivered or replayed event repeats an update, never
//! a create. The email is the canonical contact's ([`handoff_events::primary_email`]); an event
//! without one cannot be written ([`PlanError::NoEmail`]).
//!
//! | request | body |
//! |---|---|
//! | `PUT /3.0/lists/{list}/members/{hash}` | `email_address`, `status_if_new` (never `status`), `merge_fields` |
//! | `POST …/members/{hash}/tags` | `{"tags": [{"name", "status": "active"}]}` (adding a tag twice is a no-op) |
//! | `POST …/members/{hash}/events` | `name`, `properties` (strings, as Mailchimp requires), `occurred_at` |
//! | `GET …/members/{hash}/events?count&offset&fields` | none: the events already there, to check before a post ([`events_page_path`], [`is_same_event`]) |
//!
//! Fields an event does not carry are not written: an event never blanks a merge field.

use std::collections::BTreeMap;

use handoff_events::v1::canonical_payload::Event;
use handoff_events::v1::{Attribution, CanonicalPayload, Company, Contact, Payment, Subscription};
use handoff_events::{EventType, Timestamp};
use handoff_idempotency::IdempotencyKey;
use md5::{Digest as _, Md5};
use serde_json::{Value, json};

use crate::routes::{CUSTOM_PROPERTY_SOURCE, MAX_TAG_CHARS, NewMemberStatus, RoutesConfig};

/// The longest failure message kept in a member event: Mailchimp takes about 1,000 characters of
/// properties in all, and the code says what happened.
const MAX_FAILURE_MESSAGE_CHARS: usize = 200;

/// The member event property that carries its identity (the invoice): the step claim's key and
/// the check of Mailchimp's event list both go by it.
pub const IDENTITY_PROPERTY: &str = "invoice_id";

/// What the planner needs besides the payload.
#[derive(Debug, Clone, Copy)]
pub struct EventFacts<'a> {
    /// The envelope's type, which the payload must match.
    pub event_type: EventType,
    /// When the event happened: the member event's `occurred_at`.
    pub occurred_at: Option<&'a Timestamp>,
}

/// The Mailchimp writes of one event, in the order they are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberPlan {
    /// The canonical (normalized) email: the member's `email_address` and the ledger's index.
    pub email: String,
    /// MD5 of the lower-cased email, the member's id in Mailchimp's paths.
    pub subscriber_hash: String,
    /// The status the member gets if the upsert creates it.
    pub status_if_new: NewMemberStatus,
    /// Merge tag → value, before ownership and the stale guard.
    pub merge_fields: BTreeMap<String, String>,
    /// Tags to add (never removed by the writer).
    pub tags: Vec<String>,
    /// A member event to post once, after the upsert.
    pub event: Option<MemberEvent>,
}

/// A member event, sent once per (name, member, invoice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberEvent {
    /// The configured event name (`payment_failed`).
    pub name: String,
    /// What makes the event unique: one per invoice.
    pub invoice_id: String,
    /// Property → value; Mailchimp takes strings only.
    pub properties: BTreeMap<String, String>,
    /// RFC 3339.
    pub occurred_at: Option<String>,
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
    #[error("no email to address the member by")]
    NoEmail,
    #[error("payment.failed without an invoice id: its member event is sent once per invoice")]
    NoInvoice,
}

/// Builds the plan of one canonical event (whose route is on).
pub fn plan(
    facts: EventFacts<'_>,
    payload: Option<&CanonicalPayload>,
    routes: &RoutesConfig,
) -> Result<MemberPlan, PlanError> {
    let payload = payload.ok_or(PlanError::NoPayload)?;
    let event = payload.event.as_ref().ok_or(PlanError::NoPayload)?;
    let actual = event_type_of(event);
    if actual != facts.event_type {
        return Err(PlanError::Mismatch {
            declared: facts.event_type.as_str(),
            actual: actual.as_str(),
        });
    }
    let email = handoff_events::primary_email(payload)
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .ok_or(PlanError::NoEmail)?
        .to_owned();

    let mut tags = Vec::new();
    let mut member_event = None;
    let records = match event {
        Event::LeadCreated(e) => {
            if routes.lead_created.attribution_tags {
                tags.extend(attribution_tags(e.attribution.as_ref()));
            }
            tags.extend(routes.lead_created.tags.iter().cloned());
            Records::new(e.contact.as_ref(), e.company.as_ref(), None)
        }
        Event::MeetingBooked(e) => Records::new(e.contact.as_ref(), None, None),
        Event::CustomerConverted(e) => {
            tags.extend(routes.customer_converted.tags.iter().cloned());
            Records::new(
                e.contact.as_ref(),
                e.company.as_ref(),
                e.subscription.as_ref(),
            )
        }
        Event::DealStageChanged(e) => Records::new(e.contact.as_ref(), e.company.as_ref(), None),
        Event::PaymentFailed(e) => {
            member_event = Some(payment_event(
                &routes.payment_failed.event,
                e.payment.as_ref(),
                e.subscription.as_ref(),
                facts.occurred_at,
            )?);
            Records::new(e.contact.as_ref(), None, e.subscription.as_ref())
        }
        Event::ContactUpdated(e) => Records::new(e.contact.as_ref(), e.company.as_ref(), None),
    };

    let merge_fields = routes
        .merge_fields
        .iter()
        .filter_map(|(tag, source)| Some((tag.clone(), records.value(source)?)))
        .collect();
    let opted_in = records.contact.and_then(|c| c.marketing_opt_in) == Some(true);
    let status_if_new = if opted_in {
        routes.consent.opted_in
    } else {
        routes.consent.otherwise
    };
    let mut unique = Vec::with_capacity(tags.len());
    for tag in tags {
        if !unique.contains(&tag) {
            unique.push(tag);
        }
    }
    Ok(MemberPlan {
        subscriber_hash: subscriber_hash(&email),
        email,
        status_if_new,
        merge_fields,
        tags: unique,
        event: member_event,
    })
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

/// The records of an event that merge fields can read.
struct Records<'a> {
    contact: Option<&'a Contact>,
    company: Option<&'a Company>,
    subscription: Option<&'a Subscription>,
}

impl<'a> Records<'a> {
    fn new(
        contact: Option<&'a Contact>,
        company: Option<&'a Company>,
        subscription: Option<&'a Subscription>,
    ) -> Self {
        Records {
            contact,
            company,
            subscription,
        }
    }

    /// The non-blank value of `source` (see `routes::MERGE_SOURCES`), if the event carries it.
    fn value(&self, source: &str) -> Option<String> {
        let (record, field) = source.split_once('.')?;
        let value: Option<&str> = match record {
            "contact" => {
                let c = self.contact?;
                if let Some(name) = source.strip_prefix(CUSTOM_PROPERTY_SOURCE) {
                    c.custom_properties.get(name).map(String::as_str)
                } else {
                    match field {
                        "first_name" => c.first_name.as_deref(),
                        "last_name" => c.last_name.as_deref(),
                        "phone" => c.phone.as_deref(),
                        "job_title" => c.job_title.as_deref(),
                        "country" => c.country.as_deref(),
                        "timezone" => c.timezone.as_deref(),
                        "lifecycle_stage" => c.lifecycle_stage.as_deref(),
                        "owner_email" => c.owner_email.as_deref(),
                        "external_id" => c.external_id.as_deref(),
                        "crm_contact_id" => c.crm_contact_id.as_deref(),
                        _ => None,
                    }
                }
            }
            "company" => {
                let c = self.company?;
                match field {
                    "name" => c.name.as_deref(),
                    "domain" => c.domain.as_deref(),
                    "industry" => c.industry.as_deref(),
                    "country" => c.country.as_deref(),
                    _ => None,
                }
            }
            "subscription" => {
                let s = self.subscription?;
                match field {
                    "plan" => s.plan.as_deref(),
                    "status" => s.status.as_deref(),
                    "billing_interval" => s.billing_interval.as_deref(),
                    "subscription_id" => s.subscription_id.as_deref(),
                    _ => None,
                }
            }
            _ => None,
        };
        non_empty(value).map(str::to_owned)
    }
}

/// `source:…`, `medium:…`, `campaign:…` for the UTM values present, bounded to Mailchimp's tag
/// length so a long campaign name is shortened rather than refused.
fn attribution_tags(attribution: Option<&Attribution>) -> Vec<String> {
    let Some(a) = attribution else {
        return Vec::new();
    };
    [
        ("source", a.utm_source.as_deref()),
        ("medium", a.utm_medium.as_deref()),
        ("campaign", a.utm_campaign.as_deref()),
    ]
    .into_iter()
    .filter_map(|(prefix, value)| {
        let tag = format!("{prefix}:{}", non_empty(value)?.trim());
        Some(tag.chars().take(MAX_TAG_CHARS).collect())
    })
    .collect()
}

fn payment_event(
    name: &str,
    payment: Option<&Payment>,
    subscription: Option<&Subscription>,
    occurred_at: Option<&Timestamp>,
) -> Result<MemberEvent, PlanError> {
    let payment = payment.ok_or(PlanError::NoInvoice)?;
    let invoice_id = non_empty(payment.invoice_id.as_deref())
        .ok_or(PlanError::NoInvoice)?
        .to_owned();
    let mut properties = BTreeMap::new();
    properties.insert(IDENTITY_PROPERTY.to_owned(), invoice_id.clone());
    if let Some(minor) = payment.amount_minor {
        properties.insert("amount".to_owned(), minor_to_decimal(minor));
    }
    put(&mut properties, "currency", payment.currency.as_deref());
    put(
        &mut properties,
        "failure_code",
        payment.failure_code.as_deref(),
    );
    if let Some(message) = non_empty(payment.failure_message.as_deref()) {
        properties.insert(
            "failure_message".to_owned(),
            message.chars().take(MAX_FAILURE_MESSAGE_CHARS).collect(),
        );
    }
    if let Some(n) = payment.attempt_count {
        properties.insert("attempt_count".to_owned(), n.to_string());
    }
    if let Some(at) = payment.next_retry_at.as_ref().and_then(rfc3339) {
        properties.insert("next_retry_at".to_owned(), at);
    }
    put(
        &mut properties,
        "plan",
        subscription.and_then(|s| s.plan.as_deref()),
    );
    Ok(MemberEvent {
        name: name.to_owned(),
        invoice_id,
        properties,
        occurred_at: occurred_at.and_then(rfc3339),
    })
}

/// Mailchimp's subscriber hash: the MD5 of the lower-cased email, as lower-case hex.
pub fn subscriber_hash(email: &str) -> String {
    Md5::digest(email.to_lowercase().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `/3.0/lists/{list_id}/members/{hash}`.
pub fn member_path(list_id: &str, hash: &str) -> String {
    format!("/3.0/lists/{list_id}/members/{hash}")
}

/// The upsert: `status_if_new` and never `status`, so an existing member's status (unsubscribed,
/// cleaned, pending) is Mailchimp's and stays; `merge_fields` as admitted.
pub fn upsert_body(
    plan: &MemberPlan,
    merge_fields: &BTreeMap<String, String>,
) -> serde_json::Value {
    json!({
        "email_address": plan.email,
        "status_if_new": plan.status_if_new.as_str(),
        "merge_fields": merge_fields,
    })
}

/// Adds every tag (`status: active`); tags the member has already are left as they are.
pub fn tags_body(tags: &[String]) -> serde_json::Value {
    let tags: Vec<Value> = tags
        .iter()
        .map(|name| json!({ "name": name, "status": "active" }))
        .collect();
    json!({ "tags": tags })
}

/// The member event. `is_syncing` is left out: events sent with it do not start automations.
pub fn event_body(event: &MemberEvent) -> serde_json::Value {
    let mut body = json!({ "name": event.name, "properties": event.properties });
    if let Some(at) = &event.occurred_at {
        body["occurred_at"] = json!(at);
    }
    body
}

/// One page of the member's events, newest first: `GET …/members/{hash}/events` with `count`,
/// `offset`, and `fields` asking only for what [`is_same_event`] reads (each event's name and
/// identity property) and `total_items`, so a long history stays a small answer.
pub fn events_page_path(list_id: &str, hash: &str, count: usize, offset: usize) -> String {
    format!(
        "{}/events?count={count}&offset={offset}&fields=events.name,events.properties.{IDENTITY_PROPERTY},total_items",
        member_path(list_id, hash)
    )
}

/// Whether `listed`, one item of Mailchimp's `events` array, is `event`: the same name and the
/// same identity property (the invoice). Other properties may differ (an amount reported
/// differently the second time is still the same invoice's failure).
pub fn is_same_event(event: &MemberEvent, listed: &Value) -> bool {
    listed.get("name").and_then(Value::as_str) == Some(event.name.as_str())
        && listed
            .get("properties")
            .and_then(|p| p.get(IDENTITY_PROPERTY))
            .and_then(Value::as_str)
            == Some(event.invoice_id.as_str())
}

/// The stale guard's name for a member: `member:<list>:<hash>`.
pub fn guard_key(list_id: &str, hash: &str) -> String {
    format!("member:{list_id}:{hash}")
}

/// The step-level idempotency key of a member event: stage `email-writer`, scope
/// `member-event.<list>` (per audience; a publisher id, the scope of event claims, cannot make
/// the same Redis key, as no event id has the shape of the id), id
/// `<event name>.<subscriber hash>.<invoice id>`. The invoice id is publisher data: `%` and `:`
/// are escaped (`%25`, `%3A`) because key parts are joined with `:` and must not contain one.
pub fn event_key(list_id: &str, hash: &str, event: &MemberEvent) -> IdempotencyKey {
    let invoice = event.invoice_id.replace('%', "%25").replace(':', "%3A");
    IdempotencyKey::new(
        handoff_bus::EMAIL_WRITER,
        format!("member-event.{list_id}"),
        format!("{}.{hash}.{invoice}", event.name),
    )
}

fn put(props: &mut BTreeMap<String, String>, name: &str, value: Option<&str>) {
    if let Some(v) = non_empty(value) {
        props.insert(name.to_owned(), v.to_owned());
    }
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.trim().is_empty())
}

/// Minor units to a decimal string with two places ("4900" → "49.00").
fn minor_to_decimal(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

fn rfc3339(ts: &Timestamp) -> Option<String> {
    handoff_events::to_offset_date_time(ts)?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{ConsentConfig, NewMemberStatus};
    use handoff_events::v1::{
        ContactUpdated, CustomerConverted, DealStageChanged, LeadCreated, MeetingBooked,
        PaymentFailed,
    };

    const T: Timestamp = Timestamp {
        seconds: 1_774_000_000,
        nanos: 0,
    };

    fn facts(event: &Event) -> EventFacts<'static> {
        EventFacts {
            event_type: event_type_of(event),
            occurred_at: Some(&T),
        }
    }

    fn alex(opt_in: Option<bool>) -> Contact {
        Contact {
            email: Some("alex.kim@example.com".into()),
            first_name: Some("Alex".into()),
            last_name: Some("Kim".into()),
            phone: Some("+14155550100".into()),
            country: Some("US".into()),
            owner_email: Some("sam@seller.example".into()),
            marketing_opt_in: opt_in,
            ..Contact::default()
        }
    }

    fn acme() -> Company {
        Company {
            name: Some("Acme".into()),
            domain: Some("acme.example".into()),
            ..Company::default()
        }
    }

    fn pro() -> Subscription {
        Subscription {
            plan: Some("pro".into()),
            ..Subscription::default()
        }
    }

    fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn run(event: Event, routes: &RoutesConfig) -> Result<MemberPlan, PlanError> {
        let payload = CanonicalPayload {
            event: Some(event.clone()),
        };
        plan(facts(&event), Some(&payload), routes)
    }

    #[test]
    fn each_route_maps_to_its_member_writes() {
        let routes = RoutesConfig::default();
        struct Row {
            name: &'static str,
            event: Event,
            status: NewMemberStatus,
            merge_fields: &'static [(&'static str, &'static str)],
            tags: &'static [&'static str],
            event_name: Option<&'static str>,
        }
        let rows = vec![
            Row {
                name: "lead with attribution, opted in",
                event: Event::LeadCreated(LeadCreated {
                    contact: Some(alex(Some(true))),
                    company: Some(acme()),
                    attribution: Some(Attribution {
                        utm_source: Some("google".into()),
                        utm_medium: Some("cpc".into()),
                        utm_campaign: Some("spring-launch".into()),
                        utm_term: Some("not a tag".into()),
                        ..Attribution::default()
                    }),
                    form_id: Some("demo".into()),
                }),
                status: NewMemberStatus::Subscribed,
                merge_fields: &[
                    ("COMPANY", "Acme"),
                    ("COUNTRY", "US"),
                    ("FNAME", "Alex"),
                    ("LNAME", "Kim"),
                    ("OWNER", "sam@seller.example"),
                    ("PHONE", "+14155550100"),
                ],
                tags: &[
                    "source:google",
                    "medium:cpc",
                    "campaign:spring-launch",
                    "journey:lead-nurture",
                ],
                event_name: None,
            },
            Row {
                name: "lead without attribution or consent",
                event: Event::LeadCreated(LeadCreated {
                    contact: Some(Contact {
                        email: Some("quiet@example.com".into()),
                        ..Contact::default()
                    }),
                    ..LeadCreated::default()
                }),
                status: NewMemberStatus::Transactional,
                merge_fields: &[],
                tags: &["journey:lead-nurture"],
                event_name: None,
            },
            Row {
                name: "customer converted",
                event: Event::CustomerConverted(CustomerConverted {
                    contact: Some(Contact {
                        email: Some("alex.kim@example.com".into()),
                        owner_email: Some("sam@seller.example".into()),
                        marketing_opt_in: Some(false),
                        ..Contact::default()
                    }),
                    company: Some(acme()),
                    subscription: Some(pro()),
                    ..CustomerConverted::default()
                }),
                status: NewMemberStatus::Transactional,
                merge_fields: &[
                    ("COMPANY", "Acme"),
                    ("OWNER", "sam@seller.example"),
                    ("PLAN", "pro"),
                ],
                tags: &["customer"],
                event_name: None,
            },
            Row {
                name: "payment failed",
                event: Event::PaymentFailed(PaymentFailed {
                    contact: Some(Contact {
                        email: Some("alex.kim@example.com".into()),
                        ..Contact::default()
                    }),
                    payment: Some(Payment {
                        invoice_id: Some("in_42".into()),
                        ..Payment::default()
                    }),
                    subscription: Some(pro()),
                    ticket: None,
                }),
                status: NewMemberStatus::Transactional,
                merge_fields: &[("PLAN", "pro")],
                tags: &[],
                event_name: Some("payment_failed"),
            },
            Row {
                name: "contact updated",
                event: Event::ContactUpdated(ContactUpdated {
                    contact: Some(Contact {
                        first_name: Some("  ".into()),
                        ..alex(Some(true))
                    }),
                    company: None,
                }),
                status: NewMemberStatus::Subscribed,
                merge_fields: &[
                    ("COUNTRY", "US"),
                    ("LNAME", "Kim"),
                    ("OWNER", "sam@seller.example"),
                    ("PHONE", "+14155550100"),
                ],
                tags: &[],
                event_name: None,
            },
            Row {
                name: "meeting booked (when switched on)",
                event: Event::MeetingBooked(MeetingBooked {
                    contact: Some(alex(None)),
                    ..MeetingBooked::default()
                }),
                status: NewMemberStatus::Transactional,
                merge_fields: &[
                    ("COUNTRY", "US"),
                    ("FNAME", "Alex"),
                    ("LNAME", "Kim"),
                    ("OWNER", "sam@seller.example"),
                    ("PHONE", "+14155550100"),
                ],
                tags: &[],
                event_name: None,
            },
            Row {
                name: "deal stage changed (when switched on)",
                event: Event::DealStageChanged(DealStageChanged {
                    contact: Some(Contact {
                        email: Some("alex.kim@example.com".into()),
                        ..Contact::default()
                    }),
                    company: Some(acme()),
                    deal: None,
                }),
                status: NewMemberStatus::Transactional,
                merge_fields: &[("COMPANY", "Acme")],
                tags: &[],
                event_name: None,
            },
        ];
        for row in rows {
            let plan = run(row.event, &routes).unwrap_or_else(|e| panic!("{}: {e}", row.name));
            assert_eq!(plan.status_if_new, row.status, "{}", row.name);
            assert_eq!(plan.merge_fields, fields(row.merge_fields), "{}", row.name);
            assert_eq!(plan.tags, strings(row.tags), "{}", row.name);
            assert_eq!(
                plan.event.as_ref().map(|e| e.name.as_str()),
                row.event_name,
                "{}",
                row.name
            );
            assert_eq!(
                plan.subscriber_hash,
                subscriber_hash(&plan.email),
                "{}",
                row.name
            );
        }
    }

    #[test]
    fn refusals() {
        let routes = RoutesConfig::default();
        let no_email = Event::ContactUpdated(ContactUpdated {
            contact: Some(Contact {
                crm_contact_id: Some("123".into()),
                first_name: Some("Nobody".into()),
                ..Contact::default()
            }),
            company: None,
        });
        let no_contact = Event::CustomerConverted(CustomerConverted::default());
        let no_invoice = Event::PaymentFailed(PaymentFailed {
            contact: Some(alex(None)),
            payment: Some(Payment {
                amount_minor: Some(100),
                ..Payment::default()
            }),
            ..PaymentFailed::default()
        });
        let no_payment = Event::PaymentFailed(PaymentFailed {
            contact: Some(alex(None)),
            ..PaymentFailed::default()
        });
        for (event, expected) in [
            (no_email, PlanError::NoEmail),
            (no_contact, PlanError::NoEmail),
            (no_invoice, PlanError::NoInvoice),
            (no_payment, PlanError::NoInvoice),
        ] {
            assert_eq!(run(event, &routes), Err(expected));
        }
        assert_eq!(
            PlanError::NoEmail.to_string(),
            "no email to address the member by"
        );
        let lead = Event::LeadCreated(LeadCreated {
            contact: Some(alex(None)),
            ..LeadCreated::default()
        });
        let payload = CanonicalPayload { event: Some(lead) };
        let mismatch = plan(
            EventFacts {
                event_type: EventType::ContactUpdated,
                occurred_at: None,
            },
            Some(&payload),
            &routes,
        );
        assert!(matches!(mismatch, Err(PlanError::Mismatch { .. })));
        assert_eq!(
            plan(
                facts(&Event::ContactUpdated(ContactUpdated::default())),
                None,
                &routes
            ),
            Err(PlanError::NoPayload)
        );
    }

    #[test]
    fn configuration_changes_what_is_written() {
        let mut routes = RoutesConfig {
            consent: ConsentConfig {
                opted_in: NewMemberStatus::Pending,
                otherwise: NewMemberStatus::Transactional,
            },
            ..RoutesConfig::default()
        };
        routes.lead_created.attribution_tags = false;
        routes.lead_created.tags = strings(&["journey:trial", "journey:trial"]);
        routes.merge_fields = fields(&[
            ("MMERGE5", "contact.job_title"),
            ("TIER", "contact.custom_properties.tier"),
        ]);
        let mut contact = alex(Some(true));
        contact.job_title = Some("CTO".into());
        contact
            .custom_properties
            .insert("tier".into(), "gold".into());
        let lead = Event::LeadCreated(LeadCreated {
            contact: Some(contact),
            attribution: Some(Attribution {
                utm_source: Some("google".into()),
                ..Attribution::default()
            }),
            ..LeadCreated::default()
        });
        let plan = run(lead, &routes).expect("plan");
        assert_eq!(plan.status_if_new, NewMemberStatus::Pending);
        assert_eq!(plan.tags, strings(&["journey:trial"]), "deduplicated");
        assert_eq!(
            plan.merge_fields,
            fields(&[("MMERGE5", "CTO"), ("TIER", "gold")])
        );
    }

    #[test]
    fn payment_event_properties_are_strings() {
        let event = Event::PaymentFailed(PaymentFailed {
            contact: Some(alex(None)),
            payment: Some(Payment {
                invoice_id: Some("in_42".into()),
                amount_minor: Some(4_900),
                currency: Some("USD".into()),
                failure_code: Some("card_declined".into()),
                failure_message: Some("x".repeat(500)),
                attempt_count: Some(2),
                next_retry_at: Some(Timestamp {
                    seconds: 1_774_086_400,
                    nanos: 0,
                }),
            }),
            subscription: Some(pro()),
            ticket: None,
        });
        let plan = run(event, &RoutesConfig::default()).expect("plan");
        let member_event = plan.event.as_ref().expect("event");
        let p = &member_event.properties;
        assert_eq!(p["invoice_id"], "in_42");
        assert_eq!(p["amount"], "49.00");
        assert_eq!(p["currency"], "USD");
        assert_eq!(p["failure_code"], "card_declined");
        assert_eq!(p["failure_message"].len(), 200);
        assert_eq!(p["attempt_count"], "2");
        assert_eq!(p["next_retry_at"], "2026-03-21T09:46:40Z");
        assert_eq!(p["plan"], "pro");
        let body = event_body(member_event);
        assert_eq!(body["name"], "payment_failed");
        assert_eq!(body["occurred_at"], "2026-03-20T09:46:40Z");
        assert!(body.get("is_syncing").is_none(), "automations must start");
        assert!(
            body["properties"]
                .as_object()
                .expect("object")
                .values()
                .all(Value::is_string)
        );
    }

    #[test]
    fn bodies_never_carry_status() {
        let plan = run(
            Event::ContactUpdated(ContactUpdated {
                contact: Some(alex(Some(true))),
                company: None,
            }),
            &RoutesConfig::default(),
        )
        .expect("plan");
        let body = upsert_body(&plan, &fields(&[("FNAME", "Alex")]));
        assert_eq!(
            body,
            json!({
                "email_address": "alex.kim@example.com",
                "status_if_new": "subscribed",
                "merge_fields": {"FNAME": "Alex"}
            })
        );
        assert_eq!(
            tags_body(&strings(&["customer"])),
            json!({"tags": [{"name": "customer", "status": "active"}]})
        );
    }

    #[test]
    fn long_utm_values_are_shortened_to_a_tag() {
        let tags = attribution_tags(Some(&Attribution {
            utm_campaign: Some("c".repeat(300)),
            utm_medium: Some(" ".into()),
            ..Attribution::default()
        }));
        assert_eq!(tags.len(), 1);
        assert_eq!(tags[0].chars().count(), MAX_TAG_CHARS);
        assert!(tags[0].starts_with("campaign:ccc"));
    }

    #[test]
    fn hashes_keys_and_paths() {
        // Mailchimp's documented example: the MD5 of the lower-cased address.
        assert_eq!(
            subscriber_hash("Urist.McVankab@freddiesjokes.com"),
            "62eeb292278cc15f5817cb78f7790b08"
        );
        assert_eq!(
            member_path("abc123", "62ee"),
            "/3.0/lists/abc123/members/62ee"
        );
        assert_eq!(guard_key("abc123", "62ee"), "member:abc123:62ee");
        let event = MemberEvent {
            name: "payment_failed".into(),
            invoice_id: "inv:2024%07".into(),
            properties: BTreeMap::new(),
            occurred_at: None,
        };
        let key = event_key("abc123", "62ee", &event);
        assert_eq!(key.stage, "email-writer");
        assert_eq!(key.scope, "member-event.abc123");
        assert_eq!(key.id, "payment_failed.62ee.inv%3A2024%2507");
        for part in [&key.stage, &key.scope, &key.id] {
            assert!(!part.contains(':'), "{part}");
        }
        assert_eq!(
            events_page_path("abc123", "62ee", 1000, 2000),
            "/3.0/lists/abc123/members/62ee/events?count=1000&offset=2000&fields=events.name,events.properties.invoice_id,total_items"
        );
    }

    #[test]
    fn a_listed_event_is_the_same_by_name_and_invoice() {
        let event = MemberEvent {
            name: "payment_failed".into(),
            invoice_id: "in_42".into(),
            properties: BTreeMap::from([("invoice_id".into(), "in_42".into())]),
            occurred_at: None,
        };
        let listed = |name: &str, props: Value| json!({ "name": name, "properties": props });
        assert!(is_same_event(
            &event,
            &listed(
                "payment_failed",
                json!({"invoice_id": "in_42", "amount": "1.00"})
            )
        ));
        for other in [
            listed("payment_failed", json!({"invoice_id": "in_43"})),
            listed("payment_retried", json!({"invoice_id": "in_42"})),
            listed("payment_failed", json!({"invoice_id": 42})),
            listed("payment_failed", json!({})),
            json!({ "name": "payment_failed" }),
        ] {
            assert!(!is_same_event(&event, &other), "{other}");
        }
    }
}
