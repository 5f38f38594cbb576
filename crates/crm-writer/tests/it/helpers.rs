//! A crm-writer world: the real service in-process with its own namespace, a sandbox CRM of its
//! own, and a broker connection to feed canonical events and read dead letters.

use std::collections::BTreeMap;
use std::time::Duration;

use handoff_bus::{Bus, BusConfig, CRM_WRITER, Delivery, OutgoingMessage};
use handoff_crm_writer::Config;
use handoff_delivery::{AuthConfig, PacingConfig, SecretSource};
use handoff_events::v1::canonical_payload::Event;
use handoff_events::v1::{CanonicalPayload, DeadLetter, Envelope, envelope::Payload};
use handoff_events::{EventType, Message, PROTOBUF_CONTENT_TYPE, Timestamp};
use handoff_idempotency::RedisConfig;
use handoff_sandbox::testing::{self, Running, TEST_TOKEN};
use handoff_test_support as support;

/// The configuration a test crm-writer runs with: the world's sandbox, quick reconnects, short
/// retry tiers and a fast quota unless the test sets its own.
pub fn test_config(namespace: &str, crm_url: &str) -> Config {
    let mut cfg = Config {
        namespace: namespace.to_owned(),
        ..Config::default()
    };
    cfg.bus = BusConfig {
        url: support::amqp_url(),
        publish_timeout: Duration::from_secs(5),
        reconnect_min_delay: Duration::from_millis(50),
        reconnect_max_delay: Duration::from_millis(500),
        retry_delays: vec![
            Duration::from_millis(100),
            Duration::from_millis(500),
            Duration::from_secs(2),
        ],
        shutdown_grace: Duration::from_secs(5),
        ..BusConfig::default()
    };
    cfg.redis = RedisConfig {
        url: support::redis_url(),
        op_timeout: Duration::from_millis(500),
    };
    cfg.hubspot.base_url = crm_url.to_owned();
    cfg.hubspot.auth = AuthConfig::Static {
        token: SecretSource {
            env: None,
            file: None,
            value: Some(TEST_TOKEN.to_owned().into()),
        },
    };
    // Tests measure behaviour, not HubSpot's quota: plenty unless a test sets its own.
    cfg.hubspot.pacing = PacingConfig {
        limit: 10_000,
        per: Duration::from_secs(1),
        ..PacingConfig::default()
    };
    cfg.retry.base = Duration::from_millis(200);
    cfg.retry.cap = Duration::from_secs(2);
    cfg.shutdown.grace = Duration::from_secs(8);
    cfg
}

/// A running crm-writer.
pub struct TestWriter(support::service::InProcess);

impl TestWriter {
    pub async fn start(cfg: Config) -> TestWriter {
        support::init_telemetry();
        let service = support::service::InProcess::start("the crm-writer", |admin, stop| {
            handoff_crm_writer::run(cfg, admin, stop)
        })
        .await;
        TestWriter(service)
    }

    /// Waits until `/readyz` says the writer is connected to the broker and Redis.
    pub async fn wait_ready(&self) {
        self.0.wait_ready().await;
    }

    pub async fn stop(self) {
        self.0.stop().await;
    }
}

/// Namespace, sandbox, writer and a broker connection of the test's own.
pub struct World {
    pub namespace: String,
    guard: support::TeardownOnDrop,
    pub sandbox: Running,
    pub writer: Option<TestWriter>,
    pub inspector: Bus,
}

impl World {
    /// A world whose writer runs with the default test configuration.
    pub async fn start() -> World {
        Self::start_with(|_| {}).await
    }

    /// A world whose writer's configuration `tweak` adjusts.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> World {
        Self::start_full(testing::config(), tweak).await
    }

    /// A world with its own sandbox configuration too.
    pub async fn start_full(
        sandbox_cfg: handoff_sandbox::Config,
        tweak: impl FnOnce(&mut Config),
    ) -> World {
        let namespace = support::namespace();
        let sandbox = testing::spawn(sandbox_cfg).await.expect("sandbox");
        let mut cfg = test_config(&namespace, &sandbox.base_url);
        let guard = support::TeardownOnDrop::new(&namespace, &cfg.bus.retry_delays);
        let inspector = support::inspector_with(&namespace, &cfg.bus.retry_delays).await;
        tweak(&mut cfg);
        let writer = TestWriter::start(cfg).await;
        World {
            namespace,
            guard,
            sandbox,
            writer: Some(writer),
            inspector,
        }
    }

    /// Stops the in-process writer (a test that runs the binary instead).
    pub async fn stop_writer(&mut self) {
        if let Some(writer) = self.writer.take() {
            writer.stop().await;
        }
    }

    /// This world's writer configuration, for starting more replicas.
    pub fn config(&self) -> Config {
        test_config(&self.namespace, &self.sandbox.base_url)
    }

    /// Publishes a canonical envelope as the normalizer does.
    pub async fn publish(&self, envelope: &Envelope) {
        let event_type: EventType = envelope.event_type.parse().expect("event type");
        self.inspector
            .publish(OutgoingMessage {
                routing_key: event_type.canonical_routing_key(),
                body: envelope.encode_to_vec(),
                content_type: Some(PROTOBUF_CONTENT_TYPE.to_owned()),
                message_id: Some(envelope.event_id.clone()),
                message_type: Some("handoff.v1.Envelope".to_owned()),
                headers: Default::default(),
            })
            .await
            .expect("publish");
    }

    /// Publishes raw bytes to the crm-writer's route.
    pub async fn publish_bytes(&self, routing_key: &str, body: Vec<u8>) {
        self.inspector
            .publish(OutgoingMessage {
                routing_key: routing_key.to_owned(),
                body,
                content_type: Some(PROTOBUF_CONTENT_TYPE.to_owned()),
                message_id: None,
                message_type: None,
                headers: Default::default(),
            })
            .await
            .expect("publish");
    }

    /// Waits until `n` dead letters arrived and returns them (taken off the queue).
    pub async fn dead_letters(&self, n: usize, within: Duration) -> Vec<DeadLetter> {
        support::dead_letters(&self.inspector, n, within).await
    }

    /// The crm.contact.synced reports so far (taken off the email-writer queue, which binds them).
    pub async fn synced(&self) -> Vec<Envelope> {
        let queue = self
            .inspector
            .topology()
            .stage_queue(handoff_bus::EMAIL_WRITER);
        support::drain_queue(&self.inspector, &queue)
            .await
            .into_iter()
            .filter(|d: &Delivery| d.routing_key == handoff_bus::CRM_CONTACT_SYNCED)
            .map(|d| Envelope::decode(d.body.as_slice()).expect("envelope"))
            .collect()
    }

    /// Messages waiting in the crm-writer's queue.
    pub async fn waiting(&self) -> usize {
        let queue = self.inspector.topology().stage_queue(CRM_WRITER);
        self.inspector.message_count(&queue).await.expect("count") as usize
    }

    /// Polls until `done(stats)` holds; panics with the stats after `within`.
    pub async fn wait_for(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&handoff_sandbox::request_log::Stats) -> bool,
    ) -> handoff_sandbox::request_log::Stats {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let stats = self.sandbox.stats();
            if done(&stats) {
                return stats;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("{what}: not reached within {within:?}; sandbox stats: {stats:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls the ledger until the crm-writer's stage reports `status` for the event.
    pub async fn wait_ledger(
        &self,
        event_id: &str,
        status: &str,
        within: Duration,
    ) -> serde_json::Value {
        let store = handoff_idempotency::Store::new(
            &RedisConfig {
                url: support::redis_url(),
                op_timeout: Duration::from_secs(1),
            },
            &self.namespace,
        )
        .expect("store");
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let ledger = store.ledger_get(PUBLISHER, event_id).await.expect("ledger");
            if let Some(ledger) = &ledger
                && ledger
                    .stages
                    .get(CRM_WRITER)
                    .is_some_and(|s| s.status == status)
            {
                return serde_json::to_value(ledger).expect("json");
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "ledger of {event_id}: no crm-writer {status} within {within:?}: {ledger:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn finish(mut self) {
        if let Some(writer) = self.writer.take() {
            writer.stop().await;
        }
        support::remove_namespace(self.inspector.clone(), &self.namespace).await;
        self.guard.disarm();
        self.sandbox.stop().await.expect("sandbox stops");
    }
}

/// The publisher id of every test event.
pub const PUBLISHER: &str = "pub_test";

/// A canonical envelope for `event`, as the normalizer publishes it.
pub fn envelope(event_id: &str, occurred_at_secs: i64, source: &str, event: Event) -> Envelope {
    let event_type = match &event {
        Event::LeadCreated(_) => EventType::LeadCreated,
        Event::MeetingBooked(_) => EventType::MeetingBooked,
        Event::CustomerConverted(_) => EventType::CustomerConverted,
        Event::DealStageChanged(_) => EventType::DealStageChanged,
        Event::PaymentFailed(_) => EventType::PaymentFailed,
        Event::ContactUpdated(_) => EventType::ContactUpdated,
    };
    let payload = CanonicalPayload { event: Some(event) };
    let hash = sha256(&payload.encode_to_vec());
    Envelope {
        event_id: event_id.to_owned(),
        event_type: event_type.as_str().to_owned(),
        schema_version: 1,
        occurred_at: Some(Timestamp {
            seconds: occurred_at_secs,
            nanos: 0,
        }),
        received_at: Some(Timestamp {
            seconds: occurred_at_secs + 1,
            nanos: 0,
        }),
        source: source.to_owned(),
        publisher_id: PUBLISHER.to_owned(),
        content_sha256: hash,
        attributes: BTreeMap::new().into_iter().collect(),
        payload: Some(Payload::Canonical(payload)),
    }
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).to_vec()
}

/// The properties of the sandbox's record of `object_type` whose `property` is `value`.
pub fn record(
    sandbox: &Running,
    object_type: handoff_sandbox::hubspot::ObjectType,
    property: &str,
    value: &str,
) -> Option<BTreeMap<String, Option<String>>> {
    sandbox
        .records(object_type)
        .into_iter()
        .find(|o| {
            o.properties
                .get(property)
                .and_then(|v| v.as_deref())
                .is_some_and(|v| v.eq_ignore_ascii_case(value))
        })
        .map(|o| o.properties)
}
