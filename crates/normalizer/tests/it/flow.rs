//! Raw events in, canonical events out: from ingest, with traces, once per event.

use std::time::Duration;

use handoff_bus::trace;
use handoff_events::EventType;
use handoff_events::v1::canonical_payload::Event;
use handoff_idempotency::{RedisConfig, Store};
use handoff_ingest::auth::key_sha256;
use handoff_ingest::config::PublisherConfig;
use handoff_test_support as support;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::helpers::{SEED, World, canonical, seed_with_id};

const KEY: &str = "normalizer-test-key";

/// Runs the real ingest in `namespace` for one publisher "acme"; returns its base URL.
async fn spawn_ingest(namespace: &str, stop: CancellationToken) -> String {
    let mut cfg = handoff_ingest::Config {
        namespace: namespace.to_owned(),
        ..handoff_ingest::Config::default()
    };
    cfg.bus.url = support::amqp_url();
    cfg.redis.url = support::redis_url();
    cfg.publishers = vec![PublisherConfig {
        id: "acme".into(),
        key_sha256: key_sha256(KEY),
        event_types: vec!["*".into()],
        rate_per_second: 10_000,
        burst: 10_000,
    }];
    let http = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", http.local_addr().expect("addr"));
    let admin_url = format!("http://{}/readyz", admin.local_addr().expect("addr"));
    tokio::spawn(handoff_ingest::run(cfg, http, admin, stop));
    for _ in 0..400 {
        if reqwest::get(&admin_url)
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return base;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("ingest did not become ready");
}

async fn post(base: &str, event_type: &str, body: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/events/{event_type}"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("post");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_seed_example_flows_from_ingest_to_a_canonical_event_in_the_same_trace() {
    let world = World::start().await;
    let stop = CancellationToken::new();
    let base = spawn_ingest(&world.namespace, stop.clone()).await;

    let (status, accepted) = post(&base, "customer.converted", SEED).await;
    assert_eq!(status, 202, "{accepted}");
    let out = world.canonical(1, Duration::from_secs(20)).await;
    let (envelope, payload) = canonical(&out[0]);

    assert_eq!(envelope.event_id, "evt_2026_03_19_000123");
    assert_eq!(out[0].message_id.as_deref(), Some("evt_2026_03_19_000123"));
    assert_eq!(out[0].routing_key, "canonical.customer.converted");
    assert_eq!(envelope.event_type, "customer.converted");
    assert_eq!(envelope.schema_version, 1);
    assert_eq!(envelope.publisher_id, "acme");
    assert_eq!(envelope.source, "crm");
    assert_eq!(
        envelope.occurred_at.expect("occurred_at").seconds,
        1_773_915_322
    );
    assert_eq!(envelope.content_sha256.len(), 32);

    let Some(Event::CustomerConverted(event)) = payload.event else {
        panic!("expected customer.converted, got {payload:?}");
    };
    let contact = event.contact.expect("contact");
    assert_eq!(contact.email.as_deref(), Some("alex@example.com"));
    assert_eq!(contact.crm_contact_id.as_deref(), Some("12345"));
    assert_eq!(contact.first_name.as_deref(), Some("Alex"));
    assert_eq!(contact.last_name.as_deref(), Some("Kim"));
    assert_eq!(contact.lifecycle_stage.as_deref(), Some("customer"));
    assert_eq!(contact.owner_email.as_deref(), Some("owner@example.com"));
    assert_eq!(
        event.company.expect("company").name.as_deref(),
        Some("Example Co")
    );
    assert_eq!(
        event.subscription.expect("subscription").plan.as_deref(),
        Some("pro")
    );
    assert_eq!(event.deal.expect("deal").deal_id.as_deref(), Some("D-9001"));
    let attribution = event.attribution.expect("attribution");
    assert_eq!(attribution.utm_source.as_deref(), Some("webinar"));
    assert_eq!(attribution.utm_campaign.as_deref(), Some("onboarding"));

    // One trace: the canonical message's context is a child in ingest's trace.
    let traceparent = out[0].headers.get("traceparent").expect("traceparent");
    assert_eq!(
        trace::trace_id_from_traceparent(traceparent).as_deref(),
        accepted["trace_id"].as_str(),
        "{traceparent}"
    );

    // The status ledger says what the normalizer did.
    let ledger: Value = reqwest::Client::new()
        .get(format!("{base}/v1/events/evt_2026_03_19_000123"))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(
        ledger["stages"]["normalizer"]["status"], "normalized",
        "{ledger}"
    );
    assert_eq!(world.raw_waiting().await, 0);
    stop.cancel();
    world.finish().await;
}

#[tokio::test]
async fn a_messy_event_comes_out_clean() {
    let world = World::start().await;
    let stop = CancellationToken::new();
    let base = spawn_ingest(&world.namespace, stop.clone()).await;
    let messy = r#"{"event_id":"evt_messy_1","occurred_at":"2026-03-19T11:15:22+01:00","source":"crm",
      "customer":{"email":"  Alex@Example.COM ","first_name":"  Alex ","last_name":"Kim\u0007",
                  "phone":"(415) 555-0100","country":"United States of America","timezone":"Pacific Standard Time",
                  "lifecycle_stage":" Paying Customer ","plan":"PRO","company":"Example   Co","company_domain":"https://www.Example.com/about"},
      "context":{"landing_url":"https://example.com/pricing?utm_source=Webinar&utm_medium=%20Email%20&utm_campaign=onboarding&gclid=abc123"}}"#;
    let (status, body) = post(&base, "customer.converted", messy).await;
    assert_eq!(status, 202, "{body}");

    let out = world.canonical(1, Duration::from_secs(20)).await;
    let (envelope, payload) = canonical(&out[0]);
    assert_eq!(
        envelope.occurred_at.expect("occurred_at").seconds,
        1_773_915_322
    );
    let Some(Event::CustomerConverted(event)) = payload.event else {
        panic!("expected customer.converted, got {payload:?}");
    };
    let contact = event.contact.expect("contact");
    assert_eq!(contact.email.as_deref(), Some("alex@example.com"));
    assert_eq!(contact.first_name.as_deref(), Some("Alex"));
    assert_eq!(contact.last_name.as_deref(), Some("Kim"));
    assert_eq!(contact.phone.as_deref(), Some("+14155550100"));
    assert_eq!(contact.country.as_deref(), Some("US"));
    assert_eq!(contact.timezone.as_deref(), Some("America/Los_Angeles"));
    assert_eq!(contact.lifecycle_stage.as_deref(), Some("customer"));
    let company = event.company.expect("company");
    assert_eq!(company.name.as_deref(), Some("Example Co"));
    assert_eq!(company.domain.as_deref(), Some("example.com"));
    assert_eq!(
        event.subscription.expect("subscription").plan.as_deref(),
        Some("pro")
    );
    let attribution = event.attribution.expect("attribution");
    assert_eq!(attribution.utm_source.as_deref(), Some("webinar"));
    assert_eq!(attribution.utm_medium.as_deref(), Some("email"));
    assert_eq!(attribution.utm_campaign.as_deref(), Some("onboarding"));
    assert_eq!(attribution.gclid.as_deref(), Some("abc123"));

    // The ledger indexes the event under the contact's normalized email, for the timeline.
    let store = Store::new(
        &RedisConfig {
            url: support::redis_url(),
            op_timeout: Duration::from_secs(2),
        },
        &world.namespace,
    )
    .expect("valid url");
    let timeline = eventually(Duration::from_secs(10), || async {
        let ledgers = store
            .ledger_by_email("acme", "alex@example.com", 20)
            .await
            .expect("ledger_by_email");
        (!ledgers.is_empty()).then_some(ledgers)
    })
    .await;
    assert_eq!(timeline.len(), 1, "{timeline:?}");
    assert_eq!(timeline[0].event_id, "evt_messy_1");
    assert_eq!(timeline[0].email.as_deref(), Some("alex@example.com"));
    assert_eq!(timeline[0].stages["normalizer"].status, "normalized");
    assert_eq!(timeline[0].stages["ingest"].status, "accepted");
    // The same timeline through ingest, asked for with the publisher's own spelling.
    let body: Value = reqwest::Client::new()
        .get(format!("{base}/v1/contacts/%20Alex@Example.COM%20/events"))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(body["email"], "alex@example.com", "{body}");
    assert_eq!(body["events"][0]["event_id"], "evt_messy_1", "{body}");
    stop.cancel();
    world.finish().await;
}

/// Polls `probe` until it answers `Some`, or panics after `within`.
async fn eventually<T, F, Fut>(within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not there after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_redelivered_raw_event_yields_one_canonical_event() {
    let world = World::start().await;
    let body = seed_with_id("evt_redelivered");
    // The same raw message three times: what the broker does when an ack was lost.
    for _ in 0..3 {
        world
            .publish_raw(EventType::CustomerConverted, "evt_redelivered", 1, &body)
            .await;
    }
    world
        .wait_count(
            &world
                .inspector
                .topology()
                .stage_queue(handoff_bus::CRM_WRITER),
            1,
            Duration::from_secs(20),
        )
        .await;
    // Give the other two copies time to be handled, then count.
    for _ in 0..100 {
        if world.raw_waiting().await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = world.canonical(1, Duration::from_secs(5)).await;
    assert_eq!(canonical(&out[0]).0.event_id, "evt_redelivered");
    assert_eq!(world.raw_waiting().await, 0);
    assert_eq!(
        world
            .count(&world.inspector.topology().dead_letter_queue())
            .await,
        0
    );
    world.finish().await;
}

#[tokio::test]
async fn an_older_schema_version_is_upcast() {
    let world = World::start().await;
    let v0 = r#"{"event_id":"evt_v0_1","occurred_at":"2026-03-19T10:15:22Z","source":"crm",
      "email":" Old.Shape@Example.com","first_name":"Old","last_name":"Shape","company":"Legacy Inc",
      "plan":"Pro","crm_contact_id":"777","deal_id":"D-1","utm_source":"Partner","utm_campaign":"q1"}"#;
    world
        .publish_raw(EventType::CustomerConverted, "evt_v0_1", 0, v0)
        .await;
    let out = world.canonical(1, Duration::from_secs(20)).await;
    let (envelope, payload) = canonical(&out[0]);
    assert_eq!(
        envelope.schema_version, 1,
        "canonical events are always current"
    );
    let Some(Event::CustomerConverted(event)) = payload.event else {
        panic!("expected customer.converted, got {payload:?}");
    };
    let contact = event.contact.expect("contact");
    assert_eq!(contact.email.as_deref(), Some("old.shape@example.com"));
    assert_eq!(contact.crm_contact_id.as_deref(), Some("777"));
    assert_eq!(
        event.company.expect("company").name.as_deref(),
        Some("Legacy Inc")
    );
    assert_eq!(event.deal.expect("deal").deal_id.as_deref(), Some("D-1"));
    assert_eq!(
        event
            .attribution
            .expect("attribution")
            .utm_source
            .as_deref(),
        Some("partner")
    );
    world.finish().await;
}

#[tokio::test]
async fn every_event_type_flows_through() {
    let world = World::start().await;
    let stop = CancellationToken::new();
    let base = spawn_ingest(&world.namespace, stop.clone()).await;
    for event_type in EventType::ALL {
        let example = handoff_ingest::contract::example(event_type).to_string();
        let (status, body) = post(&base, event_type.as_str(), &example).await;
        assert_eq!(status, 202, "{event_type}: {body}");
    }
    let out = world
        .canonical(EventType::ALL.len(), Duration::from_secs(20))
        .await;
    let mut types: Vec<String> = out.iter().map(|d| canonical(d).0.event_type).collect();
    types.sort();
    let mut want: Vec<String> = EventType::ALL
        .iter()
        .map(|t| t.as_str().to_owned())
        .collect();
    want.sort();
    assert_eq!(types, want);
    for delivery in &out {
        assert_eq!(
            delivery.routing_key,
            format!("canonical.{}", canonical(delivery).0.event_type)
        );
    }
    stop.cancel();
    world.finish().await;
}
