//! `spawn_ingest`: the real service in-process on port 0, with its own
//! namespace, plus a direct broker connection to look into its queues.

use std::net::SocketAddr;
use std::time::Duration;

use handoff_bus::{Bus, BusConfig, Delivery};
use handoff_events::Message;
use handoff_events::v1::{Envelope, envelope::Payload};
use handoff_idempotency::RedisConfig;
use handoff_ingest::Config;
use handoff_ingest::auth::key_sha256;
use handoff_ingest::config::PublisherConfig;
use handoff_test_support as support;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The key of the test publisher "acme", allowed every type.
pub const KEY: &str = "test-key-acme";
/// The key of "billing", allowed only `payment.failed`, with a tiny rate limit.
pub const BILLING_KEY: &str = "test-key-billing";

/// The seed's example, which must be accepted verbatim.
pub const SEED: &str = r#"{"event_id":"evt_2026_03_19_000123","occurred_at":"2026-03-19T10:15:22Z","source":"crm",
 "customer":{"crm_contact_id":"12345","email":"alex@example.com","first_name":"Alex","last_name":"Kim",
             "company":"Example Co","lifecycle_stage":"customer","plan":"pro","owner_email":"owner@example.com"},
 "context":{"deal_id":"D-9001","utm_source":"webinar","utm_campaign":"onboarding"}}"#;

/// The seed event with another id.
pub fn seed_with_id(event_id: &str) -> String {
    SEED.replace("evt_2026_03_19_000123", event_id)
}

/// Settings a test may change before the service starts.
pub struct Options {
    pub amqp_url: String,
    pub redis_url: String,
    /// How long a publish waits for the broker's confirm.
    pub publish_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            amqp_url: support::amqp_url(),
            redis_url: support::redis_url(),
            publish_timeout: Duration::from_secs(5),
        }
    }
}

/// A running ingest and what a test needs to talk to it and look behind it.
pub struct TestIngest {
    pub base: String,
    pub admin: String,
    pub namespace: String,
    pub http: reqwest::Client,
    /// A direct connection (not through any proxy) for looking into queues.
    pub inspector: Bus,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// Removes the namespace if the test panics before [`TestIngest::stop`].
    guard: support::TeardownOnDrop,
}

/// The configuration a test ingest runs with.
pub fn test_config(namespace: &str, opts: &Options) -> Config {
    let mut cfg = Config {
        namespace: namespace.to_owned(),
        ..Config::default()
    };
    cfg.bus = BusConfig {
        url: opts.amqp_url.clone(),
        publish_timeout: opts.publish_timeout,
        reconnect_min_delay: Duration::from_millis(50),
        reconnect_max_delay: Duration::from_millis(500),
        ..BusConfig::default()
    };
    cfg.redis = RedisConfig {
        url: opts.redis_url.clone(),
        op_timeout: Duration::from_secs(1),
    };
    cfg.http.body_limit_bytes = 16 * 1024;
    cfg.http.unavailable_retry_after = Duration::from_secs(2);
    cfg.http.request_timeout = Duration::from_secs(15);
    cfg.shutdown.grace = Duration::from_secs(5);
    cfg.publishers = vec![
        PublisherConfig {
            id: "acme".into(),
            key_sha256: key_sha256(KEY),
            event_types: vec!["*".into()],
            rate_per_second: 100_000,
            burst: 100_000,
        },
        PublisherConfig {
            id: "billing".into(),
            key_sha256: key_sha256(BILLING_KEY),
            event_types: vec!["payment.failed".into()],
            rate_per_second: 1,
            burst: 2,
        },
    ];
    cfg
}

/// Starts ingest with the default options and waits until it is ready.
pub async fn spawn_ingest() -> TestIngest {
    spawn_ingest_with(Options::default(), true).await
}

/// Starts ingest; with `wait_ready`, waits until `/readyz` says ready.
pub async fn spawn_ingest_with(opts: Options, wait_ready: bool) -> TestIngest {
    support::init_telemetry();
    let namespace = support::namespace();
    let cfg = test_config(&namespace, &opts);
    let http_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let base = format!("http://{}", http_listener.local_addr().expect("addr"));
    let admin = format!("http://{}", admin_listener.local_addr().expect("addr"));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(handoff_ingest::run(
        cfg,
        http_listener,
        admin_listener,
        shutdown.clone(),
    ));
    let guard =
        support::TeardownOnDrop::new(&namespace, &handoff_bus::BusConfig::default().retry_delays);
    let inspector = inspector(&namespace).await;
    let app = TestIngest {
        base,
        admin,
        namespace,
        http: reqwest::Client::new(),
        inspector,
        shutdown,
        task: Some(task),
        guard,
    };
    if wait_ready {
        app.wait_ready(true, Duration::from_secs(20)).await;
    }
    app
}

impl TestIngest {
    /// The queue raw events land in (the normalizer's).
    pub fn raw_queue(&self) -> String {
        self.inspector.topology().stage_queue("normalizer")
    }

    /// Polls `/readyz` until it reports `ready`, or panics after `within`.
    pub async fn wait_ready(&self, ready: bool, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.is_ready().await == ready {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/readyz did not turn {} within {within:?}",
                if ready { "ready" } else { "not-ready" }
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What `/readyz` says now.
    pub async fn is_ready(&self) -> bool {
        match self.http.get(format!("{}/readyz", self.admin)).send().await {
            Ok(r) => r.status() == 200,
            Err(_) => false,
        }
    }

    /// POSTs `body` as JSON to `/v1/events/{event_type}` with `key`.
    pub async fn post(
        &self,
        event_type: &str,
        key: &str,
        body: impl Into<String>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let response = self
            .http
            .post(format!("{}/v1/events/{event_type}", self.base))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body.into())
            .send()
            .await
            .expect("request");
        split(response).await
    }

    /// GETs `path` with `key`.
    pub async fn get(&self, path: &str, key: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(key)
            .send()
            .await
            .expect("request");
        let (status, body, _) = split(response).await;
        (status, body)
    }

    /// Messages waiting in the raw queue.
    pub async fn raw_count(&self) -> u32 {
        self.inspector
            .message_count(&self.raw_queue())
            .await
            .expect("count")
    }

    /// Takes every message from the raw queue.
    pub async fn drain_raw(&self) -> Vec<Delivery> {
        drain_raw(&self.inspector).await
    }

    /// Stops the service and removes its queues and Redis keys.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let result = tokio::time::timeout(Duration::from_secs(15), task).await;
            assert!(
                matches!(result, Ok(Ok(Ok(())))),
                "ingest did not stop cleanly: {result:?}"
            );
        }
        remove_namespace(self.inspector, &self.namespace).await;
        self.guard.disarm();
    }
}

pub use support::{inspector, remove_namespace};

/// Takes every message from the namespace's raw queue (the normalizer's).
pub async fn drain_raw(inspector: &Bus) -> Vec<Delivery> {
    support::drain_queue(inspector, &inspector.topology().stage_queue("normalizer")).await
}

/// Status, JSON body (Null if none) and headers of a response.
pub async fn split(response: reqwest::Response) -> (u16, Value, reqwest::header::HeaderMap) {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, body, headers)
}

/// Decodes a raw-queue message into its envelope.
pub fn envelope(delivery: &Delivery) -> Envelope {
    Envelope::decode(delivery.body.as_slice()).expect("a protobuf envelope")
}

/// The publisher's JSON carried in an envelope.
pub fn raw_body(envelope: &Envelope) -> Vec<u8> {
    match &envelope.payload {
        Some(Payload::Raw(raw)) => raw.body.clone(),
        other => panic!("expected a raw payload, got {other:?}"),
    }
}

/// A free local port, for a process that must be told its port up front.
pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}
