//! Publishing: persistent and confirmed, trace headers, unroutable keys, and exact
//! outcomes with many publishes in flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use handoff_bus::{BusConfig, BusError, OutgoingMessage, Topology, trace};
use tracing::Instrument;

use crate::{TestBus, config, publish_in_span, raw_channel, raw_event, v1_topology, wait_count};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_lands_persistent_in_the_stage_queue_with_its_trace() {
    handoff_test_support::init_telemetry();
    let topology = v1_topology();
    let test = TestBus::start(topology.clone(), config()).await;

    let expected_trace = publish_in_span(&test.bus, "evt-1").await;

    let queue = topology.stage_queue("normalizer");
    wait_count(&test.bus, &queue, 1).await;
    let delivery = test.bus.get(&queue).await.expect("get").expect("a message");
    assert_eq!(delivery.delivery_mode, Some(2), "persistent");
    assert_eq!(delivery.body, b"body of evt-1");
    assert_eq!(delivery.message_id.as_deref(), Some("evt-1"));
    assert_eq!(
        delivery.content_type.as_deref(),
        Some("application/x-protobuf")
    );
    assert_eq!(delivery.message_type.as_deref(), Some("lead.created"));
    assert_eq!(delivery.routing_key, "raw.lead.created");
    assert_eq!(delivery.exchange, topology.events_exchange());
    assert_eq!(delivery.queue, queue);
    assert_eq!(delivery.attempt, 1);
    assert_eq!(delivery.first_failed_at, None);
    assert_eq!(delivery.headers["x-test"], "evt-1");
    assert!(
        !delivery.headers.keys().any(|k| k.contains("publish-seq")),
        "internal headers stay internal: {:?}",
        delivery.headers
    );
    let traceparent = &delivery.headers[trace::TRACEPARENT];
    assert_eq!(
        trace::trace_id_from_traceparent(traceparent).as_deref(),
        Some(expected_trace.as_str())
    );
    assert_eq!(test.bus.get(&queue).await.expect("get"), None, "acked");

    // A message that already carries a trace keeps it.
    let mut msg = raw_event("evt-2");
    let given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    msg.headers.insert(trace::TRACEPARENT.into(), given.into());
    test.bus
        .publish(msg)
        .instrument(tracing::info_span!("another request"))
        .await
        .expect("publish");
    wait_count(&test.bus, &queue, 1).await;
    let delivery = test.bus.get(&queue).await.expect("get").expect("a message");
    assert_eq!(delivery.headers[trace::TRACEPARENT], given);

    test.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_key_is_reported() {
    let test = TestBus::start(v1_topology(), config()).await;
    let mut msg = raw_event("evt-1");
    msg.routing_key = "audit.lead.created".into();
    match test.bus.publish(msg).await {
        Err(BusError::Unroutable(key)) => assert_eq!(key, "audit.lead.created"),
        other => panic!("expected Unroutable, got {other:?}"),
    }
    // The default exchange routes by queue name; an unknown queue is unroutable too.
    let msg = OutgoingMessage {
        routing_key: "no-such-queue".into(),
        ..OutgoingMessage::default()
    };
    assert!(matches!(
        test.bus.publish_to("", msg).await,
        Err(BusError::Unroutable(_))
    ));
    test.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_each_get_their_own_outcome() {
    // Half of the messages are routable, half are not, all in flight at once on the
    // same channels: every caller must hear about its own message, never a neighbour's.
    let topology = v1_topology();
    let test = TestBus::start(topology.clone(), config()).await;
    // Bare lapin gets about one in ten of these wrong (it hands a basic.return to
    // whichever confirm completes next), including "routed" for a returned message.
    let bus = Arc::new(test.bus.clone());
    let (rounds, n) = (5, 400);
    for round in 0..rounds {
        let results = join_all((0..n).map(|i| {
            let bus = bus.clone();
            tokio::spawn(async move {
                let mut msg = raw_event(&format!("evt-{round}-{i}"));
                if i % 2 == 1 {
                    msg.routing_key = format!("nowhere.{i}");
                }
                (i, bus.publish(msg).await)
            })
        }))
        .await;
        for joined in results {
            let (i, result) = joined.expect("task");
            match (i % 2, result) {
                (0, Ok(())) => {}
                (1, Err(BusError::Unroutable(key))) => assert_eq!(key, format!("nowhere.{i}")),
                (_, other) => panic!("message {i}: unexpected {other:?}"),
            }
        }
    }
    wait_count(
        &test.bus,
        &topology.stage_queue("normalizer"),
        rounds * n / 2,
    )
    .await;
    test.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_too_long_for_amqp_is_an_error_not_a_panic() {
    let test = TestBus::start(v1_topology(), config()).await;
    let mut msg = raw_event("evt-1");
    msg.routing_key = "raw.".to_owned() + &"x".repeat(300);
    assert!(matches!(
        test.bus.publish(msg).await,
        Err(BusError::Amqp(_))
    ));
    test.finish().await;
}

/// Measures confirmed publishes per second with many in flight:
/// `cargo test -p handoff-bus --release --test it -- --ignored --nocapture publish_throughput`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn publish_throughput() {
    let total: usize = std::env::var("BUS_BENCH_MESSAGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50_000);
    let in_flight: usize = std::env::var("BUS_BENCH_IN_FLIGHT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let channels: u16 = std::env::var("BUS_BENCH_CHANNELS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(BusConfig::default().publish_channels);
    let topology = Topology::v1(handoff_test_support::namespace());
    let cfg = BusConfig {
        publish_channels: channels,
        ..config()
    };
    let test = TestBus::start(topology.clone(), cfg).await;
    let body = vec![7u8; 512];
    let started = Instant::now();
    let per_task = total / in_flight;
    let tasks: Vec<_> = (0..in_flight)
        .map(|_| {
            let bus = test.bus.clone();
            let body = body.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    let msg = OutgoingMessage {
                        routing_key: "raw.lead.created".into(),
                        body: body.clone(),
                        ..OutgoingMessage::default()
                    };
                    bus.publish(msg).await.expect("publish");
                }
            })
        })
        .collect();
    for task in join_all(tasks).await {
        task.expect("task");
    }
    let elapsed = started.elapsed();
    let sent = per_task * in_flight;
    eprintln!(
        "published {sent} confirmed persistent 512-byte messages, {in_flight} in flight, \
         {channels} channel(s): {:.0} msg/s",
        sent as f64 / elapsed.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    test.finish().await;
}

/// The same load through bare lapin (one confirm-mode channel, no bookkeeping), to
/// compare with [`publish_throughput`] on the same machine at the same moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn raw_lapin_baseline() {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    let total: usize = 50_000;
    let in_flight: usize = 1000;
    let topology = Topology::v1(handoff_test_support::namespace());
    let test = TestBus::start(topology.clone(), config()).await;
    let (conn, channel) = raw_channel().await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    let exchange = topology.events_exchange();
    let body = vec![7u8; 512];
    let started = Instant::now();
    let tasks: Vec<_> = (0..in_flight)
        .map(|_| {
            let channel = channel.clone();
            let exchange = exchange.clone();
            let body = body.clone();
            tokio::spawn(async move {
                for _ in 0..total / in_flight {
                    let confirm = channel
                        .basic_publish(
                            exchange.as_str().into(),
                            "raw.lead.created".into(),
                            BasicPublishOptions {
                                mandatory: true,
                                immediate: false,
                            },
                            &body,
                            lapin::BasicProperties::default().with_delivery_mode(2),
                        )
                        .await
                        .expect("publish")
                        .await
                        .expect("confirm");
                    assert!(confirm.is_ack());
                }
            })
        })
        .collect();
    for task in join_all(tasks).await {
        task.expect("task");
    }
    let elapsed = started.elapsed();
    eprintln!(
        "bare lapin: {total} confirmed persistent 512-byte messages, {in_flight} in flight: {:.0} msg/s",
        total as f64 / elapsed.as_secs_f64()
    );
    let _ = conn.close(200, "done".into()).await;
    test.finish().await;
}
