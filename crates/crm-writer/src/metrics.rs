//! The crm-writer's own metrics (the engine counts requests, the bus counts messages).

use handoff_events::v1::ErrorClass;

/// An event's fate: `delivered`, `duplicate`, `retry`, `deferred`, `dead_lettered`, `skipped`.
pub fn event(event_type: &str, outcome: &'static str) {
    metrics::counter!(
        "handoff_crm_writer_events_total",
        "event_type" => event_type.to_owned(),
        "outcome" => outcome
    )
    .increment(1);
}

/// A dead-lettered event, by error class.
pub fn dead_lettered(event_type: &str, class: ErrorClass) {
    metrics::counter!(
        "handoff_crm_writer_dead_letters_total",
        "event_type" => event_type.to_owned(),
        "error_class" => class.label()
    )
    .increment(1);
}

/// Fields left out because a newer event had already written them (out-of-order delivery).
pub fn stale_skipped(event_type: &str, record: &'static str, fields: usize) {
    metrics::counter!(
        "handoff_crm_writer_stale_fields_skipped_total",
        "event_type" => event_type.to_owned(),
        "record" => record
    )
    .increment(fields as u64);
}

/// A property left out because another system owns it.
pub fn owned_field_skipped(owner: &str) {
    metrics::counter!("handoff_crm_writer_owned_fields_skipped_total", "owner" => owner.to_owned())
        .increment(1);
}

/// Records created or updated, by kind and disposition.
pub fn record(kind: &'static str, disposition: &'static str) {
    metrics::counter!(
        "handoff_crm_writer_records_total",
        "record" => kind,
        "disposition" => disposition
    )
    .increment(1);
}
