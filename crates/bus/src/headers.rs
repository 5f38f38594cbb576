//! AMQP field tables to and from string [`Headers`], and the headers the bus maintains.
//!
//! The bus keeps a message's retry history in headers so it survives hops through
//! the delay queues and process restarts (nothing lives in a process's memory):
//! [`HEADER_ATTEMPT`], [`HEADER_FIRST_FAILED_AT`], [`HEADER_ATTEMPTS`] and the origin
//! route. [`HEADER_NOT_BEFORE`] is when a delayed message is due, so a wait can span
//! several delay tiers. [`PUBLISH_SEQ`] is internal bookkeeping of the publisher
//! (`publisher.rs`) and is never shown to handlers.

use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::Headers;

/// Attempt number of this delivery (1 on the first try), raised by every
/// `RetryLater` hop.
pub const HEADER_ATTEMPT: &str = "x-handoff-attempt";
/// RFC 3339 time of the first failure, set by the first `RetryLater`.
pub const HEADER_FIRST_FAILED_AT: &str = "x-handoff-first-failed-at";
/// JSON array of the failed attempts so far: `[{"n":1,"at":"...","error":"..."}]`.
pub const HEADER_ATTEMPTS: &str = "x-handoff-attempts";
/// RFC 3339 time before which a delayed message must not reach its handler, set by
/// `RetryLater` and `Defer`. Delay tiers are coarse, so the consumer sends a message
/// that comes back before this time on through another tier instead of handling it.
pub const HEADER_NOT_BEFORE: &str = "x-handoff-not-before";
/// The exchange the message was first published to, kept across retry hops (which
/// go through the default exchange).
pub const HEADER_ORIGIN_EXCHANGE: &str = "x-handoff-origin-exchange";
/// The routing key the message was first published with, kept across retry hops.
pub const HEADER_ORIGIN_ROUTING_KEY: &str = "x-handoff-origin-routing-key";
/// Per-channel publish sequence number; lets the publisher match a returned
/// (unroutable) message to its publish. Stripped from deliveries.
pub(crate) const PUBLISH_SEQ: &str = "x-handoff-publish-seq";
/// Set by quorum queues on redelivery; dropped from retry copies, whose count
/// starts afresh.
pub(crate) const DELIVERY_COUNT: &str = "x-delivery-count";

/// Longest error text kept per attempt in [`HEADER_ATTEMPTS`], so 30 attempts stay
/// well inside the broker's frame size.
const MAX_ERROR_LEN: usize = 512;

/// Renders an AMQP field table as string headers (internal bookkeeping excluded).
pub(crate) fn from_field_table(table: &FieldTable) -> Headers {
    table
        .inner()
        .iter()
        .filter(|(k, _)| k.as_str() != PUBLISH_SEQ)
        .map(|(k, v)| (k.as_str().to_owned(), value_to_string(v)))
        .collect()
}

/// Builds an AMQP field table with every value as a long string. Keys longer than
/// AMQP's 255-byte limit are skipped rather than failing the publish.
pub(crate) fn to_field_table(headers: &Headers) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in headers {
        if let Ok(key) = ShortString::try_new(k.as_str()) {
            table.insert(key, AMQPValue::LongString(LongString::from(v.as_str())));
        }
    }
    table
}

/// One AMQP value as a string: numbers and booleans as text, strings as UTF-8
/// (lossy), byte arrays as hex, tables and arrays as JSON.
pub(crate) fn value_to_string(value: &AMQPValue) -> String {
    match value {
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::FieldArray(_) | AMQPValue::FieldTable(_) => to_json(value).to_string(),
        other => match to_json(other) {
            serde_json::Value::String(s) => s,
            json => json.to_string(),
        },
    }
}

fn to_json(value: &AMQPValue) -> serde_json::Value {
    use serde_json::Value;
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Float(f) => Value::from(f64::from(*f)),
        AMQPValue::Double(f) => Value::from(*f),
        AMQPValue::DecimalValue(d) => {
            let scale = 10f64.powi(i32::from(d.scale));
            Value::from(f64::from(d.value) / scale)
        }
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => {
            Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(to_json).collect()),
        AMQPValue::Timestamp(t) => Value::from(*t),
        AMQPValue::FieldTable(t) => Value::Object(
            t.inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), to_json(v)))
                .collect(),
        ),
        AMQPValue::ByteArray(b) => Value::String(hex(b.as_slice())),
        AMQPValue::Void => Value::Null,
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// One failed attempt, as kept in [`HEADER_ATTEMPTS`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct AttemptRecord {
    /// Attempt number, 1-based.
    pub n: u32,
    /// RFC 3339 time of the failure.
    pub at: String,
    /// The handler's error text (truncated).
    pub error: String,
}

impl AttemptRecord {
    pub(crate) fn new(n: u32, at: OffsetDateTime, error: &str) -> Self {
        Self {
            n,
            at: format_time(at),
            error: truncate(error, MAX_ERROR_LEN),
        }
    }
}

/// Parses [`HEADER_ATTEMPTS`]; a missing or mangled header is an empty history.
pub(crate) fn parse_attempts(headers: &Headers) -> Vec<AttemptRecord> {
    headers
        .get(HEADER_ATTEMPTS)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default()
}

pub(crate) fn encode_attempts(attempts: &[AttemptRecord]) -> String {
    serde_json::to_string(attempts).unwrap_or_else(|_| "[]".to_owned())
}

pub(crate) fn format_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

pub(crate) fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

/// When a message delayed at `now` by `delay` becomes due; a delay too long for the
/// calendar means the last representable instant rather than an unreadable header,
/// which would make the message due at once.
pub(crate) fn due_at(now: OffsetDateTime, delay: Duration) -> OffsetDateTime {
    let delay = time::Duration::try_from(delay).unwrap_or(time::Duration::MAX);
    now.saturating_add(delay)
}

/// How long a delivery must still wait per [`HEADER_NOT_BEFORE`]; `None` when it is
/// due, or the header is missing or unreadable (handling it beats parking it forever).
pub(crate) fn wait_left(headers: &Headers, now: OffsetDateTime) -> Option<Duration> {
    let not_before = headers.get(HEADER_NOT_BEFORE).and_then(|s| parse_time(s))?;
    let left = not_before - now;
    if left.is_positive() {
        Duration::try_from(left).ok()
    } else {
        None
    }
}

/// The attempt number a delivery carries, 1 when absent or unreadable.
pub(crate) fn attempt(headers: &Headers) -> u32 {
    headers
        .get(HEADER_ATTEMPT)
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(1)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldArray, FieldTable};

    #[test]
    fn amqp_values_become_strings() {
        let mut inner = FieldTable::default();
        inner.insert("count".into(), AMQPValue::LongLongInt(2));
        inner.insert("queue".into(), AMQPValue::LongString("ns.q".into()));
        let mut table = FieldTable::default();
        table.insert("s".into(), AMQPValue::LongString("hello".into()));
        table.insert("short".into(), AMQPValue::ShortString("hi".into()));
        table.insert("i".into(), AMQPValue::LongInt(-7));
        table.insert("b".into(), AMQPValue::Boolean(true));
        table.insert("t".into(), AMQPValue::Timestamp(1_700_000_000));
        table.insert(
            "bytes".into(),
            AMQPValue::ByteArray(vec![0xde, 0xad].into()),
        );
        table.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(inner)])),
        );
        table.insert(PUBLISH_SEQ.into(), AMQPValue::LongLongInt(9));
        let h = from_field_table(&table);
        assert_eq!(h["s"], "hello");
        assert_eq!(h["short"], "hi");
        assert_eq!(h["i"], "-7");
        assert_eq!(h["b"], "true");
        assert_eq!(h["t"], "1700000000");
        assert_eq!(h["bytes"], "dead");
        assert_eq!(h["x-death"], r#"[{"count":2,"queue":"ns.q"}]"#);
        assert!(!h.contains_key(PUBLISH_SEQ));
    }

    #[test]
    fn headers_round_trip_as_long_strings() {
        let mut h = Headers::new();
        h.insert("traceparent".into(), "00-abc".into());
        h.insert("k".repeat(300), "too long a key".into());
        let table = to_field_table(&h);
        assert_eq!(table.inner().len(), 1);
        assert_eq!(from_field_table(&table)["traceparent"], "00-abc");
    }

    #[test]
    fn attempt_history_round_trips() {
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("valid time");
        let records = vec![
            AttemptRecord::new(1, at, "503 from the CRM"),
            AttemptRecord::new(2, at, &"x".repeat(2000)),
        ];
        let mut h = Headers::new();
        h.insert(HEADER_ATTEMPTS.into(), encode_attempts(&records));
        let parsed = parse_attempts(&h);
        assert_eq!(parsed, records);
        assert!(parsed[1].error.len() <= MAX_ERROR_LEN + 3);
        assert_eq!(parse_time(&parsed[0].at), Some(at));
        h.insert(HEADER_ATTEMPTS.into(), "garbage".into());
        assert!(parse_attempts(&h).is_empty());
    }

    #[test]
    fn not_before_keeps_subsecond_precision_and_counts_down() {
        let now = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789)
            .expect("valid time");
        let at = due_at(now, Duration::from_millis(1300));
        let mut h = Headers::new();
        h.insert(HEADER_NOT_BEFORE.into(), format_time(at));
        assert_eq!(h[HEADER_NOT_BEFORE], "2023-11-14T22:13:21.423456789Z");
        assert_eq!(wait_left(&h, now), Some(Duration::from_millis(1300)));
        assert_eq!(
            wait_left(&h, now + time::Duration::milliseconds(1000)),
            Some(Duration::from_millis(300))
        );
        assert_eq!(wait_left(&h, at), None);
        assert_eq!(wait_left(&h, at + time::Duration::SECOND), None);
        h.insert(HEADER_NOT_BEFORE.into(), "garbage".into());
        assert_eq!(wait_left(&h, now), None);
        assert_eq!(wait_left(&Headers::new(), now), None);
    }

    #[test]
    fn an_absurd_delay_is_still_a_readable_time() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("valid time");
        let far = format_time(due_at(now, Duration::MAX));
        assert!(far.starts_with("9999-12-31T"), "{far}");
        assert!(parse_time(&far).is_some_and(|t| t > now));
    }

    #[test]
    fn attempt_defaults_to_one() {
        let mut h = Headers::new();
        assert_eq!(attempt(&h), 1);
        h.insert(HEADER_ATTEMPT.into(), "3".into());
        assert_eq!(attempt(&h), 3);
        h.insert(HEADER_ATTEMPT.into(), "0".into());
        assert_eq!(attempt(&h), 1);
    }
}
