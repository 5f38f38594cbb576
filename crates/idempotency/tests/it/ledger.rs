//! The status ledger: records, reads, completion with a ledger update, TTLs.

use std::time::Duration;

use handoff_idempotency::{DELIVERED, IdempotencyKey, Ledger, LedgerUpdate, RETRYING, StageStatus};

use crate::Fixture;

#[tokio::test]
async fn unknown_events_have_no_ledger() {
    let fx = Fixture::new().await;
    assert_eq!(fx.store.ledger_get("pub-1", "nope").await.unwrap(), None);
    fx.cleanup().await;
}

#[tokio::test]
async fn stages_accumulate_and_first_seen_stays() {
    let mut fx = Fixture::new().await;
    let accepted = LedgerUpdate {
        publisher_id: "pub-1".into(),
        event_id: "ev-1".into(),
        event_type: Some("lead.created".into()),
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        email: None,
        stage: "ingest".into(),
        status: "accepted".into(),
        at: "2026-11-27T10:00:00Z".into(),
        detail: serde_json::Map::new(),
        ttl: Duration::from_secs(600),
    };
    fx.store.ledger_record(&accepted).await.unwrap();

    let normalized = LedgerUpdate::now("pub-1", "ev-1", "normalizer", "normalized")
        .with_detail("fields", 7)
        .with_ttl(Duration::from_secs(900));
    fx.store.ledger_record(&normalized).await.unwrap();

    let ledger = fx.store.ledger_get("pub-1", "ev-1").await.unwrap().unwrap();
    assert_eq!(ledger.event_id, "ev-1");
    assert_eq!(ledger.publisher_id, "pub-1");
    assert_eq!(ledger.event_type.as_deref(), Some("lead.created"));
    assert_eq!(
        ledger.trace_id.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        "an update without a trace id keeps the one recorded"
    );
    assert_eq!(
        ledger.first_seen_at.as_deref(),
        Some("2026-11-27T10:00:00Z")
    );
    assert_eq!(
        ledger.stages["ingest"],
        StageStatus {
            status: "accepted".into(),
            at: "2026-11-27T10:00:00Z".into(),
            detail: serde_json::Map::new(),
        }
    );
    assert_eq!(ledger.stages["normalizer"].status, "normalized");
    assert_eq!(ledger.stages["normalizer"].detail["fields"], 7);

    // Every write refreshes the TTL of the whole hash.
    let ttl = fx.pttl(&fx.store.ledger_key("pub-1", "ev-1")).await;
    assert!(ttl > 890_000 && ttl <= 900_000, "ledger PTTL {ttl}");

    // The ledger serialises as the status endpoint returns it.
    let json = serde_json::to_value(&ledger).unwrap();
    assert_eq!(json["stages"]["ingest"]["status"], "accepted");

    fx.cleanup().await;
}

#[tokio::test]
async fn complete_applies_the_ledger_update_in_the_same_call() {
    let mut fx = Fixture::new().await;
    let k = IdempotencyKey::new("ingest", "pub-1", "ev-9");
    let token = fx.acquire(&k, "fp", Duration::from_secs(30)).await;
    let update = LedgerUpdate::now("pub-1", "ev-9", "ingest", "accepted")
        .with_event_type("meeting.booked")
        .with_trace_id("0af7651916cd43dd8448eb211c80319c")
        .with_detail("queue", "raw.meeting.booked")
        .with_ttl(Duration::from_secs(120));
    fx.store
        .complete(&k, &token, "fp", Duration::from_secs(3600), Some(&update))
        .await
        .unwrap();

    assert_eq!(
        fx.get(&fx.store.idempotency_key(&k)).await.as_deref(),
        Some("finished:fp")
    );
    let ledger = fx.store.ledger_get("pub-1", "ev-9").await.unwrap().unwrap();
    assert_eq!(ledger.event_type.as_deref(), Some("meeting.booked"));
    assert_eq!(
        ledger.trace_id.as_deref(),
        Some("0af7651916cd43dd8448eb211c80319c")
    );
    assert_eq!(ledger.first_seen_at.as_deref(), Some(update.at.as_str()));
    assert_eq!(ledger.stages["ingest"].status, "accepted");
    assert_eq!(
        ledger.stages["ingest"].detail["queue"],
        "raw.meeting.booked"
    );
    let ttl = fx.pttl(&fx.store.ledger_key("pub-1", "ev-9")).await;
    assert!(ttl > 110_000 && ttl <= 120_000, "ledger PTTL {ttl}");

    fx.cleanup().await;
}

#[tokio::test]
async fn a_corrupt_stage_field_is_reported() {
    let mut fx = Fixture::new().await;
    let key = fx.store.ledger_key("pub-1", "ev-bad");
    let () = redis::pipe()
        .hset(&key, "stage:ingest", "{not json")
        .ignore()
        .expire(&key, 60)
        .ignore()
        .query_async(&mut fx.raw)
        .await
        .unwrap();
    let err = fx.store.ledger_get("pub-1", "ev-bad").await.unwrap_err();
    assert!(
        matches!(err, handoff_idempotency::StoreError::Corrupt(_)),
        "{err}"
    );
    fx.cleanup().await;
}

/// A try that failed while Redis was away notes `retrying` once Redis is back, which can be after
/// the completion wrote `delivered` (the email-writer's Redis outage test caught it in CI): the
/// delivery stays. A `retrying` after a dead letter (a replay) still replaces it.
#[tokio::test]
async fn a_late_retry_notice_never_replaces_a_delivery() {
    let fx = Fixture::new().await;
    let k = IdempotencyKey::new("email-writer", "pub-1", "ev-late");
    let token = fx.acquire(&k, "fp", Duration::from_secs(30)).await;
    let delivered = LedgerUpdate::now("pub-1", "ev-late", "email-writer", DELIVERED)
        .with_detail("subscriber_id", "m-1");
    fx.store
        .complete(
            &k,
            &token,
            "fp",
            Duration::from_secs(3600),
            Some(&delivered),
        )
        .await
        .unwrap();
    let late = LedgerUpdate::now("pub-1", "ev-late", "email-writer", RETRYING)
        .with_event_type("lead.created")
        .with_detail("attempt", 3);
    let ledger = record_and_read(&fx, &late).await;
    assert_eq!(ledger.stages["email-writer"].status, DELIVERED);
    assert_eq!(ledger.stages["email-writer"].detail["subscriber_id"], "m-1");
    assert_eq!(
        ledger.event_type.as_deref(),
        Some("lead.created"),
        "the notice's other fields are still written"
    );

    // Before any delivery, and after a dead letter, a retry notice is the news.
    let first =
        LedgerUpdate::now("pub-1", "ev-other", "email-writer", RETRYING).with_detail("attempt", 1);
    let ledger = record_and_read(&fx, &first).await;
    assert_eq!(ledger.stages["email-writer"].status, RETRYING);
    let parked = LedgerUpdate::now("pub-1", "ev-other", "email-writer", "dead_lettered");
    fx.store.ledger_record(&parked).await.unwrap();
    let replayed =
        LedgerUpdate::now("pub-1", "ev-other", "email-writer", RETRYING).with_detail("attempt", 1);
    let ledger = record_and_read(&fx, &replayed).await;
    assert_eq!(ledger.stages["email-writer"].status, RETRYING);

    fx.cleanup().await;
}

/// Records `update`, then reads its event's ledger back.
async fn record_and_read(fx: &Fixture, update: &LedgerUpdate) -> Ledger {
    fx.store.ledger_record(update).await.unwrap();
    fx.store
        .ledger_get(&update.publisher_id, &update.event_id)
        .await
        .unwrap()
        .expect("a ledger was just written")
}
