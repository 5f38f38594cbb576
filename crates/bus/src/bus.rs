//! [`Bus`]: the supervised connection, the publish path and small inspection tools.
//!
//! [`Bus::start`] returns at once and spawns a supervisor task that connects, declares
//! the topology (`topology.rs`), opens the publisher channels (`publisher.rs`) and then
//! watches the connection; when it drops, the bus turns not-ready, the supervisor
//! reconnects with exponential backoff and full jitter, and redeclares everything.
//! Publishes never wait for a reconnect: without a session they fail fast with
//! [`BusError::Unavailable`] so callers (ingest answering HTTP) can answer at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{Instrument, debug, error, info, warn};

use crate::consumer::Delivery;
use crate::publisher::ConfirmChannel;
use crate::topology::{self, short};
use crate::{BusConfig, BusError, OutgoingMessage, Topology, headers, trace};

/// How long one connection attempt (TCP, AMQP handshake, topology) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Heartbeat asked for when the URL does not say.
const DEFAULT_HEARTBEAT_SECS: u16 = 10;
/// How often the supervisor double-checks the connection state besides listening to
/// lapin's events.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// A supervised connection to the broker; cheap to clone, all clones share it.
///
/// Dropping the last clone closes the connection; prefer [`Bus::close`], which waits
/// for the close handshake.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: BusConfig,
    topology: Topology,
    session: Arc<watch::Sender<Option<Arc<Session>>>>,
    /// Cancelled by [`Bus::close`] or when the last clone drops.
    closing: CancellationToken,
    _close_on_drop: DropGuard,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

/// One live connection with its topology declared and its publisher channels open.
pub(crate) struct Session {
    pub(crate) conn: Connection,
    publishers: Vec<PublisherSlot>,
    next_publisher: AtomicUsize,
}

/// A publisher channel that is reopened if the broker closes it (say, a publish to a
/// missing exchange) while the connection lives on.
struct PublisherSlot {
    current: RwLock<Arc<ConfirmChannel>>,
    reopen: tokio::sync::Mutex<()>,
}

impl Session {
    fn is_live(&self) -> bool {
        self.conn.status().connected()
    }

    async fn publisher(&self) -> Result<Arc<ConfirmChannel>, BusError> {
        let n = self.next_publisher.fetch_add(1, Ordering::Relaxed) % self.publishers.len();
        let slot = &self.publishers[n];
        let current = read(&slot.current);
        if current.is_open() {
            return Ok(current);
        }
        let _reopening = slot.reopen.lock().await;
        let current = read(&slot.current);
        if current.is_open() {
            return Ok(current);
        }
        if !self.is_live() {
            return Err(BusError::Unavailable);
        }
        debug!("Reopening a publisher channel the broker closed.");
        let fresh = ConfirmChannel::open(&self.conn).await?;
        *slot.current.write().unwrap_or_else(|e| e.into_inner()) = fresh.clone();
        Ok(fresh)
    }
}

fn read(lock: &RwLock<Arc<ConfirmChannel>>) -> Arc<ConfirmChannel> {
    lock.read().unwrap_or_else(|e| e.into_inner()).clone()
}

impl Bus {
    /// Returns at once; a supervisor task connects (retrying with backoff and jitter
    /// until `shutdown`), declares the topology idempotently, and reconnects and
    /// redeclares whenever the connection drops. Never panics or exits when the broker
    /// is down. Must be called inside a tokio runtime.
    ///
    /// `shutdown` stops the reconnecting, not a live connection: consumers still need
    /// it to ack what is in flight while they drain. [`Bus::close`] ends it.
    pub fn start(cfg: BusConfig, topology: Topology, shutdown: CancellationToken) -> Bus {
        let (session, _) = watch::channel(None);
        let session = Arc::new(session);
        let closing = CancellationToken::new();
        let supervisor = Supervisor {
            cfg: cfg.clone(),
            topology: topology.clone(),
            session: session.clone(),
            shutdown,
            closing: closing.clone(),
        };
        let span = tracing::info_span!("bus", namespace = %topology.namespace());
        let handle = tokio::spawn(supervisor.run().instrument(span));
        Bus {
            inner: Arc::new(Inner {
                cfg,
                topology,
                session,
                _close_on_drop: closing.clone().drop_guard(),
                closing,
                supervisor: Mutex::new(Some(handle)),
            }),
        }
    }

    /// Connected and topology declared.
    pub fn is_ready(&self) -> bool {
        self.inner
            .session
            .borrow()
            .as_ref()
            .is_some_and(|s| s.is_live())
    }

    /// Waits until the bus is ready; [`BusError::Unavailable`] after `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), BusError> {
        let mut rx = self.inner.session.subscribe();
        let ready = rx.wait_for(|s| s.as_ref().is_some_and(|s| s.is_live()));
        match tokio::time::timeout(timeout, ready).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(BusError::Unavailable),
        }
    }

    /// The topology this bus declares.
    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// The settings this bus runs with.
    pub fn config(&self) -> &BusConfig {
        &self.inner.cfg
    }

    /// The live session, if any.
    pub(crate) fn session(&self) -> Option<Arc<Session>> {
        self.inner
            .session
            .borrow()
            .as_ref()
            .filter(|s| s.is_live())
            .cloned()
    }

    /// Waits for a live session; `None` once `cancel` fires or the bus closes.
    pub(crate) async fn next_session(&self, cancel: &CancellationToken) -> Option<Arc<Session>> {
        let mut rx = self.inner.session.subscribe();
        loop {
            if let Some(session) = self.session() {
                return Some(session);
            }
            tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = self.inner.closing.cancelled() => return None,
                changed = rx.changed() => if changed.is_err() { return None },
                // The watch only changes on (re)connect; this also notices a session
                // that died before the supervisor cleared it.
                _ = tokio::time::sleep(WATCH_INTERVAL) => {}
            }
        }
    }

    /// Publishes to the events exchange: persistent (delivery mode 2), mandatory,
    /// with publisher confirms; `Ok` only after the broker's ack.
    ///
    /// A nack is [`BusError::Nacked`], a `basic.return` [`BusError::Unroutable`], no
    /// confirm within `publish_timeout` [`BusError::ConfirmTimeout`], and no connection
    /// [`BusError::Unavailable`] at once. It runs in a `publish` producer span (a child of the
    /// current one) whose W3C trace context goes into the headers unless the message already
    /// has a `traceparent`; the AMQP timestamp,
    /// content type, message id and type properties are set from the message.
    pub async fn publish(&self, msg: OutgoingMessage) -> Result<(), BusError> {
        let exchange = self.inner.topology.events_exchange();
        self.publish_to(&exchange, msg).await
    }

    /// Like [`Bus::publish`], to any exchange; `""` is the default exchange (routing key
    /// = queue name). Replay tools use it to send a message back to its origin.
    ///
    /// Publishing to an exchange that does not exist makes the broker close the
    /// publisher channel, failing the publishes in flight on it; don't.
    pub async fn publish_to(&self, exchange: &str, msg: OutgoingMessage) -> Result<(), BusError> {
        // The producer span of OpenTelemetry's messaging conventions; its context is what
        // goes into the headers, so the consumer's span is its child.
        let span = tracing::info_span!(
            "publish",
            otel.name = %format!("publish {}", msg.routing_key),
            otel.kind = "producer",
            messaging.system = "rabbitmq",
            // Semantic conventions 1.27+: the type is `send`, the system's own name `publish`.
            messaging.operation.type = "send",
            messaging.operation.name = "publish",
            messaging.destination.name = exchange,
            messaging.rabbitmq.destination.routing_key = %msg.routing_key,
            messaging.message.id = msg.message_id.as_deref().unwrap_or(""),
        );
        self.publish_in_span(exchange, msg).instrument(span).await
    }

    async fn publish_in_span(&self, exchange: &str, msg: OutgoingMessage) -> Result<(), BusError> {
        let mut headers = msg.headers;
        if !headers.contains_key(trace::TRACEPARENT) {
            trace::inject_current(&mut headers);
        }
        let mut properties = BasicProperties::default()
            // Persistent: written to disk (quorum queues always are; classic ones only so).
            .with_delivery_mode(2)
            .with_timestamp(now_unix())
            .with_headers(headers::to_field_table(&headers));
        if let Some(content_type) = &msg.content_type {
            properties = properties.with_content_type(short(content_type)?);
        }
        if let Some(message_id) = &msg.message_id {
            properties = properties.with_message_id(short(message_id)?);
        }
        if let Some(kind) = &msg.message_type {
            properties = properties.with_type(short(kind)?);
        }
        self.publish_raw(exchange, &msg.routing_key, &msg.body, properties)
            .await
    }

    /// Publishes prepared properties as they are (persistent is up to the caller),
    /// mandatory and confirmed, bounded by `publish_timeout`; records the metrics.
    pub(crate) async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BusError> {
        let started = Instant::now();
        let result = self
            .publish_inner(exchange, routing_key, body, properties)
            .await;
        let outcome = match &result {
            Ok(()) => "ok",
            Err(err) => err.label(),
        };
        metrics::counter!("handoff_bus_published_total", "outcome" => outcome).increment(1);
        metrics::histogram!("handoff_bus_publish_seconds").record(started.elapsed().as_secs_f64());
        match &result {
            Ok(()) => debug!(exchange, routing_key, "Published."),
            Err(err) => debug!(exchange, routing_key, error = %err, "Publish failed."),
        }
        result
    }

    async fn publish_inner(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BusError> {
        let exchange = short(exchange)?;
        let routing_key = short(routing_key)?;
        let session = self.session().ok_or(BusError::Unavailable)?;
        let timeout = self.inner.cfg.publish_timeout;
        let publish = async {
            let channel = session.publisher().await?;
            channel
                .publish(exchange, routing_key, body, properties)
                .await
        };
        match tokio::time::timeout(timeout, publish).await {
            Ok(Err(BusError::Amqp(_))) if !session.is_live() => Err(BusError::Unavailable),
            Ok(result) => result,
            Err(_) => Err(BusError::ConfirmTimeout(timeout)),
        }
    }

    /// Messages ready in `queue` (a passive declare); for tests and SRE tools.
    pub async fn message_count(&self, queue: &str) -> Result<u32, BusError> {
        Ok(self.inspect_queue(queue).await?.message_count())
    }

    /// Consumers subscribed to `queue` (a passive declare): tests wait on it to know every
    /// replica takes its share before they publish.
    pub async fn consumer_count(&self, queue: &str) -> Result<u32, BusError> {
        Ok(self.inspect_queue(queue).await?.consumer_count())
    }

    /// A passive declare of `queue` on a channel of its own: it only looks, and a missing
    /// queue is an error (404), not created.
    async fn inspect_queue(&self, queue: &str) -> Result<lapin::Queue, BusError> {
        let session = self.session().ok_or(BusError::Unavailable)?;
        let channel = session.conn.create_channel().await?;
        let result = channel
            .queue_declare(
                short(queue)?,
                QueueDeclareOptions::default().passive(),
                FieldTable::default(),
            )
            .await;
        let _ = channel.close(200, "done".into()).await;
        Ok(result?)
    }

    /// Takes one message off `queue` (basic.get, then ack); for tests and SRE tools.
    pub async fn get(&self, queue: &str) -> Result<Option<Delivery>, BusError> {
        let session = self.session().ok_or(BusError::Unavailable)?;
        let channel = session.conn.create_channel().await?;
        let result = async {
            // no_ack = false: the message is only gone once we ack it below.
            let Some(message) = channel
                .basic_get(short(queue)?, BasicGetOptions { no_ack: false })
                .await?
            else {
                return Ok(None);
            };
            let delivery = Delivery::from_lapin(&message.delivery, queue);
            message
                .delivery
                .acker
                .ack(BasicAckOptions::default())
                .await?;
            Ok(Some(delivery))
        }
        .await;
        let _ = channel.close(200, "done".into()).await;
        result
    }

    /// Deletes every queue and exchange of the topology (tests, tenant removal).
    pub async fn teardown(&self) -> Result<(), BusError> {
        let session = self.session().ok_or(BusError::Unavailable)?;
        topology::teardown(&session.conn, &self.inner.topology, &self.inner.cfg).await
    }

    /// Closes the connection cleanly (reply code 200) and stops the supervisor.
    pub async fn close(&self) {
        self.inner.closing.cancel();
        let handle = self
            .inner
            .supervisor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }
}

fn now_unix() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap_or_default()
}

struct Supervisor {
    cfg: BusConfig,
    topology: Topology,
    session: Arc<watch::Sender<Option<Arc<Session>>>>,
    shutdown: CancellationToken,
    closing: CancellationToken,
}

enum Ended {
    Lost,
    Closing,
}

impl Supervisor {
    async fn run(self) {
        let mut failures: u32 = 0;
        let mut connected_before = false;
        loop {
            if self.closing.is_cancelled() || self.shutdown.is_cancelled() {
                break;
            }
            let attempt = tokio::time::timeout(CONNECT_TIMEOUT, self.connect());
            let result = tokio::select! {
                _ = self.closing.cancelled() => break,
                result = attempt => result.unwrap_or_else(|_| {
                    Err(BusError::Amqp(format!("connecting took longer than {CONNECT_TIMEOUT:?}")))
                }),
            };
            let session = match result {
                Ok(session) => session,
                Err(err) => {
                    failures = failures.saturating_add(1);
                    let delay = backoff(&self.cfg, failures);
                    warn!(error = %err, attempt = failures, retry_in = ?delay, "Could not connect to RabbitMQ; retrying.");
                    tokio::select! {
                        _ = self.closing.cancelled() => break,
                        _ = self.shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            if connected_before {
                metrics::counter!("handoff_bus_reconnects_total").increment(1);
                warn!(attempts = failures, "Reconnected to RabbitMQ.");
            } else {
                info!("Connected to RabbitMQ; topology declared.");
            }
            connected_before = true;
            failures = 0;
            let session = Arc::new(session);
            self.session.send_replace(Some(session.clone()));
            let ended = self.watch(&session).await;
            self.session.send_replace(None);
            match ended {
                Ended::Closing => {
                    for slot in &session.publishers {
                        read(&slot.current).close().await;
                    }
                    if session.is_live() {
                        let _ = session.conn.close(200, "closing".into()).await;
                    }
                    break;
                }
                Ended::Lost => {
                    warn!("Lost the connection to RabbitMQ; reconnecting.");
                    // The first retry goes out at once; backoff starts if it fails.
                }
            }
        }
        self.session.send_replace(None);
        debug!("Bus supervisor stopped.");
    }

    async fn connect(&self) -> Result<Session, BusError> {
        let mut uri: lapin::uri::AMQPUri = self
            .cfg
            .url
            .parse()
            .map_err(|e| BusError::Amqp(format!("invalid AMQP URL: {e}")))?;
        // Heartbeats find a dead peer (a silently dropped TCP connection) within two
        // intervals; RabbitMQ's default of 60 s would leave us "ready" for 2 minutes.
        uri.query.heartbeat.get_or_insert(DEFAULT_HEARTBEAT_SECS);
        let properties = ConnectionProperties::default()
            // Shown in the management UI, so SREs can tell our connections apart.
            .with_connection_name(format!("handoff {}", self.topology.namespace()).into());
        // lapin's own reconnect stays off (its default): the supervisor owns
        // reconnecting so it can redeclare the topology and report readiness.
        let conn = Connection::connect_uri(uri, properties).await?;
        if let Err(err) = topology::declare(&conn, &self.topology, &self.cfg).await {
            error!(error = %err, "Declaring the topology failed.");
            let _ = conn.close(200, "topology declaration failed".into()).await;
            return Err(err);
        }
        let mut publishers = Vec::new();
        for _ in 0..self.cfg.publish_channels.max(1) {
            let channel = ConfirmChannel::open(&conn).await?;
            publishers.push(PublisherSlot {
                current: RwLock::new(channel),
                reopen: tokio::sync::Mutex::new(()),
            });
        }
        Ok(Session {
            conn,
            publishers,
            next_publisher: AtomicUsize::new(0),
        })
    }

    /// Waits until the connection is lost or the bus is closing.
    async fn watch(&self, session: &Session) -> Ended {
        let mut events = session.conn.events_listener();
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        loop {
            if !session.is_live() {
                return Ended::Lost;
            }
            tokio::select! {
                _ = self.closing.cancelled() => return Ended::Closing,
                event = events.next() => match event {
                    // Channel-level errors show up here too; only the connection
                    // state says whether the connection is gone.
                    Some(lapin::Event::Error(err)) => debug!(error = %err, "AMQP error event."),
                    Some(lapin::Event::ConnectionBlocked(reason)) => {
                        warn!(%reason, "RabbitMQ blocked publishing (resource alarm).");
                    }
                    Some(lapin::Event::ConnectionUnblocked) => info!("RabbitMQ unblocked publishing."),
                    Some(_) => {}
                    None => return Ended::Lost,
                },
                _ = tick.tick() => {}
            }
        }
    }
}

/// Exponential backoff with full jitter: a random pause between the minimum and
/// `min * 2^(failures-1)`, capped at the maximum.
fn backoff(cfg: &BusConfig, failures: u32) -> Duration {
    let min = cfg.reconnect_min_delay;
    let max = cfg.reconnect_max_delay.max(min);
    let exp = failures.saturating_sub(1).min(20);
    let ceiling = min.saturating_mul(1 << exp).min(max);
    let (lo, hi) = (min.as_millis() as u64, ceiling.as_millis() as u64);
    if hi <= lo {
        return ceiling;
    }
    Duration::from_millis(rand::rng().random_range(lo..=hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_stays_within_bounds() {
        let cfg = BusConfig::default();
        for failures in 1..50 {
            let d = backoff(&cfg, failures);
            assert!(d >= cfg.reconnect_min_delay, "{d:?}");
            assert!(d <= cfg.reconnect_max_delay, "{d:?}");
        }
        assert_eq!(backoff(&cfg, 1), cfg.reconnect_min_delay);
        let late: Vec<_> = (0..20).map(|_| backoff(&cfg, 30)).collect();
        assert!(late.iter().any(|d| *d != late[0]), "jittered: {late:?}");
    }
}
