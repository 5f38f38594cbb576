//! [`classify`]: from a destination's HTTP answer to a vendor-neutral [`Verdict`].
//!
//! The writers never decide on a status code themselves: every answer goes through this one table,
//! so "what is retried, what is dead-lettered, what refreshes the token" is written down once and
//! tested row by row. The table (per [`Vendor`]; rows marked with a vendor apply to it only):
//!
//! | status | verdict |
//! |---|---|
//! | 2xx | `Success` |
//! | 409, HubSpot with category `CONFLICT` | `AlreadyExists` (the caller fetches the record and treats it as success) |
//! | 400, Mailchimp with title `Member Exists` | `AlreadyExists` |
//! | 429 | `RateLimited` with `Retry-After` (never uses up a retry attempt) |
//! | 401 | `Reauthenticate` (refresh the token once, then retry) |
//! | 403 | `Permanent` (missing scopes or a forbidden account do not heal by themselves) |
//! | 423, HubSpot (record locked by a concurrent write) | `Transient` |
//! | 408, 425, 500, 502, 503, 504, any other 5xx | `Transient`, honouring `Retry-After` |
//! | any other status (4xx, and the 1xx/3xx a client should never see) | `Permanent` |
//!
//! Refusals carry the vendor's own message from its JSON error body (HubSpot's
//! `{"status","message","category","correlationId"}`, Mailchimp's problem+json
//! `{"type","title","status","detail","instance"}` with its field-level `errors[]`, or a generic
//! `message` / `detail` / `error`), so a dead letter says what the destination said. A 429
//! without `Retry-After` (Mailchimp's connection limit sends none) leaves the pause to the
//! writer's `http.default_retry_after`. Network failures, which have no status, are
//! classified by [`Verdict::from_io`]. No HTTP client is involved: the caller passes the status,
//! the `Retry-After` value and the body.

use std::time::{Duration, SystemTime};

use serde_json::Value;

/// Which vendor's error conventions an answer follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Vendor {
    /// HubSpot CRM v3: JSON errors with a `category`, `409 CONFLICT` on duplicate unique values.
    HubSpot,
    /// Mailchimp Marketing v3: problem+json errors, `400 Member Exists` for a duplicate member.
    Mailchimp,
    /// Any other REST API (the generic adapter for internal tools): status codes only, plus a
    /// best-effort message from common JSON error shapes.
    Generic,
}

/// What the writer does with a destination's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The destination applied the request: complete the idempotency record, ack.
    Success,
    /// The record exists already (a create raced or repeated one): fetch it and treat the create
    /// as done, so a redelivery never becomes a failure or a duplicate.
    AlreadyExists,
    /// The quota is spent: wait (at least `retry_after`), slow the pacer down, and retry without
    /// counting an attempt.
    RateLimited {
        /// The server's `Retry-After`, when it sent a usable one.
        retry_after: Option<Duration>,
    },
    /// A failure that may pass (5xx, timeouts, lost connections): retry with backoff.
    Transient {
        /// The server's `Retry-After`, a floor for the backoff delay.
        retry_after: Option<Duration>,
        /// What went wrong, for logs and the attempt history.
        reason: String,
    },
    /// The destination refused the request and will refuse it again: dead-letter at once.
    Permanent {
        /// The destination's own error (status, category, message), for the dead-letter record.
        reason: String,
    },
    /// The credentials were refused: refresh the token once, then retry; refused again after a
    /// refresh, the caller treats it as permanent.
    Reauthenticate,
}

/// A request that got no HTTP answer at all, as the caller's HTTP client reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoFailure {
    /// No answer in time (connect, request or whole-exchange timeout).
    Timeout,
    /// The connection could not be opened (refused, DNS, TLS handshake).
    Connect,
    /// The connection broke while the request or the answer was in flight.
    Reset,
}

impl Verdict {
    /// The verdict for a request that got no answer: always transient. A reset after the request
    /// was sent may mean it was applied; the writers' natural-key upserts make the repeat harmless.
    pub fn from_io(kind: IoFailure) -> Verdict {
        let reason = match kind {
            IoFailure::Timeout => "request timed out",
            IoFailure::Connect => "could not connect",
            IoFailure::Reset => "connection reset",
        };
        Verdict::Transient {
            retry_after: None,
            reason: reason.to_owned(),
        }
    }

    /// True for the verdicts that send the message round again later (rate limited, transient,
    /// re-authenticate), false for success, already-exists and permanent refusals.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Verdict::RateLimited { .. } | Verdict::Transient { .. } | Verdict::Reauthenticate
        )
    }
}

/// Classifies one HTTP answer (status, the `Retry-After` header's value if any, the body) against
/// the current clock; see the module docs for the table.
pub fn classify(vendor: Vendor, status: u16, retry_after: Option<&str>, body: &[u8]) -> Verdict {
    classify_at(vendor, status, retry_after, body, SystemTime::now())
}

/// [`classify`] with an explicit clock, which only an HTTP-date `Retry-After` needs.
pub fn classify_at(
    vendor: Vendor,
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    now: SystemTime,
) -> Verdict {
    let retry_after = retry_after.and_then(|value| parse_retry_after(value, now));
    if (200..300).contains(&status) {
        return Verdict::Success;
    }
    let error = VendorError::parse(vendor, body);
    match (vendor, status) {
        (_, 429) => Verdict::RateLimited { retry_after },
        (_, 401) => Verdict::Reauthenticate,
        (Vendor::HubSpot, 409) if error.category.as_deref() == Some("CONFLICT") => {
            Verdict::AlreadyExists
        }
        (Vendor::Mailchimp, 400) if error.category.as_deref() == Some("Member Exists") => {
            Verdict::AlreadyExists
        }
        (Vendor::HubSpot, 423) | (_, 408 | 425) | (_, 500..=599) => Verdict::Transient {
            retry_after,
            reason: error.reason(status),
        },
        _ => Verdict::Permanent {
            reason: error.reason(status),
        },
    }
}

/// Parses a `Retry-After` value: delay-seconds (`"120"`; a decimal such as `"1.5"` is accepted
/// too, as some APIs send one) or an IMF-fixdate (`"Sun, 06 Nov 1994 08:49:37 GMT"`), which
/// becomes the time left until then (zero if it has passed). `None` for anything else.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        // Beyond u64 seconds is nonsense; saturating keeps "wait very long" rather than "none".
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    if value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let secs: f64 = value.parse().ok()?;
        return Duration::try_from_secs_f64(secs).ok();
    }
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = time::PrimitiveDateTime::parse(value, format)
        .ok()?
        .assume_utc();
    let at = SystemTime::from(at);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The parts of a vendor's JSON error body that a verdict needs.
#[derive(Debug, Default)]
struct VendorError {
    /// HubSpot's `category`, Mailchimp's `title`.
    category: Option<String>,
    /// HubSpot's `message`, Mailchimp's `detail`, a generic `message` / `detail` / `error`.
    message: Option<String>,
}

/// How many characters of a vendor's message a reason keeps: enough for any real error, bounded
/// so a huge body cannot bloat a dead-letter record or a log line.
const MAX_MESSAGE_CHARS: usize = 500;

impl VendorError {
    fn parse(vendor: Vendor, body: &[u8]) -> VendorError {
        let Ok(json) = serde_json::from_slice::<Value>(body) else {
            return VendorError {
                category: None,
                message: plain_text(body),
            };
        };
        let field = |name: &str| {
            json.get(name)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        match vendor {
            Vendor::HubSpot => VendorError {
                category: field("category"),
                message: field("message"),
            },
            Vendor::Mailchimp => VendorError {
                category: field("title"),
                message: mailchimp_message(field("detail"), &json),
            },
            Vendor::Generic => VendorError {
                category: None,
                message: field("message")
                    .or_else(|| field("detail"))
                    .or_else(|| field("error"))
                    .or_else(|| {
                        json.get("error")
                            .and_then(|e| e.get("message"))
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    })
                    .or_else(|| field("title")),
            },
        }
    }

    /// `"HTTP {status}[ {category}][: {message}]"`.
    fn reason(&self, status: u16) -> String {
        let mut reason = format!("HTTP {status}");
        if let Some(category) = &self.category {
            reason.push(' ');
            reason.push_str(category);
        }
        if let Some(message) = &self.message {
            reason.push_str(": ");
            reason.extend(message.chars().take(MAX_MESSAGE_CHARS));
        }
        reason
    }
}

/// Mailchimp's `detail`, followed by its `errors[]` (`{field, message}`) when there are any: on
/// "Invalid Resource" the detail only says "see the 'errors' array", and the field-level reason
/// is what a person fixing the dead letter needs.
fn mailchimp_message(detail: Option<String>, json: &Value) -> Option<String> {
    let errors: Vec<String> = json
        .get("errors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let message = e.get("message").and_then(Value::as_str)?.trim();
            match e.get("field").and_then(Value::as_str).map(str::trim) {
                Some(field) if !field.is_empty() => Some(format!("{field}: {message}")),
                _ => Some(message.to_owned()),
            }
        })
        .collect();
    match (detail, errors.is_empty()) {
        (detail, true) => detail,
        (Some(detail), false) => Some(format!("{detail} ({})", errors.join("; "))),
        (None, false) => Some(errors.join("; ")),
    }
}

/// A short plain-text body as a message; `None` for empty, binary or HTML bodies (a proxy's error
/// page says nothing the status does not).
fn plain_text(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?.trim();
    if text.is_empty() || text.starts_with('<') {
        return None;
    }
    Some(text.split_whitespace().collect::<Vec<_>>().join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-28 00:00:00 UTC.
    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_824_000)
    }

    fn secs(n: u64) -> Option<Duration> {
        Some(Duration::from_secs(n))
    }

    fn transient(retry_after: Option<Duration>, reason: &str) -> Verdict {
        Verdict::Transient {
            retry_after,
            reason: reason.to_owned(),
        }
    }

    fn permanent(reason: &str) -> Verdict {
        Verdict::Permanent {
            reason: reason.to_owned(),
        }
    }

    const HS_VALIDATION: &str = r#"{"status":"error","message":"Property values were not valid: email","correlationId":"3f0c","category":"VALIDATION_ERROR"}"#;
    const HS_CONFLICT: &str = r#"{"status":"error","message":"Contact already exists. Existing ID: 512","correlationId":"a1","category":"CONFLICT"}"#;
    const HS_RATE: &str = r#"{"status":"error","message":"You have reached your ten_secondly_rolling limit.","errorType":"RATE_LIMIT","correlationId":"c2","policyName":"TEN_SECONDLY_ROLLING","category":"RATE_LIMITS"}"#;
    const HS_EXPIRED: &str = r#"{"status":"error","message":"The OAuth token used to make this call expired.","correlationId":"e1","category":"EXPIRED_AUTHENTICATION"}"#;
    const HS_INVALID_AUTH: &str = r#"{"status":"error","message":"Authentication credentials not found.","correlationId":"e2","category":"INVALID_AUTHENTICATION"}"#;
    const HS_SCOPES: &str = r#"{"status":"error","message":"This app hasn't been granted all required scopes","correlationId":"e3","category":"MISSING_SCOPES"}"#;
    const HS_NOT_FOUND: &str = r#"{"status":"error","message":"Object not found. objectId are usually numeric.","correlationId":"n1","category":"OBJECT_NOT_FOUND"}"#;
    const HS_LOCKED: &str = r#"{"status":"error","message":"Record is locked","correlationId":"l1","category":"LOCKED"}"#;
    const HS_INTERNAL: &str =
        r#"{"status":"error","message":"internal error","correlationId":"i1"}"#;
    const MC_EXISTS: &str = r#"{"type":"https://mailchimp.com/developer/marketing/docs/errors/","title":"Member Exists","status":400,"detail":"a@example.com is already a list member. Use PUT to insert or update list members.","instance":"9e1"}"#;
    const MC_INVALID: &str = r#"{"type":"https://mailchimp.com/developer/marketing/docs/errors/","title":"Invalid Resource","status":400,"detail":"Please provide a valid email address.","instance":"9e2"}"#;
    const MC_NOT_FOUND: &str = r#"{"type":"https://mailchimp.com/developer/marketing/docs/errors/","title":"Resource Not Found","status":404,"detail":"The requested resource could not be found.","instance":"9e3"}"#;
    const MC_FORBIDDEN: &str = r#"{"type":"https://mailchimp.com/developer/marketing/docs/errors/","title":"Forbidden","status":403,"detail":"The API key provided is linked to a different datacenter","instance":"9e4"}"#;
    const MC_COMPLIANCE: &str = r#"{"type":"https://mailchimp.com/developer/marketing/docs/errors/","title":"Forgotten Email Not Subscribed","status":400,"detail":"a@example.com was permanently deleted and cannot be re-imported.","instance":"9e5"}"#;
    const MC_TOO_MANY: &str = r#"{"type":"https://mailchimp.com/developer/marketing/docs/errors/","title":"Too Many Requests","status":429,"detail":"You have exceeded the limit of 10 simultaneous connections.","instance":"9e6"}"#;
    const MC_FIELDS: &str = r#"{"type":"https://mailchimp.com/developer/marketing/docs/errors/","title":"Invalid Resource","status":400,"detail":"The resource submitted could not be validated.","instance":"9e8","errors":[{"field":"email_address","message":"This value should be a valid email."},{"field":"merge_fields.BDAY","message":"Invalid date"}]}"#;
    const MC_COMPLIANCE_STATE: &str = r#"{"type":"https://mailchimp.com/developer/marketing/docs/errors/","title":"Member In Compliance State","status":400,"detail":"a@example.com is already a list member in compliance state due to unsubscribe, bounce, or compliance review.","instance":"9e9"}"#;
    const MC_UNAVAILABLE: &str = r#"{"title":"Service Unavailable","status":503,"detail":"Try again later","instance":"9e7"}"#;

    #[test]
    fn classification_table() {
        use Vendor::{Generic, HubSpot, Mailchimp};
        let date = "Sat, 28 Nov 2026 00:01:30 GMT"; // 90 s after `now()`
        #[rustfmt::skip]
        let rows: Vec<(Vendor, u16, Option<&str>, &str, Verdict)> = vec![
            (HubSpot, 200, None, "{}", Verdict::Success),
            (HubSpot, 201, None, "{}", Verdict::Success),
            (HubSpot, 204, None, "", Verdict::Success),
            (HubSpot, 207, None, r#"{"status":"COMPLETE"}"#, Verdict::Success),
            (Mailchimp, 200, None, "{}", Verdict::Success),
            (Generic, 202, None, "", Verdict::Success),
            (HubSpot, 409, None, HS_CONFLICT, Verdict::AlreadyExists),
            (HubSpot, 409, None, HS_VALIDATION, permanent("HTTP 409 VALIDATION_ERROR: Property values were not valid: email")),
            (Mailchimp, 400, None, MC_EXISTS, Verdict::AlreadyExists),
            (Mailchimp, 400, None, MC_INVALID, permanent("HTTP 400 Invalid Resource: Please provide a valid email address.")),
            (Mailchimp, 400, None, MC_COMPLIANCE, permanent("HTTP 400 Forgotten Email Not Subscribed: a@example.com was permanently deleted and cannot be re-imported.")),
            (Generic, 409, None, r#"{"message":"duplicate"}"#, permanent("HTTP 409: duplicate")),
            (HubSpot, 429, None, HS_RATE, Verdict::RateLimited { retry_after: None }),
            (HubSpot, 429, Some("10"), HS_RATE, Verdict::RateLimited { retry_after: secs(10) }),
            (Mailchimp, 429, Some(date), MC_TOO_MANY, Verdict::RateLimited { retry_after: secs(90) }),
            // The connection limit's 429 has no Retry-After: the writer's `default_retry_after`.
            (Mailchimp, 429, None, MC_TOO_MANY, Verdict::RateLimited { retry_after: None }),
            (Mailchimp, 400, None, MC_FIELDS, permanent("HTTP 400 Invalid Resource: The resource submitted could not be validated. (email_address: This value should be a valid email.; merge_fields.BDAY: Invalid date)")),
            (Mailchimp, 400, None, MC_COMPLIANCE_STATE, permanent("HTTP 400 Member In Compliance State: a@example.com is already a list member in compliance state due to unsubscribe, bounce, or compliance review.")),
            (Generic, 429, Some("soon"), "", Verdict::RateLimited { retry_after: None }),
            (HubSpot, 401, None, HS_EXPIRED, Verdict::Reauthenticate),
            (HubSpot, 401, None, HS_INVALID_AUTH, Verdict::Reauthenticate),
            (Mailchimp, 401, None, "{}", Verdict::Reauthenticate),
            (Generic, 401, None, "", Verdict::Reauthenticate),
            (HubSpot, 403, None, HS_SCOPES, permanent("HTTP 403 MISSING_SCOPES: This app hasn't been granted all required scopes")),
            (Mailchimp, 403, None, MC_FORBIDDEN, permanent("HTTP 403 Forbidden: The API key provided is linked to a different datacenter")),
            (HubSpot, 400, None, HS_VALIDATION, permanent("HTTP 400 VALIDATION_ERROR: Property values were not valid: email")),
            (HubSpot, 404, None, HS_NOT_FOUND, permanent("HTTP 404 OBJECT_NOT_FOUND: Object not found. objectId are usually numeric.")),
            (Mailchimp, 404, None, MC_NOT_FOUND, permanent("HTTP 404 Resource Not Found: The requested resource could not be found.")),
            (Generic, 422, None, r#"{"detail":"email is required"}"#, permanent("HTTP 422: email is required")),
            (Generic, 400, None, r#"{"error":{"code":7,"message":"bad field"}}"#, permanent("HTTP 400: bad field")),
            (Generic, 400, None, r#"{"error":"bad_request"}"#, permanent("HTTP 400: bad_request")),
            (Generic, 400, None, "name   is\nmissing", permanent("HTTP 400: name is missing")),
            (Generic, 400, None, "<html><body>Bad</body></html>", permanent("HTTP 400")),
            (Generic, 404, None, "", permanent("HTTP 404")),
            (HubSpot, 410, None, "{}", permanent("HTTP 410")),
            (Generic, 418, None, "", permanent("HTTP 418")),
            (HubSpot, 423, None, HS_LOCKED, transient(None, "HTTP 423 LOCKED: Record is locked")),
            (Generic, 423, None, "", permanent("HTTP 423")),
            (Mailchimp, 423, None, "", permanent("HTTP 423")),
            (HubSpot, 408, None, "", transient(None, "HTTP 408")),
            (Generic, 425, None, "", transient(None, "HTTP 425")),
            (HubSpot, 500, None, HS_INTERNAL, transient(None, "HTTP 500: internal error")),
            (HubSpot, 502, None, "<html>Bad gateway</html>", transient(None, "HTTP 502")),
            (HubSpot, 503, Some("30"), "", transient(secs(30), "HTTP 503")),
            (Mailchimp, 503, Some(date), MC_UNAVAILABLE, transient(secs(90), "HTTP 503 Service Unavailable: Try again later")),
            (Generic, 504, Some(" 5 "), "", transient(secs(5), "HTTP 504")),
            (Generic, 501, None, "", transient(None, "HTTP 501")),
            (Generic, 599, None, "", transient(None, "HTTP 599")),
            (Generic, 304, None, "", permanent("HTTP 304")),
            (Generic, 100, None, "", permanent("HTTP 100")),
        ];
        assert!(rows.len() >= 30);
        let mut failures = Vec::new();
        for (i, (vendor, status, retry_after, body, expected)) in rows.iter().enumerate() {
            let got = classify_at(*vendor, *status, *retry_after, body.as_bytes(), now());
            if &got != expected {
                failures.push(format!(
                    "row {i}: {vendor:?} {status} retry-after={retry_after:?} body={body}\n  expected {expected:?}\n  got      {got:?}"
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn retry_after_forms() {
        let now = now();
        assert_eq!(parse_retry_after("0", now), secs(0));
        assert_eq!(parse_retry_after("120", now), secs(120));
        assert_eq!(
            parse_retry_after("1.5", now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            secs(u64::MAX)
        );
        // An HTTP-date in the past means "now".
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Sat, 28 Nov 2026 01:00:00 GMT", now),
            secs(3600)
        );
        for bad in [
            "",
            "  ",
            "-5",
            "1.2.3",
            "tomorrow",
            "28 Nov 2026 01:00:00 GMT",
            ".",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn io_failures_are_transient() {
        for kind in [IoFailure::Timeout, IoFailure::Connect, IoFailure::Reset] {
            let verdict = Verdict::from_io(kind);
            assert!(
                matches!(
                    verdict,
                    Verdict::Transient {
                        retry_after: None,
                        ..
                    }
                ),
                "{kind:?}"
            );
            assert!(verdict.is_retryable());
        }
        assert!(!Verdict::Success.is_retryable());
        assert!(!Verdict::AlreadyExists.is_retryable());
        assert!(!permanent("HTTP 400").is_retryable());
        assert!(Verdict::Reauthenticate.is_retryable());
        assert!(Verdict::RateLimited { retry_after: None }.is_retryable());
    }

    #[test]
    fn long_messages_are_bounded() {
        let body = format!(r#"{{"message":"{}"}}"#, "x".repeat(10_000));
        match classify(Vendor::Generic, 400, None, body.as_bytes()) {
            Verdict::Permanent { reason } => {
                assert_eq!(reason.len(), "HTTP 400: ".len() + MAX_MESSAGE_CHARS);
            }
            other => panic!("{other:?}"),
        }
    }
}
