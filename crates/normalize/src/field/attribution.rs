//! Marketing attribution: UTM parameters and ad click ids from explicit
//! fields, else from the landing page URL, else from the referrer; URLs
//! themselves normalised with the `url` crate (WHATWG URL parsing: lower-case
//! scheme and host, punycode host, default port removed, percent-encoding
//! made consistent).

use handoff_events::v1::Attribution;
use url::Url;

use super::{Invalid, text};

/// Longest URL kept, in bytes (ingest's bound is 2048 characters).
const URL_MAX: usize = 8192;
/// Longest UTM value or click id kept, in characters (ingest's bound for short strings).
const VALUE_MAX: usize = 256;

/// The raw attribution fields of an event, borrowed from the decoded body.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttributionInput<'a> {
    /// `utm_source`, explicit.
    pub utm_source: Option<&'a str>,
    /// `utm_medium`, explicit.
    pub utm_medium: Option<&'a str>,
    /// `utm_campaign`, explicit.
    pub utm_campaign: Option<&'a str>,
    /// `utm_term`, explicit.
    pub utm_term: Option<&'a str>,
    /// `utm_content`, explicit.
    pub utm_content: Option<&'a str>,
    /// The page the person landed on; its query may carry UTMs and click ids.
    pub landing_url: Option<&'a str>,
    /// The referring page; consulted after the landing URL.
    pub referrer: Option<&'a str>,
    /// Google Ads click id, explicit.
    pub gclid: Option<&'a str>,
    /// Meta click id, explicit.
    pub fbclid: Option<&'a str>,
}

/// A raw field dropped because it could not be normalised, by field name
/// (`landing_url`), so the caller can note it under the right path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// The field's name within the attribution object.
    pub field: &'static str,
    /// Why it was dropped.
    pub reason: Invalid,
}

/// A URL in normalised form. Input without a scheme ("example.com/x") is
/// read as `https://`; only http(s) URLs count as web pages, other absolute
/// URLs (`android-app://…`) are kept as parsed.
pub fn url(raw: &str) -> Result<String, Invalid> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(Invalid::new("must not be blank"));
    }
    if trimmed.len() > URL_MAX {
        return Err(Invalid::new("is too long to be a URL"));
    }
    // Serialising a parsed URL and parsing it again can still change it in
    // rare corners of the WHATWG rules; one more round reaches the fixed point.
    let once = parse_url(trimmed).ok_or(Invalid::new("must be an absolute URL"))?;
    Ok(Url::parse(once.as_str()).map_or_else(|_| String::from(once), String::from))
}

fn parse_url(trimmed: &str) -> Option<Url> {
    let parsed = match Url::parse(trimmed) {
        Ok(url) => url,
        Err(url::ParseError::RelativeUrlWithoutBase) => {
            Url::parse(&format!("https://{trimmed}")).ok()?
        }
        Err(_) => return None,
    };
    // "localhost:3000" parses as scheme "localhost"; a real web URL has a host.
    if parsed.cannot_be_a_base() {
        return Url::parse(&format!("https://{trimmed}")).ok();
    }
    Some(parsed)
}

/// The first non-blank value of query parameter `name` (duplicates: first wins).
fn query_param(url: &Url, name: &str) -> Option<String> {
    url.query_pairs()
        .filter(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| text(&value, VALUE_MAX))
        .find(|value| !value.is_empty())
}

fn clean(value: Option<&str>) -> Option<String> {
    value.map(|v| text(v, VALUE_MAX)).filter(|v| !v.is_empty())
}

/// Attribution from explicit fields, then the landing URL, then the
/// referrer, field by field (an explicit `utm_source` wins over the URL's,
/// the URL still fills a missing `utm_medium`). Source and medium are
/// lower-cased; all values trimmed and cleaned like text. Unparseable URLs
/// are dropped and reported, never fatal: attribution is best effort.
pub fn attribution(input: &AttributionInput<'_>) -> (Attribution, Vec<Dropped>) {
    let mut dropped = Vec::new();
    let mut parse = |field: &'static str, raw: Option<&str>| -> Option<Url> {
        let raw = raw?;
        match url(raw) {
            Ok(normalised) => Url::parse(&normalised).ok(),
            Err(reason) => {
                dropped.push(Dropped { field, reason });
                None
            }
        }
    };
    let landing = parse("landing_url", input.landing_url);
    let referrer = parse("referrer", input.referrer);
    let urls = [landing.as_ref(), referrer.as_ref()];
    let pick = |explicit: Option<&str>, name: &str| {
        clean(explicit).or_else(|| urls.iter().flatten().find_map(|url| query_param(url, name)))
    };
    let lower = |value: Option<String>| value.map(|v| v.to_lowercase());
    let attribution = Attribution {
        utm_source: lower(pick(input.utm_source, "utm_source")),
        utm_medium: lower(pick(input.utm_medium, "utm_medium")),
        utm_campaign: pick(input.utm_campaign, "utm_campaign"),
        utm_term: pick(input.utm_term, "utm_term"),
        utm_content: pick(input.utm_content, "utm_content"),
        gclid: pick(input.gclid, "gclid"),
        fbclid: pick(input.fbclid, "fbclid"),
        landing_url: landing.map(String::from),
        referrer: referrer.map(String::from),
    };
    (attribution, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_fields_win_and_urls_fill_in() {
        let input = AttributionInput {
            utm_source: Some(" Google "),
            landing_url: Some(
                "https://WWW.Example.com/demo?utm_source=bing&utm_medium=CPC&gclid=abc#top",
            ),
            referrer: Some("https://news.example.org/?utm_campaign=spring%20launch"),
            ..AttributionInput::default()
        };
        let (got, dropped) = attribution(&input);
        assert!(dropped.is_empty());
        assert_eq!(got.utm_source.as_deref(), Some("google"));
        assert_eq!(got.utm_medium.as_deref(), Some("cpc"));
        assert_eq!(got.utm_campaign.as_deref(), Some("spring launch"));
        assert_eq!(got.gclid.as_deref(), Some("abc"));
        assert_eq!(
            got.landing_url.as_deref(),
            Some("https://www.example.com/demo?utm_source=bing&utm_medium=CPC&gclid=abc#top")
        );
    }

    #[test]
    fn bad_urls_are_dropped() {
        let input = AttributionInput {
            referrer: Some("http://[bad"),
            ..AttributionInput::default()
        };
        let (got, dropped) = attribution(&input);
        assert_eq!(got.referrer, None);
        assert_eq!(dropped.len(), 1);
        assert_eq!(url("example.com/x").unwrap(), "https://example.com/x");
    }
}
