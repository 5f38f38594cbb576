//! `custom_properties`: the publisher's own key/value pairs, as strings.

use std::collections::HashMap;

use serde_json::Value;

use super::{Invalid, text};

/// Longest custom property key, in characters (ingest's bound).
const KEY_MAX: usize = 256;

/// Keys cleaned like text (blank keys refused); values as strings: strings
/// cleaned like text up to `max_chars`, booleans `true`/`false`, numbers in
/// their shortest round-trip form with integral floats as integers
/// (`9.0` → `"9"`, `0.5` → `"0.5"`). Nested objects, arrays and nulls are
/// refused by key. When two keys clean to the same key, the later wins.
pub fn custom_properties<'a>(
    properties: impl IntoIterator<Item = (&'a String, &'a Value)>,
    max_chars: usize,
) -> (HashMap<String, String>, Vec<(String, Invalid)>) {
    let mut out = HashMap::new();
    let mut errors = Vec::new();
    for (raw_key, value) in properties {
        let key = text(raw_key, KEY_MAX);
        if key.is_empty() {
            errors.push((raw_key.clone(), Invalid::new("must not be a blank key")));
            continue;
        }
        let rendered = match value {
            Value::String(s) => text(s, max_chars),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => number(n),
            Value::Null | Value::Array(_) | Value::Object(_) => {
                errors.push((
                    raw_key.clone(),
                    Invalid::new("must be a string, number or boolean"),
                ));
                continue;
            }
        };
        out.insert(key, rendered);
    }
    (out, errors)
}

fn number(n: &serde_json::Number) -> String {
    if n.is_i64() || n.is_u64() {
        return n.to_string();
    }
    match n.as_f64() {
        // Integral and exactly representable: render as an integer.
        #[allow(clippy::cast_possible_truncation)]
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => (f as i64).to_string(),
        Some(f) => f.to_string(),
        None => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_values() {
        let raw: serde_json::Map<String, Value> = serde_json::from_str(
            r#"{" nps_score ": 9, "ratio": 0.5, "whole": 9.0, "on": true, "lang": " en ", "bad": [1], "  ": "x"}"#,
        )
        .unwrap();
        let (props, errors) = custom_properties(&raw, 100);
        assert_eq!(props["nps_score"], "9");
        assert_eq!(props["ratio"], "0.5");
        assert_eq!(props["whole"], "9");
        assert_eq!(props["on"], "true");
        assert_eq!(props["lang"], "en");
        assert_eq!(errors.len(), 2);
    }
}
