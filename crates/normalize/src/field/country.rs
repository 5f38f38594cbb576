//! Countries: names, aliases, alpha-2, alpha-3 and numeric codes →
//! ISO 3166-1 alpha-2, through the `celes` crate's tables.
//!
//! `celes` keys its names and aliases lower-case without spaces or
//! punctuation ("unitedstatesofamerica", "czechrepublic"), so input is
//! folded the same way first. A short table adds what `celes` lacks and
//! publishers commonly send: endonyms ("Deutschland", "España") and a few
//! abbreviations ("UK", "UAE", "U.S.").

use std::str::FromStr;

use celes::Country;

use super::Invalid;

/// Spellings `celes` does not know, folded as [`fold`] does, → alpha-2.
const EXTRA_ALIASES: &[(&str, &str)] = &[
    ("uk", "GB"),
    ("gbr", "GB"),
    ("britain", "GB"),
    ("scotland", "GB"),
    ("wales", "GB"),
    ("northernireland", "GB"),
    ("uae", "AE"),
    ("us", "US"),
    ("deutschland", "DE"),
    ("allemagne", "DE"),
    ("espana", "ES"),
    ("españa", "ES"),
    ("brasil", "BR"),
    ("nederland", "NL"),
    ("thenetherlands", "NL"),
    ("schweiz", "CH"),
    ("suisse", "CH"),
    ("svizzera", "CH"),
    ("osterreich", "AT"),
    ("österreich", "AT"),
    ("italia", "IT"),
    ("méxico", "MX"),
    ("mexico", "MX"),
    ("nippon", "JP"),
    ("nihon", "JP"),
    ("polska", "PL"),
    ("sverige", "SE"),
    ("norge", "NO"),
    ("danmark", "DK"),
    ("suomi", "FI"),
    ("bharat", "IN"),
    ("korea", "KR"),
    ("southkorea", "KR"),
    ("republicofkorea", "KR"),
    ("northkorea", "KP"),
    ("russia", "RU"),
    ("vietnam", "VN"),
    ("turkey", "TR"),
    ("türkiye", "TR"),
    ("ivorycoast", "CI"),
    ("côtedivoire", "CI"),
];

/// Lower-case, keeping only letters and digits ("U.S.A." → "usa",
/// "Côte d'Ivoire" → "côtedivoire").
fn fold(raw: &str) -> String {
    raw.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// A country as ISO 3166-1 alpha-2 (upper case): "USA", "United States of
/// America", "us", "840" → "US"; numeric codes may omit leading zeros.
pub fn country(raw: &str) -> Result<&'static str, Invalid> {
    let folded = fold(raw);
    if folded.is_empty() || folded.len() > 64 {
        return Err(Invalid::new(
            "must be a known country name or ISO 3166-1 code",
        ));
    }
    if folded.bytes().all(|b| b.is_ascii_digit()) {
        let code = format!("{folded:0>3}");
        return Country::from_code(&code)
            .map(|c| c.alpha2)
            .map_err(|_| Invalid::new("must be a known country name or ISO 3166-1 code"));
    }
    if let Some((_, alpha2)) = EXTRA_ALIASES.iter().find(|(alias, _)| *alias == folded) {
        return Ok(alpha2);
    }
    Country::from_str(&folded)
        .or_else(|_| Country::from_alias(&folded))
        .or_else(|_| Country::from_name(&folded))
        .map(|c| c.alpha2)
        .map_err(|_| Invalid::new("must be a known country name or ISO 3166-1 code"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_names_and_aliases() {
        for (raw, want) in [
            ("USA", "US"),
            ("United States of America", "US"),
            ("us", "US"),
            ("840", "US"),
            ("U.S.", "US"),
            ("Deutschland", "DE"),
            ("de", "DE"),
            ("76", "BR"),
            ("United Kingdom", "GB"),
            ("UK", "GB"),
            ("Czech Republic", "CZ"),
        ] {
            assert_eq!(country(raw).unwrap(), want, "{raw}");
        }
        assert!(country("Atlantis").is_err());
        assert!(country("999").is_err());
        assert!(country("").is_err());
    }

    #[test]
    fn extra_aliases_point_at_real_countries() {
        for (alias, alpha2) in EXTRA_ALIASES {
            assert_eq!(fold(alias), *alias, "alias {alias} is not folded");
            assert!(Country::from_alpha2(alpha2).is_ok(), "{alpha2}");
        }
    }
}
