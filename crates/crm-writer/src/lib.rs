//! crm-writer: canonical events into CRM records.
//!
//! Consumes the `crm-writer` stage queue (`canonical.#`). For each event, [`plan`] decides the
//! CRM writes (upserts by natural key, associations) per the configured [`routes`], and
//! [`hubspot`] carries them out through the shared delivery engine (`handoff_delivery`): paced by
//! the quota every replica shares in Redis, authenticated, classified, guarded against stale
//! updates and fields other systems own. [`handler`] holds the per-message order: claim the
//! event, write, report `crm.contact.synced`, complete with the ledger, ack; transient failures
//! go back through the broker's delay queues with full-jitter backoff.
//!
//! [`run`] takes its admin listener and a shutdown token, so tests start the real service
//! in-process.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
pub mod handler;
pub mod hubspot;
pub mod metrics;
pub mod plan;
pub mod rest;
pub mod routes;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use handoff_bus::{Bus, CRM_WRITER, Topology};
use handoff_delivery::{
    AuthConfig, Credentials, Destination, HttpConfig, Pacer, PacingConfig, RedisHandle, StaleGuard,
    Vendor,
};
use handoff_idempotency::Store;
use handoff_kit::admin::Readiness;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use config::{AdapterKind, Config};

/// The user agent of every CRM request.
const USER_AGENT: &str = concat!("handoff-crm-writer/", env!("CARGO_PKG_VERSION"));

/// Runs the crm-writer until `shutdown` is cancelled, then lets in-flight messages finish
/// (bounded by the shutdown grace) and closes the broker connection.
///
/// Starts even when RabbitMQ, Redis or the CRM is down: `/readyz` says not-ready, and consuming
/// starts once the broker is there. Fails at once on a credential it cannot read.
pub async fn run(
    cfg: Config,
    admin_listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    handoff_kit::metrics::install();
    let bus_shutdown = CancellationToken::new();
    let bus = Bus::start(
        cfg.bus.clone(),
        Topology::v1(&cfg.namespace),
        bus_shutdown.clone(),
    );
    let store = Store::new(&cfg.redis, &cfg.namespace).context("configuring Redis")?;
    store.spawn_health_monitor(Duration::from_secs(1), bus_shutdown.clone());
    let redis = RedisHandle::new(&cfg.redis).context("configuring Redis")?;

    let adapter = match cfg.adapter {
        AdapterKind::HubSpot => {
            let hs = &cfg.hubspot;
            let destination = destination(
                hubspot::DESTINATION,
                Vendor::HubSpot,
                &hs.base_url,
                (&hs.auth, &hs.pacing, &hs.http),
                &redis,
                &cfg.namespace,
            )?;
            handler::Adapter::HubSpot(hubspot::HubSpot {
                destination,
                stale: StaleGuard::new(redis.clone(), &cfg.namespace, &cfg.stale),
                ownership: cfg.ownership.clone(),
            })
        }
        AdapterKind::Rest => {
            let r = &cfg.rest;
            let routes = r
                .templates()
                .compile()
                .map_err(anyhow::Error::msg)
                .context("compiling [rest] routes")?;
            let destination = destination(
                rest::DESTINATION,
                Vendor::Generic,
                &r.base_url,
                (&r.auth, &r.pacing, &r.http),
                &redis,
                &cfg.namespace,
            )?;
            handler::Adapter::Rest(rest::RestAdapter {
                destination,
                routes: Arc::new(routes),
            })
        }
    };

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

    let handler = Arc::new(handler::CrmHandler {
        bus: bus.clone(),
        store,
        adapter,
        routes: cfg.routes.clone(),
        retry: cfg.retry.clone(),
        dedupe: cfg.dedupe.clone(),
        ledger_ttl: cfg.ledger.ttl,
    });
    info!(
        namespace = %cfg.namespace,
        queue = %bus.topology().stage_queue(CRM_WRITER),
        crm = %cfg.hubspot.base_url,
        "crm-writer is starting."
    );
    let consumer_bus = bus.clone();
    let consumer_stop = shutdown.clone();
    let mut consumer = tokio::spawn(async move {
        handoff_bus::consumer::run(&consumer_bus, CRM_WRITER, handler, consumer_stop).await
    });
    let drained = tokio::select! {
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
    info!(drained, "crm-writer stopped.");
    Ok(())
}

/// A destination with its own HTTP client, credentials and shared pacer.
fn destination(
    name: &str,
    vendor: Vendor,
    base_url: &str,
    (auth, pacing, http_cfg): (&AuthConfig, &PacingConfig, &HttpConfig),
    redis: &RedisHandle,
    namespace: &str,
) -> anyhow::Result<Destination> {
    let http = http_cfg
        .client(USER_AGENT)
        .context("building the HTTP client")?;
    let credentials = Credentials::new(name, auth, redis.clone(), namespace, http.clone())
        .with_context(|| format!("reading the {name} credentials"))?;
    let pacer = Pacer::new(redis.clone(), namespace, pacing);
    Ok(Destination::new(
        name,
        vendor,
        base_url,
        http,
        pacer,
        credentials,
        http_cfg.clone(),
    ))
}
