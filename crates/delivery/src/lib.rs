//! `handoff-delivery`: the delivery engine the writers (crm-writer, email-writer) share.
//!
//! Each part is small, has one job and knows no vendor's HTTP client:
//!
//! - `backoff.rs`: [`RetryPolicy`], full-jitter delays and the retry-or-give-up decision for
//!   transient failures (pure; the caller passes the clock and the random source).
//! - `classify.rs`: [`classify`], the per-[`Vendor`] table from an HTTP answer (status,
//!   `Retry-After`, error body) to a [`Verdict`]; [`Verdict::from_io`] for answers that never came.
//! - `stale.rs`: [`StaleGuard`], the newest `occurred_at` per (destination, record) in Redis, so
//!   an older event never overwrites a newer one.
//! - `pacing.rs`: [`Pacer`], a GCRA rate limiter per (destination, credential) in Redis, shared
//!   by every replica, whose rate adapts: down after a 429 ([`Pacer::penalize`]), back up after
//!   clean periods, slower when the vendor's headers say few requests are left
//!   ([`Pacer::observe`]).
//! - `auth.rs`: [`Credentials`] from [`AuthConfig`], static tokens and OAuth2 access tokens
//!   refreshed ahead of expiry, one token shared by every replica through Redis; secrets from
//!   env or mounted files ([`SecretSource`]), never logged.
//! - `ownership.rs`: [`OwnershipConfig`], which system owns which destination field;
//!   [`OwnershipConfig::writable`] drops the fields a writer does not own (pure).
//! - `ratelimit_headers.rs`: [`RateInfo`], a vendor's rate-limit headers (HubSpot's
//!   `X-HubSpot-RateLimit-*`, `Retry-After`) read into numbers the pacer can use (pure).
//! - `redis_handle.rs`: [`RedisHandle`], the lazily opened connection the Redis parts share.
//! - `rest.rs` / `rest_adapter.rs`: the generic REST adapter ([`RestAdapter`], [`RestSettings`])
//!   and its request templates, for an internal tool instead of a vendor's API.
//! - `writer.rs`: [`WriterStage`], what every writer does around its calls: decode, claim,
//!   report `*.synced`, complete with the ledger, and sort failures into ack / retry / defer /
//!   dead letter; the writers' shared metrics.
//! - `service.rs`: [`serve`], a writer service's life (broker, Redis, admin endpoints, drain),
//!   and [`Destination::build`] from a settings section.
//!
//! Redis keys all carry the namespace prefix (`"{ns}:..."`), like the idempotency store's.

mod auth;
mod backoff;
mod classify;
mod engine;
mod ownership;
mod pacing;
mod ratelimit_headers;
mod redis_handle;
mod rest;
mod rest_adapter;
mod service;
mod stale;
pub mod writer;

pub use auth::{AuthConfig, AuthError, Credentials, OAuthGrant, SecretSource};
pub use backoff::{GiveUpReason, RetryDecision, RetryPolicy};
pub use classify::{IoFailure, Vendor, Verdict, classify, classify_at, parse_retry_after};
pub use engine::{ApiRequest, ApiResponse, CallError, Destination, HttpConfig};
pub use ownership::{Filtered, OwnershipConfig};
pub use pacing::{PaceKey, Pacer, PacingConfig, PacingError};
pub use ratelimit_headers::RateInfo;
pub use redis_handle::RedisHandle;
pub use rest::{
    EventMeta, RenderError, RenderedRequest, RestConfig, RestRoute, RestRouteConfig, RestRoutes,
    event_view,
};
pub use rest_adapter::{REST_DESTINATION, RestAdapter, RestBuildError, RestSettings};
pub use service::{
    BuildError, DestinationParts, ServeError, ServiceSettings, WriterRuntime, serve,
};
pub use stale::{Admission, FieldAdmission, StaleConfig, StaleError, StaleGuard};
pub use writer::{Claimed, EventIdentity, WriteError, WriterStage, occurred_at_ms};
