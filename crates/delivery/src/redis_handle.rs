//! [`RedisHandle`]: the one Redis connection the delivery engine's Redis parts share.
//!
//! The same pattern as `handoff_idempotency::Store`: one multiplexed `ConnectionManager`, opened
//! lazily on the first operation (a writer whose Redis is down at start still starts and reports
//! not-ready), reconnecting by itself, and every operation bounded by `op_timeout`, connection
//! set-up included. Errors are the idempotency crate's [`StoreError`], so callers classify Redis
//! trouble the same way everywhere (`is_transient`, `is_connectivity`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use handoff_idempotency::{RedisConfig, StoreError};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

/// A cheap-to-clone handle to one lazily opened Redis connection, shared by the
/// [`crate::StaleGuard`] (and the pacer) of a writer so they cost one connection, not one each.
#[derive(Clone)]
pub struct RedisHandle {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` when the handle was built around an existing connection.
    client: Option<redis::Client>,
    conn: OnceCell<ConnectionManager>,
    op_timeout: Duration,
}

impl std::fmt::Debug for RedisHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHandle")
            .field("op_timeout", &self.inner.op_timeout)
            .field("connected", &self.inner.conn.initialized())
            .finish_non_exhaustive()
    }
}

impl RedisHandle {
    /// A handle for the Redis at `cfg.url`. Does no I/O: the connection is opened on the first
    /// operation. Fails only for a malformed URL.
    pub fn new(cfg: &RedisConfig) -> Result<RedisHandle, StoreError> {
        let client = redis::Client::open(cfg.url.as_str()).map_err(StoreError::InvalidUrl)?;
        Ok(RedisHandle {
            inner: Arc::new(Inner {
                client: Some(client),
                conn: OnceCell::new(),
                op_timeout: cfg.op_timeout,
            }),
        })
    }

    /// A handle around a connection the caller already has (shared with other components), with
    /// `op_timeout` bounding every operation made through this handle.
    pub fn from_connection(conn: ConnectionManager, op_timeout: Duration) -> RedisHandle {
        RedisHandle {
            inner: Arc::new(Inner {
                client: None,
                conn: OnceCell::new_with(Some(conn)),
                op_timeout,
            }),
        }
    }

    /// The shared connection, created on first use (inside the runtime, which the connection
    /// manager needs for its background task).
    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let op_timeout = self.inner.op_timeout;
        let conn = self
            .inner
            .conn
            .get_or_try_init(|| async {
                let Some(client) = &self.inner.client else {
                    // Unreachable: a handle without a client was built with its connection.
                    return Err(StoreError::Corrupt("redis handle has no connection".into()));
                };
                let config = ConnectionManagerConfig::new()
                    // Each connection attempt and each response is bounded like the operation.
                    .set_connection_timeout(Some(op_timeout))
                    .set_response_timeout(Some(op_timeout))
                    // Fail fast while Redis is away (as the idempotency store does): the caller
                    // turns the error into a delayed redelivery, and the next operation starts a
                    // new attempt, so at most one reconnection is in flight.
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_secs(1));
                ConnectionManager::new_lazy_with_config(client.clone(), config)
                    .map_err(StoreError::from)
            })
            .await?;
        Ok(conn.clone())
    }

    /// Runs one operation bounded by `op_timeout`, connection set-up included.
    pub(crate) async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let attempt = async {
            let conn = self.connection().await?;
            op(conn).await.map_err(StoreError::from)
        };
        match tokio::time::timeout(self.inner.op_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(self.inner.op_timeout)),
        }
    }
}
