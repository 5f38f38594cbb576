//! Finding dead letters again: filters, time windows, groups, stats, pages; and who may
//! ask.

use std::time::Duration;

use handoff_dead_letters::record::Summary;
use handoff_dead_letters::store::DeadLetterStore;
use handoff_events::Timestamp;
use handoff_events::v1::{self, ErrorClass};

use crate::helpers::{VIEWER_TOKEN, World, envelope};

/// 2026-11-01T00:00:00Z.
const BASE: i64 = 1_793_491_200;

fn record(i: i64, stage: &str, class: ErrorClass, message: &str, email: &str) -> v1::DeadLetter {
    v1::DeadLetter {
        event_id: format!("evt-{i}"),
        event_type: "lead.created".into(),
        publisher_id: if i % 2 == 0 { "acme" } else { "globex" }.into(),
        stage: stage.into(),
        error_class: class as i32,
        error_message: message.into(),
        destination: if stage == "crm-writer" { "hubspot" } else { "" }.into(),
        error_code: if class == ErrorClass::Permanent {
            "400"
        } else {
            ""
        }
        .into(),
        origin_queue: format!("x.{stage}"),
        original_body: envelope(&format!("evt-{i}"), email, "ok"),
        dead_lettered_at: Some(Timestamp {
            seconds: BASE + i * 3600,
            nanos: 0,
        }),
        ..v1::DeadLetter::default()
    }
}

/// Parks 30 dead letters an hour apart: 12 CRM 400s for two properties (8 + 4), 10
/// normalizer validation failures, 8 exhausted retries.
async fn park_thirty(store: &DeadLetterStore) {
    for i in 0..30 {
        let r = match i {
            0..8 => record(
                i,
                "crm-writer",
                ErrorClass::Permanent,
                &format!("Property \"lifecyclestage\" value \"x{i}\" invalid for contact {i}"),
                "a@example.com",
            ),
            8..12 => record(
                i,
                "crm-writer",
                ErrorClass::Permanent,
                &format!("Property \"plan\" value \"p{i}\" invalid for contact {i}"),
                "b@example.com",
            ),
            12..22 => record(
                i,
                "normalizer",
                ErrorClass::Validation,
                "bad",
                &format!("n{i}@example.com"),
            ),
            _ => record(
                i,
                "email-writer",
                ErrorClass::RetriesExhausted,
                &format!("gave up after 30 attempts: HTTP 503 at {i}"),
                "a@example.com",
            ),
        };
        let summary = Summary::of(&r, &r.event_id.clone().into_bytes());
        assert!(store.park(&summary, &r).await.expect("park"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn filters_windows_groups_stats_and_pages() {
    let world = World::start().await;
    park_thirty(&world.store()).await;
    let dlq = &world.dlq;

    assert_eq!(dlq.list("").await.total, 30);
    assert_eq!(dlq.list("stage=crm-writer").await.total, 12);
    assert_eq!(
        dlq.list("stage=crm-writer&error_class=permanent&destination=hubspot&code=400")
            .await
            .total,
        12
    );
    assert_eq!(dlq.list("error_class=retries_exhausted").await.total, 8);
    assert_eq!(dlq.list("publisher=acme").await.total, 15);
    assert_eq!(
        dlq.list("event_type=lead.created&status=parked")
            .await
            .total,
        30
    );
    assert_eq!(dlq.list("status=replayed").await.total, 0);
    // The email is normalized before the lookup, as the ledger's index is.
    let by_email = dlq.list("email=%20A@Example.COM").await;
    assert_eq!(by_email.total, 16, "8 + 8 about a@example.com");
    // Time windows are on dead-lettered-at, newest first.
    let window = dlq
        .list("since=2026-11-01T05:00:00Z&until=2026-11-01T09:00:00Z")
        .await;
    let ids: Vec<&str> = window
        .rows
        .iter()
        .map(|r| r.summary.event_id.as_str())
        .collect();
    assert_eq!(ids, ["evt-9", "evt-8", "evt-7", "evt-6", "evt-5"]);
    // Pages.
    let page = dlq.get("/v1/dead-letters?limit=7&offset=28").await.1;
    assert_eq!(page["total"], 30);
    assert_eq!(page["rows"].as_array().map(Vec::len), Some(2));
    assert_eq!(page["rows"][1]["summary"]["event_id"], "evt-0");
    // A bad filter says what is wrong.
    let (status, body) = dlq.get("/v1/dead-letters?since=yesterday-ish").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("yesterday-ish"),
        "{body}"
    );
    let (status, _) = dlq.get("/v1/dead-letters?colour=red").await;
    assert_eq!(status, 400);

    // Groups: the same failure with different values is one row.
    let (status, groups) = dlq.get("/v1/dead-letters/groups").await;
    assert_eq!(status, 200, "{groups}");
    let rows = groups["groups"].as_array().expect("groups");
    let counts: Vec<u64> = rows
        .iter()
        .map(|g| g["count"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(counts, [10, 8, 8, 4], "{groups:#}");
    let lifecycle = rows
        .iter()
        .find(|g| {
            g["group"]["cause"]
                .as_str()
                .unwrap_or("")
                .contains("<value>")
                && g["count"] == 8
                && g["group"]["stage"] == "crm-writer"
        })
        .expect("the lifecycle group");
    assert_eq!(lifecycle["first_seen"], "2026-11-01T00:00:00Z");
    assert_eq!(lifecycle["last_seen"], "2026-11-01T07:00:00Z");
    let fp = lifecycle["group"]["fingerprint"]
        .as_str()
        .expect("fingerprint");
    assert_eq!(dlq.list(&format!("fingerprint={fp}")).await.total, 8);
    // Groups under a filter.
    let (_, narrowed) = dlq.get("/v1/dead-letters/groups?stage=crm-writer").await;
    assert_eq!(narrowed["groups"].as_array().map(Vec::len), Some(2));

    // Stats: parked per stage and class with the oldest.
    let (_, stats) = dlq.get("/v1/dead-letters/stats").await;
    assert_eq!(stats["total"], 30);
    assert_eq!(stats["by_status"]["parked"], 30);
    let normalizer = stats["parked"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["stage"] == "normalizer"))
        .expect("normalizer row")
        .clone();
    assert_eq!(normalizer["count"], 10);
    assert_eq!(normalizer["oldest"], "2026-11-01T12:00:00Z");

    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_needs_an_operator_token_and_viewers_only_read() {
    let world = World::start().await;
    let dlq = &world.dlq;
    for token in [None, Some("not-a-token"), Some("e2e-test-key")] {
        let (status, body) = dlq.get_as("/v1/dead-letters", token).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized");
        let (status, _) = dlq
            .post_as(
                "/v1/purges",
                &serde_json::json!({"ids": ["dl-x"], "reason": "r", "confirm": true}),
                token,
            )
            .await;
        assert_eq!(status, 401);
    }
    let (status, _) = dlq.get_as("/v1/dead-letters", Some(VIEWER_TOKEN)).await;
    assert_eq!(status, 200);
    let (status, body) = dlq
        .post_as(
            "/v1/replays",
            &serde_json::json!({"ids": ["dl-x"]}),
            Some(VIEWER_TOKEN),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = dlq
        .post_as(
            "/v1/purges",
            &serde_json::json!({"ids": ["dl-x"], "reason": "r", "confirm": true}),
            Some(VIEWER_TOKEN),
        )
        .await;
    assert_eq!(status, 403);
    // A viewer may still look at what a replay would do.
    let (status, plan) = dlq
        .post_as(
            "/v1/replays",
            &serde_json::json!({"ids": ["dl-x"], "dry_run": true}),
            Some(VIEWER_TOKEN),
        )
        .await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["refused"]["dl-x"], "no such dead letter");
    // Nothing was done, so nothing is in the audit log.
    let (_, audit) = dlq.get("/v1/audit").await;
    assert_eq!(audit.as_array().map(Vec::len), Some(0), "{audit}");
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purge_needs_confirmation_and_a_reason_and_is_audited() {
    let world = World::start().await;
    park_thirty(&world.store()).await;
    let dlq = &world.dlq;
    let filter = serde_json::json!({"stage": "normalizer"});

    let (status, body) = dlq
        .post(
            "/v1/purges",
            &serde_json::json!({"filter": filter, "reason": "test data"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("confirm"),
        "{body}"
    );
    let (status, body) = dlq
        .post(
            "/v1/purges",
            &serde_json::json!({"filter": filter, "reason": "  ", "confirm": true}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("reason"),
        "{body}"
    );
    assert_eq!(
        dlq.list("status=parked").await.total,
        30,
        "nothing purged yet"
    );

    let (status, result) = dlq
        .post(
            "/v1/purges",
            &serde_json::json!({"filter": filter, "reason": "test data from the staging publisher", "confirm": true}),
        )
        .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["purged"], 10);
    assert_eq!(dlq.list("status=parked").await.total, 20);
    let purged = dlq.list("status=purged").await;
    assert_eq!(purged.total, 10);
    let first = &purged.rows[0];
    let purge = first.state.purge.as_ref().expect("purge state");
    assert_eq!(purge.by, "sam.sre");
    assert_eq!(purge.reason, "test data from the staging publisher");
    // The message itself is gone; the summary stays for the audit.
    let (_, detail) = dlq
        .get(&format!("/v1/dead-letters/{}", first.summary.id))
        .await;
    assert!(
        detail["record"].is_null() && detail["original"].is_null(),
        "{detail}"
    );
    // A purged dead letter cannot be replayed.
    let (_, plan) = dlq
        .post(
            "/v1/replays",
            &serde_json::json!({"ids": [first.summary.id], "dry_run": true}),
        )
        .await;
    assert_eq!(plan["count"], 0, "{plan}");

    let (_, audit) = dlq.get("/v1/audit").await;
    let entries = audit.as_array().expect("audit");
    assert_eq!(entries.len(), 1, "{audit}");
    assert_eq!(entries[0]["operator"], "sam.sre");
    assert_eq!(entries[0]["action"], "purge");
    assert_eq!(entries[0]["count"], 10);
    assert_eq!(entries[0]["reason"], "test data from the staging publisher");
    assert_eq!(entries[0]["filter"]["stage"], "normalizer");
    tokio::time::sleep(Duration::from_millis(10)).await;
    world.finish().await;
}
