//! The sandbox's configuration: defaults that let `make run` work with no file (HubSpot token
//! `pat-local-dev` with HubSpot's default quota of 100 requests per 10 s; Mailchimp API key
//! `sandbox-key-us1`, audience `sandbox-list`, 10 connections per key; no faults), then an optional
//! TOML file, then `HANDOFF_*` environment variables (see `handoff_kit::config`). Validated before
//! anything binds.
//!
//! ```toml
//! [http]
//! listen = "127.0.0.1:8090"      # the vendor APIs and the /_sandbox control API
//! [admin]
//! listen = "127.0.0.1:9190"      # /healthz /readyz /metrics
//! [hubspot]
//! tokens = ["pat-local-dev"]
//! rate_limit = { requests = 100, per = "10s" }
//! [mailchimp]
//! api_keys = ["sandbox-key-us1"]  # basic-auth password, any username
//! lists = ["sandbox-list"]        # audiences; other list ids answer 404
//! max_connections = 10            # simultaneous requests per key; the next one gets 429
//! [faults]
//! seed = 7
//! latency = { fixed = "20ms", jitter = "10ms" }
//! ```

use std::net::SocketAddr;

use handoff_kit::admin::AdminConfig;
use handoff_kit::config::{ConfigError, Validate};
use handoff_kit::shutdown::ShutdownConfig;
use handoff_kit::telemetry::TelemetryConfig;
use serde::{Deserialize, Serialize};

use crate::faults::FaultConfig;
use crate::hubspot::HubSpotConfig;
use crate::mailchimp::MailchimpConfig;

/// Everything the sandbox reads at start-up.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the vendor APIs and `/_sandbox/*` are served.
    pub http: HttpConfig,
    /// `/healthz`, `/readyz`, `/metrics`; defaults to port 9190 so it never collides with a
    /// service's admin port 9090 on a laptop.
    pub admin: AdminConfig,
    pub shutdown: ShutdownConfig,
    pub telemetry: TelemetryConfig,
    /// The HubSpot CRM v3 stand-in.
    pub hubspot: HubSpotConfig,
    /// The Mailchimp Marketing API v3 stand-in.
    pub mailchimp: MailchimpConfig,
    /// Faults active from start-up; `/_sandbox/faults` changes them at run time and
    /// `/_sandbox/reset` goes back to these.
    pub faults: FaultConfig,
    pub request_log: RequestLogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http: HttpConfig::default(),
            admin: AdminConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 9190)),
            },
            shutdown: ShutdownConfig::default(),
            telemetry: TelemetryConfig::default(),
            hubspot: HubSpotConfig::default(),
            mailchimp: MailchimpConfig::default(),
            faults: FaultConfig::default(),
            request_log: RequestLogConfig::default(),
        }
    }
}

/// The public listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// `127.0.0.1:8090` by default: the sandbox has no business being reachable from elsewhere.
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
        }
    }
}

/// How much of the request log is kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RequestLogConfig {
    /// Entries kept for `/_sandbox/requests`; older ones are dropped so a long benchmark does not
    /// grow without bound. `/_sandbox/stats` is counted as requests arrive and stays exact anyway.
    pub capacity: usize,
}

impl Default for RequestLogConfig {
    fn default() -> Self {
        RequestLogConfig { capacity: 100_000 }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.request_log.capacity == 0 {
            return Err(ConfigError::invalid(
                "request_log.capacity",
                "must be positive",
            ));
        }
        self.hubspot.validate()?;
        self.mailchimp.validate()?;
        self.faults
            .validate()
            .map_err(|reason| ConfigError::invalid("faults", reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_load_from_toml_and_env() {
        assert!(Config::default().validate().is_ok());
        let dir = std::env::temp_dir().join(format!("sandbox-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("sandbox.toml");
        std::fs::write(
            &file,
            "[hubspot]\ntokens = [\"pat-a\"]\nrate_limit = { requests = 10, per = \"1s\" }\n\
             [faults]\nseed = 3\nerrors = { rate = 0.5 }\n",
        )
        .unwrap();
        let cfg: Config = handoff_kit::config::load_with_env(
            Some(&file),
            &[("HANDOFF_HTTP__LISTEN", "127.0.0.1:0")],
        )
        .unwrap();
        assert_eq!(cfg.hubspot.tokens, vec!["pat-a".to_owned()]);
        assert_eq!(cfg.hubspot.rate_limit.requests, 10);
        assert_eq!(cfg.faults.seed, Some(3));
        assert_eq!(cfg.http.listen.port(), 0);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bad_values_name_the_key() {
        let mut cfg = Config::default();
        cfg.hubspot.rate_limit.requests = 0;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("hubspot.rate_limit"), "{err}");
        let mut cfg = Config::default();
        cfg.faults.errors = Some(crate::faults::ErrorRate {
            rate: 2.0,
            statuses: vec![500],
        });
        assert!(cfg.validate().unwrap_err().to_string().contains("faults"));
    }
}
