//! Per event type: decode the raw body for its schema version, normalize
//! every field into the canonical records, then check what makes the event
//! actionable, collecting every field error before deciding.
//!
//! The mapping of raw fields to records is tabled in the crate docs
//! (`lib.rs`); this file is its implementation.

use handoff_events::EventType;
use handoff_events::v1::canonical_payload::Event;
use handoff_events::v1::{
    Attribution, CanonicalPayload, Company, Contact, ContactUpdated, CustomerConverted, Deal,
    DealStageChanged, LeadCreated, Meeting, MeetingBooked, Payment, PaymentFailed, Subscription,
    Ticket,
};
use prost_types::Timestamp;
use serde::de::DeserializeOwned;

use crate::config::OnInvalid;
use crate::error::{FieldError, Note, NoteKind, Rejection};
use crate::field::{self, AttributionInput, EnumTable, Invalid, Mapped};
use crate::raw::{self, Person};
use crate::{Normalized, Normalizer};

/// Longest id, code or short value kept, in characters (ingest's bound).
const SHORT_MAX: usize = 256;

/// The identifiers a person can be matched by.
const PERSON_IDS: &str = "email, crm_contact_id, external_id";

/// Decodes `body` as `T`, turning serde's complaint into [`Rejection::Undecodable`].
fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, Rejection> {
    serde_json::from_slice(body).map_err(|err| Rejection::Undecodable {
        message: err.to_string(),
    })
}

/// Normalizes one raw body; see [`Normalizer::normalize`].
pub(crate) fn normalize(
    normalizer: &Normalizer,
    event_type: EventType,
    schema_version: u32,
    body: &[u8],
) -> Result<Normalized, Rejection> {
    let unsupported = || Rejection::UnsupportedSchemaVersion {
        event_type,
        version: schema_version,
    };
    let mut ctx = Ctx::new(normalizer);
    let event = match (event_type, schema_version) {
        (EventType::LeadCreated, 1) => lead_created(&mut ctx, decode(body)?)?,
        (EventType::MeetingBooked, 1) => meeting_booked(&mut ctx, decode(body)?)?,
        (EventType::CustomerConverted, 1) => customer_converted(&mut ctx, decode(body)?)?,
        (EventType::CustomerConverted, 0) => {
            let v1 = raw::upcast_customer_converted_v0(decode(body)?);
            ctx.path_map = Some(raw::customer_converted_v0_path);
            customer_converted(&mut ctx, v1)?
        }
        (EventType::DealStageChanged, 1) => deal_stage_changed(&mut ctx, decode(body)?)?,
        (EventType::PaymentFailed, 1) => payment_failed(&mut ctx, decode(body)?)?,
        (EventType::ContactUpdated, 1) => contact_updated(&mut ctx, decode(body)?)?,
        _ => return Err(unsupported()),
    };
    ctx.finish(CanonicalPayload { event: Some(event) })
}

/// The schema versions accepted per event type: 1 is current everywhere,
/// `customer.converted` also takes its flat v0 shape.
pub(crate) fn accepted_versions(event_type: EventType) -> &'static [u32] {
    match event_type {
        EventType::CustomerConverted => &[0, 1],
        _ => &[1],
    }
}

/// Which of the person extras a person object may carry.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Extras {
    None,
    Customer,
    Lead,
}

/// The state of one normalization: the compiled config, every error and
/// note so far, and how to write paths (v0 bodies have flat paths).
struct Ctx<'a> {
    n: &'a Normalizer,
    errors: Vec<FieldError>,
    notes: Vec<Note>,
    path_map: Option<fn(&str) -> String>,
}

/// A path not yet joined: built only when an error or note needs it, so the
/// happy path allocates no path strings.
#[derive(Clone, Copy)]
struct At<'p>(&'p str, &'p str);

impl At<'_> {
    fn path(self) -> String {
        join(self.0, self.1)
    }
}

fn join(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_owned()
    } else {
        format!("{prefix}.{field}")
    }
}

impl<'a> Ctx<'a> {
    fn new(n: &'a Normalizer) -> Self {
        Ctx {
            n,
            errors: Vec::new(),
            notes: Vec::new(),
            path_map: None,
        }
    }

    fn path(&self, path: String) -> String {
        match self.path_map {
            Some(map) => map(&path),
            None => path,
        }
    }

    fn error(&mut self, at: At<'_>, invalid: Invalid) {
        let path = self.path(at.path());
        self.errors.push(FieldError {
            path,
            message: invalid.0,
        });
    }

    fn note(&mut self, at: At<'_>, kind: NoteKind, message: String) {
        let path = self.path(at.path());
        self.notes.push(Note {
            path,
            kind,
            message,
        });
    }

    fn finish(mut self, payload: CanonicalPayload) -> Result<Normalized, Rejection> {
        if self.errors.is_empty() {
            return Ok(Normalized {
                payload,
                notes: self.notes,
            });
        }
        self.errors
            .sort_by(|a, b| a.path.cmp(&b.path).then_with(|| a.message.cmp(&b.message)));
        self.errors.dedup();
        Err(Rejection::Invalid {
            fields: self.errors,
        })
    }

    /// Extras (plan, form_id, ...) on a person that does not take them.
    fn check_extras(&self, prefix: &str, p: &Person, allowed: Extras) -> Result<(), Rejection> {
        let customer = [
            ("plan", p.plan.is_some()),
            ("mrr", p.mrr.is_some()),
            ("amount", p.amount.is_some()),
            ("currency", p.currency.is_some()),
        ];
        let lead = [("form_id", p.form_id.is_some())];
        let mut refused = Vec::new();
        if allowed != Extras::Customer {
            refused.extend(customer.iter().filter(|(_, set)| *set).map(|(f, _)| *f));
        }
        if allowed != Extras::Lead {
            refused.extend(lead.iter().filter(|(_, set)| *set).map(|(f, _)| *f));
        }
        match refused.first() {
            None => Ok(()),
            Some(field) => Err(Rejection::Undecodable {
                message: format!("unknown field `{}`", self.path(join(prefix, field))),
            }),
        }
    }

    fn text(&self, raw: Option<&String>) -> Option<String> {
        raw.map(|r| field::text(r, self.n.max_text_chars))
            .filter(|v| !v.is_empty())
    }

    fn id(raw: Option<&String>) -> Option<String> {
        raw.map(|r| field::id(r)).filter(|v| !v.is_empty())
    }

    fn code(raw: Option<&String>) -> Option<String> {
        raw.map(|r| field::code(r, SHORT_MAX))
            .filter(|v| !v.is_empty())
    }

    fn email(&mut self, path: At<'_>, raw: Option<&String>) -> Option<String> {
        match field::email(raw?, self.n.alias_rules) {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(path, e);
                None
            }
        }
    }

    fn country(&mut self, path: At<'_>, raw: Option<&String>) -> Option<String> {
        match field::country(raw?) {
            Ok(v) => Some(v.to_owned()),
            Err(e) => {
                self.error(path, e);
                None
            }
        }
    }

    fn timezone(&mut self, path: At<'_>, raw: Option<&String>) -> Option<String> {
        match field::timezone(raw?) {
            Ok(v) => Some(v.to_owned()),
            Err(e) => {
                self.error(path, e);
                None
            }
        }
    }

    fn phone(
        &mut self,
        path: At<'_>,
        raw: Option<&String>,
        country: Option<&str>,
    ) -> Option<String> {
        let region = country.unwrap_or(&self.n.default_region);
        match field::phone(raw?, region) {
            Ok(v) => Some(v),
            Err(e) => {
                match self.n.on_invalid_phone {
                    OnInvalid::Reject => self.error(path, e),
                    OnInvalid::Drop => self.note(path, NoteKind::DroppedInvalid, e.0),
                }
                None
            }
        }
    }

    fn mapped(&mut self, path: At<'_>, result: Result<Mapped, Invalid>) -> Option<String> {
        match result {
            Ok(Mapped::Canonical(v)) => Some(v),
            Ok(Mapped::PassedThrough(v)) => {
                let message = format!("{v:?} is in no map, passed through as sent");
                self.note(path, NoteKind::UnmappedPassedThrough, message);
                Some(v)
            }
            Err(e) => {
                self.error(path, e);
                None
            }
        }
    }

    fn enumerated(
        &mut self,
        table: &EnumTable,
        path: At<'_>,
        raw: Option<&String>,
    ) -> Option<String> {
        let raw = raw?;
        self.mapped(path, table.map(raw))
    }

    fn timestamp(&mut self, path: At<'_>, raw: Option<&String>) -> Option<Timestamp> {
        match field::timestamp(raw?) {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(path, e);
                None
            }
        }
    }

    /// The currency, and whether amounts can be converted (no currency is
    /// fine, an unknown one is not).
    fn currency(&mut self, path: At<'_>, raw: Option<&String>) -> (Option<String>, bool) {
        match raw.map(|r| field::currency(r)) {
            None => (None, true),
            Some(Ok(code)) => (Some(code), true),
            Some(Err(e)) => {
                self.error(path, e);
                (None, false)
            }
        }
    }

    fn amount(
        &mut self,
        path: At<'_>,
        raw: Option<f64>,
        currency: &(Option<String>, bool),
    ) -> Option<i64> {
        let amount = raw?;
        if !currency.1 {
            return None;
        }
        match field::amount_minor(amount, currency.0.as_deref()) {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(path, e);
                None
            }
        }
    }

    /// A person → `Contact`, plus the `Company` named by its `company` /
    /// `company_domain` (none if neither is sent).
    fn person(&mut self, prefix: &str, p: &Person) -> (Contact, Option<Company>) {
        let country = self.country(At(prefix, "country"), p.country.as_ref());
        let phone = self.phone(At(prefix, "phone"), p.phone.as_ref(), country.as_deref());
        let n = self.n;
        let lifecycle_stage = match p.lifecycle_stage.as_ref() {
            Some(raw) => self.mapped(At(prefix, "lifecycle_stage"), n.lifecycle_stage.map(raw)),
            None => None,
        };
        let (custom_properties, errors) = match &p.custom_properties {
            Some(map) => field::custom_properties(map, self.n.max_text_chars),
            None => Default::default(),
        };
        for (key, e) in errors {
            let properties = join(prefix, "custom_properties");
            self.error(At(&properties, &key), e);
        }
        let contact = Contact {
            email: self.email(At(prefix, "email"), p.email.as_ref()),
            crm_contact_id: Self::id(p.crm_contact_id.as_ref()),
            external_id: Self::id(p.external_id.as_ref()),
            first_name: self.text(p.first_name.as_ref()),
            last_name: self.text(p.last_name.as_ref()),
            phone,
            job_title: self.text(p.job_title.as_ref()),
            country,
            timezone: self.timezone(At(prefix, "timezone"), p.timezone.as_ref()),
            lifecycle_stage,
            owner_email: self.email(At(prefix, "owner_email"), p.owner_email.as_ref()),
            email_subscriber_id: Self::id(p.email_subscriber_id.as_ref()),
            marketing_opt_in: p.marketing_opt_in,
            custom_properties,
        };
        let company = Company {
            name: self.text(p.company.as_ref()),
            domain: self.domain(At(prefix, "company_domain"), p.company_domain.as_ref()),
            ..Company::default()
        };
        let company = (company != Company::default()).then_some(company);
        (contact, company)
    }

    fn domain(&mut self, path: At<'_>, raw: Option<&String>) -> Option<String> {
        match field::company_domain(raw?) {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(path, e);
                None
            }
        }
    }

    /// An attribution object → `Attribution` (none if nothing survives);
    /// unparseable URLs are dropped with a note.
    fn attribution(&mut self, prefix: &str, a: &raw::Attribution) -> Option<Attribution> {
        let input = AttributionInput {
            utm_source: a.utm_source.as_deref(),
            utm_medium: a.utm_medium.as_deref(),
            utm_campaign: a.utm_campaign.as_deref(),
            utm_term: a.utm_term.as_deref(),
            utm_content: a.utm_content.as_deref(),
            landing_url: a.landing_url.as_deref(),
            referrer: a.referrer.as_deref(),
            gclid: a.gclid.as_deref(),
            fbclid: a.fbclid.as_deref(),
        };
        let (attribution, dropped) = field::attribution(&input);
        for d in dropped {
            self.note(At(prefix, d.field), NoteKind::DroppedInvalid, d.reason.0);
        }
        (attribution != Attribution::default()).then_some(attribution)
    }

    /// "needs at least one of ..." at `path` unless `present`.
    fn require_any(&mut self, path: &str, present: bool, names: &str) {
        if !present {
            self.error(
                At("", path),
                Invalid::new(format!("needs at least one of {names}")),
            );
        }
    }

    /// "is required" at `path` unless `present`.
    fn require(&mut self, path: &str, present: bool) {
        if !present {
            self.error(At("", path), Invalid::new("is required"));
        }
    }
}

fn has_person_id(c: &Contact) -> bool {
    c.email.is_some() || c.crm_contact_id.is_some() || c.external_id.is_some()
}

fn lead_created(ctx: &mut Ctx<'_>, body: raw::LeadCreatedV1) -> Result<Event, Rejection> {
    ctx.check_extras("lead", &body.lead, Extras::Lead)?;
    let (contact, company) = ctx.person("lead", &body.lead);
    let attribution = body
        .attribution
        .as_ref()
        .and_then(|a| ctx.attribution("attribution", a));
    if body.lead.email.is_none() {
        ctx.require("lead.email", false);
    }
    Ok(Event::LeadCreated(LeadCreated {
        contact: Some(contact),
        company,
        attribution,
        form_id: Ctx::id(body.lead.form_id.as_ref()),
    }))
}

fn meeting_booked(ctx: &mut Ctx<'_>, body: raw::MeetingBookedV1) -> Result<Event, Rejection> {
    ctx.check_extras("contact", &body.contact, Extras::None)?;
    let (contact, _company) = ctx.person("contact", &body.contact);
    let m = &body.meeting;
    let meeting = Meeting {
        meeting_id: Ctx::id(m.meeting_id.as_ref()),
        starts_at: ctx.timestamp(At("meeting", "starts_at"), m.starts_at.as_ref()),
        duration_minutes: m.duration_minutes,
        meeting_type: Ctx::code(m.meeting_type.as_ref()),
        owner_email: ctx.email(At("meeting", "owner_email"), m.owner_email.as_ref()),
        timezone: ctx.timezone(At("meeting", "timezone"), m.timezone.as_ref()),
    };
    let attribution = body
        .attribution
        .as_ref()
        .and_then(|a| ctx.attribution("attribution", a));
    ctx.require_any("contact", has_person_id(&contact), PERSON_IDS);
    ctx.require("meeting.meeting_id", meeting.meeting_id.is_some());
    if m.starts_at.is_none() {
        ctx.require("meeting.starts_at", false);
    }
    Ok(Event::MeetingBooked(MeetingBooked {
        contact: Some(contact),
        meeting: Some(meeting),
        attribution,
    }))
}

fn customer_converted(
    ctx: &mut Ctx<'_>,
    body: raw::CustomerConvertedV1,
) -> Result<Event, Rejection> {
    let c = &body.customer;
    ctx.check_extras("customer", c, Extras::Customer)?;
    let (contact, company) = ctx.person("customer", c);
    let currency = ctx.currency(At("customer", "currency"), c.currency.as_ref());
    let amount_minor = ctx.amount(At("customer", "amount"), c.amount, &currency);
    let mrr_minor = ctx.amount(At("customer", "mrr"), c.mrr, &currency);
    let n = ctx.n;
    let plan = match c.plan.as_ref() {
        Some(raw) => ctx.mapped(At("customer", "plan"), n.plan.map(raw)),
        None => None,
    };
    let context = body.context.unwrap_or_default();
    let deal = Deal {
        deal_id: Ctx::id(context.deal_id.as_ref()),
        amount_minor,
        currency: amount_minor.and(currency.0.clone()),
        ..Deal::default()
    };
    let subscription = Subscription {
        subscription_id: Ctx::id(context.subscription_id.as_ref()),
        plan,
        mrr_minor,
        currency: mrr_minor.and(currency.0.clone()),
        ..Subscription::default()
    };
    let attribution = ctx.attribution("context", &context.attribution());
    ctx.require_any(
        "customer",
        contact.email.is_some() || contact.crm_contact_id.is_some(),
        "email, crm_contact_id",
    );
    Ok(Event::CustomerConverted(CustomerConverted {
        contact: Some(contact),
        company,
        deal: (deal != Deal::default()).then_some(deal),
        subscription: (subscription != Subscription::default()).then_some(subscription),
        attribution,
    }))
}

fn deal_stage_changed(
    ctx: &mut Ctx<'_>,
    body: raw::DealStageChangedV1,
) -> Result<Event, Rejection> {
    if let Some(p) = &body.contact {
        ctx.check_extras("contact", p, Extras::None)?;
    }
    let d = &body.deal;
    let currency = ctx.currency(At("deal", "currency"), d.currency.as_ref());
    let amount_minor = ctx.amount(At("deal", "amount"), d.amount, &currency);
    let n = ctx.n;
    let stages = &n.deal_stage;
    let stage = ctx.enumerated(stages, At("deal", "stage"), d.stage.as_ref());
    let previous_stage = ctx.enumerated(
        stages,
        At("deal", "previous_stage"),
        d.previous_stage.as_ref(),
    );
    let close_date = match d.close_date.as_ref().map(|r| field::date_or_timestamp(r)) {
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            ctx.error(At("deal", "close_date"), e);
            None
        }
        None => None,
    };
    let deal = Deal {
        deal_id: Ctx::id(d.deal_id.as_ref()),
        crm_deal_id: Ctx::id(d.crm_deal_id.as_ref()),
        name: ctx.text(d.name.as_ref()),
        pipeline: ctx.text(d.pipeline.as_ref()),
        stage,
        previous_stage,
        amount_minor,
        currency: currency.0,
        close_date,
    };
    let contact = body.contact.as_ref().map(|p| ctx.person("contact", p));
    if let Some((c, _)) = &contact {
        ctx.require_any("contact", has_person_id(c), PERSON_IDS);
    }
    let company = body.company.as_ref().map(|c| Company {
        name: ctx.text(c.name.as_ref()),
        domain: ctx.domain(At("company", "domain"), c.domain.as_ref()),
        crm_company_id: Ctx::id(c.crm_company_id.as_ref()),
        external_id: Ctx::id(c.external_id.as_ref()),
        industry: ctx.text(c.industry.as_ref()),
        country: ctx.country(At("company", "country"), c.country.as_ref()),
        employee_count: c.employee_count,
    });
    if let Some(c) = &company {
        let present = c.crm_company_id.is_some()
            || c.external_id.is_some()
            || c.domain.is_some()
            || c.name.is_some();
        ctx.require_any(
            "company",
            present,
            "crm_company_id, external_id, domain, name",
        );
    }
    // The person's own company, if the body has no company record.
    let (contact, person_company) = match contact {
        Some((c, pc)) => (Some(c), pc),
        None => (None, None),
    };
    ctx.require_any(
        "deal",
        deal.deal_id.is_some() || deal.crm_deal_id.is_some(),
        "deal_id, crm_deal_id",
    );
    if d.stage.is_none() {
        ctx.require("deal.stage", false);
    }
    Ok(Event::DealStageChanged(DealStageChanged {
        deal: Some(deal),
        contact,
        company: company.or(person_company),
    }))
}

fn payment_failed(ctx: &mut Ctx<'_>, body: raw::PaymentFailedV1) -> Result<Event, Rejection> {
    ctx.check_extras("customer", &body.customer, Extras::None)?;
    let (contact, _company) = ctx.person("customer", &body.customer);
    let p = &body.payment;
    let currency = ctx.currency(At("payment", "currency"), p.currency.as_ref());
    let payment = Payment {
        invoice_id: Ctx::id(p.invoice_id.as_ref()),
        amount_minor: ctx.amount(At("payment", "amount"), p.amount, &currency),
        currency: currency.0,
        failure_code: Ctx::code(p.failure_code.as_ref()),
        failure_message: ctx.text(p.failure_message.as_ref()),
        attempt_count: p.attempt_count,
        next_retry_at: ctx.timestamp(At("payment", "next_retry_at"), p.next_retry_at.as_ref()),
    };
    let subscription = body.subscription.as_ref().map(|s| {
        let currency = ctx.currency(At("subscription", "currency"), s.currency.as_ref());
        let n = ctx.n;
        let plans = &n.plan;
        let statuses = &n.subscription_status;
        Subscription {
            subscription_id: Ctx::id(s.subscription_id.as_ref()),
            plan: ctx.enumerated(plans, At("subscription", "plan"), s.plan.as_ref()),
            status: ctx.enumerated(statuses, At("subscription", "status"), s.status.as_ref()),
            billing_interval: s.billing_interval.as_ref().and_then(|raw| {
                ctx.mapped(
                    At("subscription", "billing_interval"),
                    field::billing_interval(raw),
                )
            }),
            mrr_minor: ctx.amount(At("subscription", "mrr"), s.mrr, &currency),
            currency: currency.0,
        }
    });
    let ticket = payment.invoice_id.as_ref().map(|invoice| {
        let subject = match &payment.failure_code {
            Some(code) => format!("Payment failed: invoice {invoice} ({code})"),
            None => format!("Payment failed: invoice {invoice}"),
        };
        Ticket {
            // A natural key, so a redelivered event updates the same ticket.
            ticket_id: Some(format!("payment-failed:{invoice}")),
            subject: Some(field::text(&subject, SHORT_MAX)),
            priority: Some(ctx.n.ticket_priority.clone()),
            status: Some(ctx.n.ticket_status.clone()),
            pipeline: ctx.n.ticket_pipeline.clone(),
        }
    });
    ctx.require_any("customer", has_person_id(&contact), PERSON_IDS);
    ctx.require("payment.invoice_id", payment.invoice_id.is_some());
    Ok(Event::PaymentFailed(PaymentFailed {
        contact: Some(contact),
        payment: Some(payment),
        subscription: subscription.filter(|s| *s != Subscription::default()),
        ticket,
    }))
}

fn contact_updated(ctx: &mut Ctx<'_>, body: raw::ContactUpdatedV1) -> Result<Event, Rejection> {
    ctx.check_extras("contact", &body.contact, Extras::None)?;
    let (contact, company) = ctx.person("contact", &body.contact);
    let c = &contact;
    let fields = [
        c.email.is_some(),
        c.crm_contact_id.is_some(),
        c.external_id.is_some(),
        c.first_name.is_some(),
        c.last_name.is_some(),
        c.phone.is_some(),
        c.job_title.is_some(),
        c.country.is_some(),
        c.timezone.is_some(),
        c.lifecycle_stage.is_some(),
        c.owner_email.is_some(),
        c.email_subscriber_id.is_some(),
        c.marketing_opt_in.is_some(),
        !c.custom_properties.is_empty(),
        company.is_some(),
    ];
    let set = fields.iter().filter(|set| **set).count();
    if has_person_id(c) {
        if set < 2 {
            ctx.error(At("", "contact"), Invalid::new("has nothing to update"));
        }
    } else {
        ctx.require_any("contact", false, PERSON_IDS);
    }
    Ok(Event::ContactUpdated(ContactUpdated {
        contact: Some(contact),
        company,
    }))
}
