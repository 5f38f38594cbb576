//! `handoff-normalizer check`: what the normalizer would make of one raw body,
//! offline, with the configured maps. RevOps uses it to try a mapping change
//! before deploying it; `make run` uses it to show a messy input's canonical
//! form. Same code path as the service ([`Normalizer::normalize`]).

use handoff_events::v1::CanonicalPayload;
use handoff_events::{EventType, json};
use handoff_normalize::Normalizer;
use serde_json::{Value, json};

/// The verdict as JSON: `{"canonical": …, "notes": […]}` or
/// `{"rejected": {"error_class", "message", "fields"}}`; `Err` only for a bad
/// event type. The bool says whether the event was accepted.
pub fn check(
    normalizer: &Normalizer,
    event_type: &str,
    schema_version: u32,
    body: &[u8],
) -> Result<(bool, Value), String> {
    let event_type: EventType = event_type.parse().map_err(|_| {
        let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        format!(
            "unknown event type {event_type:?}; one of {}",
            known.join(", ")
        )
    })?;
    match normalizer.normalize(event_type, schema_version, body) {
        Ok(normalized) => {
            let canonical = json::message_to_json::<CanonicalPayload>(&normalized.payload)
                .map_err(|err| err.to_string())?;
            let notes: Vec<Value> = normalized
                .notes
                .iter()
                .map(|n| json!({"path": n.path, "kind": n.kind.label(), "message": n.message}))
                .collect();
            Ok((true, json!({"canonical": canonical, "notes": notes})))
        }
        Err(rejection) => {
            let fields: Vec<Value> = rejection
                .field_errors()
                .iter()
                .map(|f| json!({"path": f.path, "message": f.message}))
                .collect();
            Ok((
                false,
                json!({"rejected": {
                    "error_class": rejection.error_class().label(),
                    "message": rejection.to_string(),
                    "fields": fields,
                }}),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use handoff_normalize::NormalizeConfig;

    fn normalizer() -> Normalizer {
        Normalizer::new(&NormalizeConfig::default()).expect("defaults compile")
    }

    #[test]
    fn a_messy_body_comes_back_canonical() {
        let body = br#"{"event_id":"e1","occurred_at":"2026-03-19T10:15:22Z",
            "customer":{"email":" Alex@Example.COM ","country":"United States","phone":"415 555 0100"}}"#;
        let (ok, out) = check(&normalizer(), "customer.converted", 1, body).expect("checked");
        assert!(ok, "{out}");
        let contact = &out["canonical"]["customer_converted"]["contact"];
        assert_eq!(contact["email"], "alex@example.com");
        assert_eq!(contact["country"], "US");
        assert_eq!(contact["phone"], "+14155550100");
    }

    #[test]
    fn a_rejection_lists_its_fields() {
        let body = br#"{"event_id":"e1","occurred_at":"2026-03-19T10:15:22Z","customer":{"email":"nope"}}"#;
        let (ok, out) = check(&normalizer(), "customer.converted", 1, body).expect("checked");
        assert!(!ok);
        assert_eq!(out["rejected"]["error_class"], "validation");
        let fields = out["rejected"]["fields"].as_array().expect("fields");
        assert!(
            fields.iter().any(|f| f["path"] == "customer.email"),
            "{out}"
        );
        assert!(check(&normalizer(), "lead.deleted", 1, b"{}").is_err());
    }
}
