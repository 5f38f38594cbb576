//! Losing the broker: fail fast while it is gone, come back without a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use handoff_bus::{Bus, BusConfig, BusError, Delivery, Handler, Outcome, consumer};
use handoff_test_support::{TcpProxy, amqp_addr, url_via};
use tokio_util::sync::CancellationToken;

use crate::{TestBus, config, eventually, raw_event, v1_topology, wait_count};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_means_unavailable_at_once() {
    let shutdown = CancellationToken::new();
    let bus = Bus::start(
        BusConfig {
            // Nothing listens on port 1.
            url: "amqp://guest:guest@127.0.0.1:1/%2f".into(),
            ..config()
        },
        v1_topology(),
        shutdown.clone(),
    );
    assert!(!bus.is_ready());
    let started = Instant::now();
    assert!(matches!(
        bus.publish(raw_event("e1")).await,
        Err(BusError::Unavailable)
    ));
    assert!(started.elapsed() < Duration::from_millis(100), "fails fast");
    assert!(matches!(
        bus.wait_ready(Duration::from_millis(300)).await,
        Err(BusError::Unavailable)
    ));
    assert!(!bus.is_ready());
    assert!(matches!(
        bus.message_count("anything").await,
        Err(BusError::Unavailable)
    ));
    // Shutting down stops the reconnect loop promptly.
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(2), bus.close())
        .await
        .expect("close returns");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_comes_back_without_a_restart() {
    let proxy = TcpProxy::start(amqp_addr()).await;
    let topology = v1_topology();
    let cfg = BusConfig {
        url: url_via(&handoff_test_support::amqp_url(), proxy.addr()),
        ..config()
    };
    let test = TestBus::start(topology.clone(), cfg).await;
    test.bus
        .publish(raw_event("before"))
        .await
        .expect("publish");

    proxy.cut();
    eventually("not ready", Duration::from_secs(5), || async {
        (!test.bus.is_ready()).then_some(())
    })
    .await;
    assert!(test.bus.publish(raw_event("during")).await.is_err());
    // Stays down while the proxy refuses connections.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!test.bus.is_ready());

    proxy.restore();
    test.bus
        .wait_ready(Duration::from_secs(10))
        .await
        .expect("ready again");
    test.bus.publish(raw_event("after")).await.expect("publish");
    let queue = topology.stage_queue("normalizer");
    wait_count(&test.bus, &queue, 2).await;
    let first = test.bus.get(&queue).await.expect("get").expect("message");
    let second = test.bus.get(&queue).await.expect("get").expect("message");
    assert_eq!(first.message_id.as_deref(), Some("before"));
    assert_eq!(second.message_id.as_deref(), Some("after"));
    test.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_whose_connection_dies_before_its_confirm_is_unconfirmed() {
    let proxy = TcpProxy::start(amqp_addr()).await;
    let cfg = BusConfig {
        url: url_via(&handoff_test_support::amqp_url(), proxy.addr()),
        publish_timeout: Duration::from_secs(20),
        ..config()
    };
    let test = TestBus::start(v1_topology(), cfg).await;
    test.bus
        .publish(raw_event("before"))
        .await
        .expect("publish");

    // The publish goes out, the broker's answer never comes back, then the connection dies:
    // the message may be stored, so this is not `Unavailable` (which means it was not sent).
    proxy.stall();
    let bus = test.bus.clone();
    let publish = tokio::spawn(async move { bus.publish(raw_event("in-flight")).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!publish.is_finished(), "still waiting for its confirm");
    proxy.cut();
    let result = tokio::time::timeout(Duration::from_secs(10), publish)
        .await
        .expect("answered when the connection died, not at the publish timeout")
        .expect("task");
    assert!(
        matches!(result, Err(BusError::Unconfirmed(_))),
        "{result:?}"
    );
    // A publish with no connection at all was never sent: that one is `Unavailable`.
    eventually("not ready", Duration::from_secs(5), || async {
        (!test.bus.is_ready()).then_some(())
    })
    .await;
    assert!(matches!(
        test.bus.publish(raw_event("during")).await,
        Err(BusError::Unavailable)
    ));

    proxy.resume();
    proxy.restore();
    test.bus
        .wait_ready(Duration::from_secs(10))
        .await
        .expect("ready again");
    test.finish().await;
}

struct Count(AtomicU32);

impl Handler for Count {
    async fn handle(&self, _delivery: &Delivery) -> Outcome {
        self.0.fetch_add(1, Ordering::SeqCst);
        Outcome::Ack
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_resubscribes_after_the_connection_comes_back() {
    let proxy = TcpProxy::start(amqp_addr()).await;
    let topology = v1_topology();
    // The consumer goes through the proxy; the publisher uses a direct connection.
    let through_proxy = TestBus::start(
        topology.clone(),
        BusConfig {
            url: url_via(&handoff_test_support::amqp_url(), proxy.addr()),
            ..config()
        },
    )
    .await;
    let direct = TestBus::start(topology.clone(), config()).await;
    let handler = Arc::new(Count(AtomicU32::new(0)));
    let consumer = {
        let bus = through_proxy.bus.clone();
        let handler = handler.clone();
        let shutdown = through_proxy.shutdown.clone();
        tokio::spawn(async move { consumer::run(&bus, "normalizer", handler, shutdown).await })
    };
    direct.bus.publish(raw_event("e1")).await.expect("publish");
    eventually("first message", Duration::from_secs(5), || async {
        (handler.0.load(Ordering::SeqCst) >= 1).then_some(())
    })
    .await;

    proxy.cut();
    eventually("not ready", Duration::from_secs(5), || async {
        (!through_proxy.bus.is_ready()).then_some(())
    })
    .await;
    direct.bus.publish(raw_event("e2")).await.expect("publish");
    proxy.restore();
    eventually(
        "message after the outage",
        Duration::from_secs(10),
        || async { (handler.0.load(Ordering::SeqCst) >= 2).then_some(()) },
    )
    .await;

    through_proxy.shutdown.cancel();
    consumer.await.expect("task").expect("run");
    through_proxy.bus.close().await;
    direct.finish().await;
}
