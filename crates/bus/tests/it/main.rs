//! Integration tests of `handoff-bus` against the real RabbitMQ.
//!
//! Every test declares its own random namespace (so tests run in parallel and can be
//! re-run) and tears its topology down at the end. Outages are simulated with
//! `handoff_test_support::TcpProxy`, never by touching the shared broker.
//!
//! - `topology.rs`: declaring twice, argument checks.
//! - `publish.rs`: persistent confirmed publishes, trace headers, unroutable keys,
//!   outcome attribution under concurrency, an (ignored) throughput measurement.
//! - `reconnect.rs`: broker unreachable, connection cut and restored.
//! - `consumer.rs`: ack, retry through a delay tier, dead letters, retries exhausted,
//!   delivery limit, panics, shutdown with messages in flight.
//! - `delays.rs`: precise delays by hopping through tiers, `Defer` without using up
//!   attempts, never early.

use std::future::Future;
use std::time::{Duration, Instant};

use handoff_bus::{Bus, BusConfig, OutgoingMessage, Topology};
use tokio_util::sync::CancellationToken;

mod consumer;
mod delays;
mod publish;
mod reconnect;
mod topology;

/// Settings for tests: the test broker, short delay tiers, quick reconnects.
pub fn config() -> BusConfig {
    BusConfig {
        url: handoff_test_support::amqp_url(),
        retry_delays: vec![Duration::from_secs(1), Duration::from_secs(5)],
        reconnect_min_delay: Duration::from_millis(50),
        reconnect_max_delay: Duration::from_millis(500),
        publish_timeout: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(5),
        ..BusConfig::default()
    }
}

/// A started bus with its own shutdown token.
pub struct TestBus {
    pub bus: Bus,
    pub shutdown: CancellationToken,
}

impl TestBus {
    /// Starts a bus on `topology` and waits until it is ready.
    pub async fn start(topology: Topology, cfg: BusConfig) -> TestBus {
        let shutdown = CancellationToken::new();
        let bus = Bus::start(cfg, topology, shutdown.clone());
        bus.wait_ready(Duration::from_secs(10))
            .await
            .expect("bus ready against the test broker");
        TestBus { bus, shutdown }
    }

    /// Deletes the topology and closes the connection.
    pub async fn finish(self) {
        self.bus.teardown().await.expect("teardown");
        self.shutdown.cancel();
        self.bus.close().await;
    }
}

/// A v1 topology (stage `normalizer` on `raw.#`) in a fresh namespace.
pub fn v1_topology() -> Topology {
    Topology::v1(handoff_test_support::namespace())
}

/// A raw event as ingest would publish it.
pub fn raw_event(id: &str) -> OutgoingMessage {
    OutgoingMessage {
        routing_key: "raw.lead.created".into(),
        body: format!("body of {id}").into_bytes(),
        content_type: Some("application/x-protobuf".into()),
        message_id: Some(id.into()),
        message_type: Some("lead.created".into()),
        headers: [("x-test".to_owned(), id.to_owned())].into(),
    }
}

/// Publishes `raw_event(id)` inside a fresh span, as a service would, and
/// returns that span's trace id.
pub async fn publish_in_span(bus: &Bus, id: &str) -> String {
    use tracing::Instrument;
    let span = tracing::info_span!("ingest request");
    let trace_id = {
        let _entered = span.enter();
        handoff_bus::trace::current_trace_id().expect("the test subscriber gives spans a trace id")
    };
    bus.publish(raw_event(id))
        .instrument(span)
        .await
        .expect("publish");
    trace_id
}

/// A plain lapin connection and channel, for doing what a misbehaving client would.
pub async fn raw_channel() -> (lapin::Connection, lapin::Channel) {
    let conn = lapin::Connection::connect(
        &handoff_test_support::amqp_url(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("raw connection");
    let channel = conn.create_channel().await.expect("channel");
    (conn, channel)
}

/// Polls `check` every 20 ms until it returns `Some`, panicking after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `queue` holds exactly `n` ready messages.
pub async fn wait_count(bus: &Bus, queue: &str, n: u32) {
    eventually(
        &format!("{n} messages in {queue}"),
        Duration::from_secs(10),
        || async { (bus.message_count(queue).await.ok() == Some(n)).then_some(()) },
    )
    .await;
}
