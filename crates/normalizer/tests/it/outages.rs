//! Redis and the broker going away and coming back, and shutdown mid-flight:
//! every raw event ends as exactly one canonical event.

use std::collections::BTreeSet;
use std::time::Duration;

use handoff_events::EventType;
use handoff_test_support::{self as support, TcpProxy};

use crate::helpers::{Options, TestNormalizer, World, canonical, seed_with_id};

async fn publish_many(world: &World, prefix: &str, n: usize) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for i in 0..n {
        let id = format!("{prefix}_{i:04}");
        world
            .publish_raw(EventType::CustomerConverted, &id, 1, &seed_with_id(&id))
            .await;
        ids.insert(id);
    }
    ids
}

/// Takes `n` canonical events and checks they are exactly `ids`, once each.
async fn assert_exactly_once(world: &World, ids: &BTreeSet<String>, within: Duration) {
    let out = world.canonical(ids.len(), within).await;
    let got: Vec<String> = out.iter().map(|d| canonical(d).0.event_id).collect();
    let unique: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        got.len(),
        "duplicates among the canonical events"
    );
    assert_eq!(&unique, ids);
    assert_eq!(world.raw_waiting().await, 0);
    assert_eq!(
        world
            .count(&world.inspector.topology().dead_letter_queue())
            .await,
        0
    );
}

#[tokio::test]
async fn redis_down_and_back_delays_but_loses_and_duplicates_nothing() {
    let proxy = TcpProxy::start(support::redis_addr()).await;
    let opts = Options {
        redis_url: support::url_via(&support::redis_url(), proxy.addr()),
        ..Options::default()
    };
    let world = World::start_with(opts).await;
    proxy.cut();
    let ids = publish_many(&world, "evt_redis_out", 20).await;
    world
        .normalizer()
        .wait_ready(false, Duration::from_secs(10))
        .await;
    // While Redis is away the events wait in the retry delay queue, not in a hot loop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        world
            .count(
                &world
                    .inspector
                    .topology()
                    .stage_queue(handoff_bus::CRM_WRITER)
            )
            .await,
        0
    );
    proxy.restore();
    world
        .normalizer()
        .wait_ready(true, Duration::from_secs(10))
        .await;
    assert_exactly_once(&world, &ids, Duration::from_secs(30)).await;
    world.finish().await;
}

#[tokio::test]
async fn broker_down_and_back_loses_and_duplicates_nothing() {
    let proxy = TcpProxy::start(support::amqp_addr()).await;
    let opts = Options {
        amqp_url: support::url_via(&support::amqp_url(), proxy.addr()),
        ..Options::default()
    };
    let world = World::start_with(opts).await;
    let before = publish_many(&world, "evt_before_cut", 10).await;
    assert_exactly_once(&world, &before, Duration::from_secs(20)).await;

    proxy.cut();
    world
        .normalizer()
        .wait_ready(false, Duration::from_secs(30))
        .await;
    // Published straight to the broker while the normalizer cannot reach it.
    let during = publish_many(&world, "evt_during_cut", 20).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        world.raw_waiting().await,
        20,
        "nothing can be consumed during the cut"
    );
    proxy.restore();
    world
        .normalizer()
        .wait_ready(true, Duration::from_secs(30))
        .await;
    assert_exactly_once(&world, &during, Duration::from_secs(30)).await;
    world.finish().await;
}

#[tokio::test]
async fn shutdown_mid_flight_then_restart_normalizes_everything_once() {
    let mut world = World::start().await;
    let ids = publish_many(&world, "evt_shutdown", 400).await;
    // Stop as soon as work is under way; the drain lets in-flight messages finish.
    let crm = world
        .inspector
        .topology()
        .stage_queue(handoff_bus::CRM_WRITER);
    for _ in 0..400 {
        if world.count(&crm).await > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first = world.normalizer.take().expect("running");
    first.stop_within(Duration::from_secs(10)).await;
    let done_by_first = world.count(&crm).await;
    assert!(done_by_first > 0, "the first run normalized nothing");

    let second = TestNormalizer::start(&world.namespace, &Options::default()).await;
    second.wait_ready(true, Duration::from_secs(20)).await;
    world.normalizer = Some(second);
    assert_exactly_once(&world, &ids, Duration::from_secs(60)).await;
    world.finish().await;
}
