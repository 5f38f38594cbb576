//! Broker and Redis outages, simulated with a TCP proxy the test controls.

use std::time::Duration;

use handoff_test_support::{self as support, TcpProxy};

use crate::helpers::*;

#[tokio::test]
async fn broker_outage_gives_503_and_not_ready_then_recovers_without_restart() {
    let proxy = TcpProxy::start(support::amqp_addr()).await;
    let opts = Options {
        amqp_url: support::url_via(&support::amqp_url(), proxy.addr()),
        ..Options::default()
    };
    let app = spawn_ingest_with(opts, true).await;

    proxy.cut();
    app.wait_ready(false, Duration::from_secs(10)).await;
    let (status, body, headers) = app.post("customer.converted", KEY, SEED).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    assert_eq!(
        headers.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("2")
    );

    proxy.restore();
    app.wait_ready(true, Duration::from_secs(20)).await;
    // The failed attempt left no dedupe record: the retry is accepted, not "duplicate".
    let (status, body, _) = app.post("customer.converted", KEY, SEED).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(app.raw_count().await, 1);
    app.stop().await;
}

/// A broker that stops answering without closing anything: the publish times out waiting for
/// its confirm. The event may be stored after all, and the answer must not say it was not.
#[tokio::test]
async fn an_unconfirmed_publish_gives_503_saying_it_may_be_stored_and_a_resend_is_accepted() {
    let proxy = TcpProxy::start(support::amqp_addr()).await;
    let opts = Options {
        amqp_url: support::url_via(&support::amqp_url(), proxy.addr()),
        publish_timeout: Duration::from_secs(1),
        ..Options::default()
    };
    let app = spawn_ingest_with(opts, true).await;

    proxy.stall();
    let (status, body, headers) = app.post("customer.converted", KEY, SEED).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("did not confirm") && message.contains("may or may not be stored"),
        "{message}"
    );
    assert!(!message.contains("not stored,"), "{message}");
    assert_eq!(
        headers.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("2")
    );

    // What the broker was sent while stalled arrives now: the event was stored after all.
    proxy.resume();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.raw_count().await < 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        app.raw_count().await,
        1,
        "the unconfirmed publish reached the queue"
    );
    // The dedupe claim was released, so the resend the answer asked for is accepted; the two
    // copies carry one event_id, which the normalizer's dedupe turns into one canonical event.
    let (status, body, _) = app.post("customer.converted", KEY, SEED).await;
    assert_eq!(status, 202, "{body}");
    let copies = app.drain_raw().await;
    assert_eq!(copies.len(), 2);
    assert!(
        copies
            .iter()
            .all(|d| d.message_id.as_deref() == Some("evt_2026_03_19_000123"))
    );
    app.stop().await;
}

#[tokio::test]
async fn redis_outage_gives_503_then_recovers() {
    let proxy = TcpProxy::start(support::redis_addr()).await;
    let opts = Options {
        redis_url: support::url_via(&support::redis_url(), proxy.addr()),
        ..Options::default()
    };
    let app = spawn_ingest_with(opts, true).await;

    proxy.cut();
    let (status, body, headers) = app.post("customer.converted", KEY, SEED).await;
    assert_eq!(status, 503, "{body}");
    assert!(headers.get("retry-after").is_some());
    app.wait_ready(false, Duration::from_secs(10)).await;
    assert_eq!(
        app.raw_count().await,
        0,
        "nothing published without a dedupe claim"
    );

    proxy.restore();
    app.wait_ready(true, Duration::from_secs(20)).await;
    let (status, body, _) = app.post("customer.converted", KEY, SEED).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(app.raw_count().await, 1);
    app.stop().await;
}

#[tokio::test]
async fn starts_not_ready_when_the_broker_is_down_and_becomes_ready_when_it_appears() {
    let proxy = TcpProxy::start(support::amqp_addr()).await;
    proxy.cut();
    let opts = Options {
        amqp_url: support::url_via(&support::amqp_url(), proxy.addr()),
        ..Options::default()
    };
    let app = spawn_ingest_with(opts, false).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!app.is_ready().await);
    let (status, _, _) = app.post("customer.converted", KEY, SEED).await;
    assert_eq!(status, 503);
    proxy.restore();
    app.wait_ready(true, Duration::from_secs(20)).await;
    let (status, _, _) = app.post("customer.converted", KEY, SEED).await;
    assert_eq!(status, 202);
    app.stop().await;
}

#[tokio::test]
async fn the_contact_timeline_answers_503_while_redis_is_away() {
    let proxy = TcpProxy::start(support::redis_addr()).await;
    let opts = Options {
        redis_url: support::url_via(&support::redis_url(), proxy.addr()),
        ..Options::default()
    };
    let app = spawn_ingest_with(opts, true).await;
    let path = "/v1/contacts/alex@example.com/events";
    let (status, body) = app.get(path, KEY).await;
    assert_eq!(status, 200, "{body}");

    proxy.cut();
    let response = app
        .http
        .get(format!("{}{path}", app.base))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("request");
    let (status, body, headers) = split(response).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    assert_eq!(
        headers.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("2")
    );

    proxy.restore();
    app.wait_ready(true, Duration::from_secs(20)).await;
    let (status, body) = app.get(path, KEY).await;
    assert_eq!(status, 200, "{body}");
    app.stop().await;
}
