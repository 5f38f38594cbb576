//! email-writer: canonical events into Mailchimp list members.
//!
//! Consumes the `email-writer` stage queue (`canonical.#`, and `crm.contact.synced`, which v1
//! acks unused). For each event, [`plan`] decides the member writes (an upsert by subscriber
//! hash, tags, at most one member event) per the configured [`routes`], and [`mailchimp`] carries
//! them out through the shared delivery engine (`handoff_delivery`): at most 10 requests in
//! flight per process (Mailchimp's connection limit per API key), authenticated with the API key,
//! classified, guarded against stale updates and merge fields other systems own. Consent is the
//! platform's: upserts send `status_if_new`, never `status`. [`handler`] holds the per-message
//! order: claim the event, write, report `email.subscriber.synced`, complete with the ledger,
//! ack; transient failures go back through the broker's delay queues with full-jitter backoff.
//!
//! [`run`] takes its admin listener and a shutdown token, so tests start the real service
//! in-process.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
pub mod handler;
pub mod mailchimp;
pub mod plan;
pub mod routes;

use anyhow::Context as _;
use handoff_bus::EMAIL_WRITER;
use handoff_delivery::{
    Destination, DestinationParts, RestAdapter, ServiceSettings, StaleGuard, Vendor, WriterStage,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{AdapterKind, Config};

/// The user agent of every email-platform request.
const USER_AGENT: &str = concat!("handoff-email-writer/", env!("CARGO_PKG_VERSION"));

/// Runs the email-writer until `shutdown` is cancelled, then lets in-flight messages finish
/// (bounded by the shutdown grace) and closes the broker connection.
///
/// Starts even when RabbitMQ, Redis or Mailchimp is down: `/readyz` says not-ready, and
/// consuming starts once the broker is there. Fails at once on an API key it cannot read.
pub async fn run(
    cfg: Config,
    admin_listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let settings = ServiceSettings {
        stage: EMAIL_WRITER,
        namespace: &cfg.namespace,
        bus: &cfg.bus,
        redis: &cfg.redis,
        grace: cfg.shutdown.grace,
    };
    handoff_delivery::serve(settings, admin_listener, shutdown, |rt| {
        let adapter = adapter(&cfg, rt)?;
        Ok(handler::EmailHandler {
            stage: WriterStage::new(EMAIL_WRITER, rt, &cfg.retry, &cfg.dedupe, cfg.ledger.ttl),
            adapter,
            routes: cfg.routes.clone(),
        })
    })
    .await
    .context("running the email-writer")
}

/// The configured adapter, with its destination.
fn adapter(cfg: &Config, rt: &handoff_delivery::WriterRuntime) -> anyhow::Result<handler::Adapter> {
    Ok(match cfg.adapter {
        AdapterKind::Mailchimp => {
            let mc = &cfg.mailchimp;
            let parts = DestinationParts {
                name: mailchimp::DESTINATION,
                vendor: Vendor::Mailchimp,
                base_url: &mc.base_url,
                auth: &mc.auth,
                pacing: &mc.pacing,
                http: &mc.http,
                user_agent: USER_AGENT,
            };
            handler::Adapter::Mailchimp(mailchimp::Mailchimp {
                destination: Destination::build(parts, &rt.redis, &cfg.namespace)?,
                list_id: mc.list_id.clone(),
                stale: StaleGuard::new(rt.redis.clone(), &cfg.namespace, &cfg.stale),
                ownership: cfg.ownership.clone(),
                store: rt.store.clone(),
                event_lease: cfg.dedupe.lease,
                event_retention: cfg.routes.payment_failed.remember_for,
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
