//! Every status code of the single-event API, with its body, and what lands
//! in the queue.

use handoff_events::{CURRENT_SCHEMA_VERSION, PROTOBUF_CONTENT_TYPE};
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn seed_example_is_accepted_and_stored_as_a_persistent_protobuf_envelope() {
    let app = spawn_ingest().await;
    let (status, body, _) = app.post("customer.converted", KEY, SEED).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["event_id"], "evt_2026_03_19_000123");
    assert_eq!(body["status"], "accepted");
    let trace_id = body["trace_id"].as_str().expect("trace_id").to_owned();
    assert_eq!(trace_id.len(), 32);
    assert_ne!(trace_id, "0".repeat(32));

    let messages = app.drain_raw().await;
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(m.delivery_mode, Some(2), "persistent");
    assert_eq!(m.routing_key, "raw.customer.converted");
    assert_eq!(m.content_type.as_deref(), Some(PROTOBUF_CONTENT_TYPE));
    assert_eq!(m.message_id.as_deref(), Some("evt_2026_03_19_000123"));
    let traceparent = m.headers.get("traceparent").expect("traceparent header");
    assert_eq!(
        handoff_bus::trace::trace_id_from_traceparent(traceparent).as_deref(),
        Some(trace_id.as_str())
    );

    let env = envelope(m);
    assert_eq!(env.event_id, "evt_2026_03_19_000123");
    assert_eq!(env.event_type, "customer.converted");
    assert_eq!(env.schema_version, CURRENT_SCHEMA_VERSION);
    assert_eq!(env.publisher_id, "acme");
    assert_eq!(env.source, "crm");
    assert_eq!(env.content_sha256.len(), 32);
    assert_eq!(env.occurred_at.expect("occurred_at").seconds, 1_773_915_322);
    assert!(env.received_at.is_some());
    assert_eq!(
        raw_body(&env),
        SEED.as_bytes(),
        "the publisher's JSON byte for byte"
    );

    // The status ledger knows it was accepted, with the same trace id.
    let (status, ledger) = app.get("/v1/events/evt_2026_03_19_000123", KEY).await;
    assert_eq!(status, 200, "{ledger}");
    assert_eq!(ledger["trace_id"], trace_id.as_str());
    assert_eq!(ledger["event_type"], "customer.converted");
    assert_eq!(ledger["stages"]["ingest"]["status"], "accepted");
    app.stop().await;
}

#[tokio::test]
async fn a_callers_traceparent_is_continued() {
    let app = spawn_ingest().await;
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = app
        .http
        .post(format!("{}/v1/events/customer.converted", app.base))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .header(
            "traceparent",
            format!("00-{caller_trace}-00f067aa0ba902b7-01"),
        )
        .body(seed_with_id("evt_traced"))
        .send()
        .await
        .expect("request");
    let (status, body, _) = split(response).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["trace_id"], caller_trace);
    let messages = app.drain_raw().await;
    let traceparent = messages[0].headers.get("traceparent").expect("traceparent");
    assert!(traceparent.contains(caller_trace), "{traceparent}");
    assert!(
        !traceparent.contains("00f067aa0ba902b7"),
        "the publish span is a child, not the caller's span"
    );
    app.stop().await;
}

#[tokio::test]
async fn duplicates_are_answered_200_and_published_once_conflicts_409() {
    let app = spawn_ingest().await;
    let (status, _, _) = app.post("customer.converted", KEY, SEED).await;
    assert_eq!(status, 202);
    // Same content, different key order and spacing: still the same event.
    let reordered: serde_json::Value = serde_json::from_str(SEED).expect("json");
    let (status, body, _) = app
        .post(
            "customer.converted",
            KEY,
            serde_json::to_string_pretty(&reordered).expect("json"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"event_id": "evt_2026_03_19_000123", "status": "duplicate"})
    );
    let (status, _, _) = app.post("customer.converted", KEY, SEED).await;
    assert_eq!(status, 200);

    let conflicting = SEED.replace("\"plan\":\"pro\"", "\"plan\":\"enterprise\"");
    let (status, body, _) = app.post("customer.converted", KEY, conflicting).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "event_id_conflict");

    // Event ids are scoped per publisher: another publisher may reuse the id.
    assert_eq!(app.raw_count().await, 1);
    app.stop().await;
}

#[tokio::test]
async fn authentication_and_authorization_errors() {
    let app = spawn_ingest().await;
    let url = format!("{}/v1/events/customer.converted", app.base);
    let response = app
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body(SEED)
        .send()
        .await
        .expect("request");
    assert_eq!(
        response
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().ok()),
        Some(Some("Bearer"))
    );
    let (status, body, _) = split(response).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");

    let (status, body, _) = app.post("customer.converted", "not-a-key", SEED).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["message"], "the API key is not valid");

    let (status, body, _) = app.post("customer.converted", BILLING_KEY, SEED).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");

    let (status, body, _) = app.post("lead.deleted", KEY, SEED).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "unknown_event_type");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("customer.converted")
    );

    let (status, _) = app.get("/v1/events/evt_2026_03_19_000123", "nope").await;
    assert_eq!(status, 401);
    assert_eq!(app.raw_count().await, 0);
    app.stop().await;
}

#[tokio::test]
async fn request_shape_errors() {
    let app = spawn_ingest().await;
    let url = format!("{}/v1/events/customer.converted", app.base);

    let response = app
        .http
        .post(&url)
        .bearer_auth(KEY)
        .header("content-type", "text/plain")
        .body(SEED)
        .send()
        .await
        .expect("request");
    let (status, body, _) = split(response).await;
    assert_eq!(status, 415);
    assert_eq!(body["error"]["code"], "unsupported_media_type");
    let response = app
        .http
        .post(&url)
        .bearer_auth(KEY)
        .body(SEED)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 415);

    // Over the limit (16 KiB in tests), with a Content-Length and chunked.
    let huge = format!(
        r#"{{"event_id":"e1","occurred_at":"2026-03-19T10:15:22Z","pad":"{}"}}"#,
        "x".repeat(20_000)
    );
    let (status, body, _) = app.post("customer.converted", KEY, huge.clone()).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");
    let stream = futures::stream::iter(
        huge.into_bytes()
            .chunks(1000)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let response = app
        .http
        .post(&url)
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 413);

    let (status, body, _) = app
        .post(
            "customer.converted",
            KEY,
            "{\n  \"event_id\": \"e1\",\n  \"occurred_at\": oops\n}",
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "malformed_json");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("line 3 column"), "{message}");

    let (status, body, _) = app
        .post("customer.converted", KEY, r#"{"event_id":"has space","occurred_at":"yesterday","customer":{"first_name":"Alex"}}"#)
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "validation_failed");
    let paths: Vec<&str> = body["error"]["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .map(|f| f["path"].as_str().unwrap_or(""))
        .collect();
    for expected in ["event_id", "occurred_at", "customer"] {
        assert!(
            paths.contains(&expected),
            "{expected} missing from {paths:?}"
        );
    }
    assert_eq!(
        app.raw_count().await,
        0,
        "nothing published for bad requests"
    );
    app.stop().await;
}

#[tokio::test]
async fn rate_limited_publishers_get_429_with_retry_after() {
    let app = spawn_ingest().await;
    let payment = |id: &str| {
        json!({
            "event_id": id, "occurred_at": "2026-03-19T10:15:22Z",
            "customer": {"email": "alex@example.com"},
            "payment": {"invoice_id": "INV-1", "amount": 49.0, "currency": "USD"}
        })
        .to_string()
    };
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for i in 0..4 {
        let (status, body, headers) = app
            .post("payment.failed", BILLING_KEY, payment(&format!("pay_{i}")))
            .await;
        if status == 429 {
            assert_eq!(body["error"]["code"], "rate_limited");
            retry_after = headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
        }
        statuses.push(status);
    }
    assert_eq!(&statuses[..2], &[202, 202], "{statuses:?}");
    assert!(statuses[2..].contains(&429), "{statuses:?}");
    let secs: u64 = retry_after
        .expect("Retry-After")
        .parse()
        .expect("whole seconds");
    assert!((1..=2).contains(&secs));
    app.stop().await;
}

#[tokio::test]
async fn status_of_unknown_events_and_other_publishers_events_is_404() {
    let app = spawn_ingest().await;
    let (status, body) = app.get("/v1/events/evt_never_sent", KEY).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    let (status, _, _) = app.post("customer.converted", KEY, SEED).await;
    assert_eq!(status, 202);
    // "billing" cannot see "acme"'s event.
    let (status, _) = app
        .get("/v1/events/evt_2026_03_19_000123", BILLING_KEY)
        .await;
    assert_eq!(status, 404);
    app.stop().await;
}
