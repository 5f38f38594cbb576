//! The field normalizers: small pure functions, one concern each, that turn
//! one raw value into its canonical form or say why they cannot.
//!
//! Each is idempotent: feeding a result back in returns it unchanged (the
//! property tests in `tests/it/props.rs` check this). None allocates tables
//! per call: lookup tables are built once in `LazyLock`s or in
//! [`crate::Normalizer::new`].

mod attribution;
mod contact;
mod country;
mod custom;
mod enums;
mod money;
mod phone_valid;
mod text;
mod time;
mod timezone;

pub use attribution::{AttributionInput, Dropped, attribution, url};
pub use contact::{company_domain, email, phone};
pub use country::country;
pub use custom::custom_properties;
pub use enums::{EnumTable, Mapped, billing_interval, fold};
pub use money::{amount_minor, currency};
pub use text::{code, id, text};
pub use time::{date_or_timestamp, timestamp};
pub use timezone::timezone;

/// Why one value cannot be normalized: a phrase that reads after the field's
/// path ("must be a valid email address"); the caller adds the path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl Invalid {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Invalid(message.into())
    }
}
