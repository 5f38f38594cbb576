//! An email-writer world: the real service in-process with its own namespace, a sandbox of its
//! own (its Mailchimp half), and a broker connection to feed canonical events and read dead
//! letters and `email.subscriber.synced` reports.

use std::collections::BTreeMap;
use std::time::Duration;

use handoff_bus::{Bus, BusConfig, CRM_WRITER, Delivery, EMAIL_WRITER, OutgoingMessage};
use handoff_delivery::{AuthConfig, PacingConfig, SecretSource};
use handoff_email_writer::Config;
use handoff_events::v1::canonical_payload::Event;
use handoff_events::v1::{CanonicalPayload, DeadLetter, Envelope, envelope::Payload};
use handoff_events::{EventType, Message, PROTOBUF_CONTENT_TYPE, Timestamp};
use handoff_idempotency::{Ledger, RedisConfig, Store};
use handoff_sandbox::mailchimp::{Event as MemberEvent, Member};
use handoff_sandbox::testing::{self, Running, TEST_MAILCHIMP_KEY, TEST_MAILCHIMP_LIST};
use handoff_test_support as support;

/// The audience every test writes to.
pub const LIST: &str = TEST_MAILCHIMP_LIST;

/// The publisher id of every test event.
pub const PUBLISHER: &str = "pub_test";

/// The configuration a test email-writer runs with: the world's sandbox, quick reconnects, short
/// retry tiers and backoff, no pacing to speak of.
pub fn test_config(namespace: &str, sandbox_url: &str) -> Config {
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
    cfg.mailchimp.base_url = sandbox_url.to_owned();
    cfg.mailchimp.list_id = LIST.to_owned();
    cfg.mailchimp.auth = AuthConfig::Basic {
        username: "handoff".to_owned(),
        password: SecretSource::literal(TEST_MAILCHIMP_KEY),
    };
    // Tests measure behaviour, not a request-rate ceiling.
    cfg.mailchimp.pacing = PacingConfig {
        limit: 10_000,
        per: Duration::from_secs(1),
        burst: 10,
        ..PacingConfig::default()
    };
    cfg.retry.base = Duration::from_millis(200);
    cfg.retry.cap = Duration::from_secs(2);
    cfg.shutdown.grace = Duration::from_secs(8);
    cfg
}

/// A running email-writer.
pub struct TestWriter(support::service::InProcess);

impl TestWriter {
    pub async fn start(cfg: Config) -> TestWriter {
        support::init_telemetry();
        let service = support::service::InProcess::start("the email-writer", |admin, stop| {
            handoff_email_writer::run(cfg, admin, stop)
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

    /// The admin endpoint's `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.0.admin_url))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }
}

/// Namespace, sandbox, writer and a broker connection of the test's own.
pub struct World {
    pub namespace: String,
    guard: support::TeardownOnDrop,
    pub sandbox: Running,
    pub writer: Option<TestWriter>,
    pub inspector: Bus,
    store: Store,
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
        let store = Store::new(
            &RedisConfig {
                url: support::redis_url(),
                op_timeout: Duration::from_secs(1),
            },
            &namespace,
        )
        .expect("store");
        World {
            namespace,
            guard,
            sandbox,
            writer: Some(writer),
            inspector,
            store,
        }
    }

    /// Publishes a canonical envelope as the normalizer does.
    pub async fn publish(&self, envelope: &Envelope) {
        let event_type: EventType = envelope.event_type.parse().expect("event type");
        self.publish_to(&event_type.canonical_routing_key(), envelope)
            .await;
    }

    /// Publishes `envelopes` at once, confirms awaited together: they reach the queue as
    /// one burst, not paced by a confirm round trip each, which on a loaded machine is as
    /// slow as the writer and never lets requests pile up.
    pub async fn publish_all(&self, envelopes: &[Envelope]) {
        futures::future::join_all(envelopes.iter().map(|e| self.publish(e))).await;
    }

    /// Publishes an envelope under `routing_key`.
    pub async fn publish_to(&self, routing_key: &str, envelope: &Envelope) {
        self.inspector
            .publish(OutgoingMessage {
                routing_key: routing_key.to_owned(),
                body: envelope.encode_to_vec(),
                content_type: Some(PROTOBUF_CONTENT_TYPE.to_owned()),
                message_id: Some(envelope.event_id.clone()),
                message_type: Some("handoff.v1.Envelope".to_owned()),
                headers: Default::default(),
            })
            .await
            .expect("publish");
    }

    /// Publishes raw bytes under `routing_key`.
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

    /// The `email.subscriber.synced` reports so far. The topology binds that key to the
    /// crm-writer's queue (it writes the subscriber id back), which no one consumes here, so
    /// they wait there; taken off with the canonical copies that queue also holds.
    pub async fn synced(&self) -> Vec<Envelope> {
        let queue = self.inspector.topology().stage_queue(CRM_WRITER);
        support::drain_queue(&self.inspector, &queue)
            .await
            .into_iter()
            .filter(|d: &Delivery| d.routing_key == handoff_bus::EMAIL_SUBSCRIBER_SYNCED)
            .map(|d| Envelope::decode(d.body.as_slice()).expect("envelope"))
            .collect()
    }

    /// Messages waiting in the email-writer's queue.
    pub async fn waiting(&self) -> usize {
        let queue = self.inspector.topology().stage_queue(EMAIL_WRITER);
        self.inspector.message_count(&queue).await.expect("count") as usize
    }

    /// Waits until `n` consumers are subscribed to the email-writer's queue: ready replicas
    /// may still be subscribing, and a burst published before then goes to the first alone.
    pub async fn wait_consumers(&self, n: u32) {
        let queue = self.inspector.topology().stage_queue(EMAIL_WRITER);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let consumers = self.inspector.consumer_count(&queue).await.expect("count");
            if consumers == n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{consumers} consumers on {queue}, never {n}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the writer's queue is empty and the sandbox saw no request for 500 ms.
    pub async fn wait_until_idle(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let before = self.sandbox.stats().requests;
            tokio::time::sleep(Duration::from_millis(500)).await;
            if self.waiting().await == 0 && self.sandbox.stats().requests == before {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the writer never went idle"
            );
        }
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

    /// The event's ledger, if any.
    pub async fn ledger(&self, event_id: &str) -> Option<Ledger> {
        self.store
            .ledger_get(PUBLISHER, event_id)
            .await
            .expect("ledger")
    }

    /// Polls the ledger until the email-writer's stage reports `status` for the event.
    pub async fn wait_ledger(
        &self,
        event_id: &str,
        status: &str,
        within: Duration,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let ledger = self.ledger(event_id).await;
            if let Some(ledger) = &ledger
                && ledger
                    .stages
                    .get(EMAIL_WRITER)
                    .is_some_and(|s| s.status == status)
            {
                return serde_json::to_value(ledger).expect("json");
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "ledger of {event_id}: no email-writer {status} within {within:?}: {ledger:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The ledgers indexed under `email`, newest first.
    pub async fn timeline(&self, email: &str) -> Vec<Ledger> {
        self.store
            .ledger_by_email(PUBLISHER, email, 100)
            .await
            .expect("timeline")
    }

    /// Whether the email-writer holds any idempotency record for `event_id`.
    pub async fn claimed(&self, event_id: &str) -> bool {
        let key = self
            .store
            .idempotency_key(&handoff_idempotency::IdempotencyKey::new(
                EMAIL_WRITER,
                PUBLISHER,
                event_id,
            ));
        let mut conn = redis_conn().await;
        let n: i64 = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("exists");
        n == 1
    }

    /// Deletes the email-writer's per-event dedupe records, as if their retention had passed;
    /// the member events' own records (scope `member-event.<list>`) stay, as they are kept longer.
    pub async fn forget_event_dedupe(&self) {
        let mut conn = redis_conn().await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!(
                "{}:idem:{EMAIL_WRITER}:{PUBLISHER}:*",
                self.namespace
            ))
            .query_async(&mut conn)
            .await
            .expect("keys");
        assert!(!keys.is_empty(), "the writer keeps dedupe records");
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .expect("del");
    }

    /// The member `email` of the test list.
    pub fn member(&self, email: &str) -> Member {
        self.sandbox
            .mailchimp_member(LIST, email)
            .unwrap_or_else(|| panic!("no member {email}"))
    }

    /// The member events posted to `email`.
    pub fn events_of(&self, email: &str) -> Vec<MemberEvent> {
        self.sandbox
            .mailchimp_events()
            .into_iter()
            .filter(|e| e.email_address.eq_ignore_ascii_case(email))
            .collect()
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

async fn redis_conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(support::redis_url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("redis")
}

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

/// A merge field's value on `member`, as a string.
pub fn merge(member: &Member, tag: &str) -> Option<String> {
    member
        .merge_fields
        .get(tag)
        .and_then(|v| v.as_str())
        .map(str::to_owned)
}

/// The member's tag names, sorted.
pub fn tags(member: &Member) -> Vec<String> {
    let mut names: Vec<String> = member.tags.iter().map(|t| t.name.clone()).collect();
    names.sort();
    names
}
