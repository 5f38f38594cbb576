//! The admin HTTP server every service runs beside its real work: `GET /metrics` (Prometheus text
//! format 0.0.4), `GET /healthz` (liveness: 200 while the process runs) and `GET /readyz`
//! (readiness: 200 only while every registered check passes and shutdown has not started).
//!
//! [`Readiness`] holds named checks, each a cheap synchronous closure such as an `AtomicBool` read
//! (`bus connected`, `redis healthy`); the components that own a connection flip the flag, the
//! readiness endpoint only reads it. On SIGTERM the service calls [`Readiness::set_draining`] first,
//! so Kubernetes stops routing new work while in-flight work finishes.
//!
//! [`serve`] takes a bound listener (port 0 in tests) and a cancellation token, in the mini-redis
//! style, so tests start the real server.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Where the admin server listens (`[admin]` in the TOML file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdminConfig {
    /// Defaults to `127.0.0.1:9090` so a laptop run exposes nothing; in Kubernetes set
    /// `0.0.0.0:9090` so the kubelet and Prometheus can reach it.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 9090)),
        }
    }
}

impl AdminConfig {
    /// Binds [`AdminConfig::listen`].
    pub async fn bind(&self) -> std::io::Result<TcpListener> {
        TcpListener::bind(self.listen).await
    }
}

type Check = Arc<dyn Fn() -> bool + Send + Sync>;

#[derive(Default)]
struct Inner {
    checks: RwLock<Vec<(&'static str, Check)>>,
    draining: AtomicBool,
}

/// Named readiness checks plus a draining flag. Clones share the same state.
#[derive(Clone, Default)]
pub struct Readiness {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("checks", &self.report())
            .field("draining", &self.is_draining())
            .finish()
    }
}

impl Readiness {
    /// No checks, not draining: ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a check, or replaces the one registered under the same `name`. The closure runs on every
    /// `/readyz` request, so it must be cheap and must not block.
    pub fn register(&self, name: &'static str, check: impl Fn() -> bool + Send + Sync + 'static) {
        let mut checks = self
            .inner
            .checks
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let check: Check = Arc::new(check);
        match checks.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = check,
            None => checks.push((name, check)),
        }
    }

    /// True while not draining and every check passes.
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.report().iter().all(|(_, ok)| *ok)
    }

    /// Every registered check with its current result, in registration order.
    pub fn report(&self) -> Vec<(&'static str, bool)> {
        // Clone the closures out so a slow check never holds the lock against `register`.
        let checks: Vec<(&'static str, Check)> = self
            .inner
            .checks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        checks
            .into_iter()
            .map(|(name, check)| (name, check()))
            .collect()
    }

    /// Marks shutdown as started: from now on the service reports not ready, whatever the checks say.
    pub fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    /// True once [`Readiness::set_draining`] was called.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct AdminState {
    readiness: Readiness,
    metrics: PrometheusHandle,
}

/// The admin routes, for a service that wants to serve them itself (tests, or merged into another
/// router). Installs the Prometheus recorder if it is not installed yet.
pub fn router(readiness: Readiness) -> Router {
    let state = AdminState {
        readiness,
        metrics: crate::metrics::install(),
    };
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves the admin routes on `listener` until `shutdown` is cancelled, then stops accepting and
/// lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "Admin server listening.");
    }
    axum::serve(listener, router(readiness))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn metrics(State(state): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        state.metrics.render(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let report = state.readiness.report();
    let draining = state.readiness.is_draining();
    let ready = !draining && report.iter().all(|(_, ok)| *ok);
    let checks: serde_json::Map<String, serde_json::Value> = report
        .iter()
        .map(|(name, ok)| ((*name).to_owned(), serde_json::Value::Bool(*ok)))
        .collect();
    let mut failing: Vec<&str> = report
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(n, _)| *n)
        .collect();
    if draining {
        failing.push("draining");
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "ready": ready,
        "draining": draining,
        "checks": checks,
        "failing": failing,
    });
    (status, axum::Json(body)).into_response()
}
