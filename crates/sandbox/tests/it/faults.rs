//! Fault injection, set through the typed API and through `/_sandbox/faults`: latency, 5xx rate
//! (repeatable with a seed), 429 storms, timeouts in their three modes, outages, and clearing.

use std::time::{Duration, Instant};

use handoff_sandbox::faults::{
    ErrorRate, FaultConfig, Latency, Outage, Storm, Timeout, TimeoutMode,
};
use handoff_sandbox::hubspot::ObjectType;
use handoff_sandbox::testing;
use serde_json::json;

use crate::helpers::{start, start_with};

#[tokio::test]
async fn latency_is_added_to_every_request() {
    let hs = start().await;
    hs.sb.add_faults(FaultConfig {
        latency: Some(Latency {
            fixed: Duration::from_millis(150),
            jitter: Duration::from_millis(50),
            percentiles: vec![],
        }),
        ..FaultConfig::default()
    });
    for _ in 0..3 {
        let t = Instant::now();
        assert_eq!(hs.get("/crm/v3/objects/contacts/1").await.status, 404);
        assert!(t.elapsed() >= Duration::from_millis(150));
    }
    assert!(
        hs.sb
            .requests()
            .iter()
            .all(|e| e.elapsed_ms >= 150 && e.fault.is_none())
    );
}

#[tokio::test]
async fn error_rate_answers_5xx_bodies_and_is_repeatable_with_a_seed() {
    let mut cfg = testing::config();
    cfg.faults = FaultConfig {
        seed: Some(11),
        errors: Some(ErrorRate {
            rate: 0.5,
            statuses: vec![500, 502, 503],
        }),
        ..FaultConfig::default()
    };
    let mut runs = Vec::new();
    for _ in 0..2 {
        let hs = start_with(cfg.clone()).await;
        let mut statuses = Vec::new();
        for _ in 0..30 {
            let r = hs.post("/crm/v3/objects/contacts/search", json!({})).await;
            if r.status >= 500 {
                assert_eq!(r.body["status"], json!("error"));
                assert!(r.body["category"].is_string() && r.body["correlationId"].is_string());
            }
            statuses.push(r.status);
        }
        let errors = statuses.iter().filter(|s| **s >= 500).count();
        assert!((5..=25).contains(&errors), "{statuses:?}");
        assert_eq!(hs.sb.stats().faults["error"], errors as u64);
        // Faulted answers use no quota.
        assert_eq!(
            hs.sb.stats().max_in_window[testing::TEST_TOKEN],
            (30 - errors) as u64
        );
        runs.push(statuses);
    }
    assert_eq!(runs[0], runs[1], "same seed, same faults");
}

#[tokio::test]
async fn a_storm_answers_429_with_the_given_retry_after_then_passes() {
    let hs = start().await;
    hs.sb.add_faults(FaultConfig {
        storm: Some(Storm {
            requests: Some(3),
            for_: None,
            retry_after: Duration::from_secs(7),
        }),
        ..FaultConfig::default()
    });
    for _ in 0..3 {
        let r = hs
            .post("/crm/v3/objects/contacts", json!({ "properties": {} }))
            .await;
        assert_eq!(r.status, 429);
        assert_eq!(r.header("retry-after"), Some("7"));
        assert_eq!(r.body["policyName"], json!("TEN_SECONDLY_ROLLING"));
        assert_eq!(r.header("x-hubspot-ratelimit-remaining"), Some("100"));
    }
    assert_eq!(
        hs.post("/crm/v3/objects/contacts", json!({ "properties": {} }))
            .await
            .status,
        201
    );
    let stats = hs.sb.stats();
    assert_eq!(stats.rate_limited, 3);
    assert_eq!(stats.faults["storm"], 3);
    assert_eq!(
        stats.creates["contacts"].len(),
        1,
        "storm answers write nothing"
    );

    // A storm for a time window, set over HTTP.
    let r = hs
        .http
        .patch(hs.url("/_sandbox/faults"))
        .json(&json!({ "storm": { "for": "300ms", "retry_after": "1s" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(hs.get("/crm/v3/objects/contacts/1").await.status, 429);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(hs.get("/crm/v3/objects/contacts/1").await.status, 404);
    assert!(hs.sb.faults().storm.is_none(), "an ended storm is gone");
}

#[tokio::test]
async fn timeouts_drop_answer_late_or_apply_then_drop() {
    let hs = start().await;
    let timeout = |mode| FaultConfig {
        timeout: Some(Timeout {
            requests: Some(1),
            hold: Duration::from_millis(300),
            mode,
            ..Timeout::default()
        }),
        ..FaultConfig::default()
    };
    let create = |email: &'static str| {
        hs.try_send_as(
            Some(testing::TEST_TOKEN),
            reqwest::Method::POST,
            "/crm/v3/objects/contacts",
            Some(json!({ "properties": { "email": email } })),
        )
    };

    // drop: no answer, nothing written.
    hs.sb.add_faults(timeout(TimeoutMode::Drop));
    let t = Instant::now();
    assert!(
        create("a@x.com").await.is_err(),
        "connection closed without an answer"
    );
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(hs.sb.records(ObjectType::Contacts).is_empty());

    // late: answered after the hold.
    hs.sb.add_faults(timeout(TimeoutMode::Late));
    let t = Instant::now();
    assert_eq!(create("a@x.com").await.unwrap().status, 201);
    assert!(t.elapsed() >= Duration::from_millis(300));

    // apply_then_drop: the write happens, the client never hears; a blind retry is a 409.
    hs.sb.add_faults(timeout(TimeoutMode::ApplyThenDrop));
    assert!(create("b@x.com").await.is_err());
    assert_eq!(create("b@x.com").await.unwrap().status, 409);
    assert_eq!(hs.sb.records(ObjectType::Contacts).len(), 2);

    let log = hs.sb.requests();
    let summary: Vec<(Option<u16>, Option<&str>, usize)> = log
        .iter()
        .map(|e| (e.status, e.fault.as_deref(), e.writes.len()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (None, Some("timeout"), 0),
            (Some(201), Some("timeout"), 1),
            (None, Some("timeout"), 1),
            (Some(409), None, 0),
        ]
    );
    assert_eq!(hs.sb.stats().by_status["dropped"], 2);
}

#[tokio::test]
async fn an_outage_answers_503_for_its_window() {
    let hs = start().await;
    hs.sb.add_faults(FaultConfig {
        outage: Some(Outage {
            for_: Duration::from_millis(400),
            status: 503,
            retry_after: Some(Duration::from_secs(2)),
        }),
        ..FaultConfig::default()
    });
    let r = hs
        .post("/crm/v3/objects/contacts", json!({ "properties": {} }))
        .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("2"));
    assert_eq!(r.body["category"], json!("SERVICE_UNAVAILABLE"));
    // The OAuth endpoint is down too.
    let token = hs
        .http
        .post(hs.url("/oauth/v1/token"))
        .send()
        .await
        .unwrap();
    assert_eq!(token.status(), 503);
    assert!(
        hs.sb
            .faults()
            .outage
            .is_some_and(|o| o.for_ <= Duration::from_millis(400))
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(
        hs.post("/crm/v3/objects/contacts", json!({ "properties": {} }))
            .await
            .status,
        201
    );
    assert_eq!(hs.sb.stats().faults["outage"], 2);
}

#[tokio::test]
async fn the_fault_api_sets_shows_and_clears() {
    let hs = start().await;
    let url = hs.url("/_sandbox/faults");
    let put = hs
        .http
        .put(&url)
        .json(&json!({
            "seed": 5,
            "errors": { "rate": 1.0, "statuses": [502] },
            "storm": { "requests": 2, "retry_after": "3s" },
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let shown: serde_json::Value = hs
        .http
        .get(&url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["seed"], json!(5));
    assert_eq!(shown["storm"]["requests"], json!(2));
    assert_eq!(shown["storm"]["retry_after"], json!("3s"));

    assert_eq!(hs.get("/crm/v3/objects/contacts/1").await.status, 429);
    let shown = hs.sb.faults();
    assert_eq!(shown.storm.and_then(|s| s.requests), Some(1));

    // PATCH with null turns one fault off and leaves the rest.
    let patch = hs
        .http
        .patch(&url)
        .json(&json!({ "storm": null }))
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), 200);
    assert_eq!(hs.get("/crm/v3/objects/contacts/1").await.status, 502);

    // Bad input is refused with the reason.
    let bad = hs
        .http
        .patch(&url)
        .json(&json!({ "errors": { "rate": 3 } }))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let bad = hs
        .http
        .patch(&url)
        .json(&json!({ "lightning": null }))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    let cleared = hs.http.delete(&url).send().await.unwrap();
    assert_eq!(cleared.status(), 200);
    assert_eq!(hs.get("/crm/v3/objects/contacts/1").await.status, 404);
    let f = hs.sb.faults();
    assert!(f.errors.is_none() && f.storm.is_none() && f.timeout.is_none());
}
