//! `GET /v1/contacts/{email}/events`: a publisher's events about one person, newest first.
//!
//! Ingest does not index emails itself (the normalizer does, from the canonical record), so these
//! tests post events through the API and then record what the normalizer would, with the same
//! store, in the test's namespace.

use std::time::Duration;

use handoff_idempotency::{LedgerUpdate, RedisConfig, Store};
use handoff_test_support as support;
use serde_json::Value;

use crate::helpers::*;

const EMAIL: &str = "alex@example.com";

/// A store on the test ingest's namespace, as the normalizer would use it.
fn store(app: &TestIngest) -> Store {
    let cfg = RedisConfig {
        url: support::redis_url(),
        op_timeout: Duration::from_secs(2),
    };
    Store::new(&cfg, &app.namespace).expect("valid url")
}

/// Records the normalizer's `normalized` for `event_id`, indexed under `email`, at second `second`
/// of a fixed minute (so the order is the test's, not the clock's).
async fn normalized(store: &Store, publisher_id: &str, event_id: &str, email: &str, second: u32) {
    let mut update = LedgerUpdate::now(publisher_id, event_id, "normalizer", "normalized")
        .with_event_type("customer.converted")
        .with_email(email);
    update.at = format!("2026-03-19T10:15:{second:02}Z");
    store.ledger_record(&update).await.expect("ledger_record");
}

/// The event ids of a timeline answer, in order.
fn ids(body: &Value) -> Vec<&str> {
    body["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events in {body}"))
        .iter()
        .map(|event| event["event_id"].as_str().unwrap_or(""))
        .collect()
}

#[tokio::test]
async fn each_publisher_sees_its_own_events_about_a_person_newest_first() {
    let app = spawn_ingest().await;
    let store = store(&app);
    for id in ["evt_a1", "evt_a2"] {
        let (status, body, _) = app.post("customer.converted", KEY, seed_with_id(id)).await;
        assert_eq!(status, 202, "{body}");
    }
    normalized(&store, "acme", "evt_a1", EMAIL, 1).await;
    normalized(&store, "acme", "evt_a2", EMAIL, 3).await;
    // "billing" has an event about the same person, with an id "acme" also uses.
    normalized(&store, "billing", "evt_b1", EMAIL, 2).await;
    normalized(&store, "billing", "evt_a1", EMAIL, 4).await;
    normalized(&store, "acme", "evt_other", "someone@example.com", 5).await;

    let (status, body) = app.get("/v1/contacts/alex@example.com/events", KEY).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["email"], EMAIL);
    assert_eq!(ids(&body), ["evt_a2", "evt_a1"]);
    let newest = &body["events"][0];
    assert_eq!(newest["publisher_id"], "acme");
    assert_eq!(newest["email"], EMAIL);
    assert_eq!(newest["event_type"], "customer.converted");
    assert_eq!(newest["stages"]["ingest"]["status"], "accepted");
    assert_eq!(newest["stages"]["normalizer"]["status"], "normalized");
    assert_eq!(newest["trace_id"].as_str().map(str::len), Some(32));

    let (status, body) = app
        .get("/v1/contacts/alex@example.com/events", BILLING_KEY)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body), ["evt_a1", "evt_b1"]);
    assert!(
        body["events"]
            .as_array()
            .is_some_and(|events| events.iter().all(|e| e["publisher_id"] == "billing")),
        "{body}"
    );
    assert!(
        body["events"][0]["stages"].get("ingest").is_none(),
        "billing's evt_a1 is not acme's: {body}"
    );

    // A person nobody sent anything about: an empty timeline, not a 404.
    let (status, body) = app.get("/v1/contacts/nobody@example.com/events", KEY).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"email": "nobody@example.com", "events": []})
    );
    app.stop().await;
}

#[tokio::test]
async fn the_email_is_normalized_as_the_normalizer_does() {
    let app = spawn_ingest().await;
    let store = store(&app);
    normalized(&store, "acme", "evt_1", EMAIL, 1).await;
    normalized(&store, "acme", "evt_2", "josé@xn--bcher-kva.de", 2).await;

    for path in [
        "/v1/contacts/%20%20Alex@Example.COM%20/events",
        "/v1/contacts/ALEX@EXAMPLE.COM/events",
        "/v1/contacts/alex%40example.com/events",
    ] {
        let (status, body) = app.get(path, KEY).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["email"], EMAIL, "{path}");
        assert_eq!(ids(&body), ["evt_1"], "{path}");
    }
    // A Unicode domain is looked up in punycode, as the normalizer writes it.
    let (status, body) = app
        .get("/v1/contacts/JOS%C3%89@B%C3%BCcher.DE/events", KEY)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["email"], "josé@xn--bcher-kva.de");
    assert_eq!(ids(&body), ["evt_2"]);

    let (status, body) = app.get("/v1/contacts/not-an-email/events", KEY).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_parameter");
    assert_eq!(body["error"]["fields"][0]["path"], "email");
    app.stop().await;
}

#[tokio::test]
async fn the_limit_defaults_to_20_and_must_be_from_1_to_100() {
    let app = spawn_ingest().await;
    let store = store(&app);
    for i in 0..25 {
        normalized(&store, "acme", &format!("evt_{i:02}"), EMAIL, i).await;
    }
    let path = "/v1/contacts/alex@example.com/events";

    let (status, body) = app.get(path, KEY).await;
    assert_eq!(status, 200, "{body}");
    let all = ids(&body);
    assert_eq!(all.len(), 20);
    assert_eq!(all[0], "evt_24");
    assert_eq!(all[19], "evt_05");

    let (status, body) = app.get(&format!("{path}?limit=3"), KEY).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body), ["evt_24", "evt_23", "evt_22"]);
    for ok in ["1", "100"] {
        let (status, body) = app.get(&format!("{path}?limit={ok}"), KEY).await;
        assert_eq!(status, 200, "limit={ok}: {body}");
        assert_eq!(ids(&body).len(), ok.parse::<usize>().unwrap_or(0).min(25));
    }

    for bad in ["0", "101", "-1", "ten", "", "2.5"] {
        let (status, body) = app.get(&format!("{path}?limit={bad}"), KEY).await;
        assert_eq!(status, 400, "limit={bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_parameter", "{body}");
        assert_eq!(body["error"]["fields"][0]["path"], "limit", "{body}");
        assert_eq!(
            body["error"]["fields"][0]["message"],
            "must be a whole number from 1 to 100"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn the_timeline_needs_a_valid_key() {
    let app = spawn_ingest().await;
    let store = store(&app);
    normalized(&store, "acme", "evt_1", EMAIL, 1).await;
    let url = format!("{}/v1/contacts/alex@example.com/events", app.base);

    let response = app.http.get(&url).send().await.expect("request");
    assert_eq!(
        response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );
    let (status, body, _) = split(response).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");

    let (status, body) = app
        .get("/v1/contacts/alex@example.com/events", "not-a-key")
        .await;
    assert_eq!(status, 401, "{body}");
    // Authentication comes first: a bad limit without a key is still a 401.
    let (status, _) = app
        .get("/v1/contacts/alex@example.com/events?limit=0", "not-a-key")
        .await;
    assert_eq!(status, 401);
    app.stop().await;
}
