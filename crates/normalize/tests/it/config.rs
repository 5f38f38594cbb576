//! The example config equals the defaults, and bad configs fail with one
//! line naming the table and key.

use handoff_normalize::config::{EnumMapConfig, OnUnmapped};
use handoff_normalize::{ConfigError, NormalizeConfig, Normalizer};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceConfig {
    normalize: NormalizeConfig,
}

#[test]
fn example_toml_is_the_default() {
    let text = include_str!("../../normalize.example.toml");
    let parsed: ServiceConfig = toml::from_str(text).expect("normalize.example.toml parses");
    assert_eq!(parsed.normalize, NormalizeConfig::default());
    Normalizer::new(&parsed.normalize).expect("defaults compile");
}

#[test]
fn partial_config_keeps_other_defaults() {
    let parsed: ServiceConfig =
        toml::from_str("[normalize]\non_invalid_phone = \"reject\"\n").unwrap();
    assert_eq!(
        parsed.normalize.lifecycle_stage,
        NormalizeConfig::default().lifecycle_stage
    );
    assert!(toml::from_str::<ServiceConfig>("[normalize]\nbogus = 1\n").is_err());
}

fn message(config: &NormalizeConfig) -> String {
    let err: ConfigError = Normalizer::new(config).unwrap_err();
    let message = err.to_string();
    assert!(!message.contains('\n'), "{message}");
    message
}

#[test]
fn bad_configs_name_table_and_key() {
    let mut config = NormalizeConfig::default();
    config
        .lifecycle_stage
        .values
        .insert("Mql ".into(), "lead".into());
    let m = message(&config);
    assert!(
        m.contains("normalize.lifecycle_stage") && m.contains("Mql"),
        "{m}"
    );

    let mut config = NormalizeConfig::default();
    config
        .deal_stage
        .values
        .insert("Won It".into(), "closed_won".into());
    let m = message(&config);
    assert!(
        m.contains("normalize.deal_stage")
            && m.contains("closed_won")
            && m.contains("not in targets"),
        "{m}"
    );

    let config = NormalizeConfig {
        default_region: "Narnia".into(),
        ..NormalizeConfig::default()
    };
    assert!(message(&config).contains("default_region"));

    let config = NormalizeConfig {
        plan: EnumMapConfig {
            targets: vec!["Pro".into(), "pro".into()],
            values: Default::default(),
            on_unmapped: OnUnmapped::Reject,
        },
        ..NormalizeConfig::default()
    };
    assert!(message(&config).contains("normalize.plan"));

    let mut config = NormalizeConfig::default();
    config.payment_failed_ticket.priority = "whenever".into();
    assert!(message(&config).contains("payment_failed_ticket.priority"));

    let config = NormalizeConfig {
        max_text_chars: 0,
        ..NormalizeConfig::default()
    };
    assert!(message(&config).contains("max_text_chars"));
}
