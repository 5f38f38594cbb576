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
    /// The client and its reconnect policy ([`RedisConfig::connection_manager_config`]);
    /// `None` when the handle was built around an existing connection.
    client: Option<(redis::Client, ConnectionManagerConfig)>,
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
                client: Some((client, cfg.connection_manager_config())),
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
        let conn = self
            .inner
            .conn
            .get_or_try_init(|| async {
                let Some((client, config)) = &self.inner.client else {
                    // Unreachable: a handle without a client was built with its connection.
                    return Err(StoreError::Corrupt("redis handle has no connection".into()));
                };
                ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                    .map_err(StoreError::from)
            })
            .await?;
        Ok(conn.clone())
    }

    /// Runs one operation bounded by `op_timeout`, connection set-up included.
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
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
