//! What the bench sends: the seed `customer.converted` event with a unique
//! `event_id`, as a single body, as batch bodies, and wrapped in the same
//! protobuf [`Envelope`] ingest publishes (for the bare-broker ceiling).

use std::time::{Duration, SystemTime};

use handoff_events::v1::{Envelope, RawPayload, envelope::Payload};
use handoff_events::{CURRENT_SCHEMA_VERSION, EventType, Message, Timestamp};
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
    fn batch_items_name_their_type() {
        let body: Value = serde_json::from_slice(&batch_body(["a", "b"])).expect("json");
        let events = body["events"].as_array().expect("array");
        assert_eq!(events.len(), 2);
        assert_eq!(events[1]["event_type"], "customer.converted");
        assert_eq!(events[1]["event_id"], "b");
    }
}
