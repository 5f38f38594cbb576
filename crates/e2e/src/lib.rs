//! Whole-pipeline scenarios: the services' crates started together in-process against the real
//! RabbitMQ and Redis, with the sandbox as the CRM and the email platform. The scenarios are in
//! `tests/`; this library is their harness: [`Service`] (one service running in-process, ready
//! and stopped through its admin port and shutdown token) and a `start_*` function per service
//! with the configuration the scenarios share.
//!
//! - `tests/trace.rs`: one `customer.converted` from ingest's HTTP request to the sandbox's
//!   received requests is one trace, with every parent link where it belongs.

use std::time::Duration;

use handoff_bus::BusConfig;
use handoff_delivery::{AuthConfig, PacingConfig, SecretSource};
use handoff_idempotency::RedisConfig;
use handoff_ingest::auth::key_sha256;
use handoff_ingest::config::PublisherConfig;
use handoff_sandbox::testing::TEST_TOKEN;
use handoff_test_support as support;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The publisher every scenario posts as, and its API key.
pub const PUBLISHER: &str = "acme";
pub const KEY: &str = "e2e-test-key";

/// One retry tier for every service (and the teardown): few delay queues to declare and delete.
pub const TIERS: [Duration; 1] = [Duration::from_secs(1)];

/// A service running in-process.
pub struct Service {
    pub name: &'static str,
    pub admin_url: String,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Service {
    fn spawn(
        name: &'static str,
        admin_url: String,
        run: impl FnOnce(CancellationToken) -> JoinHandle<anyhow::Result<()>>,
    ) -> Service {
        let shutdown = CancellationToken::new();
        let task = run(shutdown.clone());
        Service {
            name,
            admin_url,
            shutdown,
            task,
        }
    }

    /// Waits until `/readyz` says the service is connected to the broker and Redis.
    pub async fn wait_ready(&self) {
        let url = format!("{}/readyz", self.admin_url);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !reqwest::get(&url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never became ready",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Cancels the service and waits until it has drained and returned.
    pub async fn stop(self) {
        self.shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(20), self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => panic!("{} failed: {err:#}", self.name),
            Ok(Err(err)) => panic!("{} panicked: {err}", self.name),
            Err(_) => panic!("{} did not stop within 20 s", self.name),
        }
    }
}

/// A listener on a free port and its base URL.
pub async fn listener() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    (listener, url)
}

/// What every service's bus uses: the test broker, quick reconnects, the test's retry tiers.
pub fn bus_config() -> BusConfig {
    BusConfig {
        url: support::amqp_url(),
        publish_timeout: Duration::from_secs(5),
        reconnect_min_delay: Duration::from_millis(50),
        reconnect_max_delay: Duration::from_millis(500),
        retry_delays: TIERS.to_vec(),
        shutdown_grace: Duration::from_secs(5),
        ..BusConfig::default()
    }
}

pub fn redis_config() -> RedisConfig {
    RedisConfig {
        url: support::redis_url(),
        op_timeout: Duration::from_millis(500),
    }
}

/// A literal secret (the sandbox's test credentials).
pub fn literal(secret: &str) -> SecretSource {
    SecretSource {
        env: None,
        file: None,
        value: Some(secret.to_owned().into()),
    }
}

/// A quota that never paces a scenario.
pub fn unlimited() -> PacingConfig {
    PacingConfig {
        limit: 100_000,
        per: Duration::from_secs(1),
        ..PacingConfig::default()
    }
}

/// Ingest for [`PUBLISHER`], allowed every event type; returns it and its base URL.
pub async fn start_ingest(
    namespace: &str,
    tweak: impl FnOnce(&mut handoff_ingest::Config),
) -> (Service, String) {
    let mut cfg = handoff_ingest::Config {
        namespace: namespace.to_owned(),
        ..handoff_ingest::Config::default()
    };
    cfg.bus = bus_config();
    cfg.redis = redis_config();
    cfg.publishers = vec![PublisherConfig {
        id: PUBLISHER.into(),
        key_sha256: key_sha256(KEY),
        event_types: vec!["*".into()],
        rate_per_second: 100_000,
        burst: 100_000,
    }];
    tweak(&mut cfg);
    let (http, url) = listener().await;
    let (admin, admin_url) = listener().await;
    let service = Service::spawn("ingest", admin_url, |stop| {
        tokio::spawn(handoff_ingest::run(cfg, http, admin, stop))
    });
    (service, url)
}

pub async fn start_normalizer(
    namespace: &str,
    tweak: impl FnOnce(&mut handoff_normalizer::Config),
) -> Service {
    let mut cfg = handoff_normalizer::Config {
        namespace: namespace.to_owned(),
        ..handoff_normalizer::Config::default()
    };
    cfg.bus = bus_config();
    cfg.redis = redis_config();
    tweak(&mut cfg);
    let (admin, admin_url) = listener().await;
    Service::spawn("the normalizer", admin_url, |stop| {
        tokio::spawn(handoff_normalizer::run(cfg, admin, stop))
    })
}

/// The crm-writer against the sandbox's HubSpot with its test token and a quota that never
/// paces a scenario.
pub async fn start_crm_writer(
    namespace: &str,
    sandbox_url: &str,
    tweak: impl FnOnce(&mut handoff_crm_writer::Config),
) -> Service {
    let mut cfg = handoff_crm_writer::Config {
        namespace: namespace.to_owned(),
        ..handoff_crm_writer::Config::default()
    };
    cfg.bus = bus_config();
    cfg.redis = redis_config();
    cfg.hubspot.base_url = sandbox_url.to_owned();
    cfg.hubspot.auth = AuthConfig::Static {
        token: literal(TEST_TOKEN),
    };
    cfg.hubspot.pacing = unlimited();
    tweak(&mut cfg);
    let (admin, admin_url) = listener().await;
    Service::spawn("the crm-writer", admin_url, |stop| {
        tokio::spawn(handoff_crm_writer::run(cfg, admin, stop))
    })
}
