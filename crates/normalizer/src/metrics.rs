//! The normalizer's metrics, each emitted from one place so names and labels
//! stay consistent. Labels are bounded: event type, outcome, error class, note kind.

use std::time::Duration;

use handoff_events::EventType;
use handoff_events::v1::ErrorClass;
use handoff_normalize::NoteKind;

/// A raw event was handled: `normalized`, `duplicate` (redelivery acked without a
/// publish) or `retry` (a transient failure sent it through the delay queue).
pub fn event(event_type: EventType, outcome: &'static str) {
    metrics::counter!("handoff_normalizer_events_total", "event_type" => event_type.as_str(), "outcome" => outcome)
        .increment(1);
}

/// A raw event was dead-lettered. `event_type` is the envelope's, which is only
/// trusted as a label when it names a v1 type.
pub fn rejected(event_type: &str, class: ErrorClass) {
    let event_type = event_type
        .parse::<EventType>()
        .map(EventType::as_str)
        .unwrap_or("unknown");
    metrics::counter!("handoff_normalizer_events_total", "event_type" => event_type, "outcome" => "dead_lettered")
        .increment(1);
    metrics::counter!("handoff_normalizer_rejections_total", "event_type" => event_type, "error_class" => class.label())
        .increment(1);
}

/// A field was dropped or an unmapped value passed through without rejecting the event.
pub fn note(event_type: EventType, kind: NoteKind) {
    metrics::counter!("handoff_normalizer_field_notes_total", "event_type" => event_type.as_str(), "kind" => kind.label())
        .increment(1);
}

/// Time spent in the pure normalization of one event (decode, clean, map, validate).
pub fn normalize_time(elapsed: Duration) {
    metrics::histogram!("handoff_normalizer_normalize_seconds").record(elapsed.as_secs_f64());
}
