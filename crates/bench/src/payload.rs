//! What the bench sends: the seed `customer.converted` event with a unique
//! `event_id`, as a single body, as batch bodies, wrapped in the same
//! protobuf [`Envelope`] ingest publishes (for the bare-broker ceiling and
//! the normalizer's input), and the canonical envelope the normalizer makes
//! of it (for the relay ceiling's output); a messy variant of the seed
//! for the pure normalization cost; canonical `contact.updated`
//! envelopes, each for a person of its own, for the crm-writer; and the
//! pipeline's mix of `lead.created` and `customer.converted` bodies, each for
//! a person (and a company or deal) of its own.

use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use handoff_events::v1::canonical_payload::Event;
use handoff_events::v1::{
    CanonicalPayload, Contact, ContactUpdated, Envelope, RawPayload, envelope::Payload,
};
use handoff_events::{CURRENT_SCHEMA_VERSION, EventType, Message, Timestamp};
use handoff_normalize::{NormalizeConfig, Normalizer};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The event type every scenario sends.
pub const EVENT_TYPE: EventType = EventType::CustomerConverted;

/// The publisher id the bench configures, stamped on every envelope.
pub const PUBLISHER_ID: &str = "bench";

/// `occurred_at` of the seed event, 2026-03-19T10:15:22Z, in Unix seconds.
const SEED_OCCURRED_AT: u64 = 1_773_915_322;

/// The seed example (ingest's own contract example) with `event_id` replaced.
pub fn event(event_id: &str) -> Value {
    let mut event = handoff_ingest::contract::example(EVENT_TYPE);
    event["event_id"] = Value::String(event_id.to_owned());
    event
}

/// The body of `POST /v1/events/customer.converted`: the seed event, compact.
pub fn single_body(event_id: &str) -> Vec<u8> {
    event(event_id).to_string().into_bytes()
}

/// The body of `POST /v1/events:batch` with one seed event per id.
pub fn batch_body<'a>(event_ids: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let events: Vec<Value> = event_ids
        .into_iter()
        .map(|id| {
            let mut item = event(id);
            item["event_type"] = Value::String(EVENT_TYPE.as_str().to_owned());
            item
        })
        .collect();
    json!({ "events": events }).to_string().into_bytes()
}

/// The envelope ingest would publish for the seed event with `event_id`, encoded: the same
/// fields, the JSON as raw payload, so the ceiling moves messages of the same size.
pub fn envelope(event_id: &str) -> Vec<u8> {
    let body = single_body(event_id);
    Envelope {
        event_id: event_id.to_owned(),
        event_type: EVENT_TYPE.as_str().to_owned(),
        schema_version: CURRENT_SCHEMA_VERSION,
        occurred_at: Some(Timestamp::from(
            SystemTime::UNIX_EPOCH + Duration::from_secs(SEED_OCCURRED_AT),
        )),
        received_at: Some(Timestamp::from(SystemTime::now())),
        source: "crm".to_owned(),
        publisher_id: PUBLISHER_ID.to_owned(),
        // Ingest hashes the canonical JSON; any 32 bytes give the same size.
        content_sha256: Sha256::digest(&body).to_vec(),
        attributes: Default::default(),
        payload: Some(Payload::Raw(RawPayload {
            content_type: "application/json".to_owned(),
            body,
        })),
    }
    .encode_to_vec()
}

/// The canonical envelope the normalizer publishes for the seed event with `event_id`,
/// encoded: normalized in-process with the default config and put in the raw envelope's
/// place the way the service's handler does, so the relay ceiling publishes messages of
/// exactly the service's output size.
pub fn canonical_envelope(event_id: &str) -> anyhow::Result<Vec<u8>> {
    let raw = Envelope::decode(envelope(event_id).as_slice()).context("decoding our envelope")?;
    let body = single_body(event_id);
    let normalizer =
        Normalizer::new(&NormalizeConfig::default()).context("compiling the default config")?;
    let normalized = normalizer
        .normalize(EVENT_TYPE, CURRENT_SCHEMA_VERSION, &body)
        .map_err(|rejection| anyhow::anyhow!("the seed event was rejected: {rejection}"))?;
    Ok(Envelope {
        schema_version: CURRENT_SCHEMA_VERSION,
        payload: Some(Payload::Canonical(normalized.payload)),
        ..raw
    }
    .encode_to_vec())
}

/// The seed event as a careless publisher sends it: padded, mixed-case email, a national
/// phone number, a country name, a Windows time zone, an enum in other words, and the UTM
/// parameters only inside a landing URL (the normalizer's `a_messy_event_comes_out_clean`).
pub fn messy_body(event_id: &str) -> Vec<u8> {
    json!({
        "event_id": event_id,
        "occurred_at": "2026-03-19T11:15:22+01:00",
        "source": "crm",
        "customer": {
            "email": "  Alex@Example.COM ",
            "first_name": "  Alex ",
            "last_name": "Kim\u{7}",
            "phone": "(415) 555-0100",
            "country": "United States of America",
            "timezone": "Pacific Standard Time",
            "lifecycle_stage": " Paying Customer ",
            "plan": "PRO",
            "company": "Example   Co",
            "company_domain": "https://www.Example.com/about"
        },
        "context": {
            "landing_url": "https://example.com/pricing?utm_source=Webinar&utm_medium=%20Email%20&utm_campaign=onboarding&gclid=abc123"
        }
    })
    .to_string()
    .into_bytes()
}

/// The event type the crm-writer scenarios send: one contact upsert each, so one CRM
/// request per event.
pub const WRITER_EVENT_TYPE: EventType = EventType::ContactUpdated;

/// The canonical `contact.updated` envelope the normalizer would publish for person `index`
/// of a run, encoded, with its event id: every event a record of its own (the email carries
/// the run, `tag` and `index`), with the fields a real update carries, so the CRM creates one
/// contact per event and the writer's stale guard and dedupe records are all distinct.
pub fn contact_updated(run: &str, tag: char, index: usize) -> (String, Vec<u8>) {
    let event_id = event_id(run, tag, index);
    let payload = CanonicalPayload {
        event: Some(Event::ContactUpdated(ContactUpdated {
            contact: Some(Contact {
                // Lower case, as the normalizer leaves every email.
                email: Some(format!(
                    "person.{}{index:08}@{run}.example.com",
                    tag.to_ascii_lowercase()
                )),
                first_name: Some("Alex".to_owned()),
                last_name: Some(format!("Kim {index}")),
                phone: Some("+14155550100".to_owned()),
                job_title: Some("Head of Operations".to_owned()),
                country: Some("US".to_owned()),
                timezone: Some("America/Los_Angeles".to_owned()),
                ..Contact::default()
            }),
            company: None,
        })),
    };
    let body = Envelope {
        event_id: event_id.clone(),
        event_type: WRITER_EVENT_TYPE.as_str().to_owned(),
        schema_version: CURRENT_SCHEMA_VERSION,
        occurred_at: Some(Timestamp::from(
            SystemTime::UNIX_EPOCH + Duration::from_secs(SEED_OCCURRED_AT),
        )),
        received_at: Some(Timestamp::from(SystemTime::now())),
        source: "app".to_owned(),
        publisher_id: PUBLISHER_ID.to_owned(),
        // Ingest's hash is of the raw JSON; the writer only compares it between deliveries.
        content_sha256: Sha256::digest(payload.encode_to_vec()).to_vec(),
        attributes: Default::default(),
        payload: Some(Payload::Canonical(payload)),
    }
    .encode_to_vec();
    (event_id, body)
}

/// The event types of the pipeline's mix, in turn: a lead (contact, company, tags) and a
/// conversion (contact, deal, associations), the two events every integration sends.
pub const PIPELINE_EVENT_TYPES: [EventType; 2] =
    [EventType::LeadCreated, EventType::CustomerConverted];

/// One event of the pipeline's mix: ingest's contract example of
/// `PIPELINE_EVENT_TYPES[index % 2]` for person `index` of a run (a lead without the
/// example's custom properties, see below), with its event id, an email of its own (lower case, carrying the run, `tag` and `index`) and, so that no two events
/// write the same CRM record, a company domain (a lead) or a deal id and CRM contact id (a
/// conversion) of its own. Returns the type, the event id and the body.
pub fn pipeline_event(run: &str, tag: char, index: usize) -> (EventType, String, Vec<u8>) {
    let event_type = PIPELINE_EVENT_TYPES[index % PIPELINE_EVENT_TYPES.len()];
    let event_id = event_id(run, tag, index);
    let person = format!("{}{index:08}", tag.to_ascii_lowercase());
    let mut body = handoff_ingest::contract::example(event_type);
    body["event_id"] = Value::String(event_id.clone());
    let email = Value::String(format!("person.{person}@{run}.example.com"));
    match event_type {
        EventType::LeadCreated => {
            // The example's `custom_properties` (`team_size`, `trial_requested`) become HubSpot
            // properties of the same names, which the sandbox's portal, like a real one, does
            // not have: the crm-writer's upsert is refused (400 PROPERTY_DOESNT_EXIST) and the
            // event dead-lettered. A publisher's own fields need properties created first.
            if let Some(lead) = body["lead"].as_object_mut() {
                lead.remove("custom_properties");
            }
            body["lead"]["email"] = email;
            body["lead"]["company"] = Value::String(format!("Company {person}"));
            body["lead"]["company_domain"] =
                Value::String(format!("co-{person}.{run}.example.com"));
        }
        _ => {
            body["customer"]["email"] = email;
            body["customer"]["crm_contact_id"] = Value::String(format!("{}", 100_000_000 + index));
            body["context"]["deal_id"] = Value::String(format!("D-{run}-{person}"));
        }
    }
    (event_type, event_id, body.to_string().into_bytes())
}

/// Event ids of one scenario: `evt_<run>_<tag><index>`, all the same length so every
/// scenario moves messages of the same size.
pub fn event_id(run: &str, tag: char, index: usize) -> String {
    format!("evt_{run}_{tag}{index:08}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_carries_the_json_byte_for_byte() {
        let bytes = envelope("evt_x_c00000001");
        let decoded = Envelope::decode(bytes.as_slice()).expect("decodes");
        let Some(Payload::Raw(raw)) = decoded.payload else {
            panic!("raw payload expected");
        };
        assert_eq!(raw.body, single_body("evt_x_c00000001"));
        assert_eq!(decoded.event_type, "customer.converted");
    }

    #[test]
    fn the_canonical_envelope_keeps_the_identity_and_normalizes() {
        let bytes = canonical_envelope("evt_x_c00000001").expect("normalizes");
        let decoded = Envelope::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(decoded.event_id, "evt_x_c00000001");
        assert!(matches!(decoded.payload, Some(Payload::Canonical(_))));
    }

    #[test]
    fn the_messy_variant_normalizes_without_notes() {
        let normalizer = Normalizer::new(&NormalizeConfig::default()).expect("config");
        let normalized = normalizer
            .normalize(EVENT_TYPE, CURRENT_SCHEMA_VERSION, &messy_body("evt_m"))
            .expect("accepted");
        assert!(normalized.notes.is_empty(), "{:?}", normalized.notes);
    }

    #[test]
    fn contact_updates_are_canonical_and_each_for_another_person() {
        let email = |index| {
            let (id, bytes) = contact_updated("r1", 'D', index);
            let decoded = Envelope::decode(bytes.as_slice()).expect("decodes");
            assert_eq!(decoded.event_id, id);
            assert_eq!(decoded.event_type, "contact.updated");
            let Some(Payload::Canonical(CanonicalPayload {
                event: Some(Event::ContactUpdated(update)),
            })) = decoded.payload
            else {
                panic!("a canonical contact.updated expected");
            };
            update.contact.and_then(|c| c.email).expect("an email")
        };
        assert_eq!(email(7), "person.d00000007@r1.example.com");
        assert_ne!(email(1), email(2));
    }

    #[test]
    fn pipeline_events_alternate_and_are_each_for_another_person() {
        let normalizer = Normalizer::new(&NormalizeConfig::default()).expect("config");
        let mut emails = std::collections::BTreeSet::new();
        for index in 0..4 {
            let (event_type, id, body) = pipeline_event("r1", 'P', index);
            assert_eq!(event_type, PIPELINE_EVENT_TYPES[index % 2]);
            assert_eq!(id, event_id("r1", 'P', index));
            let json: Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(json["event_id"], id.as_str());
            let normalized = normalizer
                .normalize(event_type, CURRENT_SCHEMA_VERSION, &body)
                .unwrap_or_else(|r| panic!("{event_type:?} rejected: {r}"));
            let email = handoff_events::primary_email(&normalized.payload)
                .expect("an email")
                .to_owned();
            assert_eq!(email, format!("person.p{index:08}@r1.example.com"));
            emails.insert(email);
        }
        assert_eq!(emails.len(), 4);
    }

    #[test]
    fn batch_items_name_their_type() {
        let body: Value = serde_json::from_slice(&batch_body(["a", "b"])).expect("json");
        let events = body["events"].as_array().expect("array");
        assert_eq!(events.len(), 2);
        assert_eq!(events[1]["event_type"], "customer.converted");
        assert_eq!(events[1]["event_id"], "b");
    }
}
