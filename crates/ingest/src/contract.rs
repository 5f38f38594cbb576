//! Structural contract checks for the v1 event types: is this JSON body a
//! well-formed `customer.converted` (or any other v1 type)?
//!
//! ingest calls [`check`] on every `POST /v1/events/{event_type}` body before it
//! dedupes and publishes. The check is about structure only: required fields are
//! there, every value has the right JSON type and a bounded size, timestamps
//! parse, and no field is misspelt. It does not normalize or judge values:
//! `"  Alex@Example.COM "` passes here and the normalizer cleans it later. A
//! body that passes is forwarded byte for byte; [`CheckedEvent`] carries only
//! what ingest itself needs from it (id, time, source, schema version).
//!
//! A body that fails gets every bad field at once, as [`FieldError`]s sorted by
//! path, so a publisher fixes a payload in one round trip.
//!
//! Policy, documented for publishers in `docs/events.md`:
//! - Records are strict: an unknown key anywhere is "is not a known field", so
//!   a typo never silently drops data. The one escape hatch is a person's
//!   `custom_properties` object (string keys to string, number or boolean).
//! - `null` for an optional field means "not sent"; for a required one it is
//!   "is required".
//! - Identifiers and required strings must not be blank; other strings may be
//!   empty. Every string has a length bound, counted in characters.
//! - A person needs one of `email`, `crm_contact_id` or `external_id`, except a
//!   lead, which needs an `email`: the email platform cannot act on a lead
//!   without one.
//!
//! The tables of fields live in `contract/schema.rs`; one complete example
//! body per type, also shown in `docs/events.md`, in `contract/examples.rs`.

mod examples;
mod schema;
#[cfg(test)]
mod tests;

use std::fmt;

use handoff_events::{CURRENT_SCHEMA_VERSION, EventId, EventType};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub use examples::example;
use schema::{Kind, Record};

/// The message for a `schema_version` other than the one ingest accepts, so a
/// handler can tell it apart from other field errors.
pub const UNSUPPORTED_SCHEMA_VERSION: &str = "unsupported schema version";

/// Top-level fields every event type shares, besides its own.
const ENVELOPE_FIELDS: &[&str] = &[
    "event_id",
    "occurred_at",
    "source",
    "schema_version",
    "event_type",
];

/// One thing wrong with one field of an event body.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FieldError {
    /// Where: dotted from the body's root (`customer.email`), arrays as
    /// `items[2].sku`; `""` is the body itself.
    pub path: String,
    /// What, as a phrase that follows the path: "is required",
    /// "must be a string", "must be an RFC 3339 timestamp".
    pub message: String,
}

impl FieldError {
    /// An error at `path` saying `message`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "body {}", self.message)
        } else {
            write!(f, "{} {}", self.path, self.message)
        }
    }
}

/// What ingest needs from a valid event; the body itself is forwarded byte for byte.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedEvent {
    /// The publisher's id, the idempotency key.
    pub event_id: EventId,
    /// When the event happened, as the publisher says.
    pub occurred_at: OffsetDateTime,
    /// The producing system the publisher named, if any.
    pub source: Option<String>,
    /// The body's schema version; 1 when the body does not say.
    pub schema_version: u32,
}

/// Checks `body` (already parsed JSON) against the contract of `event_type`.
/// Err lists every field error, sorted by path.
pub fn check(event_type: EventType, body: &Value) -> Result<CheckedEvent, Vec<FieldError>> {
    let Some(obj) = body.as_object() else {
        return Err(vec![FieldError::new("", "must be a JSON object")]);
    };
    let mut checker = Checker::default();
    let event_id = checker.event_id(obj.get("event_id"));
    let occurred_at = checker.occurred_at(obj.get("occurred_at"));
    let source = checker.source(obj.get("source"));
    let schema_version = checker.schema_version(obj.get("schema_version"));
    checker.event_type(obj.get("event_type"), event_type);
    checker.record(obj, "", schema::body(event_type), ENVELOPE_FIELDS);

    let mut errors = checker.errors;
    match (event_id, occurred_at) {
        (Some(event_id), Some(occurred_at)) if errors.is_empty() => Ok(CheckedEvent {
            event_id,
            occurred_at,
            source,
            schema_version,
        }),
        _ => {
            // Stable, so errors at one path keep the order they were found in.
            errors.sort_by(|a, b| a.path.cmp(&b.path));
            Err(errors)
        }
    }
}

/// Collects the errors of one body.
#[derive(Default)]
struct Checker {
    errors: Vec<FieldError>,
}

impl Checker {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError::new(path, message));
    }

    fn event_id(&mut self, value: Option<&Value>) -> Option<EventId> {
        match value {
            None | Some(Value::Null) => self.push("event_id", "is required"),
            Some(Value::String(id)) => match EventId::parse(id) {
                Ok(id) => return Some(id),
                Err(err) => self.push("event_id", err.to_string()),
            },
            Some(_) => self.push("event_id", "must be a string"),
        }
        None
    }

    fn occurred_at(&mut self, value: Option<&Value>) -> Option<OffsetDateTime> {
        match value {
            None | Some(Value::Null) => self.push("occurred_at", "is required"),
            Some(value) => match parse_timestamp(value) {
                Some(at) => return Some(at),
                None => self.push("occurred_at", TIMESTAMP_MESSAGE),
            },
        }
        None
    }

    fn source(&mut self, value: Option<&Value>) -> Option<String> {
        let value = value.filter(|v| !v.is_null())?;
        let kind = Kind::Str {
            max: schema::SOURCE_MAX,
            key: true,
        };
        let before = self.errors.len();
        self.value(value, "source", &kind);
        if self.errors.len() > before {
            return None;
        }
        value.as_str().map(str::to_owned)
    }

    fn schema_version(&mut self, value: Option<&Value>) -> u32 {
        match value {
            None | Some(Value::Null) => {}
            Some(value) => match as_integer(value) {
                Some(v) if v == i128::from(CURRENT_SCHEMA_VERSION) => {}
                Some(_) => self.push("schema_version", UNSUPPORTED_SCHEMA_VERSION),
                None => self.push("schema_version", "must be an integer"),
            },
        }
        CURRENT_SCHEMA_VERSION
    }

    /// A publisher may repeat the event type in the body; it must then agree
    /// with the URL, which is what ingest routes by.
    fn event_type(&mut self, value: Option<&Value>, expected: EventType) {
        match value {
            None | Some(Value::Null) => {}
            Some(Value::String(name)) if name == expected.as_str() => {}
            Some(Value::String(_)) => self.push(
                "event_type",
                format!("must match the URL's event type \"{expected}\""),
            ),
            Some(_) => self.push("event_type", "must be a string"),
        }
    }

    /// Checks the fields of `obj` against `record`; keys in `also_known` are
    /// checked elsewhere and only exempt from the unknown-key rule.
    fn record(
        &mut self,
        obj: &Map<String, Value>,
        path: &str,
        record: &Record,
        also_known: &[&str],
    ) {
        for name in record.required {
            if !is_present(obj.get(*name)) {
                self.push(join(path, name), "is required");
            }
        }
        for field in record.fields() {
            if let Some(value) = obj.get(field.name).filter(|v| !v.is_null()) {
                self.value(value, &join(path, field.name), &field.kind);
            }
        }
        for key in obj.keys() {
            if record.field(key).is_none() && !also_known.contains(&key.as_str()) {
                self.push(join(path, key), "is not a known field");
            }
        }
        if !record.any_of.is_empty() && !record.any_of.iter().any(|name| is_present(obj.get(*name)))
        {
            self.push(
                path,
                format!("needs at least one of {}", record.any_of.join(", ")),
            );
        } else if record.needs_update {
            let sent = record
                .fields()
                .filter(|field| is_sent(obj.get(field.name)))
                .count();
            // One field identifies the record; an update needs one more.
            if sent < 2 {
                self.push(path, "has nothing to update");
            }
        }
    }

    fn value(&mut self, value: &Value, path: &str, kind: &Kind) {
        match kind {
            Kind::Str { max, key } => match value.as_str() {
                None => self.push(path, "must be a string"),
                Some(s) if *key && s.trim().is_empty() => self.push(path, "must not be blank"),
                Some(s) if s.len() > *max && s.chars().count() > *max => {
                    self.push(path, format!("must be at most {max} characters"))
                }
                Some(_) => {}
            },
            Kind::Timestamp => {
                if parse_timestamp(value).is_none() {
                    self.push(path, TIMESTAMP_MESSAGE);
                }
            }
            Kind::DateOrTimestamp => {
                if parse_timestamp(value).is_none() && !is_date(value) {
                    self.push(path, "must be an RFC 3339 timestamp or a YYYY-MM-DD date");
                }
            }
            Kind::Amount => match value.as_f64().filter(|_| value.is_number()) {
                None => self.push(path, "must be a number"),
                Some(x) if !x.is_finite() => self.push(path, "must be a finite number"),
                Some(x) if x < 0.0 => self.push(path, "must not be negative"),
                Some(x) if x > schema::AMOUNT_MAX => {
                    self.push(path, format!("must be at most {}", schema::AMOUNT_MAX))
                }
                Some(_) => {}
            },
            Kind::Int { min, max } => match as_integer(value) {
                None => self.push(path, "must be an integer"),
                Some(n) if n < i128::from(*min) => {
                    self.push(path, format!("must be at least {min}"))
                }
                Some(n) if n > i128::from(*max) => {
                    self.push(path, format!("must be at most {max}"))
                }
                Some(_) => {}
            },
            Kind::Bool => {
                if !value.is_boolean() {
                    self.push(path, "must be a boolean");
                }
            }
            Kind::Currency => match value.as_str() {
                Some(s) if s.len() == 3 && s.bytes().all(|b| b.is_ascii_alphabetic()) => {}
                _ => self.push(path, "must be a 3-letter currency code"),
            },
            Kind::Object(record) => match value.as_object() {
                None => self.push(path, "must be an object"),
                Some(obj) => self.record(obj, path, record, &[]),
            },
            Kind::CustomProperties => match value.as_object() {
                None => self.push(path, "must be an object"),
                Some(obj) => self.custom_properties(obj, path),
            },
        }
    }

    /// The escape hatch for data the contract does not name. Keys are free;
    /// values stay flat so writers can map them onto destination properties.
    fn custom_properties(&mut self, obj: &Map<String, Value>, path: &str) {
        if obj.len() > schema::CUSTOM_PROPERTIES_MAX {
            let max = schema::CUSTOM_PROPERTIES_MAX;
            self.push(path, format!("must have at most {max} properties"));
        }
        // Problems with keys are reported once at the object, without echoing
        // a key that may be empty or huge.
        if obj.keys().any(|key| key.trim().is_empty()) {
            self.push(path, "must not have a blank key");
        }
        if obj.keys().any(|key| key.chars().count() > schema::NAME_MAX) {
            let max = schema::NAME_MAX;
            self.push(
                path,
                format!("must not have a key longer than {max} characters"),
            );
        }
        for (key, value) in obj {
            if key.trim().is_empty() || key.chars().count() > schema::NAME_MAX {
                continue;
            }
            let path = join(path, key);
            match value {
                Value::String(_) => {
                    let kind = Kind::Str {
                        max: schema::TEXT_MAX,
                        key: false,
                    };
                    self.value(value, &path, &kind);
                }
                Value::Number(n) if n.as_f64().is_some_and(f64::is_finite) => {}
                Value::Bool(_) => {}
                _ => self.push(path, "must be a string, number or boolean"),
            }
        }
    }
}

const TIMESTAMP_MESSAGE: &str = "must be an RFC 3339 timestamp";

/// The longest string worth handing to the timestamp parser; RFC 3339 with
/// nanoseconds and an offset is 35 characters.
const TIMESTAMP_MAX: usize = 64;

fn parse_timestamp(value: &Value) -> Option<OffsetDateTime> {
    let s = value.as_str().filter(|s| s.len() <= TIMESTAMP_MAX)?;
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

fn is_date(value: &Value) -> bool {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    value
        .as_str()
        .filter(|s| s.len() == 10 && s.as_bytes()[0].is_ascii_digit())
        .is_some_and(|s| time::Date::parse(s, &format).is_ok())
}

/// A JSON integer, signed or not; `1.0` is a float, not an integer.
fn as_integer(value: &Value) -> Option<i128> {
    value
        .as_i64()
        .map(i128::from)
        .or_else(|| value.as_u64().map(i128::from))
}

/// Present and not null: what "required" and "at least one of" ask for.
fn is_present(value: Option<&Value>) -> bool {
    value.is_some_and(|v| !v.is_null())
}

/// Present with content: an empty object (say `custom_properties: {}`) does
/// not count as something to update.
fn is_sent(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::Object(obj)) => !obj.is_empty(),
        Some(_) => true,
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}
