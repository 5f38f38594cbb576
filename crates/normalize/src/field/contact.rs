//! Ways to reach a person or company: email addresses, phone numbers and
//! company web domains.
//!
//! **Domains are kept in ASCII (punycode) form everywhere**: in emails
//! (`josé@xn--bcher-kva.de`), company domains and URL hosts (the `url`
//! crate serialises hosts that way). That is the form DNS and SMTP use and
//! every CRM and email API accepts, it is what UTS #46 defines as the one
//! canonical spelling of a domain (so "Bücher.DE" and "xn--bcher-kva.de"
//! dedupe to one key), and it keeps all three fields consistent. The local
//! part of an address stays Unicode (lower-cased): it has no ASCII form.

use std::str::FromStr;

use email_address::{EmailAddress, Options};
use phonenumber::Mode;
use phonenumber::country::Id;

use super::Invalid;

/// Domains of mailboxes where dots in the local part are not significant.
const DOTLESS_DOMAINS: &[&str] = &["gmail.com", "googlemail.com"];

/// A domain name in canonical ASCII form: UTS #46 mapping (case folding,
/// width folding, NFC), IDNA to punycode, STD3 letter-digit-hyphen rules,
/// at least two labels and a non-numeric top-level label.
fn ascii_domain(raw: &str) -> Option<String> {
    let domain = raw.strip_suffix('.').unwrap_or(raw);
    let ascii = idna::domain_to_ascii_strict(domain).ok()?;
    let mut labels = ascii.rsplit('.');
    let tld = labels.next()?;
    if labels.next().is_none() || tld.is_empty() || tld.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(ascii)
}

/// An email address: trimmed, lower-cased, domain in ASCII form (see the
/// module doc), syntax checked (dot-atom or quoted local part, no display
/// name, no IP literal). With `alias_rules`, `+tag` is stripped and, for
/// gmail.com / googlemail.com, dots in the local part too.
pub fn email(raw: &str, alias_rules: bool) -> Result<String, Invalid> {
    const MESSAGE: &str = "must be a valid email address";
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(Invalid::new("must not be blank"));
    }
    let (local, domain) = trimmed.rsplit_once('@').ok_or(Invalid::new(MESSAGE))?;
    let domain = ascii_domain(domain).ok_or(Invalid::new(MESSAGE))?;
    let mut local = local.to_lowercase();
    if alias_rules && !local.starts_with('"') {
        if let Some(at) = local.find('+')
            && at > 0
        {
            local.truncate(at);
        }
        if DOTLESS_DOMAINS.contains(&domain.as_str()) {
            local.retain(|c| c != '.');
        }
    }
    let address = format!("{local}@{domain}");
    let options = Options::default()
        .with_minimum_sub_domains(2)
        .without_domain_literal()
        .without_display_text();
    EmailAddress::parse_with_options(&address, options).map_err(|_| Invalid::new(MESSAGE))?;
    Ok(address)
}

/// A phone number in E.164 (`+4420 7946 0958` → `+442079460958`). Numbers
/// without `+` are read in `region` (ISO 3166-1 alpha-2). The number must be
/// valid by libphonenumber's metadata (the `phonenumber` crate), not just
/// parse; extensions are dropped, since E.164 has none.
pub fn phone(raw: &str, region: &str) -> Result<String, Invalid> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(Invalid::new("must not be blank"));
    }
    let invalid = || {
        Invalid::new(format!(
            "is not a valid phone number (read in region {region})"
        ))
    };
    let number = if let Some(international) = trimmed.strip_prefix('+') {
        // A number with its country code needs no region, and `phonenumber`
        // 0.3 wrongly strips the region's national prefix after the country
        // code ("+33 1 42..." read in US loses the "1"), so pass none. The
        // "(0)" many write after the country code is a trunk prefix that is
        // never dialled internationally: drop it.
        let international = international.replacen("(0)", "", 1);
        phonenumber::parse(None, format!("+{international}"))
    } else {
        phonenumber::parse(Id::from_str(&region.to_ascii_uppercase()).ok(), trimmed)
    }
    .map_err(|_| invalid())?;
    if !super::phone_valid::is_valid(&number) {
        return Err(invalid());
    }
    Ok(number.format().mode(Mode::E164).to_string())
}

/// A company's web domain: lower-case ASCII (punycode), without scheme,
/// `www.`, port, path, query or fragment (`https://www.Example.com/about` →
/// `example.com`).
pub fn company_domain(raw: &str) -> Result<String, Invalid> {
    let mut rest = raw.trim();
    if let Some(at) = rest.find("://") {
        rest = &rest[at + 3..];
    }
    if let Some(end) = rest.find(['/', '?', '#']) {
        rest = &rest[..end];
    }
    // Credentials and port are not part of the domain.
    if let Some(at) = rest.rfind('@') {
        rest = &rest[at + 1..];
    }
    if let Some(colon) = rest.rfind(':')
        && rest[colon + 1..].bytes().all(|b| b.is_ascii_digit())
    {
        rest = &rest[..colon];
    }
    let ascii = ascii_domain(rest).ok_or(Invalid::new("must be a valid web domain"))?;
    let without_www = ascii.strip_prefix("www.").unwrap_or(&ascii);
    if ascii_domain(without_www).is_some() {
        Ok(without_www.to_owned())
    } else {
        Ok(ascii)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(
            email("  Alex@Example.COM ", false).unwrap(),
            "alex@example.com"
        );
        assert_eq!(
            email("José@Bücher.DE", false).unwrap(),
            "josé@xn--bcher-kva.de"
        );
        assert_eq!(
            email("A.B+news@GoogleMail.com", true).unwrap(),
            "ab@googlemail.com"
        );
        assert_eq!(email("a.b+x@example.com", true).unwrap(), "a.b@example.com");
        for bad in [
            "",
            "alex",
            "alex@",
            "@example.com",
            "a b@example.com",
            "a@b",
            "a@1.2.3.4",
            "a@[1.2.3.4]",
            "a@-x.com",
            "Alex <a@b.com>",
        ] {
            assert!(email(bad, false).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn phones() {
        assert_eq!(phone("+44 20 7946 0958", "US").unwrap(), "+442079460958");
        assert_eq!(phone("(415) 555-0134", "US").unwrap(), "+14155550134");
        assert_eq!(phone("030 901820", "DE").unwrap(), "+4930901820");
        assert!(phone("12", "US").is_err());
        assert!(phone("hello", "US").is_err());
    }

    #[test]
    fn domains() {
        assert_eq!(
            company_domain("https://www.Example.com/about").unwrap(),
            "example.com"
        );
        assert_eq!(company_domain("Bücher.de").unwrap(), "xn--bcher-kva.de");
        assert_eq!(company_domain("www.com").unwrap(), "www.com");
        assert!(company_domain("not a domain").is_err());
    }
}
