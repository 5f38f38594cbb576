//! Time zones → canonical IANA names, validated against `chrono-tz`'s copy
//! of the tz database.
//!
//! Lookup is case-insensitive. `chrono-tz` models backward-compatibility
//! links ("US/Pacific") as zones of their own and does not expose their
//! targets, so [`LINKS`] maps the links people actually send to their
//! canonical zones; other valid names are kept (with their canonical case).
//! Windows names come from CLDR's `windowsZones.xml`, territory "001" (the
//! golden zone of each Windows zone); no maintained crate ships that table.
//! Abbreviations are mapped only where they name one zone in practice (PST,
//! CET is left as tzdb's own name; IST, CST and BST are ambiguous and refused).

use std::collections::HashMap;
use std::sync::LazyLock;

use chrono_tz::{TZ_VARIANTS, Tz};

use super::Invalid;

/// Backward links from tzdb's `backward` file → canonical zone.
const LINKS: &[(&str, &str)] = &[
    ("US/Pacific", "America/Los_Angeles"),
    ("US/Eastern", "America/New_York"),
    ("US/Central", "America/Chicago"),
    ("US/Mountain", "America/Denver"),
    ("US/Arizona", "America/Phoenix"),
    ("US/Alaska", "America/Anchorage"),
    ("US/Hawaii", "Pacific/Honolulu"),
    ("US/Aleutian", "America/Adak"),
    ("US/East-Indiana", "America/Indiana/Indianapolis"),
    ("US/Michigan", "America/Detroit"),
    ("US/Samoa", "Pacific/Pago_Pago"),
    ("Canada/Pacific", "America/Vancouver"),
    ("Canada/Mountain", "America/Edmonton"),
    ("Canada/Central", "America/Winnipeg"),
    ("Canada/Eastern", "America/Toronto"),
    ("Canada/Atlantic", "America/Halifax"),
    ("Canada/Newfoundland", "America/St_Johns"),
    ("Canada/Saskatchewan", "America/Regina"),
    ("America/Buenos_Aires", "America/Argentina/Buenos_Aires"),
    ("America/Indianapolis", "America/Indiana/Indianapolis"),
    ("America/Godthab", "America/Nuuk"),
    ("America/Montreal", "America/Toronto"),
    ("Brazil/East", "America/Sao_Paulo"),
    ("Mexico/General", "America/Mexico_City"),
    ("Asia/Calcutta", "Asia/Kolkata"),
    ("Asia/Saigon", "Asia/Ho_Chi_Minh"),
    ("Asia/Katmandu", "Asia/Kathmandu"),
    ("Asia/Rangoon", "Asia/Yangon"),
    ("Asia/Dacca", "Asia/Dhaka"),
    ("Asia/Ulan_Bator", "Asia/Ulaanbaatar"),
    ("Asia/Chongqing", "Asia/Shanghai"),
    ("Asia/Harbin", "Asia/Shanghai"),
    ("Asia/Tel_Aviv", "Asia/Jerusalem"),
    ("Europe/Kiev", "Europe/Kyiv"),
    ("Europe/Belfast", "Europe/London"),
    ("Europe/Nicosia", "Asia/Nicosia"),
    ("Atlantic/Faeroe", "Atlantic/Faroe"),
    ("Pacific/Samoa", "Pacific/Pago_Pago"),
    ("Australia/ACT", "Australia/Sydney"),
    ("Australia/NSW", "Australia/Sydney"),
    ("Australia/Canberra", "Australia/Sydney"),
    ("Australia/Victoria", "Australia/Melbourne"),
    ("Australia/Queensland", "Australia/Brisbane"),
    ("Australia/West", "Australia/Perth"),
    ("Australia/South", "Australia/Adelaide"),
    ("Australia/North", "Australia/Darwin"),
    ("Australia/Tasmania", "Australia/Hobart"),
    ("GB", "Europe/London"),
    ("GB-Eire", "Europe/London"),
    ("Eire", "Europe/Dublin"),
    ("Israel", "Asia/Jerusalem"),
    ("Japan", "Asia/Tokyo"),
    ("ROK", "Asia/Seoul"),
    ("ROC", "Asia/Taipei"),
    ("PRC", "Asia/Shanghai"),
    ("Singapore", "Asia/Singapore"),
    ("Hongkong", "Asia/Hong_Kong"),
    ("Turkey", "Europe/Istanbul"),
    ("Egypt", "Africa/Cairo"),
    ("Iran", "Asia/Tehran"),
    ("Poland", "Europe/Warsaw"),
    ("Portugal", "Europe/Lisbon"),
    ("NZ", "Pacific/Auckland"),
    ("UTC", "Etc/UTC"),
    ("UCT", "Etc/UTC"),
    ("Etc/UCT", "Etc/UTC"),
    ("Universal", "Etc/UTC"),
    ("Etc/Universal", "Etc/UTC"),
    ("Zulu", "Etc/UTC"),
    ("Etc/Zulu", "Etc/UTC"),
    ("GMT", "Etc/GMT"),
    ("GMT0", "Etc/GMT"),
    ("GMT+0", "Etc/GMT"),
    ("GMT-0", "Etc/GMT"),
    ("Greenwich", "Etc/GMT"),
    ("Etc/GMT0", "Etc/GMT"),
    ("Etc/GMT+0", "Etc/GMT"),
    ("Etc/GMT-0", "Etc/GMT"),
    ("Etc/Greenwich", "Etc/GMT"),
];

/// Windows time-zone names → IANA, from CLDR `windowsZones.xml`, territory "001",
/// with CLDR's own legacy names replaced by the canonical zones.
const WINDOWS: &[(&str, &str)] = &[
    ("Dateline Standard Time", "Etc/GMT+12"),
    ("UTC-11", "Etc/GMT+11"),
    ("Aleutian Standard Time", "America/Adak"),
    ("Hawaiian Standard Time", "Pacific/Honolulu"),
    ("Marquesas Standard Time", "Pacific/Marquesas"),
    ("Alaskan Standard Time", "America/Anchorage"),
    ("UTC-09", "Etc/GMT+9"),
    ("Pacific Standard Time (Mexico)", "America/Tijuana"),
    ("UTC-08", "Etc/GMT+8"),
    ("Pacific Standard Time", "America/Los_Angeles"),
    ("US Mountain Standard Time", "America/Phoenix"),
    ("Mountain Standard Time (Mexico)", "America/Mazatlan"),
    ("Mountain Standard Time", "America/Denver"),
    ("Yukon Standard Time", "America/Whitehorse"),
    ("Central America Standard Time", "America/Guatemala"),
    ("Central Standard Time", "America/Chicago"),
    ("Easter Island Standard Time", "Pacific/Easter"),
    ("Central Standard Time (Mexico)", "America/Mexico_City"),
    ("Canada Central Standard Time", "America/Regina"),
    ("SA Pacific Standard Time", "America/Bogota"),
    ("Eastern Standard Time (Mexico)", "America/Cancun"),
    ("Eastern Standard Time", "America/New_York"),
    ("Haiti Standard Time", "America/Port-au-Prince"),
    ("Cuba Standard Time", "America/Havana"),
    ("US Eastern Standard Time", "America/Indiana/Indianapolis"),
    ("Turks And Caicos Standard Time", "America/Grand_Turk"),
    ("Paraguay Standard Time", "America/Asuncion"),
    ("Atlantic Standard Time", "America/Halifax"),
    ("Venezuela Standard Time", "America/Caracas"),
    ("Central Brazilian Standard Time", "America/Cuiaba"),
    ("SA Western Standard Time", "America/La_Paz"),
    ("Pacific SA Standard Time", "America/Santiago"),
    ("Newfoundland Standard Time", "America/St_Johns"),
    ("Tocantins Standard Time", "America/Araguaina"),
    ("E. South America Standard Time", "America/Sao_Paulo"),
    ("SA Eastern Standard Time", "America/Cayenne"),
    ("Argentina Standard Time", "America/Argentina/Buenos_Aires"),
    ("Greenland Standard Time", "America/Nuuk"),
    ("Montevideo Standard Time", "America/Montevideo"),
    ("Magallanes Standard Time", "America/Punta_Arenas"),
    ("Saint Pierre Standard Time", "America/Miquelon"),
    ("Bahia Standard Time", "America/Bahia"),
    ("UTC-02", "Etc/GMT+2"),
    ("Azores Standard Time", "Atlantic/Azores"),
    ("Cape Verde Standard Time", "Atlantic/Cape_Verde"),
    ("Coordinated Universal Time", "Etc/UTC"),
    ("GMT Standard Time", "Europe/London"),
    ("Greenwich Standard Time", "Atlantic/Reykjavik"),
    ("Sao Tome Standard Time", "Africa/Sao_Tome"),
    ("Morocco Standard Time", "Africa/Casablanca"),
    ("W. Europe Standard Time", "Europe/Berlin"),
    ("Central Europe Standard Time", "Europe/Budapest"),
    ("Romance Standard Time", "Europe/Paris"),
    ("Central European Standard Time", "Europe/Warsaw"),
    ("W. Central Africa Standard Time", "Africa/Lagos"),
    ("Jordan Standard Time", "Asia/Amman"),
    ("GTB Standard Time", "Europe/Bucharest"),
    ("Middle East Standard Time", "Asia/Beirut"),
    ("Egypt Standard Time", "Africa/Cairo"),
    ("E. Europe Standard Time", "Europe/Chisinau"),
    ("Syria Standard Time", "Asia/Damascus"),
    ("West Bank Standard Time", "Asia/Hebron"),
    ("South Africa Standard Time", "Africa/Johannesburg"),
    ("FLE Standard Time", "Europe/Kyiv"),
    ("Israel Standard Time", "Asia/Jerusalem"),
    ("South Sudan Standard Time", "Africa/Juba"),
    ("Kaliningrad Standard Time", "Europe/Kaliningrad"),
    ("Sudan Standard Time", "Africa/Khartoum"),
    ("Libya Standard Time", "Africa/Tripoli"),
    ("Namibia Standard Time", "Africa/Windhoek"),
    ("Arabic Standard Time", "Asia/Baghdad"),
    ("Turkey Standard Time", "Europe/Istanbul"),
    ("Arab Standard Time", "Asia/Riyadh"),
    ("Belarus Standard Time", "Europe/Minsk"),
    ("Russian Standard Time", "Europe/Moscow"),
    ("E. Africa Standard Time", "Africa/Nairobi"),
    ("Volgograd Standard Time", "Europe/Volgograd"),
    ("Iran Standard Time", "Asia/Tehran"),
    ("Arabian Standard Time", "Asia/Dubai"),
    ("Astrakhan Standard Time", "Europe/Astrakhan"),
    ("Azerbaijan Standard Time", "Asia/Baku"),
    ("Russia Time Zone 3", "Europe/Samara"),
    ("Mauritius Standard Time", "Indian/Mauritius"),
    ("Saratov Standard Time", "Europe/Saratov"),
    ("Georgian Standard Time", "Asia/Tbilisi"),
    ("Caucasus Standard Time", "Asia/Yerevan"),
    ("Afghanistan Standard Time", "Asia/Kabul"),
    ("West Asia Standard Time", "Asia/Tashkent"),
    ("Ekaterinburg Standard Time", "Asia/Yekaterinburg"),
    ("Pakistan Standard Time", "Asia/Karachi"),
    ("Qyzylorda Standard Time", "Asia/Qyzylorda"),
    ("India Standard Time", "Asia/Kolkata"),
    ("Sri Lanka Standard Time", "Asia/Colombo"),
    ("Nepal Standard Time", "Asia/Kathmandu"),
    ("Central Asia Standard Time", "Asia/Almaty"),
    ("Bangladesh Standard Time", "Asia/Dhaka"),
    ("Omsk Standard Time", "Asia/Omsk"),
    ("Myanmar Standard Time", "Asia/Yangon"),
    ("SE Asia Standard Time", "Asia/Bangkok"),
    ("Altai Standard Time", "Asia/Barnaul"),
    ("W. Mongolia Standard Time", "Asia/Hovd"),
    ("North Asia Standard Time", "Asia/Krasnoyarsk"),
    ("N. Central Asia Standard Time", "Asia/Novosibirsk"),
    ("Tomsk Standard Time", "Asia/Tomsk"),
    ("China Standard Time", "Asia/Shanghai"),
    ("North Asia East Standard Time", "Asia/Irkutsk"),
    ("Singapore Standard Time", "Asia/Singapore"),
    ("W. Australia Standard Time", "Australia/Perth"),
    ("Taipei Standard Time", "Asia/Taipei"),
    ("Ulaanbaatar Standard Time", "Asia/Ulaanbaatar"),
    ("Aus Central W. Standard Time", "Australia/Eucla"),
    ("Transbaikal Standard Time", "Asia/Chita"),
    ("Tokyo Standard Time", "Asia/Tokyo"),
    ("North Korea Standard Time", "Asia/Pyongyang"),
    ("Korea Standard Time", "Asia/Seoul"),
    ("Yakutsk Standard Time", "Asia/Yakutsk"),
    ("Cen. Australia Standard Time", "Australia/Adelaide"),
    ("AUS Central Standard Time", "Australia/Darwin"),
    ("E. Australia Standard Time", "Australia/Brisbane"),
    ("AUS Eastern Standard Time", "Australia/Sydney"),
    ("West Pacific Standard Time", "Pacific/Port_Moresby"),
    ("Tasmania Standard Time", "Australia/Hobart"),
    ("Vladivostok Standard Time", "Asia/Vladivostok"),
    ("Lord Howe Standard Time", "Australia/Lord_Howe"),
    ("Bougainville Standard Time", "Pacific/Bougainville"),
    ("Russia Time Zone 10", "Asia/Srednekolymsk"),
    ("Magadan Standard Time", "Asia/Magadan"),
    ("Norfolk Standard Time", "Pacific/Norfolk"),
    ("Sakhalin Standard Time", "Asia/Sakhalin"),
    ("Central Pacific Standard Time", "Pacific/Guadalcanal"),
    ("Russia Time Zone 11", "Asia/Kamchatka"),
    ("New Zealand Standard Time", "Pacific/Auckland"),
    ("UTC+12", "Etc/GMT-12"),
    ("Fiji Standard Time", "Pacific/Fiji"),
    ("Chatham Islands Standard Time", "Pacific/Chatham"),
    ("UTC+13", "Etc/GMT-13"),
    ("Tonga Standard Time", "Pacific/Tongatapu"),
    ("Samoa Standard Time", "Pacific/Apia"),
    ("Line Islands Standard Time", "Pacific/Kiritimati"),
];

/// Abbreviations that name one zone as people use them in CRMs. The US ones
/// mean the US zone with daylight saving time, not tzdb's fixed-offset
/// `EST`/`MST`/`HST` (which tzdb itself now links to Panama, Phoenix and
/// Honolulu).
const ABBREVIATIONS: &[(&str, &str)] = &[
    ("PST", "America/Los_Angeles"),
    ("PDT", "America/Los_Angeles"),
    ("PT", "America/Los_Angeles"),
    ("MDT", "America/Denver"),
    ("MST", "America/Denver"),
    ("MT", "America/Denver"),
    ("CDT", "America/Chicago"),
    ("CT", "America/Chicago"),
    ("EST", "America/New_York"),
    ("EDT", "America/New_York"),
    ("ET", "America/New_York"),
    ("AKST", "America/Anchorage"),
    ("AKDT", "America/Anchorage"),
    ("HST", "Pacific/Honolulu"),
    ("JST", "Asia/Tokyo"),
    ("KST", "Asia/Seoul"),
    ("SGT", "Asia/Singapore"),
    ("HKT", "Asia/Hong_Kong"),
    ("AEST", "Australia/Sydney"),
    ("AEDT", "Australia/Sydney"),
    ("ACST", "Australia/Adelaide"),
    ("ACDT", "Australia/Adelaide"),
    ("AWST", "Australia/Perth"),
    ("NZST", "Pacific/Auckland"),
    ("NZDT", "Pacific/Auckland"),
    ("CEST", "Europe/Paris"),
];

/// Lower-cased name → canonical IANA name: every tzdb name first, then links,
/// Windows names and abbreviations overriding (they are more specific).
static LOOKUP: LazyLock<HashMap<String, &'static str>> = LazyLock::new(|| {
    let mut map: HashMap<String, &'static str> = TZ_VARIANTS
        .iter()
        .map(|tz: &Tz| (tz.name().to_ascii_lowercase(), tz.name()))
        .collect();
    for (alias, target) in LINKS.iter().chain(WINDOWS).chain(ABBREVIATIONS) {
        // Targets are checked to be tzdb names by a unit test; fall back to the
        // literal so a bad table entry is visible rather than silently missing.
        let canonical = map
            .get(&target.to_ascii_lowercase())
            .copied()
            .unwrap_or(target);
        map.insert(alias.to_ascii_lowercase(), canonical);
    }
    map
});

/// A time zone as a canonical IANA name: case-insensitive ("europe/berlin"
/// → "Europe/Berlin"), links to their zone ("US/Pacific" →
/// "America/Los_Angeles"), Windows names ("Pacific Standard Time") and
/// unambiguous abbreviations ("PST") mapped.
pub fn timezone(raw: &str) -> Result<&'static str, Invalid> {
    let trimmed = raw.trim();
    if trimmed.is_empty() || trimmed.len() > 64 {
        return Err(Invalid::new("must be an IANA time zone name"));
    }
    // Accept "Pacific  Standard Time" and "America/Los Angeles" too.
    let mut key = String::with_capacity(trimmed.len());
    for word in trimmed.split_whitespace() {
        if !key.is_empty() {
            key.push(if trimmed.contains('/') { '_' } else { ' ' });
        }
        key.push_str(word);
    }
    key.make_ascii_lowercase();
    LOOKUP
        .get(&key)
        .copied()
        .ok_or(Invalid::new("must be an IANA time zone name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_target_is_a_canonical_tzdb_name() {
        let names: std::collections::HashSet<&str> =
            TZ_VARIANTS.iter().map(|tz| tz.name()).collect();
        for (alias, target) in LINKS.iter().chain(WINDOWS).chain(ABBREVIATIONS) {
            assert!(
                names.contains(target),
                "{alias} → {target} is not in chrono-tz"
            );
            assert!(
                !LINKS.iter().any(|(link, _)| link == target),
                "{alias} → {target} is itself a link"
            );
        }
    }

    #[test]
    fn canonicalises() {
        assert_eq!(timezone("europe/berlin").unwrap(), "Europe/Berlin");
        assert_eq!(timezone("US/Pacific").unwrap(), "America/Los_Angeles");
        assert_eq!(
            timezone("Pacific Standard Time").unwrap(),
            "America/Los_Angeles"
        );
        assert_eq!(timezone(" pst ").unwrap(), "America/Los_Angeles");
        assert_eq!(timezone("America/New York").unwrap(), "America/New_York");
        assert!(timezone("IST").is_err());
        assert!(timezone("Mars/Olympus").is_err());
    }
}
