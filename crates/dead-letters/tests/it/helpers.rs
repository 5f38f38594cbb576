//! The dead-letter handler in-process in a namespace of its own, a scripted stage that
//! fails messages the ways the pipeline does, and an API client.

use std::sync::Arc;
use std::time::Duration;

use handoff_bus::{Bus, BusConfig, Delivery, Failure, Handler, Outcome, OutgoingMessage, Topology};
use handoff_dead_letters::Config;
use handoff_dead_letters::config::{OperatorConfig, Role};
use handoff_dead_letters::store::Page;
use handoff_events::v1::{self, ErrorClass};
use handoff_events::{Message, PROTOBUF_CONTENT_TYPE};
use handoff_idempotency::RedisConfig;
use handoff_test_support::{self as support, service::InProcess};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "dlq-test-operator-token";
pub const VIEWER_TOKEN: &str = "dlq-test-viewer-token";
pub const OPERATOR: &str = "sam.sre";
pub const TIERS: [Duration; 1] = [Duration::from_millis(200)];

pub fn bus_config(url: &str) -> BusConfig {
    BusConfig {
        url: url.to_owned(),
        publish_timeout: Duration::from_secs(5),
        reconnect_min_delay: Duration::from_millis(50),
        reconnect_max_delay: Duration::from_millis(500),
        retry_delays: TIERS.to_vec(),
        shutdown_grace: Duration::from_secs(5),
        max_attempts: 2,
        ..BusConfig::default()
    }
}

/// The handler's configuration for a test: the shared Redis has no AOF, so durability
/// is not required here (the restart test runs a private Redis with AOF).
pub fn config(namespace: &str, amqp_url: &str, redis_url: &str) -> Config {
    let mut cfg = Config {
        namespace: namespace.to_owned(),
        ..Config::default()
    };
    cfg.bus = BusConfig {
        prefetch: 50,
        ..bus_config(amqp_url)
    };
    cfg.redis = RedisConfig {
        url: redis_url.to_owned(),
        op_timeout: Duration::from_millis(800),
    };
    cfg.store.require_durable = false;
    cfg.shutdown.grace = Duration::from_secs(5);
    cfg.operators = vec![
        OperatorConfig {
            name: OPERATOR.into(),
            token_sha256: hex::encode(Sha256::digest(TOKEN)),
            role: Role::Operator,
        },
        OperatorConfig {
            name: "vic.viewer".into(),
            token_sha256: hex::encode(Sha256::digest(VIEWER_TOKEN)),
            role: Role::Viewer,
        },
    ];
    cfg
}

/// A running handler and its API.
pub struct Dlq {
    pub api: String,
    pub service: InProcess,
    pub http: reqwest::Client,
}

impl Dlq {
    pub async fn start(cfg: Config) -> Dlq {
        support::init_telemetry();
        let (http_listener, api) = support::service::listener().await;
        let service = InProcess::start("dead-letters", move |admin, stop| {
            handoff_dead_letters::run(cfg, http_listener, admin, stop)
        })
        .await;
        Dlq {
            api,
            service,
            http: reqwest::Client::new(),
        }
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.get_as(path, Some(TOKEN)).await
    }

    pub async fn get_as(&self, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        let mut request = self.http.get(format!("{}{path}", self.api));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let answer = request.send().await.expect("GET");
        let status = answer.status().as_u16();
        (status, answer.json().await.unwrap_or_default())
    }

    pub async fn post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        self.post_as(path, body, Some(TOKEN)).await
    }

    pub async fn post_as(
        &self,
        path: &str,
        body: &serde_json::Value,
        token: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let mut request = self.http.post(format!("{}{path}", self.api)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let answer = request.send().await.expect("POST");
        let status = answer.status().as_u16();
        (status, answer.json().await.unwrap_or_default())
    }

    /// The list for `query` (a query string without `?`).
    pub async fn list(&self, query: &str) -> Page {
        let (status, body) = self
            .get(&format!("/v1/dead-letters?limit=1000&{query}"))
            .await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_value(body).expect("a page")
    }

    /// Polls the list for `query` until `done` holds; panics with the last page after `within`.
    pub async fn wait_list(
        &self,
        query: &str,
        within: Duration,
        done: impl Fn(&Page) -> bool,
    ) -> Page {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (status, body) = self
                .get(&format!("/v1/dead-letters?limit=1000&{query}"))
                .await;
            if status == 200 {
                let page: Page = serde_json::from_value(body).expect("a page");
                if done(&page) {
                    return page;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "list {query:?} not as expected within {within:?}: {page:#?}"
                );
            } else {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "list {query:?} answered {status} until {within:?}: {body}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls a replay job until it is finished; returns it.
    pub async fn wait_job(&self, id: &str, within: Duration) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (status, job) = self.get(&format!("/v1/replays/{id}")).await;
            assert_eq!(status, 200, "{job}");
            if job["state"] == "done" || job["state"] == "cancelled" {
                return job;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} not finished within {within:?}: {job}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A namespace with the handler running in it; [`World::finish`] tears everything down.
pub struct World {
    pub namespace: String,
    guard: support::TeardownOnDrop,
    pub inspector: Bus,
    pub dlq: Dlq,
}

impl World {
    pub async fn start() -> World {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> World {
        let namespace = support::namespace();
        let guard = support::TeardownOnDrop::new(&namespace, &TIERS);
        let inspector = support::inspector_with(&namespace, &TIERS).await;
        let mut cfg = config(&namespace, &support::amqp_url(), &support::redis_url());
        tweak(&mut cfg);
        let dlq = Dlq::start(cfg).await;
        dlq.service.wait_ready().await;
        World {
            namespace,
            guard,
            inspector,
            dlq,
        }
    }

    /// A broker connection for a scripted stage or a publisher.
    pub async fn bus(&self) -> Bus {
        let bus = Bus::start(
            bus_config(&support::amqp_url()),
            Topology::v1(&self.namespace),
            CancellationToken::new(),
        );
        bus.wait_ready(Duration::from_secs(20)).await.expect("bus");
        bus
    }

    /// The handler's store in this namespace, to park dead letters directly.
    pub fn store(&self) -> handoff_dead_letters::store::DeadLetterStore {
        let cfg = config(&self.namespace, &support::amqp_url(), &support::redis_url());
        handoff_dead_letters::store::DeadLetterStore::new(&cfg.redis, &self.namespace)
            .expect("store")
    }

    /// Parks `n` dead letters of `class` failed in `stage`'s queue (event ids `evt-0`…),
    /// each `tweak`ed first; returns their summaries.
    pub async fn park_failed(
        &self,
        n: usize,
        stage: &str,
        class: ErrorClass,
        tweak: impl Fn(usize, &mut v1::DeadLetter),
    ) -> Vec<handoff_dead_letters::record::Summary> {
        let store = self.store();
        let queue = self.inspector.topology().stage_queue(stage);
        let mut parked = Vec::with_capacity(n);
        for i in 0..n {
            let mut record = v1::DeadLetter {
                event_id: format!("evt-{i}"),
                stage: stage.into(),
                error_class: class as i32,
                error_message: "failed".into(),
                origin_queue: queue.clone(),
                original_body: envelope(&format!("evt-{i}"), "p@example.com", "ok"),
                ..v1::DeadLetter::default()
            };
            tweak(i, &mut record);
            let summary =
                handoff_dead_letters::record::Summary::of(&record, record.event_id.as_bytes());
            assert!(
                store.park(&summary, &record).await.expect("park"),
                "parked once"
            );
            parked.push(summary);
        }
        parked
    }

    pub async fn finish(mut self) {
        self.dlq.service.stop().await;
        support::remove_namespace(self.inspector.clone(), &self.namespace).await;
        self.guard.disarm();
    }
}

/// How the scripted stage fails a message: its envelope attribute `test-outcome`.
pub const OUTCOME: &str = "test-outcome";

/// Fails messages the ways the pipeline's stages do: `validation` and `permanent` dead
/// letter at once, `transient` retries until the attempts run out, `panic` panics until
/// the broker's delivery limit dead-letters it; `ok` acks (and counts).
pub struct ScriptedStage {
    pub acked: std::sync::Mutex<Vec<(String, Delivery)>>,
}

impl Handler for ScriptedStage {
    async fn handle(&self, delivery: &Delivery) -> Outcome {
        let Ok(envelope) = v1::Envelope::decode(delivery.body.as_slice()) else {
            return Outcome::DeadLetter(Failure::new(ErrorClass::Undecodable, "not an envelope"));
        };
        let ids = |failure: Failure| Failure {
            event_id: envelope.event_id.clone(),
            event_type: envelope.event_type.clone(),
            publisher_id: envelope.publisher_id.clone(),
            ..failure
        };
        match envelope.attributes.get(OUTCOME).map(String::as_str) {
            Some("validation") => Outcome::DeadLetter(ids(Failure {
                field_errors: vec![(
                    "deal.stage".into(),
                    format!("unmapped value \"{}\"", envelope.event_id),
                )],
                ..Failure::new(ErrorClass::Validation, "the event is not valid")
            })),
            Some("permanent") => Outcome::DeadLetter(ids(Failure {
                code: "400".into(),
                destination: "hubspot".into(),
                ..Failure::new(
                    ErrorClass::Permanent,
                    format!(
                        "Property values were not valid: lifecyclestage {}",
                        envelope.event_id
                    ),
                )
            })),
            Some("transient") => Outcome::RetryLater {
                delay: Duration::from_millis(10),
                error: "HTTP 503 from hubspot".into(),
            },
            // `resume_unwind` skips the panic hook: a poison message without a backtrace per try.
            Some("panic") => {
                std::panic::resume_unwind(Box::new("scripted panic (a poison message)"))
            }
            _ => {
                if let Ok(mut acked) = self.acked.lock() {
                    acked.push((envelope.event_id.clone(), delivery.clone()));
                }
                Outcome::Ack
            }
        }
    }
}

/// Runs [`ScriptedStage`] on `stage`'s queue until the token is cancelled.
pub fn run_scripted(
    bus: &Bus,
    stage: &'static str,
) -> (
    Arc<ScriptedStage>,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let handler = Arc::new(ScriptedStage {
        acked: std::sync::Mutex::new(Vec::new()),
    });
    let stop = CancellationToken::new();
    let (bus, h, s) = (bus.clone(), handler.clone(), stop.clone());
    let task = tokio::spawn(async move {
        let _ = handoff_bus::consumer::run(&bus, stage, h, s).await;
    });
    (handler, stop, task)
}

/// A canonical `lead.created` envelope for `email`, failed by the scripted stage as `outcome`.
pub fn envelope(event_id: &str, email: &str, outcome: &str) -> Vec<u8> {
    v1::Envelope {
        event_id: event_id.into(),
        event_type: "lead.created".into(),
        schema_version: 1,
        publisher_id: "acme".into(),
        source: "web".into(),
        attributes: [(OUTCOME.to_owned(), outcome.to_owned())].into(),
        payload: Some(v1::envelope::Payload::Canonical(v1::CanonicalPayload {
            event: Some(v1::canonical_payload::Event::LeadCreated(v1::LeadCreated {
                contact: Some(v1::Contact {
                    email: Some(email.into()),
                    ..v1::Contact::default()
                }),
                ..v1::LeadCreated::default()
            })),
        })),
        ..v1::Envelope::default()
    }
    .encode_to_vec()
}

/// Sends `body` straight to `stage`'s queue, as the previous stage would.
pub async fn send_to_stage(bus: &Bus, stage: &str, event_id: &str, body: Vec<u8>) {
    bus.publish_to(
        "",
        OutgoingMessage {
            routing_key: bus.topology().stage_queue(stage),
            body,
            content_type: Some(PROTOBUF_CONTENT_TYPE.into()),
            message_id: Some(event_id.into()),
            message_type: Some("handoff.v1.Envelope".into()),
            headers: Default::default(),
        },
    )
    .await
    .expect("publish to the stage");
}
