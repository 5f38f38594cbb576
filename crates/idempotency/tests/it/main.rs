//! Integration tests for `handoff-idempotency` against the real Redis (`HANDOFF_TEST_REDIS_URL`,
//! default `redis://127.0.0.1:6379/`). Every test works under its own random namespace and deletes
//! its keys at the end; keys a failed test leaves behind all carry TTLs.

mod batching;
mod claims;
mod email_index;
mod ledger;
mod outages;

use std::time::Duration;

use handoff_idempotency::{Claim, ClaimToken, IdempotencyKey, RedisConfig, Store};
use handoff_test_support as support;

/// A store in a fresh namespace plus a raw connection for looking behind its back.
pub struct Fixture {
    pub store: Store,
    pub ns: String,
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
        let store = Store::new(&cfg, &ns).expect("valid url");
        let raw = redis::Client::open(support::redis_url())
            .expect("valid url")
            .get_multiplexed_async_connection()
            .await
            .expect("the test Redis is up");
        Fixture { store, ns, raw }
    }

    /// Claims `key`, which must be free: the start of every test about what follows a claim.
    pub async fn acquire(
        &self,
        key: &IdempotencyKey,
        fingerprint: &str,
        lease: Duration,
    ) -> ClaimToken {
        let Claim::Acquired(token) = self
            .store
            .claim(key, fingerprint, lease)
            .await
            .expect("the claim reaches Redis")
        else {
            panic!("first claim acquires");
        };
        token
    }

    /// Milliseconds to live of `key` (-2: missing, -1: no TTL).
    pub async fn pttl(&mut self, key: &str) -> i64 {
        redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut self.raw)
            .await
            .expect("PTTL")
    }

    /// The raw value stored at `key`.
    pub async fn get(&mut self, key: &str) -> Option<String> {
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.raw)
            .await
            .expect("GET")
    }

    pub async fn cleanup(self) {
        support::cleanup_redis(&self.ns).await;
    }
}
