//! Ingest's metrics, each emitted from one place so names and labels stay
//! consistent. Labels are bounded: endpoint, status class, event type, outcome.

use std::time::Duration;

use axum::http::StatusCode;
use handoff_bus::BusError;
use handoff_events::EventType;

use crate::accept::Accepted;
use crate::error::ApiError;

/// One HTTP request finished.
pub fn request(endpoint: &'static str, status: StatusCode, elapsed: Duration) {
    let class = match status.as_u16() {
        200..=299 => "2xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::counter!("handoff_ingest_requests_total", "endpoint" => endpoint, "status_class" => class)
        .increment(1);
    metrics::histogram!("handoff_ingest_request_duration_seconds", "endpoint" => endpoint)
        .record(elapsed.as_secs_f64());
}

/// An event was accepted (new or duplicate).
pub fn accepted(event_type: EventType, accepted: &Accepted) {
    let outcome = match accepted {
        Accepted::New { .. } => "accepted",
        Accepted::Duplicate => "duplicate",
    };
    metrics::counter!("handoff_ingest_events_total", "event_type" => event_type.as_str(), "outcome" => outcome)
        .increment(1);
}

/// An event or request was refused, by error code.
pub fn rejected(err: &ApiError) {
    metrics::counter!("handoff_ingest_rejections_total", "code" => err.code).increment(1);
}

/// A publish to the broker failed.
pub fn publish_failed(err: &BusError) {
    metrics::counter!("handoff_ingest_publish_failures_total", "reason" => err.label())
        .increment(1);
}
