//! Any `handoff.v1` message as protobuf's canonical JSON (RFC 3339 timestamps,
//! base64 bytes, camelCase-free field names as in the `.proto` files), for
//! people: the demo, `handoff-normalizer check`, dead-letter inspection.
//!
//! Uses the descriptors `build.rs` compiled with the types, so the JSON can
//! never drift from the wire format.

use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

static POOL: LazyLock<Result<DescriptorPool, String>> = LazyLock::new(|| {
    DescriptorPool::decode(
        include_bytes!(concat!(env!("OUT_DIR"), "/handoff_v1_descriptors.bin")).as_slice(),
    )
    .map_err(|err| err.to_string())
});

/// Why a message could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// The type is not part of `handoff.v1` (or the descriptors are broken).
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// The bytes are not a valid message of that type.
    #[error("not a valid {type_name}: {reason}")]
    Undecodable {
        /// The full protobuf name, e.g. `handoff.v1.Envelope`.
        type_name: String,
        /// The decoder's message.
        reason: String,
    },
}

/// Renders the protobuf `bytes` of message `type_name` (e.g.
/// `"handoff.v1.Envelope"`) as JSON, with field names as in the `.proto`
/// files and default values left out.
pub fn to_json(type_name: &str, bytes: &[u8]) -> Result<serde_json::Value, JsonError> {
    let pool = POOL
        .as_ref()
        .map_err(|_| JsonError::UnknownType(type_name.to_owned()))?;
    let descriptor = pool
        .get_message_by_name(type_name)
        .ok_or_else(|| JsonError::UnknownType(type_name.to_owned()))?;
    let message =
        DynamicMessage::decode(descriptor, bytes).map_err(|err| JsonError::Undecodable {
            type_name: type_name.to_owned(),
            reason: err.to_string(),
        })?;
    let options = SerializeOptions::new().use_proto_field_name(true);
    message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|err| JsonError::Undecodable {
            type_name: type_name.to_owned(),
            reason: err.to_string(),
        })
}

/// Like [`to_json`] for a typed message.
pub fn message_to_json<M: prost::Name + prost::Message>(
    message: &M,
) -> Result<serde_json::Value, JsonError> {
    to_json(&M::full_name(), &message.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{CanonicalPayload, Contact, CustomerConverted, canonical_payload::Event};
    use prost::Message;

    #[test]
    fn a_canonical_payload_renders_with_proto_names() {
        let payload = CanonicalPayload {
            event: Some(Event::CustomerConverted(CustomerConverted {
                contact: Some(Contact {
                    email: Some("alex@example.com".into()),
                    crm_contact_id: Some("12345".into()),
                    ..Contact::default()
                }),
                ..CustomerConverted::default()
            })),
        };
        let json = to_json("handoff.v1.CanonicalPayload", &payload.encode_to_vec()).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"customer_converted": {"contact": {"email": "alex@example.com", "crm_contact_id": "12345"}}})
        );
    }

    #[test]
    fn bad_bytes_and_unknown_types_are_errors() {
        assert!(matches!(
            to_json("handoff.v1.Nope", b""),
            Err(JsonError::UnknownType(_))
        ));
        assert!(matches!(
            to_json("handoff.v1.Envelope", b"\xff\xff\xff"),
            Err(JsonError::Undecodable { .. })
        ));
    }
}
