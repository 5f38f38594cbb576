//! Timestamps and dates → UTC `prost_types::Timestamp`.

use prost_types::Timestamp;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime};

use super::Invalid;

fn to_timestamp(at: OffsetDateTime) -> Timestamp {
    Timestamp {
        seconds: at.unix_timestamp(),
        // At most 999_999_999, so it always fits.
        nanos: i32::try_from(at.nanosecond()).unwrap_or(0),
    }
}

/// An RFC 3339 timestamp with an offset (`2026-03-19T11:15:22+01:00`) as
/// the same instant in UTC.
pub fn timestamp(raw: &str) -> Result<Timestamp, Invalid> {
    OffsetDateTime::parse(raw.trim(), &Rfc3339)
        .map(to_timestamp)
        .map_err(|_| Invalid::new("must be an RFC 3339 timestamp"))
}

/// An RFC 3339 timestamp, or a `YYYY-MM-DD` date as midnight UTC of that day.
pub fn date_or_timestamp(raw: &str) -> Result<Timestamp, Invalid> {
    let trimmed = raw.trim();
    if let Ok(date) = Date::parse(trimmed, format_description!("[year]-[month]-[day]")) {
        return Ok(to_timestamp(date.midnight().assume_utc()));
    }
    timestamp(trimmed)
        .map_err(|_| Invalid::new("must be an RFC 3339 timestamp or a YYYY-MM-DD date"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_to_utc() {
        let t = timestamp("2026-03-19T11:15:22+01:00").unwrap();
        assert_eq!(t, timestamp("2026-03-19T10:15:22Z").unwrap());
        assert_eq!(t.seconds, 1_773_915_322);
        let d = date_or_timestamp("2026-03-19").unwrap();
        assert_eq!(d.seconds % 86_400, 0);
        assert!(timestamp("2026-03-19").is_err());
        assert!(date_or_timestamp("19/03/2026").is_err());
    }
}
