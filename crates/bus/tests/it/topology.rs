//! Declaring the topology: idempotent, and with the arguments it claims.

use std::time::Duration;

use handoff_bus::{Bus, BusConfig, BusError};
use tokio_util::sync::CancellationToken;

use crate::{TestBus, config, raw_event, v1_topology, wait_count};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declaring_the_topology_twice_is_idempotent() {
    let topology = v1_topology();
    let first = TestBus::start(topology.clone(), config()).await;
    first.bus.publish(raw_event("e1")).await.expect("publish");

    // A second process (another replica) declares the same names again: no error,
    // and the message already queued is still there.
    let second = TestBus::start(topology.clone(), config()).await;
    let queue = topology.stage_queue("normalizer");
    wait_count(&second.bus, &queue, 1).await;
    second.bus.publish(raw_event("e2")).await.expect("publish");
    wait_count(&first.bus, &queue, 2).await;
    for tier in config().retry_delays {
        let delay_queue = topology.delay_queue("normalizer", tier);
        assert_eq!(
            second.bus.message_count(&delay_queue).await.expect("count"),
            0
        );
    }
    assert_eq!(
        second
            .bus
            .message_count(&topology.dead_letter_queue())
            .await
            .expect("count"),
        0
    );

    second.shutdown.cancel();
    second.bus.close().await;
    first.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_declaration_keeps_the_bus_not_ready() {
    let topology = v1_topology();
    let good = TestBus::start(topology.clone(), config()).await;

    // Same names, different x-delivery-limit: the broker refuses the declaration
    // (PRECONDITION_FAILED), which also proves the argument is really set.
    let shutdown = CancellationToken::new();
    let conflicting = Bus::start(
        BusConfig {
            delivery_limit: 7,
            ..config()
        },
        topology.clone(),
        shutdown.clone(),
    );
    assert!(matches!(
        conflicting.wait_ready(Duration::from_secs(1)).await,
        Err(BusError::Unavailable)
    ));
    assert!(!conflicting.is_ready());
    shutdown.cancel();
    conflicting.close().await;

    assert!(good.bus.is_ready());
    good.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teardown_removes_every_queue() {
    let topology = v1_topology().with_stage("crm-writer", &["canonical.#"]);
    let test = TestBus::start(topology.clone(), config()).await;
    let queues = [
        topology.stage_queue("normalizer"),
        topology.stage_queue("crm-writer"),
        topology.delay_queue("crm-writer", Duration::from_secs(5)),
        topology.dead_letter_queue(),
    ];
    for queue in &queues {
        assert_eq!(test.bus.message_count(queue).await.expect("exists"), 0);
    }
    test.bus.teardown().await.expect("teardown");
    for queue in &queues {
        assert!(matches!(
            test.bus.message_count(queue).await,
            Err(BusError::Amqp(_))
        ));
    }
    test.shutdown.cancel();
    test.bus.close().await;
}
