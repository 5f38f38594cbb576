//! The email index of the ledger: written with the ledger (by `ledger_record` and by `complete`),
//! first score kept, trimmed, with the ledger's TTL, per publisher, and read newest first without
//! the ledgers that expired.

use std::time::Duration;

use handoff_idempotency::{
    Claim, IdempotencyKey, LEDGER_EMAIL_INDEX_MAX, LedgerUpdate, Store, StoreError,
};

use crate::Fixture;

const EMAIL: &str = "alex@example.com";
const TTL: Duration = Duration::from_secs(600);

/// An update for `event_id` by "pub-1" at `at` (RFC 3339), carrying [`EMAIL`].
fn update(event_id: &str, stage: &str, at: &str) -> LedgerUpdate {
    let mut update = LedgerUpdate::now("pub-1", event_id, stage, "done")
        .with_event_type("customer.converted")
        .with_email(EMAIL)
        .with_ttl(TTL);
    update.at = at.to_owned();
    update
}

/// Claims `(normalizer, publisher, event_id)` and completes it with `ledger`.
async fn complete_with(store: &Store, ledger: &LedgerUpdate) -> Result<(), StoreError> {
    let key = IdempotencyKey::new("normalizer", &ledger.publisher_id, &ledger.event_id);
    let Claim::Acquired(token) = store.claim(&key, "fp", Duration::from_secs(30)).await? else {
        panic!("the claim of {} is free", ledger.event_id);
    };
    store
        .complete(&key, &token, "fp", Duration::from_secs(3600), Some(ledger))
        .await
}

impl Fixture {
    /// The index's members with their scores, lowest score first.
    async fn index(&mut self, publisher_id: &str, email: &str) -> Vec<(String, i64)> {
        redis::cmd("ZRANGE")
            .arg(self.store.ledger_email_key(publisher_id, email))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut self.raw)
            .await
            .expect("ZRANGE")
    }

    /// The ids `ledger_by_email` answers, in its order.
    async fn timeline(&self, publisher_id: &str, email: &str, limit: usize) -> Vec<String> {
        self.store
            .ledger_by_email(publisher_id, email, limit)
            .await
            .expect("ledger_by_email")
            .into_iter()
            .map(|ledger| ledger.event_id)
            .collect()
    }
}

#[tokio::test]
async fn ledger_record_indexes_the_event_under_its_email() {
    let mut fx = Fixture::new().await;
    fx.store
        .ledger_record(&update("ev-1", "normalizer", "2026-03-19T10:15:22.5Z"))
        .await
        .unwrap();

    assert_eq!(
        fx.index("pub-1", EMAIL).await,
        [("ev-1".to_owned(), 1_773_915_322_500)],
        "scored by the update's time in unix ms"
    );
    let ledger = fx.store.ledger_get("pub-1", "ev-1").await.unwrap().unwrap();
    assert_eq!(ledger.email.as_deref(), Some(EMAIL));
    assert_eq!(serde_json::to_value(&ledger).unwrap()["email"], EMAIL);

    let timeline = fx.store.ledger_by_email("pub-1", EMAIL, 20).await.unwrap();
    assert_eq!(timeline, [ledger]);
    assert_eq!(fx.timeline("pub-1", "other@example.com", 20).await, [""; 0]);
    assert_eq!(fx.timeline("pub-1", EMAIL, 0).await, [""; 0]);
    fx.cleanup().await;
}

#[tokio::test]
async fn complete_indexes_the_event_in_the_same_call() {
    let mut fx = Fixture::new().await;
    complete_with(
        &fx.store,
        &update("ev-1", "normalizer", "2026-03-19T10:15:22Z"),
    )
    .await
    .unwrap();

    assert_eq!(
        fx.index("pub-1", EMAIL).await,
        [("ev-1".to_owned(), 1_773_915_322_000)]
    );
    let timeline = fx.store.ledger_by_email("pub-1", EMAIL, 20).await.unwrap();
    assert_eq!(timeline.len(), 1);
    assert_eq!(timeline[0].event_id, "ev-1");
    assert_eq!(timeline[0].email.as_deref(), Some(EMAIL));
    assert_eq!(timeline[0].stages["normalizer"].status, "done");
    fx.cleanup().await;
}

#[tokio::test]
async fn updates_without_an_email_index_nothing() {
    let mut fx = Fixture::new().await;
    let plain = LedgerUpdate::now("pub-1", "ev-1", "ingest", "accepted");
    fx.store.ledger_record(&plain).await.unwrap();
    complete_with(
        &fx.store,
        &LedgerUpdate::now("pub-1", "ev-2", "ingest", "accepted"),
    )
    .await
    .unwrap();
    let blank = LedgerUpdate::now("pub-1", "ev-3", "ingest", "accepted").with_email("");
    fx.store.ledger_record(&blank).await.unwrap();

    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:ledger-email:*", fx.ns))
        .query_async(&mut fx.raw)
        .await
        .unwrap();
    assert_eq!(keys, [""; 0]);
    let ledger = fx.store.ledger_get("pub-1", "ev-1").await.unwrap().unwrap();
    assert_eq!(ledger.email, None);
    assert!(
        serde_json::to_value(&ledger)
            .unwrap()
            .get("email")
            .is_none()
    );
    fx.cleanup().await;
}

#[tokio::test]
async fn the_timeline_is_newest_first_and_limited() {
    let fx = Fixture::new().await;
    // Written out of order, by both paths: the score orders them, not the write.
    fx.store
        .ledger_record(&update("ev-2", "normalizer", "2026-03-19T10:00:02Z"))
        .await
        .unwrap();
    complete_with(
        &fx.store,
        &update("ev-3", "normalizer", "2026-03-19T10:00:03Z"),
    )
    .await
    .unwrap();
    fx.store
        .ledger_record(&update("ev-1", "normalizer", "2026-03-19T10:00:01Z"))
        .await
        .unwrap();

    assert_eq!(
        fx.timeline("pub-1", EMAIL, 20).await,
        ["ev-3", "ev-2", "ev-1"]
    );
    assert_eq!(fx.timeline("pub-1", EMAIL, 2).await, ["ev-3", "ev-2"]);
    assert_eq!(fx.timeline("pub-1", EMAIL, 1).await, ["ev-3"]);
    fx.cleanup().await;
}

#[tokio::test]
async fn an_event_keeps_the_score_it_was_first_indexed_with() {
    let mut fx = Fixture::new().await;
    fx.store
        .ledger_record(&update("ev-1", "ingest", "2026-03-19T10:00:01Z"))
        .await
        .unwrap();
    fx.store
        .ledger_record(&update("ev-2", "ingest", "2026-03-19T10:00:02Z"))
        .await
        .unwrap();
    // Later news about ev-1, through both paths, does not move it ahead of ev-2.
    fx.store
        .ledger_record(&update("ev-1", "crm-writer", "2026-03-19T10:00:05Z"))
        .await
        .unwrap();
    complete_with(
        &fx.store,
        &update("ev-1", "normalizer", "2026-03-19T10:00:03Z"),
    )
    .await
    .unwrap();

    assert_eq!(
        fx.index("pub-1", EMAIL).await,
        [
            ("ev-1".to_owned(), 1_773_914_401_000),
            ("ev-2".to_owned(), 1_773_914_402_000)
        ]
    );
    assert_eq!(fx.timeline("pub-1", EMAIL, 20).await, ["ev-2", "ev-1"]);
    let ledger = fx.store.ledger_get("pub-1", "ev-1").await.unwrap().unwrap();
    assert_eq!(ledger.stages.len(), 3, "{ledger:?}");
    fx.cleanup().await;
}

#[tokio::test]
async fn the_index_keeps_the_newest_entries_up_to_the_maximum() {
    let mut fx = Fixture::new().await;
    let index = fx.store.ledger_email_key("pub-1", EMAIL);
    // A full index of old entries, written behind the store's back.
    let mut fill = redis::cmd("ZADD");
    fill.arg(&index);
    for i in 1..=LEDGER_EMAIL_INDEX_MAX {
        fill.arg(i).arg(format!("old-{i}"));
    }
    let () = redis::pipe()
        .add_command(fill)
        .ignore()
        .expire(&index, 600)
        .ignore()
        .query_async(&mut fx.raw)
        .await
        .unwrap();

    fx.store
        .ledger_record(&update("new-1", "normalizer", "2026-03-19T10:00:01Z"))
        .await
        .unwrap();
    let members = fx.index("pub-1", EMAIL).await;
    assert_eq!(members.len(), LEDGER_EMAIL_INDEX_MAX);
    assert_eq!(members[0].0, "old-2", "the oldest went");
    assert_eq!(members[members.len() - 1].0, "new-1");

    complete_with(
        &fx.store,
        &update("new-2", "normalizer", "2026-03-19T10:00:02Z"),
    )
    .await
    .unwrap();
    let members = fx.index("pub-1", EMAIL).await;
    assert_eq!(members.len(), LEDGER_EMAIL_INDEX_MAX);
    assert_eq!(members[0].0, "old-3", "the next oldest went");
    assert_eq!(members[members.len() - 1].0, "new-2");

    // The old entries have no ledgers: the timeline shows the two real events only.
    assert_eq!(fx.timeline("pub-1", EMAIL, 2).await, ["new-2", "new-1"]);
    fx.cleanup().await;
}

#[tokio::test]
async fn the_index_lives_as_long_as_the_ledger_and_every_update_refreshes_it() {
    let mut fx = Fixture::new().await;
    let index = fx.store.ledger_email_key("pub-1", EMAIL);
    fx.store
        .ledger_record(&update("ev-1", "ingest", "2026-03-19T10:00:01Z"))
        .await
        .unwrap();
    let ttl = fx.pttl(&index).await;
    assert!(ttl > 590_000 && ttl <= 600_000, "index PTTL {ttl}");

    let longer =
        update("ev-1", "normalizer", "2026-03-19T10:00:02Z").with_ttl(Duration::from_secs(900));
    complete_with(&fx.store, &longer).await.unwrap();
    let ttl = fx.pttl(&index).await;
    assert!(ttl > 890_000 && ttl <= 900_000, "index PTTL {ttl}");

    let again =
        update("ev-2", "crm-writer", "2026-03-19T10:00:03Z").with_ttl(Duration::from_secs(1200));
    fx.store.ledger_record(&again).await.unwrap();
    let ttl = fx.pttl(&index).await;
    assert!(ttl > 1_190_000 && ttl <= 1_200_000, "index PTTL {ttl}");
    fx.cleanup().await;
}

#[tokio::test]
async fn each_publisher_sees_only_its_own_events() {
    let fx = Fixture::new().await;
    let mut theirs = update("ev-b", "normalizer", "2026-03-19T10:00:02Z");
    theirs.publisher_id = "pub-2".into();
    fx.store.ledger_record(&theirs).await.unwrap();
    fx.store
        .ledger_record(&update("ev-a", "normalizer", "2026-03-19T10:00:01Z"))
        .await
        .unwrap();
    // The same event id under another publisher is another event.
    let mut same_id = update("ev-a", "normalizer", "2026-03-19T10:00:03Z");
    same_id.publisher_id = "pub-2".into();
    complete_with(&fx.store, &same_id).await.unwrap();

    let mine = fx.store.ledger_by_email("pub-1", EMAIL, 20).await.unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(
        (mine[0].publisher_id.as_str(), mine[0].event_id.as_str()),
        ("pub-1", "ev-a")
    );
    let others = fx.store.ledger_by_email("pub-2", EMAIL, 20).await.unwrap();
    let ids: Vec<_> = others
        .iter()
        .map(|l| (l.publisher_id.as_str(), l.event_id.as_str()))
        .collect();
    assert_eq!(ids, [("pub-2", "ev-a"), ("pub-2", "ev-b")]);
    fx.cleanup().await;
}

#[tokio::test]
async fn expired_ledgers_are_left_out_and_pruned_from_the_index() {
    let mut fx = Fixture::new().await;
    let short =
        update("ev-old", "normalizer", "2026-03-19T10:00:01Z").with_ttl(Duration::from_millis(200));
    fx.store.ledger_record(&short).await.unwrap();
    // A later event refreshes the index's TTL past the first ledger's.
    fx.store
        .ledger_record(&update("ev-new", "normalizer", "2026-03-19T10:00:02Z"))
        .await
        .unwrap();
    fx.store
        .ledger_record(&update("ev-gone", "normalizer", "2026-03-19T10:00:03Z"))
        .await
        .unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(fx.store.ledger_key("pub-1", "ev-gone"))
        .query_async(&mut fx.raw)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(fx.store.ledger_get("pub-1", "ev-old").await.unwrap(), None);

    assert_eq!(fx.timeline("pub-1", EMAIL, 20).await, ["ev-new"]);
    let members: Vec<String> = fx
        .index("pub-1", EMAIL)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(members, ["ev-new"], "the reader pruned what it left out");
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_completions_with_and_without_emails_each_do_their_own() {
    let mut fx = Fixture::new().await;
    // Items of every shape in the same batches: no ledger, a ledger, a ledger with an email.
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let store = fx.store.clone();
            tokio::spawn(async move {
                let key = IdempotencyKey::new("normalizer", "pub-1", format!("ev-{i}"));
                let Claim::Acquired(token) = store
                    .claim(&key, "fp", Duration::from_secs(30))
                    .await
                    .expect("claim")
                else {
                    panic!("ev-{i} is free");
                };
                let ledger = match i % 3 {
                    0 => None,
                    1 => Some(LedgerUpdate::now("pub-1", format!("ev-{i}"), "n", "done")),
                    _ => Some(
                        LedgerUpdate::now("pub-1", format!("ev-{i}"), "n", "done")
                            .with_email(format!("p{}@example.com", i % 2)),
                    ),
                };
                store
                    .complete(&key, &token, "fp", Duration::from_secs(60), ledger.as_ref())
                    .await
                    .expect("complete");
            })
        })
        .collect();
    for task in futures::future::join_all(tasks).await {
        task.expect("task");
    }
    for i in 0..60 {
        let key = IdempotencyKey::new("normalizer", "pub-1", format!("ev-{i}"));
        assert_eq!(
            fx.get(&fx.store.idempotency_key(&key)).await.as_deref(),
            Some("finished:fp")
        );
        let ledger = fx
            .store
            .ledger_get("pub-1", &format!("ev-{i}"))
            .await
            .unwrap();
        match i % 3 {
            0 => assert_eq!(ledger, None),
            1 => assert_eq!(ledger.expect("ledger").email, None),
            _ => assert_eq!(
                ledger.expect("ledger").email,
                Some(format!("p{}@example.com", i % 2))
            ),
        }
    }
    let mut p0: Vec<String> = fx
        .index("pub-1", "p0@example.com")
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    p0.sort();
    let mut want: Vec<String> = (0..60)
        .filter(|i| i % 3 == 2 && i % 2 == 0)
        .map(|i| format!("ev-{i}"))
        .collect();
    want.sort();
    assert_eq!(p0, want);
    assert_eq!(fx.index("pub-1", "p1@example.com").await.len(), 10);
    fx.cleanup().await;
}
