//! "The same failure": a dead letter's cause with the event's own values masked, and a
//! short hash of it, so a thousand events refused for the same unmapped value are one
//! group, not a thousand rows. Pure.

use std::sync::LazyLock;

use handoff_events::v1::{self, ErrorClass};
use regex::Regex;
use sha2::{Digest, Sha256};

/// Masks, in order: what is most specific first, so an email's digits are not masked
/// as a number before the email is recognised.
static MASKS: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    [
        (r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}", "<email>"),
        (
            r"(?i)\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b",
            "<uuid>",
        ),
        (r"https?://\S+", "<url>"),
        // Timestamps before numbers, or they become <n>-<n>-<n>T….
        (
            r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?",
            "<time>",
        ),
        // Ids: long hex runs or word-ish tokens with digits in them (evt_01H…, inv-2291).
        (r"(?i)\b[0-9a-f]{12,}\b", "<id>"),
        (r"\b[A-Za-z]+[-_][A-Za-z0-9_-]*\d[A-Za-z0-9_-]*\b", "<id>"),
        (r"\d+(\.\d+)?", "<n>"),
        (r"\s+", " "),
    ]
    .into_iter()
    .map(|(pattern, with)| {
        #[allow(clippy::expect_used)] // constant patterns, covered by the tests below
        let re = Regex::new(pattern).expect("a valid mask pattern");
        (re, with)
    })
    .collect()
});

/// Longest cause kept; the record keeps the whole message.
const MAX_CAUSE_CHARS: usize = 300;

/// The masked cause: for a validation failure every field error (path and masked
/// reason, sorted, once each), otherwise the masked message.
pub fn cause(record: &v1::DeadLetter) -> String {
    let class = ErrorClass::try_from(record.error_class).unwrap_or(ErrorClass::Unspecified);
    let text = if class == ErrorClass::Validation && !record.field_errors.is_empty() {
        let mut parts: Vec<String> = record
            .field_errors
            .iter()
            .map(|e| format!("{}: {}", mask_path(&e.path), mask_with(&e.message, false)))
            .collect();
        parts.sort();
        parts.dedup();
        parts.join("; ")
    } else {
        mask(&record.error_message)
    };
    text.chars().take(MAX_CAUSE_CHARS).collect()
}

/// `fp-` + 12 hex digits over the stage, class, destination, code and cause: a vendor's
/// 400 for one property and its 400 for another are two groups, and so is the same
/// message from two stages.
pub fn of(record: &v1::DeadLetter, cause: &str) -> String {
    let class = ErrorClass::try_from(record.error_class).unwrap_or(ErrorClass::Unspecified);
    let mut hasher = Sha256::new();
    for part in [
        record.stage.as_str(),
        class.label(),
        record.destination.as_str(),
        &mask(&record.error_code),
        cause,
    ] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    format!("fp-{}", &hex::encode(hasher.finalize())[..12])
}

/// Quoted text, each quote pair matched left to right.
static QUOTED: LazyLock<Regex> = LazyLock::new(|| {
    #[allow(clippy::expect_used)] // a constant pattern
    Regex::new(r#""[^"]*"|'[^']*'|`[^`]*`"#).expect("a valid pattern")
});

/// A message with its values masked, trimmed, lower-cased. Quoted names are kept (see
/// [`mask_with`]).
pub fn mask(message: &str) -> String {
    mask_with(message, true)
}

/// Quoted text is the refused value itself ("Closed Wonn", 'gold+') and is masked. With
/// `keep_names`, a quoted identifier stays: in a vendor's message that is a property
/// name or an error code (HubSpot's `"name":"lifecyclestage"`, `"error":"INVALID_OPTION"`),
/// and which property failed, and how, is part of the cause. A field error's message
/// names no field (its path does), so there everything quoted is a value.
pub fn mask_with(message: &str, keep_names: bool) -> String {
    // Vendors nest JSON in messages as escaped text; unescape so quotes pair up.
    let unescaped = message.replace("\\\\\\\"", "\"").replace("\\\"", "\"");
    let mut text = QUOTED
        .replace_all(&unescaped, |quoted: &regex::Captures<'_>| {
            let whole = &quoted[0];
            let inner = &whole[1..whole.len() - 1];
            let lower = inner.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
            let upper = inner.bytes().all(|b| b.is_ascii_uppercase() || b == b'_');
            if keep_names && !inner.is_empty() && (lower || upper) {
                whole.to_owned()
            } else {
                "<value>".to_owned()
            }
        })
        .into_owned();
    for (re, with) in MASKS.iter() {
        text = re.replace_all(&text, *with).into_owned();
    }
    text.trim().to_lowercase()
}

/// Array indexes in a path are positions, not causes: `lines[3].sku` → `lines[].sku`.
fn mask_path(path: &str) -> String {
    static INDEX: LazyLock<Regex> = LazyLock::new(|| {
        #[allow(clippy::expect_used)] // a constant pattern
        Regex::new(r"\[\d+\]|\.\d+\b").expect("a valid pattern")
    });
    INDEX.replace_all(path, "[]").into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validation(errors: &[(&str, &str)]) -> v1::DeadLetter {
        v1::DeadLetter {
            stage: "normalizer".into(),
            error_class: ErrorClass::Validation as i32,
            error_message: "the event is not valid".into(),
            field_errors: errors
                .iter()
                .map(|(path, message)| v1::FieldError {
                    path: (*path).into(),
                    message: (*message).into(),
                })
                .collect(),
            ..v1::DeadLetter::default()
        }
    }

    #[test]
    fn the_same_unmapped_value_problem_for_different_values_is_one_group() {
        let a = validation(&[("deal.stage", "unmapped value \"Closed Wonn\"")]);
        let b = validation(&[("deal.stage", "unmapped value \"Verbal yes\"")]);
        assert_eq!(cause(&a), "deal.stage: unmapped value <value>");
        assert_eq!(of(&a, &cause(&a)), of(&b, &cause(&b)));
    }

    #[test]
    fn a_different_field_or_stage_is_another_group() {
        let a = validation(&[("deal.stage", "unmapped value \"x\"")]);
        let b = validation(&[("customer.plan", "unmapped value \"x\"")]);
        assert_ne!(of(&a, &cause(&a)), of(&b, &cause(&b)));
        let mut c = a.clone();
        c.stage = "crm-writer".into();
        assert_ne!(of(&a, &cause(&a)), of(&c, &cause(&c)));
    }

    #[test]
    fn quoted_field_names_stay_and_quoted_values_go() {
        assert_eq!(
            mask(r#"Property "lifecyclestage" value "Closed Wonn" is not allowed"#),
            "property \"lifecyclestage\" value <value> is not allowed"
        );
        assert_eq!(
            mask(r#"{"name":"plan","error":"INVALID_OPTION","value":"gold-2"}"#),
            r#"{"name":"plan","error":"invalid_option","value":<value>}"#
        );
    }

    #[test]
    fn escaped_json_in_a_vendor_message_pairs_its_quotes() {
        let hubspot = r#"Property values were not valid: [{\"isValid\":false,\"message\":\"Property \\\"team_headcount\\\" does not exist\",\"error\":\"PROPERTY_DOESNT_EXIST\",\"name\":\"team_headcount\"}]"#;
        let masked = mask(hubspot);
        assert!(
            masked.contains(r#""error":"property_doesnt_exist""#),
            "{masked}"
        );
        assert!(masked.contains(r#""name":"team_headcount""#), "{masked}");
        assert!(!masked.contains('\\'), "{masked}");
    }

    #[test]
    fn an_unmapped_value_is_masked_whatever_its_case() {
        let a = validation(&[("lead.lifecycle_stage", "unmapped value \"champion\"")]);
        let b = validation(&[("lead.lifecycle_stage", "unmapped value \"Partner\"")]);
        assert_eq!(cause(&a), cause(&b));
    }

    #[test]
    fn field_errors_are_sorted_and_array_positions_masked() {
        let a = validation(&[
            ("lines[2].sku", "required"),
            ("contact.email", "not an email"),
        ]);
        let b = validation(&[
            ("contact.email", "not an email"),
            ("lines[0].sku", "required"),
        ]);
        assert_eq!(
            cause(&a),
            "contact.email: not an email; lines[].sku: required"
        );
        assert_eq!(cause(&a), cause(&b));
    }

    #[test]
    fn vendor_messages_lose_their_ids_emails_numbers_and_times() {
        let masked = mask(
            "Property values were not valid: contact 12345 alex@example.com at 2026-11-28T10:00:00Z \
             (correlation 3f2a9c1e-1b2c-4d5e-8f90-123456789abc, invoice inv-2291)",
        );
        assert_eq!(
            masked,
            "property values were not valid: contact <n> <email> at <time> (correlation <uuid>, invoice <id>)"
        );
    }

    #[test]
    fn masking_is_idempotent_and_never_panics() {
        for text in [
            "",
            "  ",
            "\"unterminated",
            "abc123def456abc123",
            "x".repeat(10_000).as_str(),
        ] {
            let once = mask(text);
            assert_eq!(mask(&once), once, "{text:?}");
        }
    }
}
