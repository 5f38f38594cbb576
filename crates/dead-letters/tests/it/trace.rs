//! A replay starts a new trace, linked to the failed message's: the replay's root span
//! carries the link, the publish is its child, and the copy's `traceparent` continues it.

use std::time::Duration;

use handoff_bus::CRM_WRITER;
use handoff_events::v1::ErrorClass;
use handoff_test_support as support;
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporterBuilder, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt as _;

use crate::helpers::World;

const ORIGINAL_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const ORIGINAL_SPAN: &str = "00f067aa0ba902b7";

// One thread: the recording subscriber is this thread's default, so every task the
// handler spawns (the API, the replay runner) runs where it can see it.
#[tokio::test(flavor = "current_thread")]
async fn a_replay_is_a_new_trace_linked_to_the_one_that_failed() {
    let exporter = InMemorySpanExporterBuilder::new().build();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("dlq-trace-test")));
    let _recording = tracing::subscriber::set_default(subscriber);

    let world = World::start().await;
    let queue = world.inspector.topology().stage_queue(CRM_WRITER);
    let parked = world
        .park_failed(1, CRM_WRITER, ErrorClass::RetriesExhausted, |_, record| {
            record.traceparent = format!("00-{ORIGINAL_TRACE}-{ORIGINAL_SPAN}-01");
            record.trace_id = ORIGINAL_TRACE.into();
        })
        .await;
    let (status, job) = world
        .dlq
        .post(
            "/v1/replays",
            &serde_json::json!({"ids": [parked[0].id], "reason": "trace test"}),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    world
        .dlq
        .wait_job(job["id"].as_str().expect("id"), Duration::from_secs(20))
        .await;
    let copies = support::drain_queue(&world.inspector, &queue).await;
    assert_eq!(copies.len(), 1);
    let traceparent = copies[0]
        .headers
        .get("traceparent")
        .cloned()
        .unwrap_or_default();

    provider.force_flush().expect("flush");
    let spans = exporter.get_finished_spans().expect("spans");
    let replay_name = format!("replay {queue}");
    let replay = spans
        .iter()
        .find(|s| s.name == replay_name)
        .unwrap_or_else(|| panic!("no {replay_name:?} span among {:#?}", names(&spans)));
    assert_eq!(
        replay.parent_span_id,
        SpanId::INVALID,
        "a root: a trace of its own"
    );
    let replay_trace = replay.span_context.trace_id();
    assert_ne!(
        replay_trace,
        TraceId::from_hex(ORIGINAL_TRACE).expect("hex")
    );
    let linked: Vec<(String, String)> = replay
        .links
        .iter()
        .map(|l| {
            (
                l.span_context.trace_id().to_string(),
                l.span_context.span_id().to_string(),
            )
        })
        .collect();
    assert_eq!(
        linked,
        [(ORIGINAL_TRACE.to_owned(), ORIGINAL_SPAN.to_owned())],
        "linked to the failed message's span"
    );
    let publish = spans
        .iter()
        .find(|s| {
            s.name == format!("publish {queue}")
                && s.parent_span_id == replay.span_context.span_id()
        })
        .unwrap_or_else(|| panic!("no publish under the replay span: {:#?}", names(&spans)));
    assert_eq!(publish.span_context.trace_id(), replay_trace);
    assert_eq!(
        traceparent,
        format!("00-{}-{}-01", replay_trace, publish.span_context.span_id()),
        "the copy carries the replay's trace on"
    );
    world.finish().await;
}

fn names(spans: &[opentelemetry_sdk::trace::SpanData]) -> Vec<String> {
    spans.iter().map(|s| s.name.to_string()).collect()
}
