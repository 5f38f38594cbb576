//! One event, one trace: ingest's HTTP request → its publish → the normalizer's consume and
//! publish → each writer's consume → its idempotency check and its HubSpot or Mailchimp calls →
//! the requests the sandbox received; then the writers' reports (the email-writer's
//! `email.subscriber.synced` → the crm-writer's write-back call), every span in the caller's
//! trace with its parent where it belongs.
//!
//! Telemetry is process-wide and every service's `main.rs` installs it with
//! `handoff_kit::telemetry::init`, which exports only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//! Setting a variable in a running test is `unsafe` in edition 2024 and the workspace forbids
//! unsafe code, so the test runs this binary twice:
//! - the parent, [`one_customer_converted_is_one_trace_from_ingest_to_both_vendors`], owns what must
//!   outlive the pipeline: the OTLP receiver, the namespace (torn down even if the child dies) and
//!   the sandbox, whose request log keeps each request's `traceparent`. It runs the child with the
//!   receiver as its OTLP endpoint, then asserts on the ledger, the sandbox and the spans;
//! - the child, [`pipeline_child`] (ignored unless the parent starts it), installs telemetry as a
//!   service does, starts ingest, the normalizer and both writers in-process, posts one
//!   `customer.converted` with the parent's `traceparent`, waits until the ledger says both
//!   writers and the write-back delivered it,
//!   stops the services (each drains its in-flight message) and drops the telemetry guard, which
//!   exports every span before the process exits.
//!
//! Adding a service: start it in [`pipeline_child`], add its hops to [`HOPS`] and its vendor API
//! to [`DESTINATIONS`].

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use handoff_bus::{CRM_WRITER, EMAIL_WRITER, NORMALIZER};
use handoff_e2e::{
    KEY, PUBLISHER, TIERS, redis_config, start_crm_writer, start_email_writer, start_ingest,
    start_normalizer,
};
use handoff_kit::telemetry::{LogFormat, TelemetryConfig};
use handoff_sandbox::request_log::RequestEntry;
use handoff_sandbox::testing;
use handoff_test_support as support;
use handoff_test_support::otlp::{OtlpReceiver, ReceivedSpan, SpanKind, render_tree};
use serde_json::Value;

/// The `service.name` of every span: the services share this process and so one tracer provider.
/// In production each binary names itself; here spans are told apart by name and attributes.
const SERVICE: &str = "handoff-e2e";

/// The demo event `make run` sends.
const EVENT: &str = include_str!("../../../deploy/demo-event.json");
const EVENT_TYPE: &str = "customer.converted";
const EVENT_ID: &str = "evt_2026_03_19_000123";
const CONTACT_EMAIL: &str = "alex@example.com";

/// The crm-writer's ledger entry for the write-back of the subscriber id.
const WRITE_BACK: &str = "crm-writer.write-back";

/// The stage name for ingest's HTTP request in [`HOPS`]: it publishes but consumes nothing.
const INGEST: &str = "ingest";

/// The parent tells the child where things are through these (`HANDOFF_TEST_*` is never read as
/// service configuration).
const NAMESPACE_VAR: &str = "HANDOFF_TEST_E2E_NAMESPACE";
const SANDBOX_VAR: &str = "HANDOFF_TEST_E2E_SANDBOX_URL";
const TRACEPARENT_VAR: &str = "HANDOFF_TEST_E2E_TRACEPARENT";

/// The child's whole run, starts and drains included, normally a few seconds.
const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

/// One message the event becomes: `from` publishes it (a producer span under `from`'s request or
/// consume span) and `to`, if it runs, consumes it (a consumer span whose parent is that producer
/// span: the context rode in the AMQP headers).
struct Hop {
    from: &'static str,
    routing_key: &'static str,
    to: Option<&'static str>,
}

const HOPS: &[Hop] = &[
    Hop {
        from: INGEST,
        routing_key: "raw.customer.converted",
        to: Some(NORMALIZER),
    },
    Hop {
        from: NORMALIZER,
        routing_key: "canonical.customer.converted",
        to: Some(CRM_WRITER),
    },
    // Each writer gets its own copy of the canonical event.
    Hop {
        from: NORMALIZER,
        routing_key: "canonical.customer.converted",
        to: Some(EMAIL_WRITER),
    },
    // The writers' reports: the email-writer's is the write-back, the crm-writer's is acked.
    Hop {
        from: EMAIL_WRITER,
        routing_key: "email.subscriber.synced",
        to: Some(CRM_WRITER),
    },
    Hop {
        from: CRM_WRITER,
        routing_key: "crm.contact.synced",
        to: Some(EMAIL_WRITER),
    },
];

/// Which stage calls which sandbox API (`RequestEntry::api`): each request the sandbox logged for
/// the API is the child of one client span under the stage's consume span, and each such client
/// span made exactly one request.
const DESTINATIONS: &[(&str, &str)] = &[(CRM_WRITER, "hubspot"), (EMAIL_WRITER, "mailchimp")];

/// The span `Store::claim` emits (the idempotency check): required under each writer's consume
/// span, ended before its first destination call, with the check's result.
const CLAIM_SPAN: &str = "idempotency claim";

#[tokio::test]
async fn one_customer_converted_is_one_trace_from_ingest_to_both_vendors() {
    let receiver = OtlpReceiver::start().await;
    let namespace = support::namespace();
    let mut guard = support::TeardownOnDrop::new(&namespace, &TIERS);
    let inspector = support::inspector_with(&namespace, &TIERS).await;
    let sandbox = testing::spawn(testing::config()).await.expect("sandbox");

    // The caller's own span, so ingest's server span must name it as its parent.
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let caller_span = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    let traceparent = format!("00-{trace_id}-{caller_span}-01");

    run_child(
        &receiver,
        &[
            (NAMESPACE_VAR, &namespace),
            (SANDBOX_VAR, &sandbox.base_url),
            (TRACEPARENT_VAR, &traceparent),
        ],
    )
    .await;

    // The crm-writer finished the event: ledger `delivered`, in the caller's trace.
    let store = handoff_idempotency::Store::new(&redis_config(), &namespace).expect("store");
    let ledger = store
        .ledger_get(PUBLISHER, EVENT_ID)
        .await
        .expect("ledger")
        .expect("a ledger entry for the event");
    assert_eq!(
        ledger.stages.get(CRM_WRITER).map(|s| s.status.as_str()),
        Some("delivered"),
        "{ledger:?}"
    );
    assert_eq!(
        ledger.trace_id.as_deref(),
        Some(trace_id.as_str()),
        "{ledger:?}"
    );

    let requests = sandbox.requests();
    let expected = Expected {
        trace_id: &trace_id,
        caller_span: &caller_span,
        namespace: &namespace,
        sandbox_url: &sandbox.base_url,
        requests: &requests,
    };
    // The child flushed before it exited; the wait only guards against a slow last export.
    let spans = match receiver
        .wait_for(|spans| expected.arrived(spans), Duration::from_secs(10))
        .await
    {
        Ok(spans) => spans,
        Err(timeout) => panic!("{timeout}"),
    };
    expected.check(&spans);

    sandbox.stop().await.expect("the sandbox stops");
    support::remove_namespace(inspector, &namespace).await;
    guard.disarm();
}

/// Runs [`pipeline_child`] in a process of its own with `vars` and the receiver as its OTLP
/// endpoint; panics with its output unless it passed.
async fn run_child(receiver: &OtlpReceiver, vars: &[(&str, &str)]) {
    let exe = std::env::current_exe().expect("the path of this test binary");
    let mut command = tokio::process::Command::new(exe);
    command
        .args([
            "pipeline_child",
            "--exact",
            "--ignored",
            "--test-threads",
            "1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // Only the receiver: no inherited sampler, protocol, compression or endpoint of the caller's.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
    command.env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint());
    for (name, value) in vars {
        command.env(name, value);
    }
    let output = match tokio::time::timeout(CHILD_TIMEOUT, command.output()).await {
        Ok(output) => output.expect("starting the pipeline process"),
        Err(_) => panic!("the pipeline process did not finish within {CHILD_TIMEOUT:?}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // libtest exits 0 when the filter matches nothing: make sure the child really ran.
    assert!(
        output.status.success() && stdout.contains("test result: ok. 1 passed"),
        "the pipeline process failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
}

/// What the spans must show, and what they are checked against.
struct Expected<'a> {
    trace_id: &'a str,
    caller_span: &'a str,
    namespace: &'a str,
    sandbox_url: &'a str,
    requests: &'a [RequestEntry],
}

impl Expected<'_> {
    fn queue(&self, stage: &str) -> String {
        format!("{}.{stage}", self.namespace)
    }

    /// True once the last spans the assertions need are in: every consuming stage's consumer span
    /// and as many client spans as the sandbox logged requests. (Only counted: which span is whose
    /// parent is for [`Expected::check`] to say.)
    fn arrived(&self, spans: &[ReceivedSpan]) -> bool {
        let in_trace: Vec<&ReceivedSpan> = spans
            .iter()
            .filter(|s| s.trace_id == self.trace_id)
            .collect();
        let consumed = HOPS.iter().filter_map(|h| h.to).all(|stage| {
            let queue = self.queue(stage);
            in_trace.iter().any(|s| {
                s.kind == SpanKind::Consumer
                    && s.attr("messaging.destination.name") == Some(queue.as_str())
            })
        });
        let clients = in_trace
            .iter()
            .filter(|s| s.kind == SpanKind::Client && s.attr("handoff.destination").is_some())
            .count();
        consumed && clients >= self.requests.len()
    }

    fn check(&self, all: &[ReceivedSpan]) {
        let trace = Trace {
            spans: all.iter().filter(|s| s.trace_id == self.trace_id).collect(),
        };
        // The event's trace, for failure messages (the services' long-lived connection spans are
        // traces of their own).
        let in_trace: Vec<ReceivedSpan> = trace.spans.iter().map(|s| (*s).clone()).collect();
        let tree = render_tree(&in_trace);
        let tree = tree.as_str();

        // Exactly one trace: every span about the event is in the caller's, and that trace is one
        // tree under ingest's server span, whose parent is the caller's span.
        let elsewhere: Vec<&ReceivedSpan> = all
            .iter()
            .filter(|s| s.trace_id != self.trace_id)
            .filter(|s| {
                s.attr("messaging.message.id") == Some(EVENT_ID)
                    || s.attr("event_id") == Some(EVENT_ID)
            })
            .collect();
        assert!(
            elsewhere.is_empty(),
            "spans of the event in another trace: {elsewhere:#?}\n{tree}"
        );
        let servers: Vec<&ReceivedSpan> = trace
            .spans
            .iter()
            .copied()
            .filter(|s| s.kind == SpanKind::Server)
            .collect();
        let [server] = servers.as_slice() else {
            panic!(
                "expected one server span in the trace, got {}:\n{tree}",
                servers.len()
            );
        };
        assert_eq!(server.name, "POST /v1/events/{event_type}", "{tree}");
        assert_eq!(
            server.parent_span_id, self.caller_span,
            "ingest's span is the caller's child\n{tree}"
        );
        assert_eq!(server.attr("http.request.method"), Some("POST"), "{tree}");
        assert_eq!(
            server.attr("http.route"),
            Some("/v1/events/{event_type}"),
            "{tree}"
        );
        assert_eq!(
            server.attr("http.response.status_code"),
            Some("202"),
            "{tree}"
        );
        assert_eq!(server.attr("event_id"), Some(EVENT_ID), "{tree}");
        for span in &trace.spans {
            assert!(
                span.span_id == server.span_id || trace.descends_from(span, server),
                "{} [{}] is not under ingest's server span\n{tree}",
                span.name,
                span.span_id
            );
            assert_eq!(span.service_name, SERVICE, "{tree}");
        }

        // Every hop: the producer span under the publishing stage, the consumer span its child.
        for hop in HOPS {
            let publishers: Vec<&ReceivedSpan> = if hop.from == INGEST {
                vec![server]
            } else {
                trace.consume_spans(&self.queue(hop.from))
            };
            assert!(
                !publishers.is_empty(),
                "no span of {} in the trace\n{tree}",
                hop.from
            );
            let producers: Vec<&ReceivedSpan> = trace
                .spans
                .iter()
                .copied()
                .filter(|s| {
                    s.kind == SpanKind::Producer
                        && s.attr("messaging.rabbitmq.destination.routing_key")
                            == Some(hop.routing_key)
                        && publishers.iter().any(|p| trace.descends_from(s, p))
                })
                .collect();
            let [producer] = producers.as_slice() else {
                panic!(
                    "expected one producer span for {} under {}, got {}\n{tree}",
                    hop.routing_key,
                    hop.from,
                    producers.len()
                );
            };
            assert_eq!(
                producer.name,
                format!("publish {}", hop.routing_key),
                "{tree}"
            );
            assert_eq!(
                producer.attr("messaging.system"),
                Some("rabbitmq"),
                "{tree}"
            );
            assert_eq!(
                producer.attr("messaging.destination.name"),
                Some(format!("{}.events", self.namespace).as_str()),
                "{tree}"
            );
            assert_eq!(
                producer.attr("messaging.message.id"),
                Some(EVENT_ID),
                "{tree}"
            );
            assert_eq!(
                producer.attr("messaging.operation.type"),
                Some("send"),
                "{tree}"
            );
            assert_eq!(
                producer.attr("messaging.operation.name"),
                Some("publish"),
                "{tree}"
            );

            let Some(stage) = hop.to else { continue };
            let queue = self.queue(stage);
            let consumers: Vec<&ReceivedSpan> = trace
                .consume_spans(&queue)
                .into_iter()
                .filter(|c| c.parent_span_id == producer.span_id)
                .collect();
            let [consumer] = consumers.as_slice() else {
                panic!(
                    "expected one consumer span of {queue} as the child of {} [{}], got {}\n{tree}",
                    producer.name,
                    producer.span_id,
                    consumers.len()
                );
            };
            assert_eq!(consumer.name, format!("process {queue}"), "{tree}");
            assert_eq!(
                consumer.attr("messaging.system"),
                Some("rabbitmq"),
                "{tree}"
            );
            assert_eq!(
                consumer.attr("messaging.message.id"),
                Some(EVENT_ID),
                "{tree}"
            );
            assert_eq!(
                consumer.attr("messaging.rabbitmq.destination.routing_key"),
                Some(hop.routing_key),
                "{tree}"
            );
            assert_eq!(
                consumer.attr("messaging.operation.type"),
                Some("process"),
                "{tree}"
            );
            // The handler names the event on the consume span (`bus::record_identity`).
            assert_eq!(
                consumer.attr("event_id"),
                Some(EVENT_ID),
                "{queue}: the event's identity on its consume span\n{tree}"
            );
            assert!(
                consumer.attr("publisher_id").is_some_and(|p| !p.is_empty()),
                "{queue}: the publisher on its consume span\n{tree}"
            );
        }
        // No consumer span without its producer as parent (a lost context would start a new
        // trace, caught above; a wrong one would show here).
        for consumer in trace.spans.iter().filter(|s| s.kind == SpanKind::Consumer) {
            let parent = trace.by_id(&consumer.parent_span_id);
            assert!(
                parent.is_some_and(|p| p.kind == SpanKind::Producer
                    && p.attr("messaging.rabbitmq.destination.routing_key")
                        == consumer.attr("messaging.rabbitmq.destination.routing_key")),
                "{} [{}] is not the child of its message's producer span\n{tree}",
                consumer.name,
                consumer.span_id
            );
        }

        // Destination calls: client spans under the stage's consume span, one sandbox request each.
        for (stage, api) in DESTINATIONS {
            let consumes = trace.consume_spans(&self.queue(stage));
            let clients: Vec<&ReceivedSpan> = trace
                .spans
                .iter()
                .copied()
                .filter(|s| {
                    // Destination calls; the idempotency checks are client spans too (Redis).
                    s.kind == SpanKind::Client
                        && s.attr("handoff.destination").is_some()
                        && trace.handled_in(s, &consumes)
                })
                .collect();
            let requests: Vec<&RequestEntry> =
                self.requests.iter().filter(|r| r.api == *api).collect();
            assert!(!requests.is_empty(), "the sandbox logged no {api} request");
            assert!(
                requests
                    .iter()
                    .any(|r| r.path == "/crm/v3/objects/contacts/batch/upsert")
                    || *api != "hubspot",
                "no contact upsert: {requests:#?}"
            );
            let client_ids: BTreeSet<&str> = clients.iter().map(|s| s.span_id.as_str()).collect();
            let mut parents = BTreeSet::new();
            for request in &requests {
                let tp = request.traceparent.as_deref().unwrap_or_else(|| {
                    panic!(
                        "{} {} reached the sandbox without a traceparent",
                        request.method, request.path
                    )
                });
                assert_eq!(
                    trace_id_of(tp),
                    Some(self.trace_id),
                    "{tp} of {} {}",
                    request.method,
                    request.path
                );
                let parent = parent_id(tp).expect("a well-formed traceparent");
                let client = trace
                    .by_id(parent)
                    .filter(|s| client_ids.contains(s.span_id.as_str()));
                let Some(client) = client else {
                    panic!(
                        "{} {}: its traceparent {tp} names no client span of the {stage}\n{tree}",
                        request.method, request.path
                    );
                };
                assert!(
                    parents.insert(parent),
                    "two requests from one client span {parent}"
                );
                assert_eq!(
                    client.attr("http.request.method"),
                    Some(request.method.as_str()),
                    "{tree}"
                );
                let url = client.attr("url.full").unwrap_or_default();
                assert_eq!(
                    url.split('?').next(),
                    Some(format!("{}{}", self.sandbox_url, request.path).as_str()),
                    "{tree}"
                );
                assert_eq!(
                    client.attr("http.response.status_code"),
                    request.status.map(|s| s.to_string()).as_deref(),
                    "{tree}"
                );
                assert_eq!(client.attr("handoff.destination"), Some(*api), "{tree}");
                assert_eq!(client.attr("server.address"), Some("127.0.0.1"), "{tree}");
                assert!(
                    client.attr("server.port").is_some_and(|p| p != "0"),
                    "{tree}"
                );
            }
            assert_eq!(
                parents, client_ids,
                "client spans of the {stage} without a sandbox request\n{tree}"
            );

            // The idempotency check comes before the first call.
            let first_call = clients
                .iter()
                .map(|s| s.start_unix_nanos)
                .min()
                .unwrap_or(u64::MAX);
            let claim = trace
                .spans
                .iter()
                .find(|s| s.name == CLAIM_SPAN && trace.handled_in(s, &consumes));
            let Some(claim) = claim else {
                panic!("no {CLAIM_SPAN:?} span under the {stage}'s consume span\n{tree}")
            };
            assert!(
                claim.end_unix_nanos <= first_call,
                "the {stage}'s claim ends after its first destination call\n{tree}"
            );
            assert_eq!(
                claim.attr("handoff.claim.result"),
                Some("acquired"),
                "{tree}"
            );
            assert_eq!(claim.attr("db.system.name"), Some("redis"), "{tree}");
        }
    }
}

/// The spans of one trace, with parent links followed by id.
struct Trace<'a> {
    spans: Vec<&'a ReceivedSpan>,
}

impl<'a> Trace<'a> {
    fn by_id(&self, span_id: &str) -> Option<&'a ReceivedSpan> {
        self.spans.iter().copied().find(|s| s.span_id == span_id)
    }

    /// True when `ancestor` is `span`'s parent, grandparent, ...
    fn descends_from(&self, span: &ReceivedSpan, ancestor: &ReceivedSpan) -> bool {
        let mut parent = span.parent_span_id.as_str();
        // Bounded: a cycle of ids would be a bug in the exporter, not a reason to hang.
        for _ in 0..self.spans.len() {
            if parent == ancestor.span_id {
                return true;
            }
            match self.by_id(parent) {
                Some(next) => parent = next.parent_span_id.as_str(),
                None => return false,
            }
        }
        false
    }

    /// The nearest consumer span above `span`: the delivery whose handling made it (a report's
    /// consumer sits inside the handling of the message that published it, so an older consumer
    /// further up belongs to another stage).
    fn handling_consumer(&self, span: &ReceivedSpan) -> Option<&'a ReceivedSpan> {
        let mut parent = span.parent_span_id.as_str();
        for _ in 0..self.spans.len() {
            let next = self.by_id(parent)?;
            if next.kind == SpanKind::Consumer {
                return Some(next);
            }
            parent = next.parent_span_id.as_str();
        }
        None
    }

    /// True when `span` was made while handling one of the deliveries `consumes`.
    fn handled_in(&self, span: &ReceivedSpan, consumes: &[&ReceivedSpan]) -> bool {
        self.handling_consumer(span)
            .is_some_and(|c| consumes.iter().any(|k| k.span_id == c.span_id))
    }

    /// The consumer spans of deliveries from `queue`.
    fn consume_spans(&self, queue: &str) -> Vec<&'a ReceivedSpan> {
        self.spans
            .iter()
            .copied()
            .filter(|s| {
                s.kind == SpanKind::Consumer && s.attr("messaging.destination.name") == Some(queue)
            })
            .collect()
    }
}

/// The trace id of a `traceparent` (`00-<trace>-<parent>-<flags>`).
fn trace_id_of(traceparent: &str) -> Option<&str> {
    traceparent.split('-').nth(1)
}

/// The parent span id of a `traceparent`.
fn parent_id(traceparent: &str) -> Option<&str> {
    traceparent.split('-').nth(2)
}

// ---------------------------------------------------------------------------------------------
// The child: the services in-process, with the kit's telemetry as their binaries install it.

#[test]
#[ignore = "the pipeline half of one_customer_converted_is_one_trace_from_ingest_to_both_vendors, which runs it in a process of its own"]
fn pipeline_child() {
    let (Ok(namespace), Ok(sandbox_url), Ok(traceparent)) = (
        std::env::var(NAMESPACE_VAR),
        std::env::var(SANDBOX_VAR),
        std::env::var(TRACEPARENT_VAR),
    ) else {
        eprintln!(
            "pipeline_child runs only when one_customer_converted_is_one_trace_from_ingest_to_both_vendors starts it"
        );
        return;
    };
    let telemetry = handoff_kit::telemetry::init(
        SERVICE,
        &TelemetryConfig {
            log_format: LogFormat::Text,
            log_filter: "warn".to_owned(),
        },
    )
    .expect("telemetry");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(run_pipeline(&namespace, &sandbox_url, &traceparent));
    drop(runtime);
    // Exports every span still buffered before the process exits (a panic above drops it too).
    drop(telemetry);
}

async fn run_pipeline(namespace: &str, sandbox_url: &str, traceparent: &str) {
    let (ingest, ingest_url) = start_ingest(namespace, |_| {}).await;
    let services = vec![
        ingest,
        start_normalizer(namespace, |_| {}).await,
        start_crm_writer(namespace, sandbox_url, |_| {}).await,
        start_email_writer(namespace, sandbox_url, |_| {}).await,
    ];
    for service in &services {
        service.wait_ready().await;
    }

    let answer = reqwest::Client::new()
        .post(format!("{ingest_url}/v1/events/{EVENT_TYPE}"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .header("traceparent", traceparent)
        .body(EVENT)
        .send()
        .await
        .expect("post the event");
    let status = answer.status().as_u16();
    let body: Value = answer.json().await.unwrap_or_default();
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        body["trace_id"].as_str(),
        trace_id_of(traceparent),
        "ingest answers with the caller's trace id: {body}"
    );

    wait_for_contact(sandbox_url, CONTACT_EMAIL, Duration::from_secs(20)).await;
    wait_until_settled(namespace, Duration::from_secs(20)).await;
    // Each service lets its in-flight message finish before it returns: the writers' remaining
    // calls, reports and ledger entries are done when they have stopped.
    for service in services {
        service.stop().await;
    }
}

/// Waits until both writers and the write-back have delivered the event (the ledger) and the
/// writers' queues hold nothing more (the crm-writer's report reached the email-writer).
async fn wait_until_settled(namespace: &str, within: Duration) {
    let store = handoff_idempotency::Store::new(&redis_config(), namespace).expect("store");
    let inspector = support::inspector_with(namespace, &TIERS).await;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let ledger = store.ledger_get(PUBLISHER, EVENT_ID).await.ok().flatten();
        let delivered = |stage: &str| {
            ledger
                .as_ref()
                .and_then(|l| l.stages.get(stage))
                .is_some_and(|s| s.status == "delivered")
        };
        let mut idle = true;
        for stage in [CRM_WRITER, EMAIL_WRITER] {
            let queue = inspector.topology().stage_queue(stage);
            idle &= inspector.message_count(&queue).await.unwrap_or(1) == 0;
        }
        if delivered(CRM_WRITER) && delivered(EMAIL_WRITER) && delivered(WRITE_BACK) && idle {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the event did not settle within {within:?}: {ledger:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the sandbox's control API (neither logged nor traced) until the contact exists.
async fn wait_for_contact(sandbox_url: &str, email: &str, within: Duration) {
    let url = format!("{sandbox_url}/_sandbox/records/contacts");
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let records: Value = match http.get(&url).send().await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => Value::Null,
        };
        let found = records.as_array().is_some_and(|all| {
            all.iter()
                .any(|r| r["properties"]["email"].as_str() == Some(email))
        });
        if found {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no contact {email} in the sandbox within {within:?}: {records}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
