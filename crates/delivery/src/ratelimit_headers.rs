//! [`RateInfo`]: a vendor's rate-limit response headers read into numbers the pacer can use.
//!
//! HubSpot answers every call with `X-HubSpot-RateLimit-Max` (requests per interval),
//! `X-HubSpot-RateLimit-Remaining` (left in the current interval) and
//! `X-HubSpot-RateLimit-Interval-Milliseconds` (the interval's length), and a 429 may carry
//! `Retry-After`. [`RateInfo::from_headers`] takes the headers as `(name, value)` string pairs,
//! so no HTTP crate is needed here; [`RateInfo::suggested_spacing`] turns them into the gap to
//! leave between requests.
//!
//! Pure: no I/O; the clock is passed in for the date form of `Retry-After`.

use std::time::{Duration, SystemTime};

use crate::parse_retry_after;

/// HubSpot's requests-per-interval header.
const HUBSPOT_MAX: &str = "x-hubspot-ratelimit-max";
/// HubSpot's requests-left-in-this-interval header.
const HUBSPOT_REMAINING: &str = "x-hubspot-ratelimit-remaining";
/// HubSpot's interval-length header, in milliseconds.
const HUBSPOT_INTERVAL_MS: &str = "x-hubspot-ratelimit-interval-milliseconds";
/// The standard HTTP header, as seconds or an HTTP date.
const RETRY_AFTER: &str = "retry-after";

/// What one response said about the vendor's rate limit. Every part is optional: a header that
/// is missing or malformed leaves its part `None` rather than failing the response, since these
/// headers only tune the pacing and the answer itself is still good.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateInfo {
    /// Requests allowed per interval (`X-HubSpot-RateLimit-Max`).
    pub max: Option<u32>,
    /// Requests left in the current interval (`X-HubSpot-RateLimit-Remaining`).
    pub remaining: Option<u32>,
    /// The length of the interval (`X-HubSpot-RateLimit-Interval-Milliseconds`).
    pub interval: Option<Duration>,
    /// How long the vendor asked us to wait (`Retry-After`, see [`parse_retry_after`]).
    pub retry_after: Option<Duration>,
}

impl RateInfo {
    /// Reads the rate-limit headers out of `headers`, matching names case-insensitively (HTTP/2
    /// lower-cases them, HubSpot's docs capitalise them). Other headers are ignored. When a header
    /// comes more than once, the last well-formed value wins; a malformed one never erases a good
    /// one. `now` resolves a `Retry-After` given as an HTTP date.
    pub fn from_headers<I, K, V>(headers: I, now: SystemTime) -> RateInfo
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut info = RateInfo::default();
        for (name, value) in headers {
            let name = name.as_ref().trim();
            let value = value.as_ref();
            if name.eq_ignore_ascii_case(HUBSPOT_MAX) {
                info.max = parse_count(value).or(info.max);
            } else if name.eq_ignore_ascii_case(HUBSPOT_REMAINING) {
                info.remaining = parse_count(value).or(info.remaining);
            } else if name.eq_ignore_ascii_case(HUBSPOT_INTERVAL_MS) {
                info.interval = value
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .map(Duration::from_millis)
                    .or(info.interval);
            } else if name.eq_ignore_ascii_case(RETRY_AFTER) {
                info.retry_after = parse_retry_after(value, now).or(info.retry_after);
            }
        }
        info
    }

    /// The gap to leave between requests according to these headers: `interval / max` when both
    /// are known (spreading the quota evenly over the interval). When `remaining` is 0 the quota
    /// is spent, and how much of the interval is left is not known, so the whole interval is the
    /// safe wait. `None` when the headers do not say enough (or `max` is 0, which no real quota
    /// is). `retry_after` is not folded in: the caller honours it separately, as it applies to
    /// the next attempt rather than to the steady rate.
    pub fn suggested_spacing(&self) -> Option<Duration> {
        let interval = self.interval?;
        if self.remaining == Some(0) {
            return Some(interval);
        }
        match self.max {
            Some(max) if max > 0 => Some(interval / max),
            _ => None,
        }
    }
}

/// A non-negative whole count; `None` for anything else (signs, decimals, overflow, empty).
fn parse_count(value: &str) -> Option<u32> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-28 00:00:00 UTC.
    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_824_000)
    }

    fn read(headers: &[(&str, &str)]) -> RateInfo {
        RateInfo::from_headers(headers.iter().copied(), now())
    }

    fn ms(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }

    #[test]
    fn reads_hubspot_headers() {
        let info = read(&[
            ("Content-Type", "application/json"),
            ("X-HubSpot-RateLimit-Max", "100"),
            ("X-HubSpot-RateLimit-Remaining", "42"),
            ("X-HubSpot-RateLimit-Interval-Milliseconds", "10000"),
            ("Retry-After", "3"),
        ]);
        assert_eq!(
            info,
            RateInfo {
                max: Some(100),
                remaining: Some(42),
                interval: ms(10_000),
                retry_after: ms(3_000),
            }
        );
        assert_eq!(info.suggested_spacing(), ms(100));
    }

    #[test]
    fn missing_headers_leave_none() {
        assert_eq!(read(&[]), RateInfo::default());
        assert_eq!(read(&[("Server", "x")]), RateInfo::default());
        let info = read(&[("X-HubSpot-RateLimit-Max", "100")]);
        assert_eq!(info.max, Some(100));
        assert_eq!(info.interval, None);
        assert_eq!(info.suggested_spacing(), None);
    }

    #[test]
    fn names_match_in_any_case() {
        let rows: &[&str] = &[
            "x-hubspot-ratelimit-max",
            "X-HUBSPOT-RATELIMIT-MAX",
            "X-HubSpot-RateLimit-Max",
            "x-HubSpot-ratelimit-MAX",
        ];
        for name in rows {
            assert_eq!(read(&[(name, "190")]).max, Some(190), "{name}");
        }
        let info = read(&[
            ("x-hubspot-ratelimit-remaining", "0"),
            ("X-HUBSPOT-RATELIMIT-INTERVAL-MILLISECONDS", "1000"),
            ("RETRY-AFTER", "Sat, 28 Nov 2026 00:00:05 GMT"),
        ]);
        assert_eq!(info.remaining, Some(0));
        assert_eq!(info.interval, ms(1_000));
        assert_eq!(info.retry_after, ms(5_000));
    }

    #[test]
    fn malformed_values_are_ignored() {
        // (value, parsed as a count)
        let rows: &[(&str, Option<u32>)] = &[
            ("100", Some(100)),
            (" 100 ", Some(100)),
            ("0", Some(0)),
            ("", None),
            ("-1", None),
            ("+5", None),
            ("1.5", None),
            ("ten", None),
            ("99999999999", None),
        ];
        for (value, want) in rows {
            let info = read(&[
                ("X-HubSpot-RateLimit-Max", value),
                ("X-HubSpot-RateLimit-Remaining", value),
            ]);
            assert_eq!(info.max, *want, "max {value:?}");
            assert_eq!(info.remaining, *want, "remaining {value:?}");
        }
        let info = read(&[
            ("X-HubSpot-RateLimit-Interval-Milliseconds", "10s"),
            ("Retry-After", "soon"),
        ]);
        assert_eq!(info, RateInfo::default());
    }

    #[test]
    fn last_well_formed_value_wins() {
        let info = read(&[
            ("X-HubSpot-RateLimit-Max", "100"),
            ("x-hubspot-ratelimit-max", "150"),
            ("X-HubSpot-RateLimit-Max", "garbage"),
        ]);
        assert_eq!(info.max, Some(150));
    }

    #[test]
    fn suggested_spacing_table() {
        // (max, remaining, interval ms, want ms)
        type Row = (Option<u32>, Option<u32>, Option<u64>, Option<u64>);
        let rows: &[Row] = &[
            (Some(100), Some(50), Some(10_000), Some(100)),
            (Some(100), None, Some(10_000), Some(100)),
            (Some(190), Some(1), Some(10_000), Some(52)),
            (Some(100), Some(0), Some(10_000), Some(10_000)),
            (None, Some(0), Some(1_000), Some(1_000)),
            (Some(0), Some(3), Some(1_000), None),
            (None, Some(3), Some(1_000), None),
            (Some(100), Some(0), None, None),
            (None, None, None, None),
        ];
        for (max, remaining, interval, want) in rows {
            let info = RateInfo {
                max: *max,
                remaining: *remaining,
                interval: interval.map(Duration::from_millis),
                retry_after: None,
            };
            assert_eq!(
                info.suggested_spacing().map(|d| d.as_millis()),
                want.map(u128::from),
                "{info:?}"
            );
        }
    }
}
