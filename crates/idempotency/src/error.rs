//! [`StoreError`]: what can go wrong talking to Redis, classified so callers know whether to retry.

use std::time::Duration;

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The configured URL is not a Redis URL (the only error [`crate::Store::new`] returns).
    #[error("invalid redis url: {0}")]
    InvalidUrl(#[source] redis::RedisError),
    /// Redis cannot be reached or the connection broke. Transient: the store reconnects by itself.
    #[error("redis unavailable: {0}")]
    Unavailable(#[source] redis::RedisError),
    /// The operation did not finish within `op_timeout`. Transient.
    #[error("redis operation timed out after {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error (script error, wrong type, out of memory, read-only replica).
    #[error("redis error: {0}")]
    Redis(#[source] redis::RedisError),
    /// A record does not have the shape this crate writes (another writer, or a bug).
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// True when trying again later may succeed (unavailable, timed out, or a server-side error
    /// such as `LOADING` or `READONLY` during a failover); false for a bad URL or a corrupt record.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_) | StoreError::Timeout(_) | StoreError::Redis(_)
        )
    }

    /// True when the error says Redis itself could not be reached in time (not merely that it
    /// answered with an error); these flip [`crate::Store::is_healthy`] to false.
    pub fn is_connectivity(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Timeout(_))
    }
}

impl From<redis::RedisError> for StoreError {
    fn from(err: redis::RedisError) -> Self {
        if err.is_io_error()
            || err.is_connection_dropped()
            || err.is_connection_refusal()
            || err.is_timeout()
        {
            StoreError::Unavailable(err)
        } else {
            StoreError::Redis(err)
        }
    }
}
