//! Phone number validity, as `phonenumber::is_valid` decides it, without its
//! per-call cost.
//!
//! `phonenumber` 0.3 checks a number against up to eleven of its region's
//! patterns, each an unanchored search through a regex cache shared behind a
//! mutex (an LRU of 100 entries, which also thrashes once numbers come from
//! many regions): ≈ 11 µs per number, more than everything else the
//! normalizer does to an event. Here each region's patterns are compiled once,
//! anchored, from the same metadata (`phonenumber::metadata::DATABASE`), and
//! the same decision is taken: pick the region the way
//! `phonenumber::validator::source_for` does, then the number is valid when
//! the region's general pattern and at least one number type's pattern match
//! at its start (with the type's possible lengths). A test compares the two
//! on thousands of numbers.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};

use phonenumber::PhoneNumber;
use phonenumber::metadata::{DATABASE, Descriptor, Metadata};
use regex::{Regex, RegexBuilder};

/// Compiles a metadata pattern as `phonenumber` does (whitespace in the
/// pattern ignored), anchored at the start: it accepts a match that starts at 0.
fn anchored(pattern: &str) -> Option<Regex> {
    RegexBuilder::new(&format!("^(?:{pattern})"))
        .ignore_whitespace(true)
        .build()
        .ok()
}

/// One pattern with the lengths it allows (empty: any length).
struct Matcher {
    lengths: Vec<u16>,
    pattern: Regex,
}

impl Matcher {
    fn new(descriptor: &Descriptor) -> Option<Matcher> {
        let pattern = anchored(descriptor.national_number().as_str())?;
        Some(Matcher {
            lengths: descriptor.possible_length().to_vec(),
            pattern,
        })
    }

    fn matches(&self, national: &str) -> bool {
        let length_ok = self.lengths.is_empty()
            || u16::try_from(national.len()).is_ok_and(|len| self.lengths.contains(&len));
        length_ok && self.pattern.is_match(national)
    }
}

/// A region's patterns, compiled once.
struct Region {
    general: Option<Matcher>,
    /// Premium rate, toll free, shared cost, VoIP, personal, pager, UAN,
    /// voicemail, fixed line, mobile: the types `phonenumber` recognises.
    types: Vec<Matcher>,
    leading_digits: Option<Regex>,
}

impl Region {
    fn compile(meta: &Metadata) -> Region {
        let d = meta.descriptors();
        let types = [
            d.premium_rate(),
            d.toll_free(),
            d.shared_cost(),
            d.voip(),
            d.personal_number(),
            d.pager(),
            d.uan(),
            d.voicemail(),
            d.fixed_line(),
            d.mobile(),
        ]
        .into_iter()
        .flatten()
        .filter_map(Matcher::new)
        .collect();
        Region {
            general: Matcher::new(d.general()),
            types,
            leading_digits: meta.leading_digits().and_then(|p| anchored(p.as_str())),
        }
    }

    /// `number_type(meta, national) != Unknown`.
    fn has_type(&self, national: &str) -> bool {
        self.general.as_ref().is_some_and(|g| g.matches(national))
            && self.types.iter().any(|t| t.matches(national))
    }
}

static REGIONS: LazyLock<RwLock<HashMap<String, Arc<Region>>>> =
    LazyLock::new(|| RwLock::new(HashMap::new()));

/// The compiled region under `key`, compiling it from `meta` on first use.
fn region(key: &str, meta: &Metadata) -> Arc<Region> {
    if let Ok(regions) = REGIONS.read()
        && let Some(region) = regions.get(key)
    {
        return region.clone();
    }
    let compiled = Arc::new(Region::compile(meta));
    if let Ok(mut regions) = REGIONS.write() {
        regions
            .entry(key.to_owned())
            .or_insert_with(|| compiled.clone())
            .clone()
    } else {
        compiled
    }
}

/// Whether `number` is valid, with the same answer as `phonenumber::is_valid`.
pub(crate) fn is_valid(number: &PhoneNumber) -> bool {
    let code = number.country().code();
    let national = number.national().to_string();
    let Some(regions) = DATABASE.region(&code) else {
        return false;
    };
    match regions.as_slice() {
        [] => false,
        // Non-geographic entities ("001") are found by their calling code.
        ["001"] => DATABASE
            .by_code(&code)
            .and_then(|metas| metas.into_iter().next())
            .is_some_and(|meta| region(&format!("001:{code}"), meta).has_type(&national)),
        [only] => DATABASE
            .by_id(*only)
            .is_some_and(|meta| region(only, meta).has_type(&national)),
        many => {
            for id in many {
                let Some(meta) = DATABASE.by_id(*id) else {
                    continue;
                };
                let compiled = region(id, meta);
                let chosen = match &compiled.leading_digits {
                    Some(leading) => leading.is_match(&national),
                    None => compiled.has_type(&national),
                };
                if chosen {
                    return compiled.has_type(&national);
                }
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phonenumber::country::Id;
    use rand::{Rng, SeedableRng};

    /// The same verdict as `phonenumber::is_valid` on random national numbers
    /// of many lengths in many calling codes, including shared ones (+1, +7,
    /// +44) and non-geographic ones (+800, +882).
    #[test]
    fn agrees_with_phonenumber_on_many_numbers() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let codes = [
            1u16, 7, 20, 27, 31, 33, 34, 39, 41, 44, 46, 49, 52, 55, 61, 64, 81, 82, 86, 90, 91,
            234, 254, 353, 358, 380, 420, 800, 852, 882, 966, 971, 972,
        ];
        let mut valid = 0;
        let mut checked = 0;
        for code in codes {
            for _ in 0..300 {
                let len = rng.random_range(5..=12);
                let national: String = (0..len)
                    .map(|i| {
                        let digit = if i == 0 {
                            rng.random_range(1..=9)
                        } else {
                            rng.random_range(0..=9)
                        };
                        char::from(b'0' + digit)
                    })
                    .collect();
                let Ok(number) = phonenumber::parse(None, format!("+{code}{national}")) else {
                    continue;
                };
                let expected = phonenumber::is_valid(&number);
                assert_eq!(is_valid(&number), expected, "+{code} {national}");
                valid += usize::from(expected);
                checked += 1;
            }
        }
        assert!(checked > 5_000, "only {checked} numbers parsed");
        assert!(
            valid > 500,
            "only {valid} valid numbers: the sample says little"
        );
    }

    #[test]
    fn agrees_on_real_numbers_read_in_their_region() {
        for (raw, region) in [
            ("(415) 555-0134", Id::US),
            ("+1 415 555 0134", Id::US),
            ("020 7946 0958", Id::GB),
            ("07700 900123", Id::GB),
            ("030 901820", Id::DE),
            ("01 42 68 53 00", Id::FR),
            ("98765 43210", Id::IN),
            ("03-1234-5678", Id::JP),
            ("(11) 91234-5678", Id::BR),
            ("02 9374 4000", Id::AU),
            ("613-555-0199", Id::CA),
            ("268 464 1234", Id::AG),
            ("+7 495 123-45-67", Id::RU),
            ("+7 727 123 4567", Id::KZ),
            ("+800 1234 5678", Id::US),
            ("555-0100", Id::US),
            ("12", Id::US),
        ] {
            let Ok(number) = phonenumber::parse(Some(region), raw) else {
                continue;
            };
            assert_eq!(
                is_valid(&number),
                phonenumber::is_valid(&number),
                "{raw} in {region:?}"
            );
        }
    }
}
