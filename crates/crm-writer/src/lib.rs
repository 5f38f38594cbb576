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
pub mod plan;
pub mod routes;

use anyhow::Context as _;
use handoff_bus::CRM_WRITER;
use handoff_delivery::{
    Destination, DestinationParts, RestAdapter, ServiceSettings, StaleGuard, Vendor, WriterStage,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
    let settings = ServiceSettings {
        stage: CRM_WRITER,
        namespace: &cfg.namespace,
        bus: &cfg.bus,
        redis: &cfg.redis,
        grace: cfg.shutdown.grace,
    };
    handoff_delivery::serve(settings, admin_listener, shutdown, |rt| {
        let adapter = adapter(&cfg, rt)?;
        Ok(handler::CrmHandler {
            stage: WriterStage::new(CRM_WRITER, rt, &cfg.retry, &cfg.dedupe, cfg.ledger.ttl),
            adapter,
            routes: cfg.routes.clone(),
        })
    })
    .await
    .context("running the crm-writer")
}

/// The configured adapter, with its destination.
fn adapter(cfg: &Config, rt: &handoff_delivery::WriterRuntime) -> anyhow::Result<handler::Adapter> {
    Ok(match cfg.adapter {
        AdapterKind::HubSpot => {
            let hs = &cfg.hubspot;
            let parts = DestinationParts {
                name: hubspot::DESTINATION,
                vendor: Vendor::HubSpot,
                base_url: &hs.base_url,
                auth: &hs.auth,
                pacing: &hs.pacing,
                http: &hs.http,
                user_agent: USER_AGENT,
            };
            handler::Adapter::HubSpot(hubspot::HubSpot {
                destination: Destination::build(parts, &rt.redis, &cfg.namespace)?,
                stale: StaleGuard::new(rt.redis.clone(), &cfg.namespace, &cfg.stale),
                ownership: cfg.ownership.clone(),
            })
        }
        AdapterKind::Rest => handler::Adapter::Rest(RestAdapter::build(
            &cfg.rest,
            &rt.redis,
            &cfg.namespace,
            USER_AGENT,
        )?),
    })
}
