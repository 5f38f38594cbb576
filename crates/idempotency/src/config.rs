//! [`RedisConfig`]: where Redis is and how long any single operation may take.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Connection settings for the idempotency store (`[redis]` in a service's TOML file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/db` (or `rediss://` for TLS). Defaults to the local Redis.
    pub url: String,
    /// Upper bound on every store operation, connection set-up included (humantime, e.g. `"2s"`).
    /// A dead or stalled Redis must turn into a quick error (and a 503 / a delayed retry), never a
    /// hung request; two seconds is far above a healthy round trip (tens of microseconds) and far
    /// below an HTTP client's patience.
    #[serde(with = "humantime_serde")]
    pub op_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379/".to_owned(),
            op_timeout: Duration::from_secs(2),
        }
    }
}

impl RedisConfig {
    /// How every Handoff connection to Redis behaves: each connection attempt and each
    /// response bounded like an operation (`op_timeout`), and one quick retry while Redis is
    /// away before the error goes back to the caller (a 503 or a delayed redelivery); the next
    /// operation starts a new attempt, so at most one reconnection is in flight.
    pub fn connection_manager_config(&self) -> redis::aio::ConnectionManagerConfig {
        redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.op_timeout))
            .set_response_timeout(Some(self.op_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1))
    }

    /// Checks the values serde cannot: the URL parses as a Redis URL and the timeout is not zero.
    /// The message names the sub-key (`url: ...`, `op_timeout: ...`); a service's `Validate`
    /// prefixes it with its own key, e.g. `redis.url: ...`.
    pub fn check(&self) -> Result<(), String> {
        if let Err(err) = redis::Client::open(self.url.as_str()) {
            return Err(format!("url: not a valid Redis URL ({err})"));
        }
        if self.op_timeout.is_zero() {
            return Err("op_timeout: must be more than zero".to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_urls_are_named() {
        assert_eq!(RedisConfig::default().check(), Ok(()));
        let bad = RedisConfig {
            url: "http://nope".into(),
            ..RedisConfig::default()
        };
        assert!(bad.check().unwrap_err().starts_with("url:"));
        let zero = RedisConfig {
            op_timeout: Duration::ZERO,
            ..RedisConfig::default()
        };
        assert!(zero.check().unwrap_err().starts_with("op_timeout:"));
    }

    #[test]
    fn humantime_round_trip() {
        let json = serde_json::to_string(&RedisConfig::default()).unwrap();
        assert!(json.contains("\"2s\""), "{json}");
        let back: RedisConfig = serde_json::from_str(r#"{"op_timeout":"250ms"}"#).unwrap();
        assert_eq!(back.op_timeout, Duration::from_millis(250));
        assert_eq!(back.url, RedisConfig::default().url);
    }
}
