//! Whole-pipeline scenarios: the services' crates started together in-process against the real
//! RabbitMQ and Redis, with the sandbox as the CRM and the email platform. The scenarios are in
//! `tests/`; this library is their harness: [`Service`] (one service running in-process, ready
//! and stopped through its admin port and shutdown token) and a `start_*` function per service
//! with the configuration the scenarios share.
//!
//! - `tests/trace.rs`: one `customer.converted` from ingest's HTTP request to the sandbox's
//!   received requests is one trace, with every parent link where it belongs.
//! - `tests/dead_letters.rs`: failures parked by the dead-letter handler with their context,
//!   then replayed into the pipeline once, and paced beside live traffic.

use std::time::Duration;

use handoff_bus::BusConfig;
use handoff_dead_letters::config::{OperatorConfig, Role};
use handoff_delivery::{AuthConfig, PacingConfig, SecretSource};
use handoff_idempotency::RedisConfig;
use handoff_ingest::auth::key_sha256;
use handoff_ingest::config::PublisherConfig;
use handoff_sandbox::testing::TEST_TOKEN;
use handoff_test_support as support;

/// The publisher every scenario posts as, and its API key.
pub const PUBLISHER: &str = "acme";
pub const KEY: &str = "e2e-test-key";

/// The dead-letter API's one operator, and the token it authenticates with.
pub const OPERATOR: &str = "e2e.operator";
pub const OPERATOR_TOKEN: &str = "e2e-operator-token";

/// One retry tier for every service (and the teardown): few delay queues to declare and delete.
pub const TIERS: [Duration; 1] = [Duration::from_secs(1)];

/// A service running in-process (see `handoff_test_support::service`).
pub use support::service::InProcess as Service;
pub use support::service::listener;

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
        op_timeout: Duration::from_secs(2),
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
    let service = Service::start("ingest", |admin, stop| {
        handoff_ingest::run(cfg, http, admin, stop)
    })
    .await;
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
    Service::start("the normalizer", |admin, stop| {
        handoff_normalizer::run(cfg, admin, stop)
    })
    .await
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
    Service::start("the crm-writer", |admin, stop| {
        handoff_crm_writer::run(cfg, admin, stop)
    })
    .await
}

/// The email-writer against the sandbox's Mailchimp with its test key and audience and a quota
/// that never paces a scenario (Mailchimp's connection limit stays: it is the vendor's).
pub async fn start_email_writer(
    namespace: &str,
    sandbox_url: &str,
    tweak: impl FnOnce(&mut handoff_email_writer::Config),
) -> Service {
    let mut cfg = handoff_email_writer::Config {
        namespace: namespace.to_owned(),
        ..handoff_email_writer::Config::default()
    };
    cfg.bus = bus_config();
    cfg.redis = redis_config();
    cfg.mailchimp.base_url = sandbox_url.to_owned();
    cfg.mailchimp.list_id = handoff_sandbox::testing::TEST_MAILCHIMP_LIST.to_owned();
    cfg.mailchimp.auth = AuthConfig::Basic {
        username: "handoff".to_owned(),
        password: literal(handoff_sandbox::testing::TEST_MAILCHIMP_KEY),
    };
    cfg.mailchimp.pacing = unlimited();
    tweak(&mut cfg);
    Service::start("the email-writer", |admin, stop| {
        handoff_email_writer::run(cfg, admin, stop)
    })
    .await
}

/// The dead-letter handler with one operator ([`OPERATOR_TOKEN`]); returns it and its API's
/// base URL.
pub async fn start_dead_letters(
    namespace: &str,
    tweak: impl FnOnce(&mut handoff_dead_letters::Config),
) -> (Service, String) {
    let mut cfg = handoff_dead_letters::Config {
        namespace: namespace.to_owned(),
        ..handoff_dead_letters::Config::default()
    };
    cfg.bus = bus_config();
    cfg.redis = redis_config();
    // The shared test Redis runs without AOF: a handler requiring durability would park nothing.
    cfg.store.require_durable = false;
    cfg.operators = vec![OperatorConfig {
        name: OPERATOR.to_owned(),
        token_sha256: key_sha256(OPERATOR_TOKEN),
        role: Role::Operator,
    }];
    tweak(&mut cfg);
    let (http, url) = listener().await;
    let service = Service::start("the dead-letter handler", |admin, stop| {
        handoff_dead_letters::run(cfg, http, admin, stop)
    })
    .await;
    (service, url)
}

/// Every service in-process in one namespace of its own, with an in-process sandbox as both
/// vendors; torn down (queues with their tiers, Redis keys, sandbox) by [`Pipeline::finish`], or
/// the namespace by its guard if the test panics.
pub struct Pipeline {
    pub namespace: String,
    guard: support::TeardownOnDrop,
    pub inspector: handoff_bus::Bus,
    pub sandbox: handoff_sandbox::testing::Running,
    pub ingest_url: String,
    pub http: reqwest::Client,
    pub store: handoff_idempotency::Store,
    /// The dead-letter API's base URL, once [`Pipeline::start_dead_letters`] started it.
    pub dlq_url: Option<String>,
    services: Vec<Service>,
}

/// An adjustment to one service's configuration.
pub type Tweak<C> = Option<Box<dyn FnOnce(&mut C)>>;

/// Adjustments to each service's configuration before [`Pipeline::start_with`] starts it.
#[derive(Default)]
pub struct Tweaks {
    pub ingest: Tweak<handoff_ingest::Config>,
    pub normalizer: Tweak<handoff_normalizer::Config>,
    pub crm_writer: Tweak<handoff_crm_writer::Config>,
    pub email_writer: Tweak<handoff_email_writer::Config>,
}

/// The sandbox for scenarios: the test credentials, and HubSpot's quota out of the way (the
/// crm-writer's own tests hold it to 100 per 10 s; here thousands of events must flow).
pub fn sandbox_config() -> handoff_sandbox::Config {
    let mut cfg = handoff_sandbox::testing::config();
    cfg.hubspot.rate_limit.requests = 10_000_000;
    cfg
}

impl Pipeline {
    pub async fn start() -> Pipeline {
        Self::start_with(sandbox_config(), Tweaks::default()).await
    }

    pub async fn start_with(sandbox_cfg: handoff_sandbox::Config, tweaks: Tweaks) -> Pipeline {
        let namespace = support::namespace();
        let guard = support::TeardownOnDrop::new(&namespace, &TIERS);
        let inspector = support::inspector_with(&namespace, &TIERS).await;
        let sandbox = handoff_sandbox::testing::spawn(sandbox_cfg)
            .await
            .expect("sandbox");
        let (ingest, ingest_url) = start_ingest(
            &namespace,
            tweaks.ingest.unwrap_or_else(|| Box::new(|_| {})),
        )
        .await;
        let services = vec![
            ingest,
            start_normalizer(
                &namespace,
                tweaks.normalizer.unwrap_or_else(|| Box::new(|_| {})),
            )
            .await,
            start_crm_writer(
                &namespace,
                &sandbox.base_url,
                tweaks.crm_writer.unwrap_or_else(|| Box::new(|_| {})),
            )
            .await,
            start_email_writer(
                &namespace,
                &sandbox.base_url,
                tweaks.email_writer.unwrap_or_else(|| Box::new(|_| {})),
            )
            .await,
        ];
        for service in &services {
            service.wait_ready().await;
        }
        let store = handoff_idempotency::Store::new(&redis_config(), &namespace).expect("store");
        Pipeline {
            namespace,
            guard,
            inspector,
            sandbox,
            ingest_url,
            http: reqwest::Client::new(),
            store,
            dlq_url: None,
            services,
        }
    }

    /// Starts the dead-letter handler in the pipeline's namespace (stopped by
    /// [`Pipeline::finish`]); returns its API's base URL.
    pub async fn start_dead_letters(
        &mut self,
        tweak: impl FnOnce(&mut handoff_dead_letters::Config),
    ) -> String {
        let (service, url) = start_dead_letters(&self.namespace, tweak).await;
        service.wait_ready().await;
        self.services.push(service);
        self.dlq_url = Some(url.clone());
        url
    }

    /// Stops the normalizer (it drains what it has in flight) and starts one with another
    /// configuration: how a RevOps mapping fix is deployed.
    pub async fn restart_normalizer(
        &mut self,
        tweak: impl FnOnce(&mut handoff_normalizer::Config),
    ) {
        let at = self
            .services
            .iter()
            .position(|s| s.name == "the normalizer")
            .expect("a normalizer runs");
        self.services.remove(at).stop().await;
        let normalizer = start_normalizer(&self.namespace, tweak).await;
        normalizer.wait_ready().await;
        self.services.insert(at, normalizer);
    }

    /// `GET` on the dead-letter API as [`OPERATOR`]; the status and the JSON answer.
    pub async fn dlq_get(&self, path: &str) -> (u16, serde_json::Value) {
        let request = self.http.get(format!("{}{path}", self.dlq_base()));
        Self::operator_call(request).await
    }

    /// `POST` on the dead-letter API as [`OPERATOR`]; the status and the JSON answer.
    pub async fn dlq_post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let request = self
            .http
            .post(format!("{}{path}", self.dlq_base()))
            .json(body);
        Self::operator_call(request).await
    }

    fn dlq_base(&self) -> &str {
        self.dlq_url
            .as_deref()
            .expect("the dead-letter handler runs (Pipeline::start_dead_letters)")
    }

    async fn operator_call(request: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
        let answer = request
            .bearer_auth(OPERATOR_TOKEN)
            .send()
            .await
            .expect("the dead-letter API answers");
        let status = answer.status().as_u16();
        (status, answer.json().await.unwrap_or_default())
    }

    /// `POST /v1/events/{event_type}` as [`PUBLISHER`]; the status and the JSON answer.
    pub async fn post(
        &self,
        event_type: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let answer = self
            .http
            .post(format!("{}/v1/events/{event_type}", self.ingest_url))
            .bearer_auth(KEY)
            .json(body)
            .send()
            .await
            .expect("post");
        let status = answer.status().as_u16();
        (status, answer.json().await.unwrap_or_default())
    }

    /// `GET` on ingest as [`PUBLISHER`]; the status and the JSON answer.
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let answer = self
            .http
            .get(format!("{}{path}", self.ingest_url))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("get");
        let status = answer.status().as_u16();
        (status, answer.json().await.unwrap_or_default())
    }

    /// Polls the ledger of `event_id` until `done` holds; panics with the ledger after `within`.
    pub async fn wait_ledger(
        &self,
        event_id: &str,
        within: Duration,
        done: impl Fn(&handoff_idempotency::Ledger) -> bool,
    ) -> handoff_idempotency::Ledger {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let ledger = self
                .store
                .ledger_get(PUBLISHER, event_id)
                .await
                .expect("ledger");
            if let Some(ledger) = &ledger
                && done(ledger)
            {
                return ledger.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "ledger of {event_id} not complete within {within:?}: {ledger:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every service (each drains what it has in flight), removes the namespace's queues
    /// and Redis keys, and stops the sandbox.
    pub async fn finish(mut self) {
        for service in self.services.drain(..).rev() {
            service.stop().await;
        }
        // Queues, then the namespace's Redis keys.
        support::remove_namespace(self.inspector.clone(), &self.namespace).await;
        self.guard.disarm();
        self.sandbox.stop().await.expect("sandbox stops");
    }
}

/// The status of `stage` in `ledger`, if it reported.
pub fn stage_status<'a>(ledger: &'a handoff_idempotency::Ledger, stage: &str) -> Option<&'a str> {
    ledger.stages.get(stage).map(|s| s.status.as_str())
}
