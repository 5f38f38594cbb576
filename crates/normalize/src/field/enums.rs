//! Configurable enum maps (lifecycle stage, deal stage, plan, ...): an
//! [`EnumMapConfig`] compiled once into a hash map of folded spellings.

use std::collections::HashMap;

use super::{Invalid, text};
use crate::config::{ConfigError, EnumMapConfig, OnUnmapped};

/// Longest enum value kept when passed through, in characters.
const VALUE_MAX: usize = 256;

/// The matching key of a spelling: lower-case, without whitespace, `-` or
/// `_`, control or invisible characters, so "Closed Won", "closed_won" and
/// "CLOSED-WON" are one key.
pub fn fold(raw: &str) -> String {
    text(raw, VALUE_MAX)
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-' && *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

/// What [`EnumTable::map`] made of a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    /// One of the table's targets.
    Canonical(String),
    /// Not in the table, kept as sent (cleaned) because `on_unmapped = "pass_through"`.
    PassedThrough(String),
}

impl Mapped {
    /// The value to put in the canonical record.
    pub fn into_value(self) -> String {
        match self {
            Mapped::Canonical(v) | Mapped::PassedThrough(v) => v,
        }
    }
}

/// One compiled enum map: folded spelling → target.
#[derive(Debug, Clone)]
pub struct EnumTable {
    name: &'static str,
    map: HashMap<String, String>,
    on_unmapped: OnUnmapped,
}

impl EnumTable {
    /// Compiles `config` as table `name` (used in messages): every target
    /// maps to itself, every alias to its target. Two targets or aliases that
    /// fold alike, an alias that folds like a different target, a blank key
    /// and an alias to a value not in `targets` are [`ConfigError`]s.
    pub fn compile(name: &'static str, config: &EnumMapConfig) -> Result<Self, ConfigError> {
        let mut map = HashMap::with_capacity(config.targets.len() + config.values.len());
        let mut spelled: HashMap<String, &str> = HashMap::new();
        for target in &config.targets {
            let key = fold(target);
            if key.is_empty() {
                return Err(ConfigError::BlankKey {
                    table: name,
                    key: target.clone(),
                });
            }
            if let Some(other) = spelled.insert(key.clone(), target) {
                return Err(ConfigError::DuplicateKey {
                    table: name,
                    key: target.clone(),
                    other: other.to_owned(),
                });
            }
            map.insert(key, target.clone());
        }
        let mut aliases: HashMap<String, &str> = HashMap::new();
        for (alias, target) in &config.values {
            if !config.targets.contains(target) {
                return Err(ConfigError::UnknownTarget {
                    table: name,
                    key: alias.clone(),
                    target: target.clone(),
                });
            }
            let key = fold(alias);
            if key.is_empty() {
                return Err(ConfigError::BlankKey {
                    table: name,
                    key: alias.clone(),
                });
            }
            if let Some(other) = aliases.insert(key.clone(), alias) {
                return Err(ConfigError::DuplicateKey {
                    table: name,
                    key: alias.clone(),
                    other: other.to_owned(),
                });
            }
            // An alias that folds like a target must agree with it.
            if let Some(existing) = map.get(&key)
                && existing != target
            {
                return Err(ConfigError::DuplicateKey {
                    table: name,
                    key: alias.clone(),
                    other: existing.clone(),
                });
            }
            map.insert(key, target.clone());
        }
        Ok(EnumTable {
            name,
            map,
            on_unmapped: config.on_unmapped,
        })
    }

    /// The table's name, as in the config (`lifecycle_stage`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Maps `raw` to its target; an unknown value is passed through (cleaned)
    /// or refused, as the table's `on_unmapped` says. Blank is refused.
    pub fn map(&self, raw: &str) -> Result<Mapped, Invalid> {
        let key = fold(raw);
        if key.is_empty() {
            return Err(Invalid::new("must not be blank"));
        }
        if let Some(target) = self.map.get(&key) {
            return Ok(Mapped::Canonical(target.clone()));
        }
        match self.on_unmapped {
            OnUnmapped::PassThrough => Ok(Mapped::PassedThrough(text(raw, VALUE_MAX))),
            OnUnmapped::Reject => Err(Invalid::new(format!(
                "{:?} is not a known {} (see normalize.{})",
                text(raw, 64),
                self.name.replace('_', " "),
                self.name
            ))),
        }
    }
}

/// Billing intervals → Stripe's words (`day`, `week`, `month`, `year`, plus
/// `quarter`); a fixed table because these are not a business choice.
const INTERVALS: &[(&str, &str)] = &[
    ("day", "day"),
    ("daily", "day"),
    ("week", "week"),
    ("weekly", "week"),
    ("wk", "week"),
    ("month", "month"),
    ("monthly", "month"),
    ("mo", "month"),
    ("mon", "month"),
    ("quarter", "quarter"),
    ("quarterly", "quarter"),
    ("year", "year"),
    ("yearly", "year"),
    ("yr", "year"),
    ("annual", "year"),
    ("annually", "year"),
];

/// A billing interval: "Monthly" → `month`, "annual" → `year`; anything
/// else is passed through cleaned. Blank is refused.
pub fn billing_interval(raw: &str) -> Result<Mapped, Invalid> {
    let key = fold(raw);
    if key.is_empty() {
        return Err(Invalid::new("must not be blank"));
    }
    Ok(INTERVALS
        .iter()
        .find(|(alias, _)| *alias == key)
        .map_or_else(
            || Mapped::PassedThrough(text(raw, VALUE_MAX)),
            |(_, canonical)| Mapped::Canonical((*canonical).to_owned()),
        ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NormalizeConfig;

    #[test]
    fn defaults_compile_and_fold() {
        let config = NormalizeConfig::default();
        let stages = EnumTable::compile("deal_stage", &config.deal_stage).unwrap();
        assert_eq!(
            stages.map("Closed Won").unwrap(),
            Mapped::Canonical("closedwon".into())
        );
        assert_eq!(
            stages.map(" custom  stage ").unwrap(),
            Mapped::PassedThrough("custom stage".into())
        );
        let lifecycle = EnumTable::compile("lifecycle_stage", &config.lifecycle_stage).unwrap();
        assert_eq!(
            lifecycle.map("mql").unwrap(),
            Mapped::Canonical("marketingqualifiedlead".into())
        );
        assert!(lifecycle.map("zombie").is_err());
    }

    #[test]
    fn bad_tables_are_refused() {
        let mut config = NormalizeConfig::default().plan;
        config.values.insert("Pro Plan".into(), "pro".into());
        config.values.insert("pro-plan".into(), "pro".into());
        let err = EnumTable::compile("plan", &config).unwrap_err();
        assert!(err.to_string().contains("normalize.plan"), "{err}");

        let mut config = NormalizeConfig::default().plan;
        config.values.insert("gold".into(), "platinum".into());
        let err = EnumTable::compile("plan", &config).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownTarget { .. }), "{err}");

        let mut config = NormalizeConfig::default().plan;
        config.values.insert("PRO".into(), "free".into());
        assert!(EnumTable::compile("plan", &config).is_err());
    }
}
