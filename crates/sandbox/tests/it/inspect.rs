//! Inspection for tests: records, the request log, exact stats, reset, and the admin endpoints;
//! and a clean stop while a request is held.

use std::time::{Duration, Instant};

use handoff_sandbox::faults::{FaultConfig, Timeout};
use handoff_sandbox::request_log::{RequestEntry, Write, WriteOp};
use handoff_sandbox::testing::{self, TEST_TOKEN};
use serde_json::{Value, json};

use crate::helpers::{start, start_with};

#[tokio::test]
async fn the_request_log_and_stats_are_exact() {
    let hs = start().await;
    let id = hs.create("contacts", json!({ "email": "a@b.com" })).await;
    hs.patch(
        &format!("/crm/v3/objects/contacts/{id}"),
        json!({ "properties": { "firstname": "A" } }),
    )
    .await;
    hs.get("/crm/v3/objects/contacts/a@b.com?idProperty=email")
        .await;
    hs.post(
        "/crm/v3/objects/contacts",
        json!({ "properties": { "email": "a@b.com" } }),
    )
    .await;
    hs.send_as(
        None,
        reqwest::Method::GET,
        "/crm/v3/objects/contacts/1",
        None,
    )
    .await;

    let log: Vec<RequestEntry> = hs
        .http
        .get(hs.url("/_sandbox/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(log, hs.sb.requests(), "HTTP and typed views agree");
    let brief: Vec<(u64, &str, &str, Option<u16>)> = log
        .iter()
        .map(|e| (e.seq, e.method.as_str(), e.path.as_str(), e.status))
        .collect();
    let by_id = format!("/crm/v3/objects/contacts/{id}");
    assert_eq!(
        brief,
        vec![
            (1, "POST", "/crm/v3/objects/contacts", Some(201)),
            (2, "PATCH", by_id.as_str(), Some(200)),
            (3, "GET", "/crm/v3/objects/contacts/a@b.com", Some(200)),
            (4, "POST", "/crm/v3/objects/contacts", Some(409)),
            (5, "GET", "/crm/v3/objects/contacts/1", Some(401)),
        ]
    );
    assert!(
        log.iter()
            .all(|e| e.api == "hubspot" && e.at.ends_with('Z'))
    );
    assert_eq!(log[0].token.as_deref(), Some(TEST_TOKEN));
    let write = |op| Write {
        object_type: "contacts".into(),
        id: id.clone(),
        key: "a@b.com".into(),
        op,
    };
    assert_eq!(log[0].writes, vec![write(WriteOp::Create)]);
    assert_eq!(log[1].writes, vec![write(WriteOp::Update)]);
    assert!(log[2].writes.is_empty() && log[3].writes.is_empty());

    let since: Vec<RequestEntry> = hs
        .http
        .get(hs.url("/_sandbox/requests?since=3"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(since.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4, 5]);

    let stats: Value = hs
        .http
        .get(hs.url("/_sandbox/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        stats,
        json!({
            "requests": 5,
            "by_status": { "200": 2, "201": 1, "401": 1, "409": 1 },
            "rate_limited": 0,
            "faults": {},
            "creates": { "contacts": { "a@b.com": 1 } },
            "updates": { "contacts": { "a@b.com": 1 } },
            "max_in_window": { TEST_TOKEN: 4 },
            "resubscribed": 0,
        })
    );

    let records: Value = hs
        .http
        .get(hs.url("/_sandbox/records/contacts"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(records[0]["properties"]["firstname"], json!("A"));
    assert_eq!(records.as_array().unwrap().len(), 1);
    let unknown = hs
        .http
        .get(hs.url("/_sandbox/records/widgets"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn the_request_log_keeps_each_request_s_traceparent() {
    let hs = start().await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    hs.http
        .get(hs.url("/crm/v3/objects/contacts/1"))
        .bearer_auth(TEST_TOKEN)
        .header("traceparent", traceparent)
        .send()
        .await
        .unwrap();
    hs.get("/crm/v3/objects/contacts/2").await;

    let log = hs.sb.requests();
    let seen: Vec<Option<&str>> = log.iter().map(|e| e.traceparent.as_deref()).collect();
    assert_eq!(seen, vec![Some(traceparent), None]);
}

#[tokio::test]
async fn reset_returns_to_start_up_state() {
    let mut cfg = testing::config();
    cfg.faults.seed = Some(9);
    let hs = start_with(cfg).await;
    let c = hs.create("contacts", json!({ "email": "a@b.com" })).await;
    let co = hs.create("companies", json!({ "name": "B" })).await;
    hs.put(&format!(
        "/crm/v4/objects/contacts/{c}/associations/default/companies/{co}"
    ))
    .await;
    hs.sb.add_faults(FaultConfig {
        timeout: Some(Timeout::default()),
        ..FaultConfig::default()
    });
    let r = hs
        .http
        .post(hs.url("/_sandbox/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(hs.sb.requests().is_empty());
    assert_eq!(hs.sb.stats(), Default::default());
    assert!(hs.sb.associations().is_empty());
    assert!(hs.sb.faults().timeout.is_none());
    assert_eq!(hs.sb.faults().seed, Some(9));
    // The same email can be created again, under a new id.
    let again = hs.create("contacts", json!({ "email": "a@b.com" })).await;
    assert_ne!(again, c);
}

#[tokio::test]
async fn admin_endpoints_and_a_clean_stop_with_a_request_held() {
    let hs = start().await;
    let health = hs
        .http
        .get(format!("{}/healthz", hs.sb.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready = hs
        .http
        .get(format!("{}/readyz", hs.sb.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    hs.get("/crm/v3/objects/contacts/1").await;
    let metrics = hs
        .http
        .get(format!("{}/metrics", hs.sb.admin_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("handoff_sandbox_requests_total"),
        "{metrics}"
    );

    // A request held for a minute does not hold up shutdown.
    hs.sb.add_faults(FaultConfig {
        timeout: Some(Timeout {
            hold: Duration::from_secs(60),
            ..Timeout::default()
        }),
        ..FaultConfig::default()
    });
    let client = hs.http.clone();
    let url = hs.url("/crm/v3/objects/contacts/1");
    let held = tokio::spawn(async move { client.get(url).bearer_auth(TEST_TOKEN).send().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    hs.sb.stop().await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(held.await.unwrap().is_err(), "the held request was dropped");
}
