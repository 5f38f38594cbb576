//! sandbox: a stand-in for the external SaaS Handoff writes to, so that `make run`, the tests and
//! the benchmarks need no vendor account. It speaks the vendors' documented HTTP APIs, with their
//! auth, rate limits and error bodies, and adds what a real vendor cannot give a test: injected
//! faults and an exact account of every side effect.
//!
//! It is a test double: all state lives in memory, per [`Sandbox`] instance, behind one lock, and
//! is gone when the process ends. Parallel tests each start their own on port 0
//! ([`testing::spawn`]).
//!
//! Layout: a shared core and one module per vendor.
//! - core: [`config`], [`auth`] (static and OAuth-issued tokens), [`ratelimit`] (rolling windows),
//!   [`faults`] (latency, 5xx, 429 storms, timeouts, outages), [`request_log`] (log and stats),
//!   [`control`] (the `/_sandbox/*` API), [`testing`] (in-process start for other crates' tests);
//!   [`vendor`] (the fault-and-log layer every vendor's routes share);
//! - [`hubspot`]: the HubSpot CRM v3 subset (`/crm/*`, `/oauth/*`);
//! - [`mailchimp`]: the Mailchimp Marketing API v3 subset an email writer uses (`/3.0/*`).
//!
//! Ports: the vendor APIs (their paths do not collide) and `/_sandbox/*` share the HTTP listener (default `127.0.0.1:8090`), so
//! a test or a developer needs one base URL; `/_sandbox` is a path no vendor uses, and it is
//! neither authenticated, rate-limited, faulted nor logged. The admin listener (default
//! `127.0.0.1:9190`) serves `/healthz`, `/readyz`, `/metrics` like every Handoff service.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod auth;
mod clock;
pub mod config;
pub mod control;
pub mod error;
pub mod faults;
pub mod hubspot;
pub mod mailchimp;
pub mod ratelimit;
pub mod request_log;
pub mod testing;
pub mod vendor;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use handoff_kit::admin::Readiness;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use config::Config;
pub use error::Error;

use faults::{FaultConfig, Faults};
use hubspot::{AssociationRecord, HubSpotState, Object, ObjectType};
use mailchimp::{MailchimpState, Member, Status};
use request_log::{RequestEntry, RequestLog, Stats};

/// Everything one sandbox holds, under one lock: requests are short and never await while
/// holding it, and one lock keeps the log, the stats and the records consistent with each other.
#[derive(Debug)]
pub struct State {
    pub faults: Faults,
    pub log: RequestLog,
    pub hubspot: HubSpotState,
    pub mailchimp: MailchimpState,
}

#[derive(Debug)]
struct Inner {
    cfg: Config,
    state: Mutex<State>,
    /// Cancelled when shutdown starts, so requests held by a timeout or latency fault let go.
    stopping: CancellationToken,
}

/// One sandbox instance: its configuration and state. Clones share the instance.
#[derive(Debug, Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

impl Sandbox {
    /// A fresh instance with the faults from `cfg.faults` active from now.
    pub fn new(cfg: Config) -> Self {
        let state = State {
            faults: Faults::new(cfg.faults.clone(), Instant::now()),
            log: RequestLog::new(cfg.request_log.capacity),
            hubspot: HubSpotState::new(&cfg.hubspot),
            mailchimp: MailchimpState::new(&cfg.mailchimp),
        };
        Sandbox {
            inner: Arc::new(Inner {
                cfg,
                state: Mutex::new(state),
                stopping: CancellationToken::new(),
            }),
        }
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// The state. A panic while holding the lock cannot leave it half-written in a way that
    /// matters to a test double, so a poisoned lock is used as is.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits `d`, or less if shutdown starts.
    pub(crate) async fn hold(&self, d: Duration) {
        if d.is_zero() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(d) => {}
            () = self.inner.stopping.cancelled() => {}
        }
    }

    /// Every HubSpot record of `ty` with all its properties.
    pub fn records(&self, ty: ObjectType) -> Vec<Object> {
        self.lock().hubspot.store.all(ty)
    }

    /// Every HubSpot association.
    pub fn associations(&self) -> Vec<AssociationRecord> {
        self.lock().hubspot.store.all_associations()
    }

    /// Every Mailchimp member of every list, with status, merge fields and tags.
    pub fn mailchimp_members(&self) -> Vec<Member> {
        self.lock().mailchimp.store.all_members()
    }

    /// The Mailchimp member `email` (any case) of `list_id`, if there is one.
    pub fn mailchimp_member(&self, list_id: &str, email: &str) -> Option<Member> {
        let hash = mailchimp::hash::subscriber_hash(email);
        self.lock()
            .mailchimp
            .store
            .member(list_id, &hash)
            .ok()
            .cloned()
    }

    /// Every event posted to a Mailchimp member, in arrival order.
    pub fn mailchimp_events(&self) -> Vec<mailchimp::Event> {
        self.lock().mailchimp.store.all_events()
    }

    /// Puts a member with `status` in `list_id` directly, as if it had been there all along
    /// (replacing any member with that email; not logged, not counted in the stats). `None` if
    /// `list_id` is not configured.
    pub fn mailchimp_seed_member(
        &self,
        list_id: &str,
        email: &str,
        status: Status,
    ) -> Option<Member> {
        self.lock().mailchimp.store.seed(list_id, email, status)
    }

    /// The most requests each Mailchimp API key had in flight at once.
    pub fn mailchimp_peak_connections(&self) -> std::collections::BTreeMap<String, u32> {
        self.lock().mailchimp.connections.peak()
    }

    /// The request log, oldest first.
    pub fn requests(&self) -> Vec<RequestEntry> {
        self.lock().log.entries()
    }

    /// Counts of requests, statuses, faults, creates and updates per key, the most requests
    /// admitted in any rolling window per credential, and Mailchimp resubscriptions.
    pub fn stats(&self) -> Stats {
        let st = self.lock();
        let mut stats = st.log.stats();
        stats.max_in_window = st.hubspot.limiter.max_admitted();
        stats.resubscribed = st.mailchimp.store.resubscribed();
        stats
    }

    /// The faults in force now, with what is left of their scopes and the seed in use.
    pub fn faults(&self) -> FaultConfig {
        self.lock().faults.view(Instant::now())
    }

    /// Replaces every fault with `cfg` (absent ones are turned off).
    pub fn set_faults(&self, cfg: FaultConfig) {
        let mut st = self.lock();
        let seed = cfg.seed;
        st.faults = Faults::new(cfg, Instant::now());
        if seed.is_none() {
            // Keep the configured seed when one was given at start-up, so runs stay repeatable.
            if let Some(s) = self.inner.cfg.faults.seed {
                st.faults.merge(
                    FaultConfig {
                        seed: Some(s),
                        ..FaultConfig::default()
                    },
                    Instant::now(),
                );
            }
        }
    }

    /// Sets the faults given in `patch`, leaving the others as they are.
    pub fn add_faults(&self, patch: FaultConfig) {
        self.lock().faults.merge(patch, Instant::now());
    }

    /// Turns every fault off.
    pub fn clear_faults(&self) {
        self.set_faults(FaultConfig::default());
    }

    /// Back to the state at start-up: no records, members or events, empty log and stats, fresh
    /// rate windows, the configured faults. Issued OAuth tokens stay valid.
    pub fn reset(&self) {
        let mut st = self.lock();
        st.faults = Faults::new(self.inner.cfg.faults.clone(), Instant::now());
        st.log.reset();
        st.hubspot.reset();
        st.mailchimp.reset();
    }

    /// Every route: the vendor APIs and `/_sandbox/*`.
    pub fn router(&self) -> Router {
        Router::new()
            .merge(hubspot::router(self.clone()))
            .merge(mailchimp::router(self.clone()))
            .merge(control::router(self.clone()))
            .fallback(not_found)
    }
}

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({
            "status": "error",
            "message": "The sandbox does not serve this path.",
            "category": "OBJECT_NOT_FOUND",
        })),
    )
}

/// Runs a fresh sandbox built from `cfg` until `shutdown` is cancelled (see [`serve`]).
pub async fn run(
    cfg: Config,
    listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    serve(Sandbox::new(cfg), listener, admin_listener, shutdown).await
}

/// Serves `sandbox` on `listener` and the admin routes on `admin_listener` until `shutdown` is
/// cancelled; then stops accepting, releases held requests, and waits up to `shutdown.grace` for
/// the requests in flight.
pub async fn serve(
    sandbox: Sandbox,
    listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    handoff_kit::metrics::install();
    let readiness = Readiness::new();
    let admin_shutdown = CancellationToken::new();
    let admin = tokio::spawn(handoff_kit::admin::serve(
        admin_listener,
        readiness.clone(),
        admin_shutdown.clone(),
    ));
    let addr = listener.local_addr().map_err(|source| Error::Io {
        what: "reading the HTTP address",
        source,
    })?;
    info!(listen = %addr, tokens = sandbox.config().hubspot.tokens.len(), "Sandbox is listening.");

    let stopping = sandbox.inner.stopping.clone();
    let draining = readiness.clone();
    let stop_accepting = shutdown.clone();
    let grace = sandbox.config().shutdown.grace;
    let server = axum::serve(listener, sandbox.router()).with_graceful_shutdown(async move {
        stop_accepting.cancelled().await;
        draining.set_draining();
        stopping.cancel();
        info!("Shutting down: no new connections, finishing requests in flight.");
    });
    let server = tokio::spawn(server.into_future());
    shutdown.cancelled().await;
    let drained = handoff_kit::shutdown::drain("in-flight sandbox requests", grace, server).await;
    admin_shutdown.cancel();
    let _ = admin.await;
    info!(drained, "Sandbox stopped.");
    Ok(())
}
