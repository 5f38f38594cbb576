//! The v1 contracts as data: which fields each event type's JSON body may
//! carry, of what kind, which are required and which identifiers a record
//! needs.
//!
//! The walker in `contract.rs` interprets these tables; `docs/events.md`
//! describes them for publishers, and the tests in `contract/tests.rs` check
//! that every field listed here is documented there.

use handoff_events::EventType;

/// Longest name, id or other short string, in characters.
pub(super) const NAME_MAX: usize = 256;
/// Longest email address (RFC 5321's 64 + 1 + 255, rounded up).
pub(super) const EMAIL_MAX: usize = 320;
/// Longest URL.
pub(super) const URL_MAX: usize = 2048;
/// Longest free text (failure messages, custom property values).
pub(super) const TEXT_MAX: usize = 4096;
/// Longest `source` name: it is stored on every envelope and used in logs.
pub(super) const SOURCE_MAX: usize = 64;
/// Largest money amount, in major units. Writers convert amounts to minor units
/// in an `int64`, so the bound keeps them exact and far from overflow.
pub(super) const AMOUNT_MAX: f64 = 1e12;
/// Most entries in one `custom_properties` object.
pub(super) const CUSTOM_PROPERTIES_MAX: usize = 100;

/// What a field's value must be.
#[derive(Debug)]
pub(super) enum Kind {
    /// A string of at most `max` characters; a `key` string (an identifier or
    /// a required value) must also not be blank.
    Str {
        max: usize,
        key: bool,
    },
    /// An RFC 3339 timestamp string.
    Timestamp,
    /// An RFC 3339 timestamp or a `YYYY-MM-DD` date string.
    DateOrTimestamp,
    /// A finite number from 0 to [`AMOUNT_MAX`], in major units.
    Amount,
    /// An integer within `min..=max`.
    Int {
        min: i64,
        max: i64,
    },
    Bool,
    /// Three ASCII letters (ISO 4217; case is the normalizer's business).
    Currency,
    /// A nested record.
    Object(&'static Record),
    /// The escape hatch: string keys to string, number or boolean values.
    CustomProperties,
}

/// One field of a record.
#[derive(Debug)]
pub(super) struct Field {
    pub(super) name: &'static str,
    pub(super) kind: Kind,
}

/// A JSON object with a closed set of fields.
#[derive(Debug)]
pub(super) struct Record {
    /// The allowed fields, as groups so records can share them.
    pub(super) groups: &'static [&'static [Field]],
    /// Fields that must be present and not null.
    pub(super) required: &'static [&'static str],
    /// If not empty, at least one of these fields must be present.
    pub(super) any_of: &'static [&'static str],
    /// `contact.updated`: besides an identifier, at least one more field.
    pub(super) needs_update: bool,
}

impl Record {
    /// Every allowed field, in declaration order.
    pub(super) fn fields(&self) -> impl Iterator<Item = &'static Field> + use<> {
        let groups: &'static [&'static [Field]] = self.groups;
        groups.iter().flat_map(|group| group.iter())
    }

    /// The field called `name`, if the record allows it.
    pub(super) fn field(&self, name: &str) -> Option<&'static Field> {
        self.fields().find(|field| field.name == name)
    }
}

const fn key(name: &'static str, max: usize) -> Field {
    Field {
        name,
        kind: Kind::Str { max, key: true },
    }
}

const fn text(name: &'static str, max: usize) -> Field {
    Field {
        name,
        kind: Kind::Str { max, key: false },
    }
}

const fn field(name: &'static str, kind: Kind) -> Field {
    Field { name, kind }
}

/// The identifiers a person can be matched by, in the order a writer tries them.
pub(super) const PERSON_IDS: &[&str] = &["email", "crm_contact_id", "external_id"];

/// A person (lead, contact or customer): `Contact` in `records.proto`, plus
/// the person's company as plain strings, which the normalizer turns into a
/// `Company` record.
pub(super) const PERSON: &[Field] = &[
    key("email", EMAIL_MAX),
    key("crm_contact_id", NAME_MAX),
    key("external_id", NAME_MAX),
    text("first_name", NAME_MAX),
    text("last_name", NAME_MAX),
    text("phone", NAME_MAX),
    text("job_title", NAME_MAX),
    text("company", NAME_MAX),
    text("company_domain", NAME_MAX),
    text("country", NAME_MAX),
    text("timezone", NAME_MAX),
    text("lifecycle_stage", NAME_MAX),
    text("owner_email", EMAIL_MAX),
    key("email_subscriber_id", NAME_MAX),
    field("marketing_opt_in", Kind::Bool),
    field("custom_properties", Kind::CustomProperties),
];

/// What a `customer.converted` customer adds: what they bought.
const CUSTOMER_EXTRA: &[Field] = &[
    text("plan", NAME_MAX),
    field("mrr", Kind::Amount),
    field("amount", Kind::Amount),
    field("currency", Kind::Currency),
];

/// What a `lead.created` lead adds: where it was captured.
const LEAD_EXTRA: &[Field] = &[text("form_id", NAME_MAX)];

/// `Attribution` in `records.proto`.
const ATTRIBUTION_FIELDS: &[Field] = &[
    text("utm_source", NAME_MAX),
    text("utm_medium", NAME_MAX),
    text("utm_campaign", NAME_MAX),
    text("utm_term", NAME_MAX),
    text("utm_content", NAME_MAX),
    text("landing_url", URL_MAX),
    text("referrer", URL_MAX),
    text("gclid", NAME_MAX),
    text("fbclid", NAME_MAX),
];

/// What a `customer.converted` context adds to attribution: the deal and
/// subscription the conversion came from.
const CONTEXT_EXTRA: &[Field] = &[text("deal_id", NAME_MAX), text("subscription_id", NAME_MAX)];

/// A person identified by any of [`PERSON_IDS`].
static CONTACT: Record = Record {
    groups: &[PERSON],
    required: &[],
    any_of: PERSON_IDS,
    needs_update: false,
};

static CUSTOMER: Record = Record {
    groups: &[PERSON, CUSTOMER_EXTRA],
    required: &[],
    any_of: PERSON_IDS,
    needs_update: false,
};

/// A lead must have an email: the email platform cannot act on a lead without
/// one, and the CRM upserts leads by email.
static LEAD: Record = Record {
    groups: &[PERSON, LEAD_EXTRA],
    required: &["email"],
    any_of: &[],
    needs_update: false,
};

static CONTACT_UPDATE: Record = Record {
    groups: &[PERSON],
    required: &[],
    any_of: PERSON_IDS,
    needs_update: true,
};

static ATTRIBUTION: Record = Record {
    groups: &[ATTRIBUTION_FIELDS],
    required: &[],
    any_of: &[],
    needs_update: false,
};

static CONTEXT: Record = Record {
    groups: &[CONTEXT_EXTRA, ATTRIBUTION_FIELDS],
    required: &[],
    any_of: &[],
    needs_update: false,
};

/// `Meeting` in `records.proto`.
static MEETING: Record = Record {
    groups: &[&[
        key("meeting_id", NAME_MAX),
        field("starts_at", Kind::Timestamp),
        field("duration_minutes", Kind::Int { min: 1, max: 1440 }),
        text("meeting_type", NAME_MAX),
        text("owner_email", EMAIL_MAX),
        text("timezone", NAME_MAX),
    ]],
    required: &["meeting_id", "starts_at"],
    any_of: &[],
    needs_update: false,
};

/// `Deal` in `records.proto`; `amount` is in major units here.
static DEAL: Record = Record {
    groups: &[&[
        key("deal_id", NAME_MAX),
        key("crm_deal_id", NAME_MAX),
        text("name", NAME_MAX),
        text("pipeline", NAME_MAX),
        key("stage", NAME_MAX),
        text("previous_stage", NAME_MAX),
        field("amount", Kind::Amount),
        field("currency", Kind::Currency),
        field("close_date", Kind::DateOrTimestamp),
    ]],
    required: &["stage"],
    any_of: &["deal_id", "crm_deal_id"],
    needs_update: false,
};

/// `Company` in `records.proto`; a name is the weakest key but still one.
static COMPANY: Record = Record {
    groups: &[&[
        key("name", NAME_MAX),
        key("domain", NAME_MAX),
        key("crm_company_id", NAME_MAX),
        key("external_id", NAME_MAX),
        text("industry", NAME_MAX),
        text("country", NAME_MAX),
        field(
            "employee_count",
            Kind::Int {
                min: 0,
                max: u32::MAX as i64,
            },
        ),
    ]],
    required: &[],
    any_of: &["crm_company_id", "external_id", "domain", "name"],
    needs_update: false,
};

/// `Payment` in `records.proto`; `amount` is in major units here.
static PAYMENT: Record = Record {
    groups: &[&[
        key("invoice_id", NAME_MAX),
        field("amount", Kind::Amount),
        field("currency", Kind::Currency),
        text("failure_code", NAME_MAX),
        text("failure_message", TEXT_MAX),
        field(
            "attempt_count",
            Kind::Int {
                min: 1,
                max: u32::MAX as i64,
            },
        ),
        field("next_retry_at", Kind::Timestamp),
    ]],
    required: &["invoice_id"],
    any_of: &[],
    needs_update: false,
};

/// `Subscription` in `records.proto`; `mrr` is in major units here.
static SUBSCRIPTION: Record = Record {
    groups: &[&[
        key("subscription_id", NAME_MAX),
        text("plan", NAME_MAX),
        text("status", NAME_MAX),
        text("billing_interval", NAME_MAX),
        field("mrr", Kind::Amount),
        field("currency", Kind::Currency),
    ]],
    required: &[],
    any_of: &[],
    needs_update: false,
};

static LEAD_CREATED: Record = Record {
    groups: &[&[
        field("lead", Kind::Object(&LEAD)),
        field("attribution", Kind::Object(&ATTRIBUTION)),
    ]],
    required: &["lead"],
    any_of: &[],
    needs_update: false,
};

static MEETING_BOOKED: Record = Record {
    groups: &[&[
        field("contact", Kind::Object(&CONTACT)),
        field("meeting", Kind::Object(&MEETING)),
        field("attribution", Kind::Object(&ATTRIBUTION)),
    ]],
    required: &["contact", "meeting"],
    any_of: &[],
    needs_update: false,
};

static CUSTOMER_CONVERTED: Record = Record {
    groups: &[&[
        field("customer", Kind::Object(&CUSTOMER)),
        field("context", Kind::Object(&CONTEXT)),
    ]],
    required: &["customer"],
    any_of: &[],
    needs_update: false,
};

static DEAL_STAGE_CHANGED: Record = Record {
    groups: &[&[
        field("deal", Kind::Object(&DEAL)),
        field("contact", Kind::Object(&CONTACT)),
        field("company", Kind::Object(&COMPANY)),
    ]],
    required: &["deal"],
    any_of: &[],
    needs_update: false,
};

static PAYMENT_FAILED: Record = Record {
    groups: &[&[
        field("customer", Kind::Object(&CONTACT)),
        field("payment", Kind::Object(&PAYMENT)),
        field("subscription", Kind::Object(&SUBSCRIPTION)),
    ]],
    required: &["customer", "payment"],
    any_of: &[],
    needs_update: false,
};

static CONTACT_UPDATED: Record = Record {
    groups: &[&[field("contact", Kind::Object(&CONTACT_UPDATE))]],
    required: &["contact"],
    any_of: &[],
    needs_update: false,
};

/// The event-specific top-level fields of `event_type`'s body; the envelope
/// fields common to every type are checked by `contract.rs` itself.
pub(super) fn body(event_type: EventType) -> &'static Record {
    match event_type {
        EventType::LeadCreated => &LEAD_CREATED,
        EventType::MeetingBooked => &MEETING_BOOKED,
        EventType::CustomerConverted => &CUSTOMER_CONVERTED,
        EventType::DealStageChanged => &DEAL_STAGE_CHANGED,
        EventType::PaymentFailed => &PAYMENT_FAILED,
        EventType::ContactUpdated => &CONTACT_UPDATED,
    }
}
