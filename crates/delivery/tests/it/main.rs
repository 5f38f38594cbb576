//! Integration tests for `handoff-delivery` against the real Redis (`HANDOFF_TEST_REDIS_URL`,
//! default `redis://127.0.0.1:6379/`). Every test works under its own random namespace and deletes
//! its keys at the end; keys a failed test leaves behind all carry TTLs.

mod auth;
mod pacing;
mod rest;
mod stale;

use std::time::Duration;

use handoff_delivery::RedisHandle;
use handoff_idempotency::RedisConfig;
use handoff_test_support as support;

/// A fresh namespace, a [`RedisHandle`] to the test Redis and a raw connection for looking behind
/// the component's back.
pub struct Fixture {
    pub ns: String,
    pub redis: RedisHandle,
    pub raw: redis::aio::MultiplexedConnection,
}

impl Fixture {
    pub async fn new() -> Fixture {
        support::init_telemetry();
        let ns = support::namespace();
        let cfg = RedisConfig {
            url: support::redis_url(),
            op_timeout: Duration::from_secs(2),
        };
        let redis = RedisHandle::new(&cfg).expect("valid url");
        let raw = redis::Client::open(support::redis_url())
            .expect("valid url")
            .get_multiplexed_async_connection()
            .await
            .expect("the test Redis is up");
        Fixture { ns, redis, raw }
    }

    /// Milliseconds to live of `key` (-2: missing, -1: no TTL).
    pub async fn pttl(&mut self, key: &str) -> i64 {
        redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut self.raw)
            .await
            .expect("PTTL")
    }

    /// One field of the hash at `key`.
    pub async fn hget(&mut self, key: &str, field: &str) -> Option<String> {
        redis::cmd("HGET")
            .arg(key)
            .arg(field)
            .query_async(&mut self.raw)
            .await
            .expect("HGET")
    }

    pub async fn cleanup(self) {
        support::cleanup_redis(&self.ns).await;
    }
}
