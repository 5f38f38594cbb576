//! `handoff-kit`: the runtime every Handoff service shares, and nothing domain-specific.
//!
//! - [`config`]: defaults in code -> optional TOML file -> `HANDOFF_*` environment, validated at load;
//!   [`config::load_or_exit`] is the one call a `main.rs` makes.
//! - [`telemetry`]: JSON logs carrying span fields and `trace_id`, the `tracing-opentelemetry`
//!   layer, optional OTLP export, the W3C propagator; [`telemetry::init_for_tests`] for tests.
//! - [`metrics`]: the process-wide Prometheus recorder behind the `metrics` macros.
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz` and the [`admin::Readiness`] checks behind them.
//! - [`shutdown`]: SIGTERM/SIGINT to a `CancellationToken`, and bounded drains.
//!
//! A service's `main` typically reads: load config, `telemetry::init`, build components and register
//! their readiness checks, `shutdown::cancel_on_signal(token)`, spawn `admin::serve`, run until the
//! token is cancelled, `readiness.set_draining()`, `shutdown::drain(...)` each component, drop the
//! telemetry guard.

pub mod admin;
pub mod config;
pub mod metrics;
pub mod shutdown;
pub mod telemetry;

pub use tokio_util::sync::CancellationToken;

/// Every service allocates through mimalloc: per message they build and drop
/// many small buffers (JSON values, protobuf, span data) from several threads,
/// where glibc's malloc spent about a sixth of ingest's CPU (measured with
/// `perf` under `make bench`). Linking this crate is enough.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
