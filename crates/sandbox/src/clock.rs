//! Wall-clock timestamps in the shape HubSpot uses (`2026-03-19T10:15:22.123Z`: UTC, milliseconds).

use time::OffsetDateTime;
use time::macros::format_description;

/// `at` as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn iso(at: OffsetDateTime) -> String {
    let fmt =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    at.to_offset(time::UtcOffset::UTC)
        .format(&fmt)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

/// Now, as [`iso`].
pub fn now_iso() -> String {
    iso(OffsetDateTime::now_utc())
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_milliseconds_in_utc() {
        let at = time::macros::datetime!(2026-03-19 10:15:22.123456 UTC);
        assert_eq!(super::iso(at), "2026-03-19T10:15:22.123Z");
    }
}
