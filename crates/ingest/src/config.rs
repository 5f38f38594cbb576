//! Ingest's configuration: defaults that work against local RabbitMQ and
//! Redis, then an optional TOML file, then `HANDOFF_*` environment variables
//! (see `handoff_kit::config`). Validated before any work starts.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use handoff_bus::BusConfig;
use handoff_events::EventType;
use handoff_idempotency::{DedupeConfig, LedgerConfig, RedisConfig};
use handoff_kit::admin::AdminConfig;
use handoff_kit::config::{ConfigError, Validate, check_namespace};
use handoff_kit::shutdown::ShutdownConfig;
use handoff_kit::telemetry::TelemetryConfig;
use serde::{Deserialize, Serialize};

/// Everything ingest reads at start-up.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Prefix of every exchange, queue and Redis key, so tenants and tests can share one broker.
    pub namespace: String,
    pub http: HttpConfig,
    pub admin: AdminConfig,
    pub bus: BusConfig,
    pub redis: RedisConfig,
    pub dedupe: DedupeConfig,
    pub ledger: LedgerConfig,
    pub shutdown: ShutdownConfig,
    pub telemetry: TelemetryConfig,
    /// Who may publish. Empty by default: nobody can publish until keys are configured.
    pub publishers: Vec<PublisherConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            namespace: "handoff".to_owned(),
            http: HttpConfig::default(),
            admin: AdminConfig::default(),
            bus: BusConfig::default(),
            redis: RedisConfig::default(),
            dedupe: DedupeConfig::default(),
            ledger: LedgerConfig::default(),
            shutdown: ShutdownConfig::default(),
            telemetry: TelemetryConfig::default(),
            publishers: Vec::new(),
        }
    }
}

/// The public HTTP API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Largest accepted request body; larger bodies get 413 before they are read whole.
    pub body_limit_bytes: usize,
    /// Largest batch body (the batch endpoint takes up to `batch_max_events` events).
    pub batch_body_limit_bytes: usize,
    pub batch_max_events: usize,
    /// How long a request may take end to end, including the broker's confirm.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// `Retry-After` sent with 503 when the broker or Redis is unavailable.
    #[serde(with = "humantime_serde")]
    pub unavailable_retry_after: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit_bytes: 256 * 1024,
            batch_body_limit_bytes: 16 * 1024 * 1024,
            batch_max_events: 500,
            request_timeout: Duration::from_secs(30),
            unavailable_retry_after: Duration::from_secs(5),
        }
    }
}

/// One upstream publisher.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublisherConfig {
    /// Stable id, stamped on every envelope and used to scope event ids.
    pub id: String,
    /// Hex SHA-256 of the publisher's API key; the key itself is never stored.
    pub key_sha256: String,
    /// Event types this publisher may send; `["*"]` allows all.
    #[serde(default = "all_event_types")]
    pub event_types: Vec<String>,
    /// Sustained requests per second this publisher may make (events per second for batches).
    #[serde(default = "default_rate")]
    pub rate_per_second: u32,
    /// Requests that may arrive at once above the sustained rate.
    #[serde(default = "default_burst")]
    pub burst: u32,
}

fn all_event_types() -> Vec<String> {
    vec!["*".to_owned()]
}

fn default_rate() -> u32 {
    1000
}

fn default_burst() -> u32 {
    2000
}

impl PublisherConfig {
    /// The event types this publisher may send.
    pub fn allowed_types(&self) -> BTreeSet<EventType> {
        if self.event_types.iter().any(|t| t == "*") {
            return EventType::ALL.into_iter().collect();
        }
        self.event_types
            .iter()
            .filter_map(|t| t.parse().ok())
            .collect()
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        check_namespace(&self.namespace)?;
        if self.http.body_limit_bytes == 0 || self.http.batch_max_events == 0 {
            return invalid(
                "http.body_limit_bytes and http.batch_max_events must be positive".into(),
            );
        }
        let mut ids = BTreeSet::new();
        let mut keys = BTreeSet::new();
        for (i, p) in self.publishers.iter().enumerate() {
            if p.id.is_empty() || !p.id.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                return invalid(format!(
                    "publishers[{i}].id {:?} must be non-empty printable ASCII without ':'",
                    p.id
                ));
            }
            if !ids.insert(p.id.as_str()) {
                return invalid(format!("publishers[{i}].id {:?} is listed twice", p.id));
            }
            let hash = p.key_sha256.to_ascii_lowercase();
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return invalid(format!(
                    "publishers[{i}].key_sha256 must be 64 hex characters (the SHA-256 of the key, not the key)"
                ));
            }
            if !keys.insert(hash) {
                return invalid(format!(
                    "publishers[{i}].key_sha256 is shared with another publisher"
                ));
            }
            for t in &p.event_types {
                if t != "*" && t.parse::<EventType>().is_err() {
                    return invalid(format!(
                        "publishers[{i}].event_types: unknown event type {t:?}"
                    ));
                }
            }
            if p.rate_per_second == 0 || p.burst == 0 {
                return invalid(format!(
                    "publishers[{i}]: rate_per_second and burst must be positive"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publisher(id: &str, hash: &str) -> PublisherConfig {
        PublisherConfig {
            id: id.into(),
            key_sha256: hash.into(),
            event_types: vec!["lead.created".into()],
            rate_per_second: 10,
            burst: 10,
        }
    }

    #[test]
    fn defaults_are_valid() {
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn bad_publishers_are_refused_with_the_key_named() {
        let hash = "a".repeat(64);
        let mut cfg = Config {
            publishers: vec![publisher("a", &hash), publisher("a", &"b".repeat(64))],
            ..Config::default()
        };
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("publishers[1].id")
        );
        cfg.publishers = vec![publisher("a", "secret-key")];
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("key_sha256")
        );
        let mut p = publisher("a", &hash);
        p.event_types = vec!["lead.deleted".into()];
        cfg.publishers = vec![p];
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("lead.deleted")
        );
    }

    #[test]
    fn star_allows_every_type() {
        let mut p = publisher("a", &"a".repeat(64));
        p.event_types = vec!["*".into()];
        assert_eq!(p.allowed_types().len(), EventType::ALL.len());
    }
}
