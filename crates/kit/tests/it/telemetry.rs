//! Telemetry for tests: idempotent install and valid trace ids on spans.

use handoff_kit::telemetry::{self, LogFormat, TelemetryConfig};

#[test]
fn init_for_tests_is_idempotent_and_spans_get_trace_ids() {
    telemetry::init_for_tests();
    telemetry::init_for_tests();

    assert_eq!(telemetry::current_trace_id(), None, "no span, no trace");
    let span = tracing::info_span!("request", event_id = "ev-1");
    let _entered = span.enter();
    let trace_id = telemetry::current_trace_id().expect("a span has a trace id");
    assert_eq!(trace_id.len(), 32);
    assert!(trace_id.chars().all(|c| c.is_ascii_hexdigit()));

    let child = tracing::info_span!("publish");
    let _child = child.enter();
    assert_eq!(
        telemetry::current_trace_id().as_deref(),
        Some(trace_id.as_str()),
        "children share the trace"
    );
}

#[test]
fn telemetry_config_reads_lowercase_formats() {
    let cfg: TelemetryConfig = serde_json::from_str(r#"{"log_format":"text"}"#).unwrap();
    assert_eq!(cfg.log_format, LogFormat::Text);
    assert_eq!(cfg.log_filter, "info");
}
