//! Broker and Redis outages, simulated with a TCP proxy the test controls.

use std::time::Duration;

use handoff_test_support::{self as support, TcpProxy};

use crate::helpers::*;

/// Ingest whose broker connection goes through a proxy the test controls.
async fn ingest_behind_a_broker_proxy(publish_timeout: Option<Duration>) -> (TcpProxy, TestIngest) {
    let proxy = TcpProxy::start(support::amqp_addr()).await;
    let defaults = Options::default();
    let opts = Options {
        amqp_url: support::url_via(&support::amqp_url(), proxy.addr()),
        publish_timeout: publish_timeout.unwrap_or(defaults.publish_timeout),
        ..defaults
    };
    (proxy, spawn_ingest_with(opts, true).await)
}

/// Once ingest is ready again, the event sent again is accepted (its claim was released) and
/// is the only copy in the raw queue; then ingest stops.
async fn the_resend_is_the_one_copy(app: TestIngest) {
    app.wait_ready(true, Duration::from_secs(20)).await;
    let (status, body, _) = app.post("customer.converted", KEY, SEED).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(app.raw_count().await, 1);
    app.stop().await;
}

/// A 503 `unavailable` answer with `Retry-After: 2` whose message holds every one of `says`
/// and returns the message.
fn assert_unavailable(
    status: u16,
    body: &serde_json::Value,
    headers: &reqwest::header::HeaderMap,
    says: &[&str],
) -> String {
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    for part in says {
        assert!(message.contains(part), "{message:?} does not say {part:?}");
    }
    assert_eq!(
        headers.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("2")
    );
    message.to_owned()
}

#[tokio::test]
async fn broker_outage_gives_503_and_not_ready_then_recovers_without_restart() {
    let (proxy, app) = ingest_behind_a_broker_proxy(None).await;

    proxy.cut();
    app.wait_ready(false, Duration::from_secs(10)).await;
    let (status, body, headers) = app.post("customer.converted", KEY, SEED).await;
    // Nothing was sent while the broker was gone, so the answer can say so.
    assert_unavailable(
        status,
        &body,
        &headers,
        &["the message broker is unavailable; the event was not stored"],
    );

    proxy.restore();
    // The failed attempt left no dedupe record: the retry is accepted, not "duplicate".
    the_resend_is_the_one_copy(app).await;
}

/// A broker that stops answering without closing anything: the publish times out waiting for
/// its confirm. The event may be stored after all, and the answer must not say it was not.
#[tokio::test]
async fn an_unconfirmed_publish_gives_503_saying_it_may_be_stored_and_a_resend_is_accepted() {
    let (proxy, app) = ingest_behind_a_broker_proxy(Some(Duration::from_secs(1))).await;

    proxy.stall();
    let (status, body, headers) = app.post("customer.converted", KEY, SEED).await;
    let message = assert_unavailable(
        status,
        &body,
        &headers,
        &["did not confirm", "may or may not be stored"],
    );
    assert!(!message.contains("not stored,"), "{message}");

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

/// The publish went out, then the connection died before the broker confirmed it: as with a
/// timeout, the event may be stored, and the answer says so at once.
#[tokio::test]
async fn a_connection_lost_before_the_confirm_gives_503_saying_it_may_be_stored() {
    let (proxy, app) = ingest_behind_a_broker_proxy(Some(Duration::from_secs(20))).await;

    proxy.stall();
    let ((status, body, headers), ()) =
        tokio::join!(app.post("customer.converted", KEY, SEED), async {
            // Long enough for the claim in Redis and the publish to go out, even on a busy box.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            proxy.cut();
        });
    let message = assert_unavailable(
        status,
        &body,
        &headers,
        &[
            "connection to the message broker failed before it confirmed",
            "may or may not be stored",
            "same event_id",
        ],
    );
    assert!(!message.contains("not stored,"), "{message}");

    // The claim was released: the resend the answer asks for is accepted once the broker is
    // back (the stalled bytes died with the connection, so this is the only copy).
    proxy.resume();
    proxy.restore();
    the_resend_is_the_one_copy(app).await;
}

/// The broker refuses the event (a nack): here a full queue with `reject-publish` bound
/// beside the raw queue, as a full raw queue would. Nothing was stored, and the answer says so.
#[tokio::test]
async fn an_event_the_broker_refuses_gives_503_saying_it_was_not_stored() {
    use lapin::options::{QueueBindOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable};

    let app = spawn_ingest().await;
    let connection = lapin::Connection::connect(&support::amqp_url(), Default::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let full = format!("{}.full", app.namespace);
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".as_bytes().into()),
    );
    // Exclusive: the broker deletes it when this connection closes, at the latest when the test
    // process exits, so a failing assertion cannot leave it behind. A classic queue nacks the publish that
    // overflows it just as a quorum queue does.
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(full.as_str().into(), exclusive, args)
        .await
        .expect("declare the full queue");
    channel
        .queue_bind(
            full.as_str().into(),
            format!("{}.events", app.namespace).as_str().into(),
            "raw.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind it");

    // The first event fills it; the broker refuses the second.
    let (status, body, _) = app.post("customer.converted", KEY, SEED).await;
    assert_eq!(status, 202, "{body}");
    let (status, body, headers) = app
        .post("customer.converted", KEY, seed_with_id("evt_refused"))
        .await;
    let message = assert_unavailable(
        status,
        &body,
        &headers,
        &["the message broker refused the event; it was not stored"],
    );
    assert!(!message.contains("may or may not"), "{message}");

    // Closing the connection deletes the exclusive queue.
    let _ = connection.close(200, "done".into()).await;
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
