//! Property tests: every field normalizer is idempotent on what it accepts
//! and never panics, and `Normalizer::normalize` never panics on any bytes.

use handoff_events::EventType;
use handoff_normalize::Normalizer;
use handoff_normalize::config::NormalizeConfig;
use handoff_normalize::field::{self, AttributionInput, EnumTable, Mapped};
use proptest::prelude::*;

/// Arbitrary strings, biased toward what the normalizers look for.
fn messy() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "\\PC{0,40}",
        "[ +()0-9.-]{0,24}",
        "[ a-zA-Z0-9._+@-]{0,30}@[a-zA-ZäöüéøæÅ.-]{1,20}",
        "(https?://)?[a-zA-Z0-9.äö-]{1,20}(/[a-z]{0,5})?(\\?(utm_[a-z]{3,8}|gclid)=[ %A-Za-z0-9+]{0,8}(&utm_source=[a-z]{0,5})?)?(#[a-z]{0,4})?",
        "[A-Za-z/_ ]{0,30}",
        // Huge input.
        "[a-z ]{0,10}".prop_map(|s| s.repeat(2000)),
    ]
}

fn tables() -> Vec<EnumTable> {
    let c = NormalizeConfig::default();
    vec![
        EnumTable::compile("lifecycle_stage", &c.lifecycle_stage).unwrap(),
        EnumTable::compile("deal_stage", &c.deal_stage).unwrap(),
        EnumTable::compile("plan", &c.plan).unwrap(),
    ]
}

fn value(m: Mapped) -> String {
    m.into_value()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn email_is_idempotent(raw in messy(), alias in any::<bool>()) {
        if let Ok(once) = field::email(&raw, alias) {
            prop_assert_eq!(field::email(&once, alias), Ok(once.clone()));
        }
    }

    #[test]
    fn phone_is_idempotent(raw in messy(), region in prop::sample::select(vec!["US", "GB", "DE", "FR", "IN", "JP", "BR", "AU", "ZZ"])) {
        if let Ok(once) = field::phone(&raw, region) {
            prop_assert_eq!(field::phone(&once, region), Ok(once.clone()));
            prop_assert_eq!(field::phone(&once, "US"), Ok(once.clone()));
        }
    }

    #[test]
    fn country_is_idempotent(raw in messy()) {
        if let Ok(once) = field::country(&raw) {
            prop_assert_eq!(field::country(once), Ok(once));
        }
    }

    #[test]
    fn timezone_is_idempotent(raw in messy()) {
        if let Ok(once) = field::timezone(&raw) {
            prop_assert_eq!(field::timezone(once), Ok(once));
        }
    }

    #[test]
    fn text_id_code_are_idempotent(raw in messy(), max in 0usize..300) {
        let once = field::text(&raw, max);
        prop_assert!(once.chars().count() <= max);
        prop_assert_eq!(field::text(&once, max), once);
        let once = field::id(&raw);
        prop_assert_eq!(field::id(&once), once);
        let once = field::code(&raw, max);
        prop_assert!(once.chars().count() <= max);
        prop_assert_eq!(field::code(&once, max), once);
    }

    #[test]
    fn domain_and_url_are_idempotent(raw in messy()) {
        if let Ok(once) = field::company_domain(&raw) {
            prop_assert_eq!(field::company_domain(&once), Ok(once.clone()));
        }
        if let Ok(once) = field::url(&raw) {
            prop_assert_eq!(field::url(&once), Ok(once.clone()));
        }
    }

    #[test]
    fn attribution_is_idempotent(source in messy(), landing in messy(), referrer in messy()) {
        let input = AttributionInput {
            utm_source: Some(&source),
            landing_url: Some(&landing),
            referrer: Some(&referrer),
            ..AttributionInput::default()
        };
        let (once, _) = field::attribution(&input);
        let again = AttributionInput {
            utm_source: once.utm_source.as_deref(),
            utm_medium: once.utm_medium.as_deref(),
            utm_campaign: once.utm_campaign.as_deref(),
            utm_term: once.utm_term.as_deref(),
            utm_content: once.utm_content.as_deref(),
            landing_url: once.landing_url.as_deref(),
            referrer: once.referrer.as_deref(),
            gclid: once.gclid.as_deref(),
            fbclid: once.fbclid.as_deref(),
        };
        let (twice, dropped) = field::attribution(&again);
        prop_assert!(dropped.is_empty());
        prop_assert_eq!(twice, once);
    }

    #[test]
    fn enums_are_idempotent(raw in messy()) {
        for table in tables() {
            if let Ok(once) = table.map(&raw) {
                let once = value(once);
                prop_assert_eq!(table.map(&once).map(value), Ok(once));
            }
        }
        if let Ok(once) = field::billing_interval(&raw) {
            let once = value(once);
            prop_assert_eq!(field::billing_interval(&once).map(value), Ok(once));
        }
    }

    #[test]
    fn money_and_time_never_panic(raw in messy(), amount in any::<f64>()) {
        if let Ok(code) = field::currency(&raw) {
            prop_assert_eq!(field::currency(&code), Ok(code.clone()));
            let _ = field::amount_minor(amount, Some(&code));
        }
        let _ = field::amount_minor(amount, None);
        let _ = field::timestamp(&raw);
        let _ = field::date_or_timestamp(&raw);
    }

    #[test]
    fn normalize_never_panics_on_bytes(body in proptest::collection::vec(any::<u8>(), 0..512), version in 0u32..3) {
        let normalizer = Normalizer::new(&NormalizeConfig::default()).unwrap();
        for event_type in EventType::ALL {
            let _ = normalizer.normalize(event_type, version, &body);
        }
    }

    #[test]
    fn normalize_never_panics_on_seed_like_json(
        email in messy(), phone in messy(), country in messy(), tz in messy(), url in messy(), stage in messy()
    ) {
        let normalizer = Normalizer::new(&NormalizeConfig::default()).unwrap();
        let body = serde_json::json!({
            "event_id": "e", "occurred_at": "2026-03-19T10:15:22Z",
            "customer": {"email": email, "phone": phone, "country": country, "timezone": tz,
                         "lifecycle_stage": stage, "company_domain": url, "crm_contact_id": "1"},
            "context": {"landing_url": url, "referrer": phone}
        });
        let _ = normalizer.normalize(EventType::CustomerConverted, 1, body.to_string().as_bytes());
    }
}
