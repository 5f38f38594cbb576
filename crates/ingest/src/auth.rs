//! Publisher authentication and per-publisher rate limits.
//!
//! Keys are looked up by their SHA-256, so the configuration never holds a
//! key and a leaked config file cannot be used to publish.

use std::collections::{BTreeSet, HashMap};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use handoff_events::EventType;
use sha2::{Digest, Sha256};

use crate::config::PublisherConfig;
use crate::error::ApiError;

/// An authenticated publisher.
pub struct Publisher {
    pub id: String,
    allowed: BTreeSet<EventType>,
    /// Per replica: with N replicas behind a load balancer the fleet admits up
    /// to N times the rate. Good enough as an abuse guard; exact fleet-wide
    /// quotas belong to the destinations' pacing, which lives in Redis.
    limiter: DefaultDirectRateLimiter,
}

impl Publisher {
    /// 403 unless this publisher may send `event_type`.
    pub fn check_allowed(&self, event_type: EventType) -> Result<(), ApiError> {
        if self.allowed.contains(&event_type) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "publisher {:?} may not send {event_type} events",
                self.id
            )))
        }
    }

    /// Takes `n` units from the publisher's budget, or says how long to wait.
    pub fn check_rate(&self, n: u32) -> Result<(), ApiError> {
        let Some(n) = NonZeroU32::new(n) else {
            return Ok(());
        };
        match self.limiter.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(ApiError::rate_limited(
                not_until.wait_time_from(DefaultClock::default().now()),
            )),
            // More than the burst at once can never pass: say so with a long wait.
            Err(_) => Err(ApiError::rate_limited(Duration::from_secs(1))),
        }
    }
}

/// All configured publishers, by key hash.
#[derive(Clone)]
pub struct Publishers {
    by_key_hash: Arc<HashMap<String, Arc<Publisher>>>,
}

impl Publishers {
    /// Builds the registry; the config was validated, so values are in range.
    pub fn new(configs: &[PublisherConfig]) -> Self {
        let by_key_hash = configs
            .iter()
            .map(|p| {
                let rate = NonZeroU32::new(p.rate_per_second).unwrap_or(NonZeroU32::MIN);
                let burst = NonZeroU32::new(p.burst).unwrap_or(NonZeroU32::MIN);
                let publisher = Publisher {
                    id: p.id.clone(),
                    allowed: p.allowed_types(),
                    limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
                };
                (p.key_sha256.to_ascii_lowercase(), Arc::new(publisher))
            })
            .collect();
        Publishers {
            by_key_hash: Arc::new(by_key_hash),
        }
    }

    /// How many publishers are configured.
    pub fn len(&self) -> usize {
        self.by_key_hash.len()
    }

    /// Whether no publisher is configured (then every request is 401).
    pub fn is_empty(&self) -> bool {
        self.by_key_hash.is_empty()
    }

    /// The publisher behind `Authorization: Bearer <key>`, or 401.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Publisher>, ApiError> {
        let value = headers.get(AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthorized(
                "the Authorization header is missing; send `Authorization: Bearer <api key>`",
            )
        })?;
        let value = value
            .to_str()
            .map_err(|_| ApiError::unauthorized("the Authorization header is not valid text"))?;
        let key = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be `Bearer <api key>`")
            })?;
        self.by_key_hash
            .get(&key_sha256(key))
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("the API key is not valid"))
    }
}

/// Hex SHA-256 of an API key, as configured in `publishers[].key_sha256`.
pub fn key_sha256(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn registry() -> Publishers {
        Publishers::new(&[PublisherConfig {
            id: "billing".into(),
            key_sha256: key_sha256("s3cret"),
            event_types: vec!["payment.failed".into()],
            rate_per_second: 1,
            burst: 2,
        }])
    }

    fn bearer(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(v).expect("header"));
        h
    }

    #[test]
    fn keys_are_checked_by_hash() {
        let reg = registry();
        assert_eq!(
            reg.authenticate(&bearer("Bearer s3cret"))
                .map(|p| p.id.clone())
                .ok(),
            Some("billing".into())
        );
        assert!(reg.authenticate(&bearer("Bearer nope")).is_err());
        assert!(reg.authenticate(&bearer("Basic s3cret")).is_err());
        assert!(reg.authenticate(&HeaderMap::new()).is_err());
    }

    #[test]
    fn event_types_and_rates_are_enforced() {
        let p = registry()
            .authenticate(&bearer("Bearer s3cret"))
            .expect("auth");
        assert!(p.check_allowed(EventType::PaymentFailed).is_ok());
        assert_eq!(
            p.check_allowed(EventType::LeadCreated).unwrap_err().status,
            403
        );
        assert!(p.check_rate(1).is_ok());
        assert!(p.check_rate(1).is_ok());
        let err = p.check_rate(1).unwrap_err();
        assert_eq!(err.status, 429);
        assert!(err.retry_after.is_some());
        assert_eq!(p.check_rate(3).unwrap_err().status, 429);
    }
}
