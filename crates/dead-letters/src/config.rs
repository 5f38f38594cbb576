//! The dead-letter handler's configuration: defaults that work against local RabbitMQ
//! and Redis, then an optional TOML file, then `HANDOFF_*` variables
//! (`handoff_kit::config`). `dead-letters.example.toml` lists every key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use handoff_bus::BusConfig;
use handoff_idempotency::RedisConfig;
use handoff_kit::admin::AdminConfig;
use handoff_kit::config::{ConfigError, Validate, check_namespace};
use handoff_kit::shutdown::ShutdownConfig;
use handoff_kit::telemetry::TelemetryConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Prefix of every exchange, queue and Redis key; the pipeline's namespace.
    pub namespace: String,
    pub http: HttpConfig,
    pub admin: AdminConfig,
    pub bus: BusConfig,
    /// Where dead letters are parked. Give it AOF persistence (see [`StoreConfig`]).
    pub redis: RedisConfig,
    pub store: StoreConfig,
    pub replay: ReplayConfig,
    pub shutdown: ShutdownConfig,
    pub telemetry: TelemetryConfig,
    /// Who may use the API. Empty by default: nobody can until tokens are configured.
    pub operators: Vec<OperatorConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            namespace: "handoff".to_owned(),
            http: HttpConfig::default(),
            admin: AdminConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 9094)),
            },
            bus: BusConfig {
                // Parking is one Redis script per message; a modest window is plenty.
                prefetch: 50,
                ..BusConfig::default()
            },
            redis: RedisConfig::default(),
            store: StoreConfig::default(),
            replay: ReplayConfig::default(),
            shutdown: ShutdownConfig::default(),
            telemetry: TelemetryConfig::default(),
            operators: Vec::new(),
        }
    }
}

/// The operator API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8095)),
            request_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Refuse to park into a Redis that would lose acknowledged dead letters in a crash:
    /// without `appendonly yes` and `appendfsync always` the handler stays not-ready
    /// and says why. Turn off only for local development.
    pub require_durable: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            require_durable: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplayConfig {
    /// Messages per second a replay sends when the operator names no rate.
    pub default_rate: f64,
    /// The most any replay may send per second, whatever is asked.
    pub max_rate: f64,
    /// Share of a destination's budget (below) one replay may take, so live traffic keeps
    /// the rest of the quota.
    pub share: f64,
    /// Requests per second each destination allows (the writers' pacing rate). A replay
    /// of dead letters from that destination sends at most `share` of it.
    pub budgets: BTreeMap<String, f64>,
    /// A replay waits while the queue it sends to (for a renormalize, also the writers'
    /// queues) holds more than this many ready messages, so a backed-up stage does not
    /// fill further; a writer's in-flight prefetch is not counted.
    pub max_backlog: u32,
    /// Most dead letters one replay or purge may select.
    pub max_selection: u64,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            default_rate: 10.0,
            max_rate: 200.0,
            share: 0.5,
            budgets: BTreeMap::from([
                // HubSpot private apps: 100 requests per 10 s (crm-writer's pacing default).
                ("hubspot".to_owned(), 10.0),
                // Mailchimp: 10 connections per key; the email-writer paces at 100/s.
                ("mailchimp".to_owned(), 100.0),
            ]),
            max_backlog: 50,
            max_selection: 100_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorConfig {
    /// Who this is, as the audit log names them.
    pub name: String,
    /// Hex SHA-256 of the operator's token; the token itself is never stored.
    pub token_sha256: String,
    /// `operator` may replay and purge; `viewer` may only read.
    #[serde(default)]
    pub role: Role,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    #[default]
    Operator,
    Viewer,
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
        let r = &self.replay;
        if r.default_rate.is_nan() || r.default_rate <= 0.0 || r.max_rate < r.default_rate {
            return Err(ConfigError::invalid(
                "replay",
                "default_rate must be positive and at most max_rate",
            ));
        }
        if r.share.is_nan() || r.share <= 0.0 || r.share > 1.0 {
            return Err(ConfigError::invalid("replay.share", "must be in (0, 1]"));
        }
        if let Some((name, _)) = r
            .budgets
            .iter()
            .find(|(_, rate)| rate.is_nan() || **rate <= 0.0)
        {
            return Err(ConfigError::invalid(
                &format!("replay.budgets.{name}"),
                "must be a positive rate",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, op) in self.operators.iter().enumerate() {
            if op.name.trim().is_empty() {
                return Err(ConfigError::invalid(
                    &format!("operators[{i}].name"),
                    "is empty",
                ));
            }
            if op.token_sha256.len() != 64
                || !op.token_sha256.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(ConfigError::invalid(
                    &format!("operators[{i}].token_sha256"),
                    "must be 64 hex digits (sha256sum of the token)",
                ));
            }
            if !names.insert(op.name.as_str()) {
                return Err(ConfigError::invalid(
                    &format!("operators[{i}].name"),
                    format!("{:?} appears twice", op.name),
                ));
            }
        }
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
    fn the_example_file_loads_and_says_what_the_defaults_are() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dead-letters.example.toml");
        let cfg: Config =
            handoff_kit::config::load_with_env(Some(&path), &[]).expect("example loads");
        let defaults = Config::default();
        assert_eq!(
            serde_json::to_value(&cfg).expect("json"),
            serde_json::to_value(&defaults).expect("json")
        );
    }

    #[test]
    fn a_token_that_is_not_a_hash_is_refused_with_its_key() {
        let mut cfg = Config::default();
        cfg.operators.push(OperatorConfig {
            name: "sam".into(),
            token_sha256: "secret".into(),
            role: Role::Operator,
        });
        let err = cfg.validate().expect_err("not a hash").to_string();
        assert!(err.starts_with("operators[0].token_sha256"), "{err}");
    }
}
