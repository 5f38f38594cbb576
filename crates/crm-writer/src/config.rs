//! The crm-writer's configuration: defaults that work against local RabbitMQ, Redis and the
//! sandbox CRM, then an optional TOML file, then `HANDOFF_*` environment variables (see
//! `handoff_kit::config`). `crm-writer.example.toml` beside this crate documents every key.

use std::net::SocketAddr;
use std::path::PathBuf;

use handoff_bus::BusConfig;

use handoff_delivery::{
    AuthConfig, HttpConfig, OwnershipConfig, PacingConfig, RestSettings, RetryPolicy, SecretSource,
    StaleConfig,
};
use handoff_idempotency::{DedupeConfig, LedgerConfig, RedisConfig};
use handoff_kit::admin::AdminConfig;
use handoff_kit::config::{ConfigError, Validate, check_namespace};
use handoff_kit::shutdown::ShutdownConfig;
use handoff_kit::telemetry::TelemetryConfig;
use serde::{Deserialize, Serialize};

use crate::routes::RoutesConfig;

/// Everything the crm-writer reads at start-up.
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
    /// Which destination the writer feeds: `hubspot` (the default) or `rest`.
    pub adapter: AdapterKind,
    /// The CRM: where it is, its credentials, its quota and timeouts.
    pub hubspot: HubSpotSettings,
    /// An internal tool instead of HubSpot (`adapter = "rest"`): its URL, credentials, quota and
    /// request templates per event type.
    pub rest: RestSettings,
    /// Transient failures: full-jitter backoff through the broker's delay queues.
    pub retry: RetryPolicy,
    /// Which system owns which CRM field; a writer never overwrites another owner's field.
    pub ownership: OwnershipConfig,
    /// The stale-update guard's memory of each record's newest event.
    pub stale: StaleConfig,
    /// What each event type does in the CRM.
    pub routes: RoutesConfig,
}

/// The destination kinds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdapterKind {
    #[default]
    HubSpot,
    Rest,
}

/// `[hubspot]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubSpotSettings {
    /// HubSpot's API (`https://api.hubapi.com`); the sandbox by default.
    pub base_url: String,
    /// `kind = "static"` with a private-app token, or `kind = "oauth2"`. The default reads a
    /// private-app token from `HUBSPOT_ACCESS_TOKEN`.
    pub auth: AuthConfig,
    /// The portal's quota, shared by every replica through Redis.
    pub pacing: PacingConfig,
    pub http: HttpConfig,
}

impl Default for HubSpotSettings {
    fn default() -> Self {
        HubSpotSettings {
            base_url: "http://127.0.0.1:8090".to_owned(),
            auth: AuthConfig::Static {
                token: SecretSource {
                    env: Some("HUBSPOT_ACCESS_TOKEN".to_owned()),
                    file: None::<PathBuf>,
                    value: None,
                },
            },
            pacing: PacingConfig::default(),
            http: HttpConfig::default(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            namespace: "handoff".to_owned(),
            // 9090 ingest, 9091 normalizer: each service has its own so `make run` fits one host.
            admin: AdminConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 9092)),
            },
            bus: BusConfig::default(),
            redis: RedisConfig::default(),
            // The lease must outlast one event's writes, 429 waits included
            // (`http.max_rate_limit_wait`, 60 s by default), or a redelivery could write twice.
            dedupe: DedupeConfig {
                lease: std::time::Duration::from_secs(180),
                ..DedupeConfig::default()
            },
            ledger: LedgerConfig::default(),
            shutdown: ShutdownConfig::default(),
            telemetry: TelemetryConfig::default(),
            adapter: AdapterKind::default(),
            hubspot: HubSpotSettings::default(),
            rest: RestSettings::default(),
            retry: RetryPolicy::default(),
            ownership: OwnershipConfig::default(),
            stale: StaleConfig::default(),
            routes: RoutesConfig::default(),
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        check_namespace(&self.namespace)?;
        let check = |key: &str, result: Result<(), String>| {
            result.map_err(|reason| ConfigError::invalid(key, reason))
        };
        check("bus", self.bus.validate())?;
        check("redis", self.redis.check())?;
        if !(self.hubspot.base_url.starts_with("http://")
            || self.hubspot.base_url.starts_with("https://"))
        {
            return Err(ConfigError::invalid(
                "hubspot.base_url",
                format!("{:?} is not an http(s) URL", self.hubspot.base_url),
            ));
        }
        match self.adapter {
            AdapterKind::HubSpot => check("hubspot.auth", self.hubspot.auth.validate())?,
            AdapterKind::Rest => self
                .rest
                .validate()
                .map_err(|(key, reason)| ConfigError::invalid(key, reason))?,
        }
        check("hubspot.pacing", self.hubspot.pacing.validate())?;
        check("hubspot.http", self.hubspot.http.validate())?;
        check("retry", self.retry.validate())?;
        check("ownership", self.ownership.validate())?;
        check("stale", self.stale.validate())?;
        check("routes", self.routes.validate())?;
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
    fn a_bad_value_fails_with_its_key_named() {
        let err = handoff_kit::config::load_with_env::<Config>(
            None,
            &[("HANDOFF_RETRY__MAX_ATTEMPTS", "0")],
        )
        .expect_err("zero attempts");
        assert!(err.to_string().starts_with("retry"), "{err}");
    }

    #[test]
    fn the_example_file_is_the_defaults() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crm-writer.example.toml");
        let cfg: Config = handoff_kit::config::load_with_env(Some(std::path::Path::new(path)), &[])
            .expect("the example loads and validates");
        let defaults = Config::default();
        assert_eq!(cfg.hubspot.pacing, defaults.hubspot.pacing);
        assert_eq!(cfg.hubspot.http, defaults.hubspot.http);
        assert_eq!(cfg.retry, defaults.retry);
        assert_eq!(cfg.dedupe, defaults.dedupe);
        assert_eq!(cfg.ownership, defaults.ownership);
        assert_eq!(cfg.routes, defaults.routes);
        assert_eq!(cfg.stale, defaults.stale);
    }

    #[test]
    fn a_rest_route_for_an_unknown_event_type_fails() {
        let toml = r#"
            adapter = "rest"
            [[rest.routes]]
            event_type = "lead.create"
            method = "POST"
            path = "/leads"
        "#;
        let path = std::env::temp_dir().join(format!("crm-writer-{}.toml", std::process::id()));
        std::fs::write(&path, toml).expect("write");
        let err = handoff_kit::config::load_with_env::<Config>(Some(&path), &[])
            .expect_err("typo in the event type");
        let _ = std::fs::remove_file(&path);
        assert!(err.to_string().contains("lead.create"), "{err}");
    }

    #[test]
    fn env_overrides_the_crm_url() {
        let cfg: Config = handoff_kit::config::load_with_env(
            None,
            &[("HANDOFF_HUBSPOT__BASE_URL", "https://api.hubapi.com")],
        )
        .expect("load");
        assert_eq!(cfg.hubspot.base_url, "https://api.hubapi.com");
    }

    #[test]
    fn a_custom_property_map_with_a_half_wildcard_fails() {
        let mut cfg = Config::default();
        cfg.routes
            .values
            .custom_properties
            .insert("*".into(), "everything".into());
        let err = cfg.validate().expect_err("\"*\" maps only to \"*\"");
        assert!(err.to_string().contains("custom_properties"), "{err}");
        cfg.routes.values.custom_properties =
            [("*".to_owned(), "*".to_owned())].into_iter().collect();
        assert!(cfg.validate().is_ok());
    }
}
