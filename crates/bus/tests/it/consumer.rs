//! The consumer loop: every outcome, the delivery limit, panics and shutdown.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use handoff_bus::consumer::{self, DEAD_LETTER_MESSAGE_TYPE, read_dead_letter};
use handoff_bus::{Bus, BusConfig, Delivery, Failure, Handler, Outcome, Topology, trace};
use handoff_events::v1::{self, ErrorClass};
use lapin::options::{BasicGetOptions, BasicNackOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    TestBus, config, eventually, publish_in_span, raw_channel, raw_event, v1_topology, wait_count,
};

/// A handler driven by a closure, recording every delivery it sees.
pub(crate) struct Scripted<F> {
    seen: Mutex<Vec<(Instant, Delivery)>>,
    decide: F,
}

impl<F> Scripted<F>
where
    F: Fn(&Delivery) -> Outcome + Send + Sync + 'static,
{
    pub(crate) fn new(decide: F) -> Arc<Self> {
        Arc::new(Self {
            seen: Mutex::new(Vec::new()),
            decide,
        })
    }

    pub(crate) fn seen(&self) -> Vec<(Instant, Delivery)> {
        self.seen.lock().expect("lock").clone()
    }
}

impl<F> Handler for Scripted<F>
where
    F: Fn(&Delivery) -> Outcome + Send + Sync + 'static,
{
    async fn handle(&self, delivery: &Delivery) -> Outcome {
        self.seen
            .lock()
            .expect("lock")
            .push((Instant::now(), delivery.clone()));
        (self.decide)(delivery)
    }
}

pub(crate) fn spawn_consumer<H: Handler>(
    bus: &Bus,
    handler: Arc<H>,
    shutdown: &CancellationToken,
) -> JoinHandle<Result<(), handoff_bus::BusError>> {
    let bus = bus.clone();
    let shutdown = shutdown.clone();
    tokio::spawn(async move { consumer::run(&bus, "normalizer", handler, shutdown).await })
}

pub(crate) async fn stop(test: &TestBus, consumer: JoinHandle<Result<(), handoff_bus::BusError>>) {
    test.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), consumer)
        .await
        .expect("consumer stops")
        .expect("task")
        .expect("run returns Ok");
}

/// Waits for the one message in the dead-letter queue and reads it.
async fn one_dead_letter(bus: &Bus) -> (Delivery, v1::DeadLetter) {
    let dlq = bus.topology().dead_letter_queue();
    let delivery = eventually("a dead letter", Duration::from_secs(10), || async {
        bus.get(&dlq).await.expect("get")
    })
    .await;
    let record = read_dead_letter(bus.topology(), &delivery).expect("a readable dead letter");
    (delivery, record)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_leave_the_queue() {
    let topology = v1_topology();
    let test = TestBus::start(topology.clone(), config()).await;
    let handler = Scripted::new(|_| Outcome::Ack);
    let consumer = spawn_consumer(&test.bus, handler.clone(), &test.shutdown);
    for i in 0..20 {
        test.bus
            .publish(raw_event(&format!("e{i}")))
            .await
            .expect("publish");
    }
    eventually("20 handled", Duration::from_secs(10), || async {
        (handler.seen().len() >= 20).then_some(())
    })
    .await;
    stop(&test, consumer).await;
    // Stopped consumer, empty queue: every message was acked, none requeued.
    wait_count(&test.bus, &topology.stage_queue("normalizer"), 0).await;
    assert_eq!(handler.seen().len(), 20);
    assert!(handler.seen().iter().all(|(_, d)| d.attempt == 1));
    test.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_later_comes_back_after_the_delay_tier() {
    let topology = v1_topology();
    let test = TestBus::start(topology.clone(), config()).await;
    let handler = Scripted::new(|d| {
        if d.attempt == 1 {
            Outcome::RetryLater {
                delay: Duration::from_millis(300),
                error: "crm answered 503".into(),
            }
        } else {
            Outcome::Ack
        }
    });
    let consumer = spawn_consumer(&test.bus, handler.clone(), &test.shutdown);
    test.bus.publish(raw_event("e1")).await.expect("publish");
    eventually("the retry", Duration::from_secs(10), || async {
        (handler.seen().len() >= 2).then_some(())
    })
    .await;
    stop(&test, consumer).await;

    let seen = handler.seen();
    assert_eq!(seen.len(), 2);
    let (first_at, first) = &seen[0];
    let (second_at, second) = &seen[1];
    // 300 ms asked for, shorter than the smallest tier: that tier, never less.
    let waited = *second_at - *first_at;
    assert!(waited >= Duration::from_millis(950), "waited {waited:?}");
    assert_eq!(second.attempt, 2);
    assert!(second.first_failed_at.is_some());
    assert_eq!(second.body, first.body);
    assert_eq!(second.message_id, first.message_id);
    assert_eq!(second.message_type, first.message_type);
    assert_eq!(second.delivery_mode, Some(2));
    // The original route survives the hop through the default exchange.
    assert_eq!(second.routing_key, "raw.lead.created");
    assert_eq!(second.exchange, topology.events_exchange());
    assert_eq!(second.headers["x-test"], "e1");
    assert!(second.headers[handoff_bus::HEADER_ATTEMPTS].contains("crm answered 503"));
    assert_eq!(
        second.headers.get(trace::TRACEPARENT),
        first.headers.get(trace::TRACEPARENT)
    );
    for queue in [
        topology.stage_queue("normalizer"),
        topology.delay_queue("normalizer", Duration::from_secs(1)),
        topology.dead_letter_queue(),
    ] {
        wait_count(&test.bus, &queue, 0).await;
    }
    test.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_record_carries_the_whole_story() {
    handoff_test_support::init_telemetry();
    let topology = v1_topology();
    let test = TestBus::start(topology.clone(), config()).await;
    let handler = Scripted::new(|d| {
        if d.attempt == 1 {
            return Outcome::RetryLater {
                delay: Duration::ZERO,
                error: "timeout".into(),
            };
        }
        Outcome::DeadLetter(Failure {
            class: ErrorClass::Validation,
            message: "email is not an address".into(),
            code: "invalid_email".into(),
            destination: "hubspot".into(),
            field_errors: vec![("contact.email".into(), "not an address".into())],
            event_id: "e1".into(),
            event_type: "lead.created".into(),
            publisher_id: "forms".into(),
        })
    });
    let consumer = spawn_consumer(&test.bus, handler.clone(), &test.shutdown);
    let trace_id = publish_in_span(&test.bus, "e1").await;

    let (delivery, record) = one_dead_letter(&test.bus).await;
    stop(&test, consumer).await;

    assert_eq!(
        delivery.message_type.as_deref(),
        Some(DEAD_LETTER_MESSAGE_TYPE)
    );
    assert_eq!(delivery.routing_key, "normalizer.validation");
    assert_eq!(delivery.exchange, topology.dead_letter_exchange());
    assert_eq!(delivery.delivery_mode, Some(2));
    assert_eq!(record.event_id, "e1");
    assert_eq!(record.event_type, "lead.created");
    assert_eq!(record.publisher_id, "forms");
    assert_eq!(record.stage, "normalizer");
    assert_eq!(record.error_class, ErrorClass::Validation as i32);
    assert_eq!(record.error_message, "email is not an address");
    assert_eq!(record.error_code, "invalid_email");
    assert_eq!(record.destination, "hubspot");
    assert_eq!(record.field_errors.len(), 1);
    assert_eq!(record.field_errors[0].path, "contact.email");
    assert_eq!(record.field_errors[0].message, "not an address");
    assert_eq!(record.attempts.len(), 2);
    assert_eq!(record.attempts[0].number, 1);
    assert_eq!(record.attempts[0].error, "timeout");
    assert_eq!(record.attempts[0].outcome, "transient");
    assert_eq!(record.attempts[1].number, 2);
    assert_eq!(record.attempts[1].outcome, "permanent");
    let first = record.first_failed_at.expect("first failure");
    let last = record.last_failed_at.expect("last failure");
    assert!(first.seconds <= last.seconds);
    assert!(last.seconds - first.seconds >= 1, "a tier apart");
    assert!(record.dead_lettered_at.is_some());
    assert_eq!(record.origin_exchange, topology.events_exchange());
    assert_eq!(record.origin_routing_key, "raw.lead.created");
    assert_eq!(record.origin_queue, topology.stage_queue("normalizer"));
    assert_eq!(record.original_body, b"body of e1");
    assert_eq!(record.original_headers["x-test"], "e1");
    assert_eq!(record.original_content_type, "application/x-protobuf");
    assert_eq!(record.original_message_id, "e1");
    assert_eq!(record.trace_id, trace_id);
    assert_eq!(
        trace::trace_id_from_traceparent(&record.traceparent).as_deref(),
        Some(trace_id.as_str())
    );
    // The record itself travels in the same trace, as a child of the consumer span.
    assert_eq!(
        trace::trace_id_from_traceparent(&delivery.headers[trace::TRACEPARENT]).as_deref(),
        Some(trace_id.as_str()),
        "the record joins the event's trace"
    );
    wait_count(&test.bus, &topology.stage_queue("normalizer"), 0).await;
    test.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_retries_end_as_retries_exhausted() {
    let topology = v1_topology();
    let cfg = BusConfig {
        retry_delays: vec![Duration::from_millis(200)],
        max_attempts: 3,
        ..config()
    };
    let test = TestBus::start(topology.clone(), cfg).await;
    let handler = Scripted::new(|d| Outcome::RetryLater {
        delay: Duration::from_millis(100),
        error: format!("503 on attempt {}", d.attempt),
    });
    let consumer = spawn_consumer(&test.bus, handler.clone(), &test.shutdown);
    test.bus.publish(raw_event("e1")).await.expect("publish");
    let (_, record) = one_dead_letter(&test.bus).await;
    stop(&test, consumer).await;

    assert_eq!(handler.seen().len(), 3);
    assert_eq!(record.error_class, ErrorClass::RetriesExhausted as i32);
    assert!(
        record.error_message.contains("503 on attempt 3"),
        "{}",
        record.error_message
    );
    let numbers: Vec<u32> = record.attempts.iter().map(|a| a.number).collect();
    assert_eq!(numbers, vec![1, 2, 3]);
    assert!(record.attempts.iter().all(|a| a.outcome == "transient"));
    wait_count(&test.bus, &topology.stage_queue("normalizer"), 0).await;
    test.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_delivery_limit_reaches_the_dead_letters() {
    let topology = v1_topology();
    let cfg = BusConfig {
        delivery_limit: 2,
        ..config()
    };
    let test = TestBus::start(topology.clone(), cfg).await;
    test.bus
        .publish(raw_event("poison"))
        .await
        .expect("publish");

    // A raw client that keeps giving the message back, as a crashing consumer would.
    let (conn, channel) = raw_channel().await;
    let queue = topology.stage_queue("normalizer");
    let mut deliveries = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let got = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .expect("basic.get");
        match got {
            Some(message) => {
                deliveries += 1;
                message
                    .delivery
                    .acker
                    .nack(BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    })
                    .await
                    .expect("nack");
            }
            None if deliveries > 0 => break,
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let _ = conn.close(200, "done".into()).await;
    assert_eq!(
        deliveries, 3,
        "delivered up to the limit, then dead-lettered"
    );

    let (delivery, record) = one_dead_letter(&test.bus).await;
    assert_eq!(delivery.message_id.as_deref(), Some("poison"));
    assert_eq!(
        delivery
            .headers
            .get("x-first-death-reason")
            .map(String::as_str),
        Some("delivery_limit")
    );
    assert_eq!(record.error_class, ErrorClass::Broker as i32);
    assert_eq!(record.error_code, "delivery_limit");
    assert_eq!(record.stage, "normalizer");
    assert_eq!(record.origin_queue, queue);
    assert_eq!(record.origin_exchange, topology.events_exchange());
    assert_eq!(record.origin_routing_key, "raw.lead.created");
    assert_eq!(record.original_body, b"body of poison");
    test.finish().await;
}

struct Panics(AtomicU32);

impl Handler for Panics {
    async fn handle(&self, _delivery: &Delivery) -> Outcome {
        self.0.fetch_add(1, Ordering::SeqCst);
        panic!("a bug in the handler");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_does_not_lose_the_message_or_stop_the_loop() {
    let topology = Topology::v1(handoff_test_support::namespace());
    let cfg = BusConfig {
        delivery_limit: 1,
        ..config()
    };
    let test = TestBus::start(topology.clone(), cfg).await;
    let handler = Arc::new(Panics(AtomicU32::new(0)));
    let consumer = spawn_consumer(&test.bus, handler.clone(), &test.shutdown);
    test.bus.publish(raw_event("e1")).await.expect("publish");
    let (_, record) = one_dead_letter(&test.bus).await;
    assert_eq!(record.error_class, ErrorClass::Broker as i32);
    assert_eq!(handler.0.load(Ordering::SeqCst), 2);
    assert!(!consumer.is_finished(), "the loop keeps running");
    stop(&test, consumer).await;
    test.finish().await;
}

struct Slow {
    started: AtomicU32,
    finished: AtomicU32,
}

impl Handler for Slow {
    async fn handle(&self, _delivery: &Delivery) -> Outcome {
        self.started.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(800)).await;
        self.finished.fetch_add(1, Ordering::SeqCst);
        Outcome::Ack
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_handlers_finish_and_ack() {
    let topology = v1_topology();
    let test = TestBus::start(topology.clone(), config()).await;
    let handler = Arc::new(Slow {
        started: AtomicU32::new(0),
        finished: AtomicU32::new(0),
    });
    let consumer = spawn_consumer(&test.bus, handler.clone(), &test.shutdown);
    for i in 0..5 {
        test.bus
            .publish(raw_event(&format!("e{i}")))
            .await
            .expect("publish");
    }
    eventually("5 handlers running", Duration::from_secs(5), || async {
        (handler.started.load(Ordering::SeqCst) == 5).then_some(())
    })
    .await;
    assert_eq!(handler.finished.load(Ordering::SeqCst), 0);
    let queue = topology.stage_queue("normalizer");
    assert_eq!(test.bus.consumer_count(&queue).await.expect("count"), 1);
    test.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), consumer)
        .await
        .expect("stops within the grace")
        .expect("task")
        .expect("run returns Ok");
    assert_eq!(handler.finished.load(Ordering::SeqCst), 5);
    assert_eq!(
        test.bus.consumer_count(&queue).await.expect("count"),
        0,
        "the subscription is cancelled at shutdown"
    );
    // Nothing came back to the queue: all five were acked before the channel closed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        test.bus
            .message_count(&topology.stage_queue("normalizer"))
            .await
            .expect("count"),
        0
    );
    assert!(
        test.bus.is_ready(),
        "shutdown of a consumer leaves the bus up"
    );
    test.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_a_stage_outside_the_topology() {
    let test = TestBus::start(v1_topology(), config()).await;
    let handler = Scripted::new(|_| Outcome::Ack);
    let result = consumer::run(&test.bus, "billing-writer", handler, test.shutdown.clone()).await;
    assert!(result.is_err());
    test.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_run_inside_the_events_trace() {
    handoff_test_support::init_telemetry();
    let test = TestBus::start(v1_topology(), config()).await;
    let seen_trace = Arc::new(Mutex::new(None));
    let handler = {
        let seen_trace = seen_trace.clone();
        Scripted::new(move |_| {
            *seen_trace.lock().expect("lock") = trace::current_trace_id();
            Outcome::Ack
        })
    };
    let consumer = spawn_consumer(&test.bus, handler.clone(), &test.shutdown);
    let trace_id = publish_in_span(&test.bus, "e1").await;
    eventually("handled", Duration::from_secs(10), || async {
        (!handler.seen().is_empty()).then_some(())
    })
    .await;
    stop(&test, consumer).await;
    assert_eq!(
        seen_trace.lock().expect("lock").as_deref(),
        Some(trace_id.as_str())
    );
    test.finish().await;
}
