//! What normalizing can say besides "here is the canonical event": the
//! permanent [`Rejection`] with its [`FieldError`]s, and the [`Note`]s about
//! values that were fixed or dropped without rejecting the event.

use handoff_events::EventType;
use handoff_events::v1::ErrorClass;

/// One field-level reason an event cannot be made valid.
///
/// It travels into `DeadLetter.field_errors`, so an SRE sees exactly which
/// raw field to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path into the raw JSON body, e.g. `customer.email` (`""` is the body).
    pub path: String,
    /// A phrase that reads after the path, e.g. `must be a valid email address`.
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{} {}", self.path, self.message)
        }
    }
}

/// Why an event was refused. Every variant is permanent: retrying the same
/// bytes can never succeed, so the service dead-letters at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Not JSON, not an object, or a value of the wrong JSON type.
    #[error("undecodable payload: {message}")]
    Undecodable {
        /// serde's description of the first problem, with line and column.
        message: String,
    },
    /// The schema version has no decoder for this event type.
    #[error("unsupported schema version {version} for {event_type}")]
    UnsupportedSchemaVersion {
        /// The event type the version was given for.
        event_type: EventType,
        /// The version that is not accepted.
        version: u32,
    },
    /// Decoded, but some fields cannot be made valid or the event is not actionable.
    #[error("invalid event ({} field errors): {}", fields.len(), join(fields))]
    Invalid {
        /// Every reason at once, sorted by path.
        fields: Vec<FieldError>,
    },
}

fn join(fields: &[FieldError]) -> String {
    fields
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl Rejection {
    /// The `DeadLetter.error_class` this rejection is recorded under.
    pub fn error_class(&self) -> ErrorClass {
        match self {
            Rejection::Undecodable { .. } => ErrorClass::Undecodable,
            Rejection::UnsupportedSchemaVersion { .. } => ErrorClass::UnsupportedSchema,
            Rejection::Invalid { .. } => ErrorClass::Validation,
        }
    }

    /// The field-level reasons (empty unless [`Rejection::Invalid`]), for
    /// `DeadLetter.field_errors`.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            Rejection::Invalid { fields } => fields,
            _ => &[],
        }
    }
}

/// What kind of repair a [`Note`] records; a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoteKind {
    /// An invalid optional value was removed (unparseable phone, bad URL).
    DroppedInvalid,
    /// An enum value not in its map was kept as sent (`on_unmapped = "pass_through"`).
    UnmappedPassedThrough,
}

impl NoteKind {
    /// The metric label: lower snake case, one per variant.
    pub fn label(&self) -> &'static str {
        match self {
            NoteKind::DroppedInvalid => "dropped_invalid",
            NoteKind::UnmappedPassedThrough => "unmapped_passed_through",
        }
    }
}

/// Something fixed or dropped that did not reject the event; the service
/// logs it and counts it, so silent data loss is visible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Dotted path into the raw JSON body, as in [`FieldError::path`].
    pub path: String,
    /// What happened, as a metric label.
    pub kind: NoteKind,
    /// A phrase for the log line, e.g. `is not a valid phone number for region GB`.
    pub message: String,
}
