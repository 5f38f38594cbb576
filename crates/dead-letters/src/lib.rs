//! The dead-letter handler: parks every failure with its context, and lets an SRE list,
//! group, show, replay and purge them, with an audit trail.
//!
//! - [`parker`]: consumes `{ns}.dead-letters` (the pipeline's `DeadLetter` records and
//!   the broker's own dead letters) and parks each in the [`store`] before acking.
//! - [`store`]: Redis (AOF) as the store of record, with an index per filter dimension,
//!   groups by cause [`fingerprint`], status changes as scripts, the audit log.
//! - [`replay`]: paced, watchable, pausable, cancellable replay jobs that survive
//!   restarts.
//! - [`api`]: the operator HTTP API; [`cli`]: the `handoff-dlq` commands built on it.
//! - [`metrics`]: parked counts, oldest age, replay progress.
//!
//! [`run`] takes its listeners and a shutdown token, so tests run the real service
//! in-process.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod api;
pub mod cli;
pub mod config;
pub mod fingerprint;
pub mod metrics;
pub mod parker;
pub mod record;
pub mod replay;
pub mod store;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use handoff_bus::{Bus, Topology};
use handoff_kit::admin::Readiness;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use config::Config;

use crate::store::DeadLetterStore;

/// How often the gauges are read from the store.
const GAUGE_REFRESH: Duration = Duration::from_secs(5);

/// Runs the handler until `shutdown`: parking, replay jobs, the API on `http_listener`
/// and `/metrics`, `/healthz`, `/readyz` on `admin_listener`.
///
/// Starts even when RabbitMQ or Redis is down (not ready until both are there). With
/// `store.require_durable`, it parks nothing into a Redis without `appendonly yes` and
/// `appendfsync always`, and stays not-ready saying so.
pub async fn run(
    cfg: Config,
    http_listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    handoff_kit::metrics::install();
    let bus_shutdown = CancellationToken::new();
    let topology = Topology::v1(&cfg.namespace);
    let bus = Bus::start(cfg.bus.clone(), topology.clone(), bus_shutdown.clone());
    let store = DeadLetterStore::new(&cfg.redis, &cfg.namespace).context("configuring Redis")?;

    let readiness = Readiness::new();
    let bus_ready = bus.clone();
    readiness.register("rabbitmq", move || bus_ready.is_ready());
    let durable = Arc::new(AtomicBool::new(false));
    let durable_ready = durable.clone();
    readiness.register("redis", move || durable_ready.load(Ordering::SeqCst));
    let admin_shutdown = CancellationToken::new();
    let admin = tokio::spawn(handoff_kit::admin::serve(
        admin_listener,
        readiness.clone(),
        admin_shutdown.clone(),
    ));

    let replayer = replay::Replayer::new(
        store.clone(),
        bus.clone(),
        cfg.replay.clone(),
        shutdown.clone(),
    );
    let api = api::Api {
        store: store.clone(),
        replayer: replayer.clone(),
        operators: Arc::new(api::Operators::new(&cfg.operators)),
        max_selection: cfg.replay.max_selection,
    };
    if cfg.operators.is_empty() {
        warn!("No [[operators]] are configured: every API call will be refused.");
    }
    let router = api::with_timeout(api::router(api), cfg.http.request_timeout);
    if let Ok(addr) = http_listener.local_addr() {
        info!(%addr, "Dead-letter API listening.");
    }
    let http_stop = shutdown.clone();
    let http = tokio::spawn(
        axum::serve(http_listener, router)
            .with_graceful_shutdown(http_stop.cancelled_owned())
            .into_future(),
    );
    let gauges = tokio::spawn(metrics::refresh_loop(
        store.clone(),
        replayer.clone(),
        GAUGE_REFRESH,
        shutdown.clone(),
    ));

    // Park nothing until the store is known to keep it.
    let durable_enough = wait_for_store(&store, cfg.store.require_durable, &shutdown).await;
    let mut consumer = None;
    if durable_enough {
        durable.store(true, Ordering::SeqCst);
        match replayer.resume_all().await {
            Ok(0) => {}
            Ok(n) => info!(jobs = n, "Resumed unfinished replay jobs."),
            Err(err) => warn!(error = %err, "Could not look for unfinished replay jobs."),
        }
        let supervisor = replayer.clone();
        tokio::spawn(async move { supervisor.supervise().await });
        let parker = Arc::new(parker::Parker {
            store: store.clone(),
            topology: topology.clone(),
            shutdown: shutdown.clone(),
        });
        let consumer_bus = bus.clone();
        let consumer_stop = shutdown.clone();
        info!(namespace = %cfg.namespace, queue = %topology.dead_letter_queue(), "Dead-letter handler is parking.");
        consumer = Some(tokio::spawn(async move {
            handoff_bus::consumer::run_dead_letters(&consumer_bus, parker, consumer_stop).await
        }));
    }

    shutdown.cancelled().await;
    readiness.set_draining();
    info!(
        "Shutting down: parking what is in flight; replay jobs stop and resume on the next start."
    );
    let drained = match consumer {
        Some(consumer) => {
            handoff_kit::shutdown::drain("in-flight dead letters", cfg.shutdown.grace, consumer)
                .await
        }
        None => true,
    };
    let _ = handoff_kit::shutdown::drain("in-flight API requests", cfg.shutdown.grace, http).await;
    gauges.abort();
    bus.close().await;
    bus_shutdown.cancel();
    admin_shutdown.cancel();
    let _ = admin.await;
    info!(drained, "Dead-letter handler stopped.");
    Ok(())
}

/// Waits until Redis answers and, when required, keeps what it acknowledges; `false`
/// when shutting down first or Redis would lose dead letters.
async fn wait_for_store(
    store: &DeadLetterStore,
    require_durable: bool,
    shutdown: &CancellationToken,
) -> bool {
    let mut told = false;
    loop {
        match store.durability().await {
            Ok(Some(d)) if d.is_crash_safe() => return true,
            Ok(Some(d)) if require_durable => {
                error!(
                    appendonly = d.appendonly,
                    appendfsync = %d.appendfsync,
                    "Redis would lose parked dead letters in a crash: run it with `appendonly yes` and \
                     `appendfsync always` (or set store.require_durable = false for local development). \
                     Not parking; the dead letters wait in the queue."
                );
                // Checked again in a while: an operator may fix Redis without restarting us.
            }
            Ok(Some(d)) => {
                warn!(
                    appendonly = d.appendonly,
                    appendfsync = %d.appendfsync,
                    "Redis is not crash-safe (store.require_durable = false): a Redis crash loses parked dead letters."
                );
                return true;
            }
            Ok(None) => {
                warn!(
                    "Redis does not allow CONFIG GET; trusting that it runs with AOF (appendfsync always)."
                );
                return true;
            }
            Err(err) if !told => {
                warn!(error = %err, "Redis is not reachable yet; waiting before parking.");
                told = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}
