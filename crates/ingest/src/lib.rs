//! ingest: the HTTP front door of Handoff.
//!
//! A publisher POSTs a business event; ingest authenticates it
//! ([`auth`]), checks its structure against the v1 contract ([`contract`]),
//! dedupes on `event_id` and publishes a protobuf envelope to
//! `raw.<event_type>` with a broker confirm ([`accept`]), and only then
//! answers 202. Routes live in [`http`]; configuration in [`config`].
//!
//! [`run`] takes its listeners and a shutdown token, so tests start the real
//! service in-process on port 0.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod accept;
pub mod auth;
pub mod config;
pub mod contract;
pub mod error;
pub mod http;
pub mod metrics;

use std::time::Duration;

use anyhow::Context as _;
use handoff_bus::{Bus, Topology};
use handoff_idempotency::Store;
use handoff_kit::admin::Readiness;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::Config;

/// Runs ingest until `shutdown` is cancelled, then drains in-flight requests
/// (bounded by `shutdown.grace`) and closes the broker connection.
///
/// Starts even when RabbitMQ or Redis is down: `/readyz` says not-ready and
/// requests get 503 until they come back.
pub async fn run(
    cfg: Config,
    http_listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    handoff_kit::metrics::install();
    // The broker outlives the HTTP server: in-flight requests still need their confirms.
    let bus_shutdown = CancellationToken::new();
    let bus = Bus::start(
        cfg.bus.clone(),
        Topology::v1(&cfg.namespace),
        bus_shutdown.clone(),
    );
    let store = Store::new(&cfg.redis, &cfg.namespace).context("configuring Redis")?;
    store.spawn_health_monitor(Duration::from_secs(1), bus_shutdown.clone());

    let readiness = Readiness::new();
    let bus_ready = bus.clone();
    readiness.register("rabbitmq", move || bus_ready.is_ready());
    let store_ready = store.clone();
    readiness.register("redis", move || store_ready.is_healthy());
    let admin_shutdown = CancellationToken::new();
    let admin = tokio::spawn(handoff_kit::admin::serve(
        admin_listener,
        readiness.clone(),
        admin_shutdown.clone(),
    ));

    let publishers = auth::Publishers::new(&cfg.publishers);
    if publishers.is_empty() {
        warn!("No publishers are configured; every request will get 401.");
    }
    let state = http::AppState {
        publishers,
        acceptor: accept::Acceptor {
            bus: bus.clone(),
            store,
            lease: cfg.dedupe.lease,
            retention: cfg.dedupe.retention,
            ledger_ttl: cfg.ledger.ttl,
            retry_after: cfg.http.unavailable_retry_after,
        },
        body_limit: cfg.http.body_limit_bytes,
        batch_body_limit: cfg.http.batch_body_limit_bytes,
        batch_max_events: cfg.http.batch_max_events,
        request_timeout: cfg.http.request_timeout,
    };
    info!(
        listen = %http_listener.local_addr().context("reading the HTTP address")?,
        namespace = %cfg.namespace,
        "Ingest is listening."
    );

    let draining = readiness.clone();
    let stop_accepting = shutdown.clone();
    let server =
        axum::serve(http_listener, http::router(state)).with_graceful_shutdown(async move {
            stop_accepting.cancelled().await;
            draining.set_draining();
            info!("Shutting down: no new connections, finishing requests in flight.");
        });
    let server = tokio::spawn(server.into_future());
    shutdown.cancelled().await;
    let drained =
        handoff_kit::shutdown::drain("in-flight HTTP requests", cfg.shutdown.grace, server).await;

    bus.close().await;
    bus_shutdown.cancel();
    admin_shutdown.cancel();
    let _ = admin.await;
    info!(drained, "Ingest stopped.");
    Ok(())
}
