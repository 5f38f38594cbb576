//! Handoff's v1 event contracts.
//!
//! The protobuf types are generated from `proto/handoff/v1/` at build time
//! (see `build.rs`); this crate adds the newtypes every service agrees on:
//! [`EventType`] with its routing keys, [`EventId`] with its rules, and
//! [`primary_email`] (who a canonical event is about). It does
//! no I/O, so every crate can depend on it.

use std::fmt;
use std::str::FromStr;

/// Generated protobuf types of package `handoff.v1`.
pub mod v1 {
    #![allow(
        missing_docs,
        clippy::doc_lazy_continuation,
        clippy::large_enum_variant
    )]
    include!(concat!(env!("OUT_DIR"), "/handoff.v1.rs"));
}

pub mod json;

pub use prost::Message;
pub use prost_types::Timestamp;

/// A protobuf `Timestamp` as a UTC time; `None` when it is outside what `time` can hold.
pub fn to_offset_date_time(ts: &Timestamp) -> Option<time::OffsetDateTime> {
    let nanos = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

/// The normalized email of the person a canonical event is about: its contact's `email`, which
/// every v1 event type carries in the same place (`contact`). `None` when the event has no
/// contact email (a customer known only by CRM id) or no event at all.
///
/// The normalizer indexes the status ledger by it (`GET /v1/contacts/{email}/events`) and writers
/// address people by it, so they all agree on who an event is about. On a canonical payload the
/// email is already normalized (trimmed, lower-cased, domain in punycode); this does not change it.
pub fn primary_email(payload: &v1::CanonicalPayload) -> Option<&str> {
    use v1::canonical_payload::Event;
    let contact = match payload.event.as_ref()? {
        Event::LeadCreated(e) => e.contact.as_ref(),
        Event::MeetingBooked(e) => e.contact.as_ref(),
        Event::CustomerConverted(e) => e.contact.as_ref(),
        Event::DealStageChanged(e) => e.contact.as_ref(),
        Event::PaymentFailed(e) => e.contact.as_ref(),
        Event::ContactUpdated(e) => e.contact.as_ref(),
    }?;
    contact.email.as_deref().filter(|email| !email.is_empty())
}

/// The schema version ingest stamps on every v1 envelope today.
pub const CURRENT_SCHEMA_VERSION: u32 = 1;

/// Content type of a protobuf-encoded message on the bus.
pub const PROTOBUF_CONTENT_TYPE: &str = "application/x-protobuf";

/// The business event types of contract v1.
///
/// The set is closed within v1: a new type is an additive change to this enum,
/// the proto files and the README at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    LeadCreated,
    MeetingBooked,
    CustomerConverted,
    DealStageChanged,
    PaymentFailed,
    ContactUpdated,
}

impl EventType {
    /// Every v1 event type, in a stable order.
    pub const ALL: [EventType; 6] = [
        EventType::LeadCreated,
        EventType::MeetingBooked,
        EventType::CustomerConverted,
        EventType::DealStageChanged,
        EventType::PaymentFailed,
        EventType::ContactUpdated,
    ];

    /// The wire name, as in `POST /v1/events/{event_type}`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::LeadCreated => "lead.created",
            EventType::MeetingBooked => "meeting.booked",
            EventType::CustomerConverted => "customer.converted",
            EventType::DealStageChanged => "deal.stage_changed",
            EventType::PaymentFailed => "payment.failed",
            EventType::ContactUpdated => "contact.updated",
        }
    }

    /// Routing key of the publisher's raw event: `raw.<event_type>`.
    pub fn raw_routing_key(self) -> String {
        format!("{RAW_PREFIX}{}", self.as_str())
    }

    /// Routing key of the normalized event: `canonical.<event_type>`.
    pub fn canonical_routing_key(self) -> String {
        format!("{CANONICAL_PREFIX}{}", self.as_str())
    }
}

/// Prefix of raw routing keys; `raw.#` binds them all.
pub const RAW_PREFIX: &str = "raw.";
/// Prefix of canonical routing keys; `canonical.#` binds them all.
pub const CANONICAL_PREFIX: &str = "canonical.";

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event type name that is not part of contract v1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type {0:?}")]
pub struct UnknownEventType(pub String);

impl FromStr for EventType {
    type Err = UnknownEventType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownEventType(s.to_owned()))
    }
}

impl serde::Serialize for EventType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for EventType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// A publisher's event id: 1 to 128 printable ASCII characters, no spaces.
///
/// Printable ASCII keeps ids safe in Redis keys, AMQP headers, logs and URLs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(String);

/// Maximum length of an [`EventId`].
pub const EVENT_ID_MAX_LEN: usize = 128;

/// Why a string is not an [`EventId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEventId {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {EVENT_ID_MAX_LEN} characters")]
    TooLong,
    #[error("must contain only printable ASCII characters without spaces")]
    NotPrintable,
}

impl EventId {
    /// Checks `id` against the event-id rules.
    pub fn parse(id: &str) -> Result<Self, InvalidEventId> {
        if id.is_empty() {
            return Err(InvalidEventId::Empty);
        }
        if id.len() > EVENT_ID_MAX_LEN {
            return Err(InvalidEventId::TooLong);
        }
        if !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidEventId::NotPrintable);
        }
        Ok(EventId(id.to_owned()))
    }

    /// The id as sent by the publisher.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl v1::ErrorClass {
    /// Short lower-case name used in logs, metrics labels and the DLQ API.
    pub fn label(self) -> &'static str {
        match self {
            v1::ErrorClass::Unspecified => "unspecified",
            v1::ErrorClass::Undecodable => "undecodable",
            v1::ErrorClass::Validation => "validation",
            v1::ErrorClass::UnsupportedSchema => "unsupported_schema",
            v1::ErrorClass::Permanent => "permanent",
            v1::ErrorClass::RetriesExhausted => "retries_exhausted",
            v1::ErrorClass::Broker => "broker",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_round_trip_through_their_names() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>(), Ok(t));
        }
        assert!("lead.deleted".parse::<EventType>().is_err());
        assert_eq!(
            EventType::DealStageChanged.raw_routing_key(),
            "raw.deal.stage_changed"
        );
        assert_eq!(
            EventType::PaymentFailed.canonical_routing_key(),
            "canonical.payment.failed"
        );
    }

    #[test]
    fn event_ids_follow_the_rules() {
        assert!(EventId::parse("evt_2026_03_19_000123").is_ok());
        assert_eq!(EventId::parse(""), Err(InvalidEventId::Empty));
        assert_eq!(
            EventId::parse(&"a".repeat(129)),
            Err(InvalidEventId::TooLong)
        );
        assert!(EventId::parse(&"a".repeat(128)).is_ok());
        assert_eq!(
            EventId::parse("has space"),
            Err(InvalidEventId::NotPrintable)
        );
        assert_eq!(
            EventId::parse("tab\there"),
            Err(InvalidEventId::NotPrintable)
        );
        assert_eq!(EventId::parse("é"), Err(InvalidEventId::NotPrintable));
    }

    #[test]
    fn the_primary_email_is_the_contacts_in_every_event_type() {
        use v1::canonical_payload::Event;
        let contact = || {
            Some(v1::Contact {
                email: Some("alex@example.com".into()),
                owner_email: Some("owner@example.com".into()),
                ..Default::default()
            })
        };
        let events = [
            Event::LeadCreated(v1::LeadCreated {
                contact: contact(),
                ..Default::default()
            }),
            Event::MeetingBooked(v1::MeetingBooked {
                contact: contact(),
                ..Default::default()
            }),
            Event::CustomerConverted(v1::CustomerConverted {
                contact: contact(),
                ..Default::default()
            }),
            Event::DealStageChanged(v1::DealStageChanged {
                contact: contact(),
                ..Default::default()
            }),
            Event::PaymentFailed(v1::PaymentFailed {
                contact: contact(),
                ..Default::default()
            }),
            Event::ContactUpdated(v1::ContactUpdated {
                contact: contact(),
                ..Default::default()
            }),
        ];
        assert_eq!(events.len(), EventType::ALL.len(), "one per event type");
        for event in events {
            let payload = v1::CanonicalPayload { event: Some(event) };
            assert_eq!(
                primary_email(&payload),
                Some("alex@example.com"),
                "{payload:?}"
            );
        }

        // No contact, a contact without an email, an empty email, no event: none.
        let without = |contact: Option<v1::Contact>| v1::CanonicalPayload {
            event: Some(Event::PaymentFailed(v1::PaymentFailed {
                contact,
                ..Default::default()
            })),
        };
        assert_eq!(primary_email(&without(None)), None);
        let by_crm_id = v1::Contact {
            crm_contact_id: Some("12345".into()),
            owner_email: Some("owner@example.com".into()),
            ..Default::default()
        };
        assert_eq!(primary_email(&without(Some(by_crm_id))), None);
        let blank = v1::Contact {
            email: Some(String::new()),
            ..Default::default()
        };
        assert_eq!(primary_email(&without(Some(blank))), None);
        assert_eq!(primary_email(&v1::CanonicalPayload::default()), None);
    }

    #[test]
    fn envelope_round_trips_through_protobuf() {
        let envelope = v1::Envelope {
            event_id: "evt_1".into(),
            event_type: "lead.created".into(),
            schema_version: CURRENT_SCHEMA_VERSION,
            payload: Some(v1::envelope::Payload::Raw(v1::RawPayload {
                content_type: "application/json".into(),
                body: b"{}".to_vec(),
            })),
            ..Default::default()
        };
        let bytes = envelope.encode_to_vec();
        assert_eq!(v1::Envelope::decode(bytes.as_slice()), Ok(envelope));
    }
}
