//! The normalizer's configuration: defaults that work against local RabbitMQ
//! and Redis, then an optional TOML file, then `HANDOFF_*` environment
//! variables (see `handoff_kit::config`). The RevOps maps live under
//! `[normalize]` (see `crates/normalize/normalize.example.toml`); a bad map
//! fails start-up with one line naming the table and key.

use std::net::SocketAddr;

use handoff_bus::BusConfig;
use handoff_idempotency::{DedupeConfig, LedgerConfig, RedisConfig};
use handoff_kit::admin::AdminConfig;
use handoff_kit::config::{ConfigError, Validate, check_namespace};
use handoff_kit::shutdown::ShutdownConfig;
use handoff_kit::telemetry::TelemetryConfig;
use handoff_normalize::{NormalizeConfig, Normalizer};
use serde::{Deserialize, Serialize};

/// Everything the normalizer reads at start-up.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Prefix of every exchange, queue and Redis key, so tenants and tests can share one broker.
    pub namespace: String,
    pub admin: AdminConfig,
    pub bus: BusConfig,
    pub redis: RedisConfig,
    pub dedupe: DedupeConfig,
    pub ledger: LedgerConfig,
    pub shutdown: ShutdownConfig,
    pub telemetry: TelemetryConfig,
    /// Field normalization and the enum maps RevOps owns.
    pub normalize: NormalizeConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            namespace: "handoff".to_owned(),
            // 9090 is ingest's admin port; each service has its own so `make run` fits one host.
            admin: AdminConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
            },
            bus: BusConfig::default(),
            redis: RedisConfig::default(),
            dedupe: DedupeConfig::default(),
            ledger: LedgerConfig::default(),
            shutdown: ShutdownConfig::default(),
            telemetry: TelemetryConfig::default(),
            normalize: NormalizeConfig::default(),
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        check_namespace(&self.namespace)?;
        self.bus
            .validate()
            .map_err(|reason| ConfigError::invalid("bus", reason))?;
        self.redis
            .check()
            .map_err(|reason| ConfigError::invalid("redis", reason))?;
        Normalizer::new(&self.normalize).map_err(|err| ConfigError::invalid("normalize", err))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn a_bad_map_fails_with_its_table_named() {
        let toml = r#"
            [normalize.lifecycle_stage]
            targets = ["lead", "customer"]
            [normalize.lifecycle_stage.values]
            "Closed Won" = "champion"
        "#;
        let path = std::env::temp_dir().join(format!("normalizer-{}.toml", std::process::id()));
        std::fs::write(&path, toml).expect("write");
        let err = handoff_kit::config::load_with_env::<Config>(Some(&path), &[])
            .expect_err("unknown target");
        let _ = std::fs::remove_file(&path);
        let line = err.to_string();
        assert!(line.starts_with("normalize:"), "{line}");
        assert!(line.contains("lifecycle_stage"), "{line}");
        assert!(line.contains("champion"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn env_overrides_a_normalize_setting() {
        let cfg: Config = handoff_kit::config::load_with_env(
            None,
            &[("HANDOFF_NORMALIZE__DEFAULT_REGION", "GB")],
        )
        .expect("load");
        assert_eq!(cfg.normalize.default_region, "GB");
    }
}
