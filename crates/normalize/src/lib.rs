//! Normalization of raw publisher events into canonical v1 records: a pure
//! library (no I/O) that the normalizer service calls once per message.
//!
//! [`Normalizer::new`] compiles a [`NormalizeConfig`] once (enum maps into
//! hash maps, validated: a bad map fails start-up); [`Normalizer::normalize`]
//! decodes a raw JSON body for its event type and schema version, cleans
//! every field with the small functions in [`field`], builds the
//! `CanonicalPayload`, and checks what the event needs to be actionable. It
//! answers a [`Normalized`] payload with [`Note`]s about values it dropped
//! or passed through, or a permanent [`Rejection`] listing every field error.
//!
//! ## Fields
//!
//! | raw | canonical |
//! |---|---|
//! | `email`, `owner_email` | trimmed, lower-cased, domain in punycode ([`field::email`]); invalid → field error |
//! | `phone` | E.164 ([`field::phone`]), region = the record's country, else `default_region`; invalid → dropped with a note, or a field error (`on_invalid_phone`) |
//! | `country` | ISO 3166-1 alpha-2 ([`field::country`]); unknown → field error |
//! | `timezone` | canonical IANA name ([`field::timezone`]); unknown → field error |
//! | `lifecycle_stage`, `stage`, `plan`, `status` | through the config maps ([`field::EnumTable`]) |
//! | names, titles, free text | [`field::text`]: trimmed, whitespace collapsed, controls removed, ≤ `max_text_chars` |
//! | ids (`crm_contact_id`, `deal_id`, ...) | [`field::id`]: trimmed, controls removed, otherwise exact |
//! | `company_domain`, `company.domain` | [`field::company_domain`]: bare ASCII domain |
//! | timestamps, `close_date` | UTC `Timestamp`; a `YYYY-MM-DD` date is midnight UTC |
//! | `amount`, `mrr` + `currency` | `*_minor` in the currency's minor unit; without a currency, cents (exponent 2) |
//! | UTMs, click ids, URLs | [`field::attribution`]: explicit, else landing URL, else referrer; bad URLs dropped with a note |
//! | `custom_properties` | string values ([`field::custom_properties`]) |
//!
//! A value that is blank after cleaning is left out (`None`): a writer never
//! blanks a destination field because of it.
//!
//! ## Events
//!
//! | event | raw → canonical | actionable when |
//! |---|---|---|
//! | `lead.created` | `lead` → `contact`; `lead.company`/`company_domain` → `company.name`/`domain`; `lead.form_id` → `form_id`; `attribution` → `attribution` | `lead.email` valid |
//! | `meeting.booked` | `contact` → `contact` (its company is not carried); `meeting` → `meeting` (`meeting_type` lower-cased); `attribution` → `attribution` | a contact id, `meeting.meeting_id`, `meeting.starts_at` |
//! | `customer.converted` | `customer` → `contact` + `company`; `customer.plan` → `subscription.plan`; `mrr` → `subscription.mrr_minor`; `amount` → `deal.amount_minor`; `currency` → both; `context.deal_id` → `deal.deal_id`; `context.subscription_id` → `subscription.subscription_id`; `context.utm_*`, URLs, click ids → `attribution` | `customer.email` or `customer.crm_contact_id` |
//! | `deal.stage_changed` | `deal` → `deal` (`stage`, `previous_stage` mapped); `contact` → `contact`; `company` → `company` (else the contact's company) | `deal_id` or `crm_deal_id`, and `stage` |
//! | `payment.failed` | `customer` → `contact`; `payment` → `payment` (`failure_code` lower-cased); `subscription` → `subscription` (`plan`, `status` mapped, `billing_interval` to day/week/month/quarter/year); a `ticket` with id `payment-failed:<invoice_id>`, a subject, and `payment_failed_ticket`'s priority, status, pipeline | a customer id and `payment.invoice_id` |
//! | `contact.updated` | `contact` → `contact` + `company` | an id plus at least one more field that survived cleaning |
//!
//! The envelope fields (`event_id`, `occurred_at`, `source`, ...) travel in
//! the `Envelope`, not in the payload, and are ignored here.
//!
//! ## Schema versions
//!
//! Version 1 is current for every type. `customer.converted` also accepts
//! version 0, the older flat shape (every field at the top level), upcast to
//! v1 before normalizing; its field errors name the v0 paths. Anything else
//! is [`Rejection::UnsupportedSchemaVersion`].

pub mod config;
mod error;
mod event;
pub mod field;
mod raw;

pub use config::{ConfigError, NormalizeConfig};
pub use error::{FieldError, Note, NoteKind, Rejection};

use handoff_events::EventType;
use handoff_events::v1::CanonicalPayload;
use phonenumber::country::Id;

use crate::config::OnInvalid;
use crate::field::{EnumTable, Mapped};

/// A compiled [`NormalizeConfig`]: built once at start-up, shared by every
/// message (it is `Send + Sync` and normalizing takes `&self`).
#[derive(Debug, Clone)]
pub struct Normalizer {
    default_region: String,
    on_invalid_phone: OnInvalid,
    alias_rules: bool,
    max_text_chars: usize,
    lifecycle_stage: EnumTable,
    deal_stage: EnumTable,
    plan: EnumTable,
    subscription_status: EnumTable,
    ticket_priority: String,
    ticket_status: String,
    ticket_pipeline: Option<String>,
}

/// A successfully normalized event.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalized {
    /// The canonical event, to publish as `Envelope.canonical`.
    pub payload: CanonicalPayload,
    /// Things fixed or dropped along the way that did not reject the event
    /// (dropped unparseable phone, unmapped enum passed through). The service
    /// logs them and counts them in a metric.
    pub notes: Vec<Note>,
}

/// A ticket default must map to a target of its table, never pass through.
fn ticket_value(
    table: &EnumTable,
    field: &'static str,
    value: &str,
) -> Result<String, ConfigError> {
    match table.map(value) {
        Ok(Mapped::Canonical(v)) => Ok(v),
        _ => Err(ConfigError::BadTicketValue {
            field,
            table: table.name(),
            value: value.to_owned(),
        }),
    }
}

impl Normalizer {
    /// Compiles and validates the config: duplicate keys (after case and
    /// whitespace folding), unknown targets, a bad default region → a
    /// [`ConfigError`] naming the table and key, so start-up fails with one
    /// clear line.
    pub fn new(config: &NormalizeConfig) -> Result<Self, ConfigError> {
        let region = config.default_region.trim().to_ascii_uppercase();
        if region.len() != 2 || region.parse::<Id>().is_err() {
            return Err(ConfigError::BadDefaultRegion {
                value: config.default_region.clone(),
            });
        }
        if config.max_text_chars == 0 {
            return Err(ConfigError::BadMaxTextChars);
        }
        let ticket_priority = EnumTable::compile("ticket_priority", &config.ticket_priority)?;
        let ticket_status = EnumTable::compile("ticket_status", &config.ticket_status)?;
        let ticket = &config.payment_failed_ticket;
        Ok(Normalizer {
            default_region: region,
            on_invalid_phone: config.on_invalid_phone,
            alias_rules: config.email.alias_rules,
            max_text_chars: config.max_text_chars,
            lifecycle_stage: EnumTable::compile("lifecycle_stage", &config.lifecycle_stage)?,
            deal_stage: EnumTable::compile("deal_stage", &config.deal_stage)?,
            plan: EnumTable::compile("plan", &config.plan)?,
            subscription_status: EnumTable::compile(
                "subscription_status",
                &config.subscription_status,
            )?,
            ticket_priority: ticket_value(&ticket_priority, "priority", &ticket.priority)?,
            ticket_status: ticket_value(&ticket_status, "status", &ticket.status)?,
            ticket_pipeline: ticket
                .pipeline
                .as_deref()
                .map(|p| field::text(p, 256))
                .filter(|p| !p.is_empty()),
        })
    }

    /// Normalizes one event. `body` is the publisher's raw JSON exactly as
    /// ingest forwarded it (`RawPayload.body`); `schema_version` is the
    /// envelope's. Every rejection is permanent.
    pub fn normalize(
        &self,
        event_type: EventType,
        schema_version: u32,
        body: &[u8],
    ) -> Result<Normalized, Rejection> {
        event::normalize(self, event_type, schema_version, body)
    }

    /// The schema versions [`Normalizer::normalize`] accepts for `event_type`,
    /// oldest first; the last is current.
    pub fn accepted_versions(event_type: EventType) -> &'static [u32] {
        event::accepted_versions(event_type)
    }
}
