//! The CRM's quota, shared by several replicas through Redis: used to the full, never exceeded.

use std::time::Duration;

use handoff_delivery::PacingConfig;
use handoff_events::v1::canonical_payload::Event;
use handoff_events::v1::{Contact, ContactUpdated};

use crate::helpers::{TestWriter, World, envelope};

/// HubSpot's private-app quota, which the sandbox enforces by default.
const QUOTA: u64 = 100;
const WINDOW: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_the_quota_without_exceeding_it() {
    // The writers pace a little below the vendor's number, as the config docs advise, to leave
    // room for network jitter between the pacer's slot and the request's arrival.
    let pacing = PacingConfig {
        limit: 97,
        per: WINDOW,
        ..PacingConfig::default()
    };
    let world = World::start_with(|cfg| cfg.hubspot.pacing = pacing.clone()).await;
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let mut cfg = world.config();
        cfg.hubspot.pacing = pacing.clone();
        replicas.push(TestWriter::start(cfg).await);
    }
    for replica in &replicas {
        replica.wait_ready().await;
    }

    let n = 250;
    for i in 0..n {
        let e = envelope(
            &format!("quota-{i}"),
            1_774_200_000,
            "app",
            Event::ContactUpdated(ContactUpdated {
                contact: Some(Contact {
                    email: Some(format!("q{i}@example.com")),
                    job_title: Some("Analyst".into()),
                    ..Contact::default()
                }),
                company: None,
            }),
        );
        world.publish(&e).await;
    }
    let stats = world
        .wait_for(Duration::from_secs(60), "every event written", |s| {
            s.creates.get("contacts").map_or(0, |k| k.len()) >= n
        })
        .await;

    let most = stats.max_in_window.values().copied().max().unwrap_or(0);
    assert!(most <= QUOTA, "{most} requests in one 10 s window");
    let total = stats.requests;
    assert!(
        stats.rate_limited * 100 < total,
        "{} of {total} requests answered 429",
        stats.rate_limited
    );
    let times: Vec<i128> = world
        .sandbox
        .requests()
        .iter()
        .filter(|r| r.status == Some(200))
        .map(|r| {
            time::OffsetDateTime::parse(&r.at, &time::format_description::well_known::Rfc3339)
                .expect("time")
                .unix_timestamp_nanos()
        })
        .collect();
    let span = (times.iter().max().expect("requests") - times.iter().min().expect("requests"))
        as f64
        / 1e9;
    let rate = (times.len() - 1) as f64 / span;
    let quota_rate = QUOTA as f64 / WINDOW.as_secs_f64();
    assert!(
        rate >= 0.9 * quota_rate,
        "{rate:.2} requests/s is under 90% of the quota's {quota_rate:.1}/s"
    );
    for replica in replicas {
        replica.stop().await;
    }
    world.finish().await;
}
