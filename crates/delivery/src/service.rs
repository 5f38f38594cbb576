//! A writer service's life, the same for every writer: connect to the broker and Redis (neither
//! needs to be up yet), serve `/metrics`, `/healthz` and `/readyz`, consume the stage's queue
//! until shutdown, then finish the messages in flight within the grace period and close.

use std::sync::Arc;
use std::time::Duration;

use handoff_bus::{Bus, BusConfig, Handler, Topology};
use handoff_idempotency::{RedisConfig, Store, StoreError};
use handoff_kit::admin::Readiness;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::auth::{AuthConfig, AuthError, Credentials};
use crate::classify::Vendor;
use crate::engine::{Destination, HttpConfig};
use crate::pacing::{Pacer, PacingConfig};
use crate::redis_handle::RedisHandle;

/// Why a writer could not start or stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("configuring Redis: {0}")]
    Redis(#[from] StoreError),
    /// Building the writer's handler failed (a credential it cannot read, a bad template).
    #[error("{0}")]
    Setup(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the consumer stopped: {0}")]
    Consumer(String),
}

/// What the service needs from the writer's configuration.
pub struct ServiceSettings<'a> {
    /// The stage whose queue is consumed (`crm-writer`, `email-writer`).
    pub stage: &'static str,
    pub namespace: &'a str,
    pub bus: &'a BusConfig,
    pub redis: &'a RedisConfig,
    /// How long in-flight messages may take to finish after shutdown is asked for.
    pub grace: Duration,
}

/// The connections a writer's handler is built from.
pub struct WriterRuntime {
    pub bus: Bus,
    pub store: Store,
    pub redis: RedisHandle,
}

/// Runs a writer until `shutdown` is cancelled, then lets in-flight messages finish (bounded by
/// the grace) and closes the broker connection.
///
/// Starts even when RabbitMQ or Redis is down: `/readyz` says not-ready, and consuming starts
/// once the broker is there. Fails at once when `build` does (a credential it cannot read).
pub async fn serve<H: Handler>(
    settings: ServiceSettings<'_>,
    admin_listener: TcpListener,
    shutdown: CancellationToken,
    build: impl FnOnce(&WriterRuntime) -> Result<H, Box<dyn std::error::Error + Send + Sync>>,
) -> Result<(), ServeError> {
    handoff_kit::metrics::install();
    let stage = settings.stage;
    let bus_shutdown = CancellationToken::new();
    let bus = Bus::start(
        settings.bus.clone(),
        Topology::v1(settings.namespace),
        bus_shutdown.clone(),
    );
    let store = Store::new(settings.redis, settings.namespace)?;
    store.spawn_health_monitor(Duration::from_secs(1), bus_shutdown.clone());
    let redis = RedisHandle::new(settings.redis)?;
    let runtime = WriterRuntime {
        bus: bus.clone(),
        store: store.clone(),
        redis,
    };
    let handler = match build(&runtime) {
        Ok(handler) => Arc::new(handler),
        Err(err) => {
            bus_shutdown.cancel();
            return Err(ServeError::Setup(err));
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

    info!(
        namespace = %settings.namespace,
        queue = %bus.topology().stage_queue(stage),
        "{stage} is starting."
    );
    let consumer_bus = bus.clone();
    let consumer_stop = shutdown.clone();
    let mut consumer = tokio::spawn(async move {
        handoff_bus::consumer::run(&consumer_bus, stage, handler, consumer_stop).await
    });
    let (drained, early_error) = tokio::select! {
        early = &mut consumer => {
            let error = match early {
                Ok(Ok(())) => None,
                Ok(Err(err)) => Some(err.to_string()),
                Err(err) => Some(format!("the consumer task failed: {err}")),
            };
            (true, error)
        }
        () = shutdown.cancelled() => {
            readiness.set_draining();
            info!("Shutting down: no new messages, finishing those in flight.");
            let drained =
                handoff_kit::shutdown::drain("in-flight messages", settings.grace, consumer).await;
            (drained, None)
        }
    };

    bus.close().await;
    bus_shutdown.cancel();
    admin_shutdown.cancel();
    let _ = admin.await;
    info!(drained, "{stage} stopped.");
    match early_error {
        Some(error) => Err(ServeError::Consumer(error)),
        None => Ok(()),
    }
}

/// Where a destination is and how to talk to it: the `[hubspot]`, `[mailchimp]` and `[rest]`
/// sections' shared part.
pub struct DestinationParts<'a> {
    /// The destination's name in pacing keys, metrics and dead letters.
    pub name: &'static str,
    pub vendor: Vendor,
    pub base_url: &'a str,
    pub auth: &'a AuthConfig,
    pub pacing: &'a PacingConfig,
    pub http: &'a HttpConfig,
    /// The `User-Agent` of every request, e.g. `handoff-crm-writer/0.1.0`.
    pub user_agent: &'a str,
}

impl Destination {
    /// A destination with its own HTTP client, credentials and shared pacer.
    pub fn build(
        parts: DestinationParts<'_>,
        redis: &RedisHandle,
        namespace: &str,
    ) -> Result<Destination, BuildError> {
        let http = parts
            .http
            .client(parts.user_agent)
            .map_err(|err| BuildError::Http(err.to_string()))?;
        let credentials = Credentials::new(
            parts.name,
            parts.auth,
            redis.clone(),
            namespace,
            http.clone(),
        )
        .map_err(|source| BuildError::Credentials {
            destination: parts.name,
            source,
        })?;
        let pacer = Pacer::new(redis.clone(), namespace, parts.pacing);
        Ok(Destination::new(
            parts.name,
            parts.vendor,
            parts.base_url,
            http,
            pacer,
            credentials,
            parts.http.clone(),
        ))
    }
}

/// Why a destination could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("building the HTTP client: {0}")]
    Http(String),
    #[error("reading the {destination} credentials: {source}")]
    Credentials {
        destination: &'static str,
        #[source]
        source: AuthError,
    },
}
