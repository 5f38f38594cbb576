//! `spawn_normalizer`: the real service in-process with its own namespace,
//! plus a direct broker connection to feed raw events and read what came out.

use std::time::Duration;

use handoff_bus::{
    Bus, BusConfig, CRM_WRITER, Delivery, EMAIL_WRITER, NORMALIZER, OutgoingMessage,
};
use handoff_events::v1::{CanonicalPayload, DeadLetter, Envelope, RawPayload, envelope::Payload};
use handoff_events::{EventType, Message, PROTOBUF_CONTENT_TYPE, Timestamp};
use handoff_idempotency::RedisConfig;
use handoff_normalizer::Config;
use handoff_test_support as support;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The seed's example, which must flow from ingest to a canonical event.
pub const SEED: &str = r#"{"event_id":"evt_2026_03_19_000123","occurred_at":"2026-03-19T10:15:22Z","source":"crm",
 "customer":{"crm_contact_id":"12345","email":"alex@example.com","first_name":"Alex","last_name":"Kim",
             "company":"Example Co","lifecycle_stage":"customer","plan":"pro","owner_email":"owner@example.com"},
 "context":{"deal_id":"D-9001","utm_source":"webinar","utm_campaign":"onboarding"}}"#;

/// Where the service connects; tests that simulate outages point these at a proxy.
pub struct Options {
    pub amqp_url: String,
    pub redis_url: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            amqp_url: support::amqp_url(),
            redis_url: support::redis_url(),
        }
    }
}

/// The configuration a test normalizer runs with: quick reconnects, 1 s retries.
pub fn test_config(namespace: &str, opts: &Options) -> Config {
    let mut cfg = Config {
        namespace: namespace.to_owned(),
        ..Config::default()
    };
    cfg.bus = BusConfig {
        url: opts.amqp_url.clone(),
        publish_timeout: Duration::from_secs(5),
        reconnect_min_delay: Duration::from_millis(50),
        reconnect_max_delay: Duration::from_millis(500),
        retry_delays: vec![Duration::from_secs(1)],
        shutdown_grace: Duration::from_secs(5),
        ..BusConfig::default()
    };
    cfg.redis = RedisConfig {
        url: opts.redis_url.clone(),
        op_timeout: Duration::from_millis(500),
    };
    cfg.shutdown.grace = Duration::from_secs(8);
    cfg
}

/// A running normalizer (it can be stopped and started again in the same namespace).
pub struct TestNormalizer {
    pub admin: String,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestNormalizer {
    /// Starts the normalizer in `namespace`.
    pub async fn start(namespace: &str, opts: &Options) -> TestNormalizer {
        support::init_telemetry();
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let admin = format!("http://{}", admin_listener.local_addr().expect("addr"));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(handoff_normalizer::run(
            test_config(namespace, opts),
            admin_listener,
            shutdown.clone(),
        ));
        TestNormalizer {
            admin,
            shutdown,
            task: Some(task),
        }
    }

    /// What `/readyz` says now.
    pub async fn is_ready(&self) -> bool {
        match reqwest::get(format!("{}/readyz", self.admin)).await {
            Ok(r) => r.status() == 200,
            Err(_) => false,
        }
    }

    /// Polls `/readyz` until it says `ready`, or panics after `within`.
    pub async fn wait_ready(&self, ready: bool, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.is_ready().await != ready {
            assert!(
                tokio::time::Instant::now() < deadline,
                "/readyz did not turn {} within {within:?}",
                if ready { "ready" } else { "not-ready" }
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Cancels the service and checks that it stops cleanly within `within`.
    pub async fn stop_within(mut self, within: Duration) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let result = tokio::time::timeout(within, task).await;
            assert!(
                matches!(result, Ok(Ok(Ok(())))),
                "the normalizer did not stop cleanly: {result:?}"
            );
        }
    }

    /// Stops the service.
    pub async fn stop(self) {
        self.stop_within(Duration::from_secs(15)).await;
    }
}

/// One test's world: a namespace, a normalizer in it and a direct connection.
pub struct World {
    pub namespace: String,
    pub inspector: Bus,
    pub normalizer: Option<TestNormalizer>,
    /// Removes the namespace if the test panics before [`World::finish`].
    guard: support::TeardownOnDrop,
}

impl World {
    /// A fresh namespace with a running, ready normalizer.
    pub async fn start() -> World {
        World::start_with(Options::default()).await
    }

    /// Like [`World::start`], with the service's connections set by `opts`.
    pub async fn start_with(opts: Options) -> World {
        let namespace = support::namespace();
        // The normalizer's test tiers ([1s]) are among the defaults the inspector tears down.
        let guard = support::TeardownOnDrop::new(&namespace, &BusConfig::default().retry_delays);
        let inspector = support::inspector(&namespace).await;
        let normalizer = TestNormalizer::start(&namespace, &opts).await;
        normalizer.wait_ready(true, Duration::from_secs(20)).await;
        World {
            namespace,
            inspector,
            normalizer: Some(normalizer),
            guard,
        }
    }

    /// The running normalizer.
    pub fn normalizer(&self) -> &TestNormalizer {
        self.normalizer.as_ref().expect("running")
    }

    /// Publishes `body` as ingest would: a raw envelope to `raw.<type>`.
    pub async fn publish_raw(
        &self,
        event_type: EventType,
        event_id: &str,
        version: u32,
        body: &str,
    ) {
        let envelope = raw_envelope(event_type, event_id, version, body);
        self.publish_envelope(event_type.raw_routing_key(), &envelope)
            .await;
    }

    /// Publishes an envelope as it is.
    pub async fn publish_envelope(&self, routing_key: String, envelope: &Envelope) {
        self.publish_bytes(
            routing_key,
            envelope.encode_to_vec(),
            Some(envelope.event_id.clone()),
        )
        .await;
    }

    /// Publishes arbitrary bytes to the events exchange.
    pub async fn publish_bytes(
        &self,
        routing_key: String,
        body: Vec<u8>,
        message_id: Option<String>,
    ) {
        self.inspector
            .publish(OutgoingMessage {
                routing_key,
                body,
                content_type: Some(PROTOBUF_CONTENT_TYPE.to_owned()),
                message_id,
                message_type: Some("handoff.v1.Envelope".to_owned()),
                headers: Default::default(),
            })
            .await
            .expect("publish");
    }

    /// Waits until the CRM writer's queue holds `n` canonical messages (and no
    /// more arrive for a moment), then takes them all; the email writer's queue
    /// must hold the same number (both are emptied).
    pub async fn canonical(&self, n: usize, within: Duration) -> Vec<Delivery> {
        let crm = self.inspector.topology().stage_queue(CRM_WRITER);
        let email = self.inspector.topology().stage_queue(EMAIL_WRITER);
        self.wait_count(&crm, n, within).await;
        let settled = self.count(&crm).await;
        assert_eq!(settled, n, "{crm} holds {settled} messages, expected {n}");
        let copies = support::drain_queue(&self.inspector, &email).await;
        assert_eq!(copies.len(), n, "{email} differs from {crm}");
        support::drain_queue(&self.inspector, &crm).await
    }

    /// Waits until the dead-letter queue holds `n` records, then takes them all.
    pub async fn dead_letters(&self, n: usize, within: Duration) -> Vec<DeadLetter> {
        let queue = self.inspector.topology().dead_letter_queue();
        self.wait_count(&queue, n, within).await;
        assert_eq!(self.count(&queue).await, n, "dead letters");
        support::drain_queue(&self.inspector, &queue)
            .await
            .iter()
            .map(|d| {
                handoff_bus::consumer::read_dead_letter(self.inspector.topology(), d)
                    .expect("a DeadLetter record")
            })
            .collect()
    }

    /// Messages waiting in `queue`.
    pub async fn count(&self, queue: &str) -> usize {
        self.inspector.message_count(queue).await.expect("count") as usize
    }

    /// Waits until `queue` holds at least `n` messages and then stays put for 300 ms.
    pub async fn wait_count(&self, queue: &str, n: usize, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let now = self.count(queue).await;
            if now >= n {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if self.count(queue).await == now {
                    return;
                }
                continue;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{queue} holds {now} messages after {within:?}, expected {n}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Raw messages not yet settled by the normalizer (ready in its queue).
    pub async fn raw_waiting(&self) -> usize {
        self.count(&self.inspector.topology().stage_queue(NORMALIZER))
            .await
    }

    /// Stops the normalizer (if running) and removes the namespace.
    pub async fn finish(mut self) {
        if let Some(normalizer) = self.normalizer.take() {
            normalizer.stop().await;
        }
        support::remove_namespace(self.inspector, &self.namespace).await;
        self.guard.disarm();
    }
}

/// A raw envelope as ingest builds it, for `publisher_id` "acme".
pub fn raw_envelope(event_type: EventType, event_id: &str, version: u32, body: &str) -> Envelope {
    let now = std::time::SystemTime::now();
    Envelope {
        event_id: event_id.to_owned(),
        event_type: event_type.as_str().to_owned(),
        schema_version: version,
        occurred_at: Some(Timestamp::from(now)),
        received_at: Some(Timestamp::from(now)),
        source: "test".to_owned(),
        publisher_id: "acme".to_owned(),
        content_sha256: Sha256::digest(body.as_bytes()).to_vec(),
        attributes: Default::default(),
        payload: Some(Payload::Raw(RawPayload {
            content_type: "application/json".to_owned(),
            body: body.as_bytes().to_vec(),
        })),
    }
}

/// Decodes a canonical message: its envelope and canonical payload.
pub fn canonical(delivery: &Delivery) -> (Envelope, CanonicalPayload) {
    let envelope = Envelope::decode(delivery.body.as_slice()).expect("a protobuf envelope");
    let payload = match &envelope.payload {
        Some(Payload::Canonical(c)) => c.clone(),
        other => panic!("expected a canonical payload, got {other:?}"),
    };
    (envelope, payload)
}

/// The seed's body with another event id.
pub fn seed_with_id(event_id: &str) -> String {
    SEED.replace("evt_2026_03_19_000123", event_id)
}
