//! The table-driven golden test of every field normalizer: the cases live in
//! `tests/golden/fields.toml`; each failure is printed with its case number,
//! kind and input, and the test fails if any case does.

use std::collections::HashMap;

use handoff_normalize::NormalizeConfig;
use handoff_normalize::field::{self, AttributionInput, EnumTable, Invalid, Mapped};
use prost_types::Timestamp;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use toml::Value;

const CASES: &str = include_str!("../golden/fields.toml");

/// What a normalizer made of a case's input.
#[derive(Debug, PartialEq)]
enum Got {
    Str(String),
    Int(i64),
    Map(HashMap<String, String>),
    PassedThrough(String),
}

fn rfc3339(t: Timestamp) -> String {
    let at = OffsetDateTime::from_unix_timestamp(t.seconds).unwrap()
        + time::Duration::nanoseconds(i64::from(t.nanos));
    at.format(&Rfc3339).unwrap()
}

fn str_field<'a>(case: &'a Value, key: &str) -> Option<&'a str> {
    case.get(key).and_then(Value::as_str)
}

fn attribution_map(a: &handoff_events::v1::Attribution) -> HashMap<String, String> {
    [
        ("utm_source", &a.utm_source),
        ("utm_medium", &a.utm_medium),
        ("utm_campaign", &a.utm_campaign),
        ("utm_term", &a.utm_term),
        ("utm_content", &a.utm_content),
        ("landing_url", &a.landing_url),
        ("referrer", &a.referrer),
        ("gclid", &a.gclid),
        ("fbclid", &a.fbclid),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.clone().map(|v| (k.to_owned(), v)))
    .collect()
}

fn mapped(result: Result<Mapped, Invalid>) -> Result<Got, Invalid> {
    result.map(|m| match m {
        Mapped::Canonical(v) => Got::Str(v),
        Mapped::PassedThrough(v) => Got::PassedThrough(v),
    })
}

fn run(case: &Value, tables: &HashMap<&str, EnumTable>) -> Result<Got, Invalid> {
    let kind = str_field(case, "kind").expect("kind");
    let input = case.get("input").expect("input");
    let s = input.as_str().unwrap_or_default();
    match kind {
        "email" => {
            let alias = case
                .get("alias_rules")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            field::email(s, alias).map(Got::Str)
        }
        "phone" => field::phone(s, str_field(case, "region").unwrap_or("US")).map(Got::Str),
        "country" => field::country(s).map(|c| Got::Str(c.to_owned())),
        "timezone" => field::timezone(s).map(|c| Got::Str(c.to_owned())),
        "text" => {
            let max = case.get("max").and_then(Value::as_integer).unwrap_or(4096);
            Ok(Got::Str(field::text(s, usize::try_from(max).unwrap())))
        }
        "id" => Ok(Got::Str(field::id(s))),
        "code" => Ok(Got::Str(field::code(s, 256))),
        "company_domain" => field::company_domain(s).map(Got::Str),
        "url" => field::url(s).map(Got::Str),
        "attribution" => {
            let get = |k: &str| input.get(k).and_then(Value::as_str);
            let raw = AttributionInput {
                utm_source: get("utm_source"),
                utm_medium: get("utm_medium"),
                utm_campaign: get("utm_campaign"),
                utm_term: get("utm_term"),
                utm_content: get("utm_content"),
                landing_url: get("landing_url"),
                referrer: get("referrer"),
                gclid: get("gclid"),
                fbclid: get("fbclid"),
            };
            Ok(Got::Map(attribution_map(&field::attribution(&raw).0)))
        }
        "billing_interval" => mapped(field::billing_interval(s)),
        "timestamp" => field::timestamp(s).map(|t| Got::Str(rfc3339(t))),
        "date" => field::date_or_timestamp(s).map(|t| Got::Str(rfc3339(t))),
        "amount" => {
            let amount = input
                .as_float()
                .or(input.as_integer().map(|i| i as f64))
                .unwrap();
            field::amount_minor(amount, str_field(case, "currency")).map(Got::Int)
        }
        "currency" => field::currency(s).map(Got::Str),
        "custom_properties" => {
            let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(s).unwrap();
            let (props, errors) = field::custom_properties(&map, 4096);
            match errors.into_iter().next() {
                Some((key, e)) => Err(Invalid(format!("{key} {e}"))),
                None => Ok(Got::Map(props)),
            }
        }
        table => mapped(
            tables
                .get(table)
                .unwrap_or_else(|| panic!("unknown kind {table}"))
                .map(s),
        ),
    }
}

fn expected(case: &Value) -> Option<Got> {
    let expect = case.get("expect")?;
    let passed = case
        .get("passed_through")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Some(match expect {
        Value::String(s) if passed => Got::PassedThrough(s.clone()),
        Value::String(s) => Got::Str(s.clone()),
        Value::Integer(i) => Got::Int(*i),
        Value::Table(t) => Got::Map(
            t.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect(),
        ),
        other => panic!("unexpected expect {other:?}"),
    })
}

#[test]
fn golden_field_cases() {
    let doc: Value = toml::from_str(CASES).expect("fields.toml parses");
    let cases = doc.get("case").and_then(Value::as_array).expect("[[case]]");
    let config = NormalizeConfig::default();
    let tables: HashMap<&str, EnumTable> = [
        ("lifecycle_stage", &config.lifecycle_stage),
        ("deal_stage", &config.deal_stage),
        ("plan", &config.plan),
        ("subscription_status", &config.subscription_status),
        ("ticket_priority", &config.ticket_priority),
        ("ticket_status", &config.ticket_status),
    ]
    .into_iter()
    .map(|(name, cfg)| (name, EnumTable::compile(name, cfg).unwrap()))
    .collect();

    let mut failures = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        let got = run(case, &tables);
        let label = format!(
            "case #{} ({} {})",
            n + 1,
            str_field(case, "kind").unwrap_or("?"),
            case.get("input")
                .map(ToString::to_string)
                .unwrap_or_default()
        );
        match (expected(case), str_field(case, "error"), got) {
            (Some(want), _, Ok(got)) if want == got => {}
            (None, Some(fragment), Err(e)) if e.0.contains(fragment) => {}
            (want, error, got) => failures.push(format!(
                "{label}: expected {:?}, got {got:?}",
                want.map_or_else(
                    || format!("an error containing {error:?}"),
                    |w| format!("{w:?}")
                )
            )),
        }
    }
    assert!(cases.len() >= 150, "only {} golden cases", cases.len());
    assert!(
        failures.is_empty(),
        "{} of {} golden cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
