//! The per-token rolling-window quota: HubSpot's 429 body, `Retry-After`, and the
//! `X-HubSpot-RateLimit-*` headers on every answer.

use std::time::Duration;

use handoff_sandbox::ratelimit::RateLimitConfig;
use handoff_sandbox::testing::{self, TEST_TOKEN};
use reqwest::Method;
use serde_json::json;

use crate::helpers::start_with;

#[tokio::test]
async fn hubspot_default_is_100_per_10_seconds() {
    let hs = start_with(testing::config()).await;
    for i in 0..100u32 {
        let r = hs.post("/crm/v3/objects/contacts/search", json!({})).await;
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.header("x-hubspot-ratelimit-max"), Some("100"));
        let remaining = (99 - i).to_string();
        assert_eq!(
            r.header("x-hubspot-ratelimit-remaining"),
            Some(remaining.as_str())
        );
        assert_eq!(
            r.header("x-hubspot-ratelimit-interval-milliseconds"),
            Some("10000")
        );
    }
    let r = hs.post("/crm/v3/objects/contacts/search", json!({})).await;
    assert_eq!(r.status, 429);
    assert_eq!(
        r.body,
        json!({
            "status": "error",
            "message": "You have reached your ten_secondly_rolling limit.",
            "errorType": "RATE_LIMIT",
            "correlationId": r.body["correlationId"],
            "policyName": "TEN_SECONDLY_ROLLING",
        })
    );
    let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=10).contains(&after), "{after}");
    assert_eq!(r.header("x-hubspot-ratelimit-remaining"), Some("0"));
    let stats = hs.sb.stats();
    assert_eq!(stats.max_in_window[TEST_TOKEN], 100);
    assert_eq!(stats.rate_limited, 1);
}

#[tokio::test]
async fn the_window_rolls_and_retry_after_is_honest() {
    let mut cfg = testing::config();
    cfg.hubspot.tokens.push("pat-other".to_owned());
    cfg.hubspot.rate_limit = RateLimitConfig {
        requests: 10,
        per: Duration::from_secs(1),
        count_rejected: true,
    };
    let hs = start_with(cfg).await;
    let search = || hs.post("/crm/v3/objects/deals/search", json!({}));
    for _ in 0..10 {
        assert_eq!(search().await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let limited = search().await;
    assert_eq!(limited.status, 429);
    // The oldest request leaves the window about 400 ms from now: rounded up, 1 s.
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert_eq!(limited.header("x-hubspot-ratelimit-max"), Some("10"));
    assert_eq!(limited.header("x-hubspot-ratelimit-remaining"), Some("0"));
    assert_eq!(
        limited.header("x-hubspot-ratelimit-interval-milliseconds"),
        Some("1000")
    );

    // Another token has its own window.
    let other = hs
        .send_as(
            Some("pat-other"),
            Method::POST,
            "/crm/v3/objects/deals/search",
            Some(json!({})),
        )
        .await;
    assert_eq!(other.status, 200);

    tokio::time::sleep(Duration::from_millis(500)).await;
    // The ten admitted requests left the window; the counted 429 (600 ms in) is still in it.
    for i in 0..9 {
        assert_eq!(search().await.status, 200, "request {i} after the roll");
    }
    assert_eq!(search().await.status, 429);
    let stats = hs.sb.stats();
    assert_eq!(stats.max_in_window[TEST_TOKEN], 10);
    assert_eq!(stats.max_in_window["pat-other"], 1);
    assert_eq!(stats.rate_limited, 2);
}

#[tokio::test]
async fn uncounted_rejections_free_the_whole_window() {
    let mut cfg = testing::config();
    cfg.hubspot.rate_limit = RateLimitConfig {
        requests: 5,
        per: Duration::from_millis(500),
        count_rejected: false,
    };
    let hs = start_with(cfg).await;
    for _ in 0..5 {
        assert_eq!(hs.get("/crm/v3/objects/contacts/1").await.status, 404);
    }
    for _ in 0..3 {
        assert_eq!(hs.get("/crm/v3/objects/contacts/1").await.status, 429);
    }
    tokio::time::sleep(Duration::from_millis(550)).await;
    for _ in 0..5 {
        assert_eq!(hs.get("/crm/v3/objects/contacts/1").await.status, 404);
    }
    assert_eq!(hs.sb.stats().max_in_window[TEST_TOKEN], 5);
}
