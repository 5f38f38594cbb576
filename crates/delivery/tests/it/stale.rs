//! `StaleGuard` against the real Redis: ordering, equal timestamps, concurrency, TTL, namespaces.

use std::time::Duration;

use futures::future::join_all;
use handoff_delivery::{Admission, StaleConfig, StaleGuard};

use crate::Fixture;

const T: i64 = 1_795_824_000_000;

fn guard(fx: &Fixture) -> StaleGuard {
    StaleGuard::new(fx.redis.clone(), &fx.ns, &StaleConfig::default())
}

#[tokio::test]
async fn newer_applies_and_older_is_stale_with_the_newer_time() {
    let mut fx = Fixture::new().await;
    let guard = guard(&fx);
    let admit = |at: i64, id: &'static str| guard.admit("hubspot", "ada@example.com", at, id);

    assert_eq!(admit(T, "e1").await.expect("admit"), Admission::Apply);
    assert_eq!(
        admit(T + 1_000, "e2").await.expect("admit"),
        Admission::Apply
    );
    assert_eq!(
        admit(T + 500, "e3").await.expect("admit"),
        Admission::Stale {
            newer_seen: T + 1_000
        }
    );
    // The stale update left the mark alone.
    let key = guard.key("hubspot", "ada@example.com");
    assert_eq!(fx.hget(&key, "at").await, Some((T + 1_000).to_string()));
    assert_eq!(fx.hget(&key, "event").await.as_deref(), Some("e2"));
    assert_eq!(key, format!("{}:stale:hubspot:ada@example.com", fx.ns));

    // Another record and another destination have marks of their own.
    assert_eq!(
        guard
            .admit("hubspot", "bob@example.com", T, "e4")
            .await
            .expect("admit"),
        Admission::Apply
    );
    assert_eq!(
        guard
            .admit("mailchimp", "ada@example.com", T, "e5")
            .await
            .expect("admit"),
        Admission::Apply
    );
    fx.cleanup().await;
}

#[tokio::test]
async fn equal_timestamps_apply_so_redelivery_is_not_stale() {
    let fx = Fixture::new().await;
    let guard = guard(&fx);
    for _ in 0..3 {
        assert_eq!(
            guard
                .admit("hubspot", "ada@example.com", T, "e1")
                .await
                .expect("admit"),
            Admission::Apply
        );
    }
    // A different event at the very same millisecond applies too: neither is older.
    assert_eq!(
        guard
            .admit("hubspot", "ada@example.com", T, "e2")
            .await
            .expect("admit"),
        Admission::Apply
    );
    fx.cleanup().await;
}

#[tokio::test]
async fn concurrent_admits_keep_the_newest() {
    let mut fx = Fixture::new().await;
    let guard = guard(&fx);
    // 50 timestamps in a scrambled order (17 is coprime with 50, so this is a permutation).
    let times: Vec<i64> = (0..50).map(|i| T + ((i * 17) % 50) * 1_000).collect();
    let newest = T + 49_000;
    let tasks = times.iter().map(|&at| {
        let guard = guard.clone();
        tokio::spawn(async move {
            let id = format!("e{at}");
            (at, guard.admit("hubspot", "ada@example.com", at, &id).await)
        })
    });
    let results = join_all(tasks).await;
    for result in results {
        let (at, admission) = result.expect("task");
        match admission.expect("admit") {
            Admission::Apply => {}
            // Whatever was newer at that moment, it was newer than this one.
            Admission::Stale { newer_seen } => assert!(newer_seen > at, "{at} vs {newer_seen}"),
        }
    }
    let key = guard.key("hubspot", "ada@example.com");
    assert_eq!(fx.hget(&key, "at").await, Some(newest.to_string()));
    assert_eq!(
        guard
            .admit("hubspot", "ada@example.com", newest - 1, "late")
            .await
            .expect("admit"),
        Admission::Stale { newer_seen: newest }
    );
    fx.cleanup().await;
}

#[tokio::test]
async fn marks_expire_after_the_configured_ttl() {
    let mut fx = Fixture::new().await;
    let default_guard = guard(&fx);
    default_guard
        .admit("hubspot", "ada@example.com", T, "e1")
        .await
        .expect("admit");
    let ttl = fx
        .pttl(&default_guard.key("hubspot", "ada@example.com"))
        .await;
    let thirty_days = 30 * 24 * 3600 * 1000;
    assert!(ttl > thirty_days - 60_000 && ttl <= thirty_days, "{ttl}");

    let short = StaleGuard::new(
        fx.redis.clone(),
        &fx.ns,
        &StaleConfig {
            ttl: Duration::from_millis(300),
        },
    );
    short
        .admit("hubspot", "bob@example.com", T + 1_000, "e2")
        .await
        .expect("admit");
    let key = short.key("hubspot", "bob@example.com");
    let ttl = fx.pttl(&key).await;
    assert!(ttl > 0 && ttl <= 300, "{ttl}");
    // A stale attempt does not extend the mark's life.
    short
        .admit("hubspot", "bob@example.com", T, "e3")
        .await
        .expect("admit");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(fx.pttl(&key).await, -2, "the mark expired");
    // Once the mark is gone, an old event applies again (the TTL bounds the guard's memory).
    assert_eq!(
        short
            .admit("hubspot", "bob@example.com", T, "e3")
            .await
            .expect("admit"),
        Admission::Apply
    );
    fx.cleanup().await;
}

#[tokio::test]
async fn namespaces_are_isolated() {
    let a = Fixture::new().await;
    let b = Fixture::new().await;
    let guard_a = guard(&a);
    let guard_b = guard(&b);
    assert_eq!(
        guard_a
            .admit("hubspot", "ada@example.com", T + 1_000, "e1")
            .await
            .expect("admit"),
        Admission::Apply
    );
    // The same record in another namespace has never seen the newer event.
    assert_eq!(
        guard_b
            .admit("hubspot", "ada@example.com", T, "e2")
            .await
            .expect("admit"),
        Admission::Apply
    );
    assert_eq!(
        guard_a
            .admit("hubspot", "ada@example.com", T, "e2")
            .await
            .expect("admit"),
        Admission::Stale {
            newer_seen: T + 1_000
        }
    );
    a.cleanup().await;
    b.cleanup().await;
}

#[tokio::test]
async fn a_shared_connection_works_too() {
    let fx = Fixture::new().await;
    let client = redis::Client::open(handoff_test_support::redis_url()).expect("valid url");
    let conn = redis::aio::ConnectionManager::new(client)
        .await
        .expect("the test Redis is up");
    let guard = StaleGuard::new(
        handoff_delivery::RedisHandle::from_connection(conn, Duration::from_secs(2)),
        &fx.ns,
        &StaleConfig::default(),
    );
    assert_eq!(
        guard
            .admit("hubspot", "ada@example.com", T, "e1")
            .await
            .expect("admit"),
        Admission::Apply
    );
    assert_eq!(
        guard
            .admit("hubspot", "ada@example.com", T - 1, "e0")
            .await
            .expect("admit"),
        Admission::Stale { newer_seen: T }
    );
    fx.cleanup().await;
}

#[tokio::test]
async fn per_field_an_older_event_fills_only_fields_no_newer_event_wrote() {
    let mut fx = Fixture::new().await;
    let guard = guard(&fx);
    let record = "contact:email:ada@example.com";
    // The newer event (a meeting) arrives first and writes the stage.
    let newer = guard
        .admit_fields(
            "hubspot",
            record,
            T + 60_000,
            "meeting",
            &["dealstage", "jobtitle"],
        )
        .await
        .expect("admit");
    assert_eq!(newer.apply, ["dealstage", "jobtitle"]);
    assert!(newer.stale.is_empty());
    assert_eq!(newer.newer_seen, 0);
    // The older lead arrives late: its name still lands, its job title does not go back.
    let older = guard
        .admit_fields("hubspot", record, T, "lead", &["firstname", "jobtitle"])
        .await
        .expect("admit");
    assert_eq!(older.apply, ["firstname"]);
    assert_eq!(older.stale, ["jobtitle"]);
    assert_eq!(older.newer_seen, T + 60_000);
    let key = guard.key("hubspot", record);
    assert_eq!(
        fx.hget(&key, "f:jobtitle").await,
        Some((T + 60_000).to_string())
    );
    assert_eq!(fx.hget(&key, "f:firstname").await, Some(T.to_string()));
    // A redelivery of the newer event applies again (equal is not stale).
    let again = guard
        .admit_fields("hubspot", record, T + 60_000, "meeting", &["dealstage"])
        .await
        .expect("admit");
    assert_eq!(again.apply, ["dealstage"]);
    // Nothing asked, nothing touched.
    let none = guard
        .admit_fields("hubspot", record, T, "x", &[])
        .await
        .expect("admit");
    assert_eq!(none, Default::default());
    fx.cleanup().await;
}
