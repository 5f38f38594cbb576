//! Precise delays: a delayed message hops through the delay tiers until its
//! `x-handoff-not-before` has passed, reaches the handler no earlier than asked and
//! at most one smallest tier later; `Defer` waits the same way without using up an
//! attempt.
//!
//! The tiers are 100 ms and 400 ms so each test takes about a second.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use handoff_bus::{BusConfig, HEADER_ATTEMPT, HEADER_ATTEMPTS, HEADER_NOT_BEFORE, Outcome};

use crate::consumer::{Scripted, spawn_consumer, stop};
use crate::{TestBus, config, eventually, raw_event, v1_topology, wait_count};

const SMALL_TIER: Duration = Duration::from_millis(100);
const LARGE_TIER: Duration = Duration::from_millis(400);

fn short_tiers() -> BusConfig {
    BusConfig {
        retry_delays: vec![SMALL_TIER, LARGE_TIER],
        ..config()
    }
}

/// Nothing is left anywhere: the stage queue, both delay queues, the dead letters.
async fn all_queues_empty(test: &TestBus) {
    let topology = test.bus.topology();
    for queue in [
        topology.stage_queue("normalizer"),
        topology.delay_queue("normalizer", SMALL_TIER),
        topology.delay_queue("normalizer", LARGE_TIER),
        topology.dead_letter_queue(),
    ] {
        wait_count(&test.bus, &queue, 0).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_hops_through_the_tiers_and_comes_back_on_time() {
    let test = TestBus::start(v1_topology(), short_tiers()).await;
    let handler = Scripted::new(|d| {
        if d.attempt == 1 {
            Outcome::RetryLater {
                delay: Duration::from_millis(900),
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

    // 900 ms with tiers of 100 and 400 ms is 400 + 400 + 100: the hops in between
    // never reach the handler.
    let seen = handler.seen();
    assert_eq!(seen.len(), 2);
    let (first_at, first) = &seen[0];
    let (second_at, second) = &seen[1];
    let waited = *second_at - *first_at;
    assert!(waited >= Duration::from_millis(900), "early: {waited:?}");
    assert!(waited < Duration::from_millis(1400), "late: {waited:?}");
    assert_eq!(first.attempt, 1);
    assert!(!first.headers.contains_key(HEADER_ATTEMPT));
    assert_eq!(second.attempt, 2);
    assert_eq!(second.headers[HEADER_ATTEMPT], "2");
    assert!(second.headers[HEADER_ATTEMPTS].contains("crm answered 503"));
    assert!(second.headers.contains_key(HEADER_NOT_BEFORE));
    assert_eq!(second.headers["x-test"], "e1");
    assert_eq!(second.routing_key, "raw.lead.created");
    assert_eq!(second.exchange, test.bus.topology().events_exchange());
    all_queues_empty(&test).await;
    test.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_message_keeps_its_attempt_and_is_never_exhausted() {
    // Two attempts allowed: three deferrals would exhaust them if they counted.
    let cfg = BusConfig {
        max_attempts: 2,
        ..short_tiers()
    };
    let test = TestBus::start(v1_topology(), cfg).await;
    let calls = AtomicU32::new(0);
    let handler = Scripted::new(move |_| {
        if calls.fetch_add(1, Ordering::SeqCst) < 3 {
            Outcome::Defer {
                delay: Duration::from_millis(150),
                reason: "crm answered 429".into(),
            }
        } else {
            Outcome::Ack
        }
    });
    let consumer = spawn_consumer(&test.bus, handler.clone(), &test.shutdown);
    test.bus.publish(raw_event("e1")).await.expect("publish");
    eventually(
        "three deferrals and an ack",
        Duration::from_secs(10),
        || async { (handler.seen().len() >= 4).then_some(()) },
    )
    .await;
    stop(&test, consumer).await;

    let seen = handler.seen();
    assert_eq!(seen.len(), 4);
    for (_, delivery) in &seen {
        assert_eq!(delivery.attempt, 1);
        assert_eq!(delivery.first_failed_at, None);
        assert!(!delivery.headers.contains_key(HEADER_ATTEMPT));
        assert!(!delivery.headers.contains_key(HEADER_ATTEMPTS));
    }
    for pair in seen.windows(2) {
        let waited = pair[1].0 - pair[0].0;
        assert!(waited >= Duration::from_millis(150), "early: {waited:?}");
    }
    all_queues_empty(&test).await;
    test.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferral_after_a_retry_keeps_the_attempt_and_its_history() {
    // Attempt 2 of 2: a RetryLater now would be RetriesExhausted, a Defer is not.
    let cfg = BusConfig {
        max_attempts: 2,
        ..short_tiers()
    };
    let test = TestBus::start(v1_topology(), cfg).await;
    let calls = AtomicU32::new(0);
    let handler = Scripted::new(move |_| match calls.fetch_add(1, Ordering::SeqCst) {
        0 => Outcome::RetryLater {
            delay: Duration::ZERO,
            error: "crm answered 503".into(),
        },
        1 | 2 => Outcome::Defer {
            delay: Duration::ZERO,
            reason: "crm answered 429".into(),
        },
        _ => Outcome::Ack,
    });
    let consumer = spawn_consumer(&test.bus, handler.clone(), &test.shutdown);
    test.bus.publish(raw_event("e1")).await.expect("publish");
    eventually(
        "a retry, two deferrals and an ack",
        Duration::from_secs(10),
        || async { (handler.seen().len() >= 4).then_some(()) },
    )
    .await;
    stop(&test, consumer).await;

    let seen = handler.seen();
    let attempts: Vec<u32> = seen.iter().map(|(_, d)| d.attempt).collect();
    assert_eq!(attempts, vec![1, 2, 2, 2]);
    let after_retry = &seen[1].1;
    assert!(after_retry.first_failed_at.is_some());
    for (_, delivery) in &seen[2..] {
        assert_eq!(delivery.first_failed_at, after_retry.first_failed_at);
        assert_eq!(
            delivery.headers[HEADER_ATTEMPTS], after_retry.headers[HEADER_ATTEMPTS],
            "a deferral adds nothing to the history"
        );
    }
    all_queues_empty(&test).await;
    test.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_shorter_than_the_smallest_tier_waits_that_tier() {
    let test = TestBus::start(v1_topology(), short_tiers()).await;
    let handler = Scripted::new(|d| {
        if d.attempt == 1 {
            Outcome::RetryLater {
                delay: Duration::from_millis(30),
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
    let waited = seen[1].0 - seen[0].0;
    // Never early: the 100 ms tier, not a 30 ms shortcut; and not the 400 ms tier.
    assert!(waited >= SMALL_TIER, "early: {waited:?}");
    assert!(waited < LARGE_TIER, "late: {waited:?}");
    assert_eq!(seen[1].1.attempt, 2);
    all_queues_empty(&test).await;
    test.finish().await;
}
