//! normalizer: turns raw events into canonical ones.
//!
//! Consumes the `normalizer` stage queue (`raw.#`), normalizes each event's
//! raw JSON with [`handoff_normalize`] (emails, phones, countries, time
//! zones, attribution, enum maps from configuration, per-type validation,
//! schema-version upcasting) and publishes the canonical envelope, with the
//! same `event_id`, to `canonical.<event_type>`; it acks the raw message only
//! after the broker confirmed the canonical one. [`handler`] holds the
//! per-message logic and its order; [`config`] the settings, including the
//! RevOps maps under `[normalize]`.
//!
//! [`run`] takes its admin listener and a shutdown token, so tests start the
//! real service in-process.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod check;
pub mod config;
pub mod handler;
pub mod metrics;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use handoff_bus::{Bus, NORMALIZER, Topology};
use handoff_idempotency::Store;
use handoff_kit::admin::Readiness;
use handoff_normalize::Normalizer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use config::Config;

/// Runs the normalizer until `shutdown` is cancelled, then lets in-flight
/// messages finish (bounded by `bus.shutdown_grace`) and closes the broker
/// connection.
///
/// Starts even when RabbitMQ or Redis is down: `/readyz` says not-ready, and
/// consuming starts once the broker is there. Fails at once only on a bad
/// `[normalize]` map.
pub async fn run(
    cfg: Config,
    admin_listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    handoff_kit::metrics::install();
    let normalizer = Normalizer::new(&cfg.normalize).context("compiling [normalize]")?;
    // The broker outlives the consumer: in-flight messages still need their confirms and acks.
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

    let handler = Arc::new(handler::NormalizeHandler {
        bus: bus.clone(),
        store,
        normalizer,
        dedupe: cfg.dedupe.clone(),
        ledger_ttl: cfg.ledger.ttl,
    });
    info!(namespace = %cfg.namespace, queue = %bus.topology().stage_queue(NORMALIZER), "Normalizer is starting.");
    let consumer_bus = bus.clone();
    let consumer_stop = shutdown.clone();
    let mut consumer = tokio::spawn(async move {
        handoff_bus::consumer::run(&consumer_bus, NORMALIZER, handler, consumer_stop).await
    });
    let drained = tokio::select! {
        // The consumer only returns early on a topology without this stage: a bug, not an outage.
        early = &mut consumer => {
            early.context("the consumer task failed")?.context("running the consumer")?;
            true
        }
        () = shutdown.cancelled() => {
            readiness.set_draining();
            info!("Shutting down: no new messages, finishing those in flight.");
            handoff_kit::shutdown::drain("in-flight messages", cfg.shutdown.grace, consumer).await
        }
    };

    bus.close().await;
    bus_shutdown.cancel();
    admin_shutdown.cancel();
    let _ = admin.await;
    info!(drained, "Normalizer stopped.");
    Ok(())
}
