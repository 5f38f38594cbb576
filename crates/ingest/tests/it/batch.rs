//! `POST /v1/events:batch`: one result per item, each with its own status.

use serde_json::{Value, json};

use crate::helpers::*;

fn lead(id: &str) -> Value {
    json!({
        "event_type": "lead.created", "event_id": id, "occurred_at": "2026-03-19T10:15:22Z",
        "lead": {"email": format!("{id}@example.com"), "first_name": "Ada"}
    })
}

async fn post_batch(app: &TestIngest, key: &str, body: Value) -> (u16, Value) {
    let response = app
        .http
        .post(format!("{}/v1/events:batch", app.base))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    let (status, body, _) = split(response).await;
    (status, body)
}

#[tokio::test]
async fn batch_items_get_their_own_results() {
    let app = spawn_ingest().await;
    let (status, _, _) = app.post("customer.converted", KEY, SEED).await;
    assert_eq!(status, 202);

    let mut seed: Value = serde_json::from_str(SEED).expect("json");
    seed["event_type"] = json!("customer.converted");
    let mut conflicting = seed.clone();
    conflicting["customer"]["plan"] = json!("enterprise");
    let items = vec![
        lead("lead_1"),
        seed, // duplicate of the single POST
        json!({"event_type": "lead.created", "event_id": "bad id"}), // invalid
        json!({"event_type": "lead.deleted", "event_id": "x"}), // unknown type
        conflicting, // 409
        lead("lead_2"),
        json!({"event_id": "no_type"}), // missing event_type
        lead("lead_1"),                 // duplicate within the batch
    ];
    let (status, body) = post_batch(&app, KEY, json!({"events": items})).await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 8);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["index"], i, "{r}");
    }
    assert_eq!(results[0]["status"], "accepted");
    assert_eq!(results[0]["status_code"], 202);
    assert_eq!(results[0]["trace_id"].as_str().map(str::len), Some(32));
    assert_eq!(results[1]["status"], "duplicate");
    assert_eq!(results[2]["status_code"], 422);
    assert_eq!(results[2]["error"]["code"], "validation_failed");
    assert_eq!(results[3]["status_code"], 404);
    assert_eq!(results[4]["status_code"], 409);
    assert_eq!(results[5]["status"], "accepted");
    assert_eq!(results[6]["status_code"], 422);
    assert_eq!(results[6]["error"]["fields"][0]["path"], "event_type");
    // The second lead_1 raced the first: it is either a duplicate or told to retry, never published twice.
    assert!(
        ["duplicate", "accepted", "rejected"]
            .contains(&results[7]["status"].as_str().unwrap_or(""))
    );
    assert_ne!(
        results[0]["trace_id"], results[5]["trace_id"],
        "each event has its own trace"
    );

    let messages = app.drain_raw().await;
    let mut ids: Vec<String> = messages.iter().map(|m| envelope(m).event_id).collect();
    ids.sort();
    assert_eq!(ids, vec!["evt_2026_03_19_000123", "lead_1", "lead_2"]);
    let lead1 = messages
        .iter()
        .map(envelope)
        .find(|e| e.event_id == "lead_1")
        .expect("lead_1");
    let forwarded: Value = serde_json::from_slice(&raw_body(&lead1)).expect("json");
    assert!(
        forwarded.get("event_type").is_none(),
        "the batch field is not forwarded"
    );
    assert_eq!(forwarded["lead"]["first_name"], "Ada");
    app.stop().await;
}

#[tokio::test]
async fn malformed_batches_are_refused_whole() {
    let app = spawn_ingest().await;
    let (status, body) = post_batch(&app, KEY, json!([lead("a")])).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_batch"))
    );
    let (status, _) = post_batch(&app, KEY, json!({"events": []})).await;
    assert_eq!(status, 422);
    let too_many: Vec<Value> = (0..501).map(|i| lead(&format!("l{i}"))).collect();
    let (status, body) = post_batch(&app, KEY, json!({"events": too_many})).await;
    assert_eq!(status, 422, "{body}");
    let (status, _) = post_batch(&app, "nope", json!({"events": [lead("a")]})).await;
    assert_eq!(status, 401);
    assert_eq!(app.raw_count().await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_full_batch_of_500_is_accepted() {
    let app = spawn_ingest().await;
    let items: Vec<Value> = (0..500).map(|i| lead(&format!("bulk_{i}"))).collect();
    let (status, body) = post_batch(&app, KEY, json!({"events": items})).await;
    assert_eq!(status, 200);
    assert_eq!(body["accepted"], 500, "{}", body["results"][0]);
    assert_eq!(app.raw_count().await, 500);
    app.stop().await;
}
