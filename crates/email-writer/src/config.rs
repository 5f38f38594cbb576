//! The email-writer's configuration: defaults that work against local RabbitMQ, Redis and the
//! sandbox's Mailchimp, then an optional TOML file, then `HANDOFF_*` environment variables (see
//! `handoff_kit::config`). `email-writer.example.toml` beside this crate documents every key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

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

use crate::mailchimp::DESTINATION;
use crate::routes::RoutesConfig;

/// Everything the email-writer reads at start-up.
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
    /// Which destination the writer feeds: `mailchimp` (the default) or `rest`.
    pub adapter: AdapterKind,
    /// The email platform: where it is, the audience, the API key, pacing and timeouts.
    pub mailchimp: MailchimpSettings,
    /// An internal tool instead of Mailchimp (`adapter = "rest"`): its URL, credentials, quota
    /// and request templates per event type.
    pub rest: RestSettings,
    /// Transient failures: full-jitter backoff through the broker's delay queues.
    pub retry: RetryPolicy,
    /// Which system owns which merge field; a writer never overwrites another owner's field.
    pub ownership: OwnershipConfig,
    /// The stale-update guard's memory of each member field's newest event.
    pub stale: StaleConfig,
    /// What each event type does to the member.
    pub routes: RoutesConfig,
}

/// The destination kinds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdapterKind {
    #[default]
    Mailchimp,
    Rest,
}

/// `[mailchimp]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailchimpSettings {
    /// The Marketing API's root, without `/3.0`: `https://<dc>.api.mailchimp.com`, where `<dc>`
    /// is the API key's suffix after the dash (`us21` for `…-us21`); the sandbox by default.
    pub base_url: String,
    /// The audience (list) id members are written to; the sandbox binary's list (`sandbox-list`) by default.
    pub list_id: String,
    /// `kind = "basic"` with the API key as the password (any username). The default reads the
    /// key from `MAILCHIMP_API_KEY`.
    pub auth: AuthConfig,
    /// A ceiling on the request rate, shared by every replica through Redis and lowered on
    /// 429s. Mailchimp publishes no request-rate quota, only the connection limit below.
    pub pacing: PacingConfig,
    /// Timeouts and requests in flight. Mailchimp allows 10 simultaneous connections per API
    /// key and answers the 11th 429, so `max_in_flight` is 10 for one process: with N replicas
    /// on one key it must be 10 / N (rounded down).
    pub http: HttpConfig,
}

impl Default for MailchimpSettings {
    fn default() -> Self {
        MailchimpSettings {
            base_url: "http://127.0.0.1:8090".to_owned(),
            list_id: "sandbox-list".to_owned(),
            auth: AuthConfig::Basic {
                username: "handoff".to_owned(),
                password: SecretSource::from_env("MAILCHIMP_API_KEY"),
            },
            pacing: PacingConfig {
                limit: 100,
                per: Duration::from_secs(1),
                // The connection limit, not the pacer, is what spreads requests out: after an
                // idle spell a full set of connections may start at once.
                burst: 10,
                ..PacingConfig::default()
            },
            http: HttpConfig {
                // Mailchimp's connection limit answers 429 without Retry-After; a connection
                // frees up within one request's time, so a second is plenty.
                default_retry_after: Duration::from_secs(1),
                max_in_flight: 10,
                ..HttpConfig::default()
            },
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            namespace: "handoff".to_owned(),
            // 9090 ingest, 9091 normalizer, 9092 crm-writer: each service has its own so
            // `make run` fits one host.
            admin: AdminConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 9093)),
            },
            bus: BusConfig::default(),
            redis: RedisConfig::default(),
            // The lease must outlast one event's writes, 429 waits included
            // (`http.max_rate_limit_wait`, 60 s by default), or a redelivery could write twice.
            // It is also the member-event claim's lease.
            dedupe: DedupeConfig {
                lease: Duration::from_secs(180),
                ..DedupeConfig::default()
            },
            ledger: LedgerConfig::default(),
            shutdown: ShutdownConfig::default(),
            telemetry: TelemetryConfig::default(),
            adapter: AdapterKind::default(),
            mailchimp: MailchimpSettings::default(),
            rest: RestSettings::default(),
            retry: RetryPolicy::default(),
            ownership: OwnershipConfig {
                // Only the billing system knows the plan for sure (as on the CRM contact).
                destinations: BTreeMap::from([(
                    DESTINATION.to_owned(),
                    BTreeMap::from([("PLAN".to_owned(), "billing".to_owned())]),
                )]),
            },
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
        let mc = &self.mailchimp;
        if !(mc.base_url.starts_with("http://") || mc.base_url.starts_with("https://")) {
            return Err(ConfigError::invalid(
                "mailchimp.base_url",
                format!("{:?} is not an http(s) URL", mc.base_url),
            ));
        }
        if mc.base_url.trim_end_matches('/').ends_with("/3.0") {
            return Err(ConfigError::invalid(
                "mailchimp.base_url",
                "leave out /3.0: the writer adds the API version to every path",
            ));
        }
        // It goes into request paths and Redis keys: nothing that could change either.
        let list_ok = !mc.list_id.is_empty()
            && mc
                .list_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !list_ok {
            return Err(ConfigError::invalid(
                "mailchimp.list_id",
                format!(
                    "{:?} must be non-empty letters, digits, '-' or '_'",
                    mc.list_id
                ),
            ));
        }
        match self.adapter {
            AdapterKind::Mailchimp => check("mailchimp.auth", mc.auth.validate())?,
            AdapterKind::Rest => self
                .rest
                .validate()
                .map_err(|(key, reason)| ConfigError::invalid(key, reason))?,
        }
        check("mailchimp.pacing", mc.pacing.validate())?;
        check("mailchimp.http", mc.http.validate())?;
        check("retry", self.retry.validate())?;
        check("ownership", self.ownership.validate())?;
        check("stale", self.stale.validate())?;
        // "routes.merge_fields.FNAME: …": the full key, as the route's own message starts with
        // its sub-key.
        self.routes
            .validate()
            .map_err(|reason| ConfigError::Invalid(format!("routes.{reason}")))?;
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
    fn the_example_file_is_the_defaults() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/email-writer.example.toml");
        let cfg: Config = handoff_kit::config::load_with_env(Some(std::path::Path::new(path)), &[])
            .expect("the example loads and validates");
        // Every key, secrets' sources included (a literal would show as "[redacted]").
        let loaded = serde_json::to_value(&cfg).expect("json");
        let defaults = serde_json::to_value(Config::default()).expect("json");
        assert_eq!(loaded, defaults);
    }

    #[test]
    fn the_example_file_names_every_key() {
        fn keys(prefix: &str, value: &serde_json::Value, out: &mut Vec<String>) {
            if let serde_json::Value::Object(map) = value {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    // Tables of names (merge fields, owners, headers) are data, not keys.
                    if v.is_object() && !key.ends_with("headers") {
                        keys(&key, v, out);
                    } else {
                        out.push(key);
                    }
                }
            }
        }
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/email-writer.example.toml"
        ))
        .expect("example");
        let example: toml::Value = toml::from_str(&text).expect("toml");
        let mut in_example = Vec::new();
        keys(
            "",
            &serde_json::to_value(example).expect("json"),
            &mut in_example,
        );
        let mut in_defaults = Vec::new();
        keys(
            "",
            &serde_json::to_value(Config::default()).expect("json"),
            &mut in_defaults,
        );
        // `[[rest.routes]]` is shown commented out: the default has none.
        let missing: Vec<&String> = in_defaults
            .iter()
            .filter(|k| !in_example.contains(k) && k.as_str() != "rest.routes")
            .collect();
        assert!(
            missing.is_empty(),
            "keys the example leaves out: {missing:?}"
        );
    }

    #[test]
    fn bad_values_fail_with_their_key_named() {
        let rows: &[(&[(&str, &str)], &str)] = &[
            (&[("HANDOFF_RETRY__MAX_ATTEMPTS", "0")], "retry"),
            (
                &[("HANDOFF_MAILCHIMP__LIST_ID", "a/b")],
                "mailchimp.list_id",
            ),
            (
                &[("HANDOFF_MAILCHIMP__BASE_URL", "us21.api.mailchimp.com")],
                "mailchimp.base_url",
            ),
            (
                &[(
                    "HANDOFF_MAILCHIMP__BASE_URL",
                    "https://us21.api.mailchimp.com/3.0",
                )],
                "mailchimp.base_url",
            ),
            (
                &[("HANDOFF_MAILCHIMP__HTTP__MAX_IN_FLIGHT", "0")],
                "mailchimp.http",
            ),
            (
                &[("HANDOFF_ROUTES__PAYMENT_FAILED__EVENT", "x")],
                "routes.payment_failed.event",
            ),
            (&[("HANDOFF_ADAPTER", "sendgrid")], "adapter"),
        ];
        for (env, key) in rows {
            let err = handoff_kit::config::load_with_env::<Config>(None, env).expect_err("refused");
            assert!(err.to_string().contains(key), "{env:?}: {err}");
        }
    }

    #[test]
    fn the_api_key_never_comes_from_a_handoff_variable() {
        let cfg = Config::default();
        match &cfg.mailchimp.auth {
            AuthConfig::Basic { password, .. } => {
                assert_eq!(password.env.as_deref(), Some("MAILCHIMP_API_KEY"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(cfg.mailchimp.http.max_in_flight, 10);
        assert_eq!(cfg.admin.listen.port(), 9093);
    }

    #[test]
    fn env_overrides_the_mailchimp_url() {
        let cfg: Config = handoff_kit::config::load_with_env(
            None,
            &[
                (
                    "HANDOFF_MAILCHIMP__BASE_URL",
                    "https://us21.api.mailchimp.com",
                ),
                ("HANDOFF_MAILCHIMP__LIST_ID", "a1b2c3d4e5"),
            ],
        )
        .expect("load");
        assert_eq!(cfg.mailchimp.base_url, "https://us21.api.mailchimp.com");
        assert_eq!(cfg.mailchimp.list_id, "a1b2c3d4e5");
    }
}
