//! Mailchimp's `subscriber_hash` (the MD5 of the lower-cased email address, as lower-case hex) and
//! the basic-auth decoding its API keys arrive in. MD5 is used as an identifier only, never for
//! security.

use base64::Engine as _;
use md5::{Digest, Md5};

/// The MD5 of `email` lower-cased, as 32 lower-case hex digits.
pub fn subscriber_hash(email: &str) -> String {
    Md5::digest(email.to_lowercase().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The password of an `Authorization: Basic base64(user:password)` header, which is where
/// Mailchimp takes the API key; `None` for another scheme or an undecodable value.
pub fn basic_password(header: &str) -> Option<String> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(bytes).ok()?;
    let (_user, password) = decoded.split_once(':')?;
    Some(password.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_matches_rfc_1321_vectors() {
        assert_eq!(subscriber_hash(""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(subscriber_hash("abc"), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(subscriber_hash("ABC"), subscriber_hash("abc"));
    }

    #[test]
    fn basic_auth_yields_the_password() {
        // base64("anystring:key-us1")
        assert_eq!(
            basic_password("Basic YW55c3RyaW5nOmtleS11czE=").as_deref(),
            Some("key-us1")
        );
        assert_eq!(basic_password("Bearer YW55c3RyaW5nOmtleS11czE="), None);
        assert_eq!(basic_password("Basic !!!"), None);
    }
}
