//! W3C trace context (`traceparent`, `tracestate`) in AMQP headers.
//!
//! Uses opentelemetry's `TraceContextPropagator` directly rather than the global
//! propagator, so trace context travels even in a process (or test) that never set
//! one. The tracing side goes through `tracing_opentelemetry`: without its layer
//! installed the current span has no OpenTelemetry context and nothing is injected.

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::Headers;

/// Header carrying the W3C `traceparent`.
pub const TRACEPARENT: &str = "traceparent";
/// Header carrying the W3C `tracestate`.
pub const TRACESTATE: &str = "tracestate";

struct HeaderInjector<'a>(&'a mut Headers);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct HeaderExtractor<'a>(&'a Headers);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Writes the current tracing span's OpenTelemetry context into `headers`.
pub fn inject_current(headers: &mut Headers) {
    inject_context(&tracing::Span::current().context(), headers);
}

/// Writes `cx`'s span context into `headers` (nothing if `cx` has no valid span).
pub fn inject_context(cx: &Context, headers: &mut Headers) {
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
}

/// Reads the trace context out of `headers`; an empty context if there is none.
pub fn extract(headers: &Headers) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// The current span's trace id as 32 lower-case hex digits, `None` if it has none.
pub fn current_trace_id() -> Option<String> {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let span_context = span.span_context();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// The trace id of a `traceparent` value (`00-<trace id>-<span id>-<flags>`), `None`
/// unless it is well formed with a non-zero trace id.
pub fn trace_id_from_traceparent(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.trim().split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let span_id = parts.next()?;
    let flags = parts.next()?;
    let lower_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let well_formed = lower_hex(version, 2)
        && version != "ff"
        && lower_hex(trace_id, 32)
        && lower_hex(span_id, 16)
        && lower_hex(flags, 2)
        && (version != "00" || parts.next().is_none());
    (well_formed && trace_id.bytes().any(|b| b != b'0') && span_id.bytes().any(|b| b != b'0'))
        .then(|| trace_id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn trace_ids_come_out_of_valid_traceparents_only() {
        assert_eq!(
            trace_id_from_traceparent(TP).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id_from_traceparent(""), None);
        assert_eq!(
            trace_id_from_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            trace_id_from_traceparent("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id_from_traceparent(&format!("{TP}-extra")), None);
        assert_eq!(trace_id_from_traceparent("00-abc-def-01"), None);
    }

    #[test]
    fn context_round_trips_through_headers() {
        let mut headers = Headers::new();
        headers.insert(TRACEPARENT.into(), TP.into());
        headers.insert(TRACESTATE.into(), "vendor=1".into());
        let cx = extract(&headers);
        assert!(cx.span().span_context().is_remote());
        let mut out = Headers::new();
        inject_context(&cx, &mut out);
        assert_eq!(out.get(TRACEPARENT).map(String::as_str), Some(TP));
        assert_eq!(out.get(TRACESTATE).map(String::as_str), Some("vendor=1"));
    }

    #[test]
    fn nothing_is_injected_without_a_span() {
        let mut headers = Headers::new();
        inject_current(&mut headers);
        assert!(headers.is_empty());
        assert_eq!(current_trace_id(), None);
        assert!(!extract(&Headers::new()).span().span_context().is_valid());
    }
}
