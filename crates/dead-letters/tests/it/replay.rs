//! Replays: back to the queue a dead letter failed in, once, paced, under control.

use std::time::Duration;

use handoff_bus::{CRM_WRITER, NORMALIZER};
use handoff_dead_letters::record::Summary;
use handoff_events::v1::{self, ErrorClass};
use handoff_test_support::{self as support};

use crate::helpers::{World, envelope, run_scripted, send_to_stage};

/// A dead letter failed by the scripted crm-writer is replayed as-is: the original bytes
/// reach the crm-writer queue with a fresh retry budget and a new trace; a second replay
/// of the same selection sends nothing; when the replay fails again, the old dead letter
/// says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_sends_the_original_once_and_learns_when_it_failed_again() {
    let world = World::start().await;
    let bus = world.bus().await;
    let (_stage, stop, task) = run_scripted(&bus, CRM_WRITER);
    let original = envelope("evt-r1", "r1@example.com", "transient");
    send_to_stage(&bus, CRM_WRITER, "evt-r1", original.clone()).await;
    let page = world
        .dlq
        .wait_list("", Duration::from_secs(30), |p| p.total == 1)
        .await;
    stop.cancel();
    let _ = task.await;
    let parked = &page.rows[0].summary;
    assert_eq!(parked.error_class, "retries_exhausted");

    // Dry run: what would happen, nothing done.
    let request = serde_json::json!({"group": parked.fingerprint, "reason": "hubspot is back"});
    let (status, plan) = world
        .dlq
        .post("/v1/replays", &serde_json::json!({"group": parked.fingerprint, "dry_run": true, "mode": "renormalize"}))
        .await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["count"], 0);
    assert!(
        plan["refused"][&parked.id]
            .as_str()
            .unwrap_or("")
            .contains("replay it as-is"),
        "{plan}"
    );
    let (_, plan) = world
        .dlq
        .post(
            "/v1/replays",
            &serde_json::json!({"group": parked.fingerprint, "dry_run": true}),
        )
        .await;
    assert_eq!(plan["count"], 1, "{plan}");
    assert_eq!(
        plan["targets"][format!("{}.crm-writer", world.namespace)],
        1
    );
    assert_eq!(world.dlq.list("status=parked").await.total, 1);

    let (status, job) = world.dlq.post("/v1/replays", &request).await;
    assert_eq!(status, 201, "{job}");
    let job = world
        .dlq
        .wait_job(job["id"].as_str().expect("id"), Duration::from_secs(20))
        .await;
    assert_eq!(
        (job["sent"].as_u64(), job["total"].as_u64()),
        (Some(1), Some(1)),
        "{job}"
    );
    assert_eq!(job["operator"], "sam.sre");

    // Exactly one copy waits in the crm-writer queue: the original bytes and event id,
    // a fresh attempt count, the replay named, a new trace.
    let queue = world.inspector.topology().stage_queue(CRM_WRITER);
    let copies = support::drain_queue(&world.inspector, &queue).await;
    assert_eq!(copies.len(), 1, "{copies:#?}");
    let copy = &copies[0];
    assert_eq!(copy.body, original);
    assert_eq!(copy.message_id.as_deref(), Some("evt-r1"));
    assert_eq!(copy.attempt, 1);
    assert!(
        !copy.headers.contains_key("x-handoff-attempts"),
        "{:?}",
        copy.headers
    );
    assert_eq!(copy.headers.get("x-handoff-replay-of"), Some(&parked.id));
    let replay_trace = handoff_bus::trace::trace_id_from_traceparent(
        copy.headers
            .get("traceparent")
            .map(String::as_str)
            .unwrap_or(""),
    );
    assert!(
        replay_trace.is_some(),
        "a replay carries a trace: {:?}",
        copy.headers
    );
    assert_ne!(
        replay_trace.as_deref(),
        Some(parked.trace_id.as_str()),
        "a new trace"
    );
    let replayed = world.dlq.list("status=replayed").await;
    assert_eq!(replayed.total, 1);
    let replay = replayed.rows[0]
        .state
        .replay
        .as_ref()
        .expect("replay state");
    assert_eq!(replay.outcome.as_deref(), Some("sent"));

    // The same replay started again takes nothing: the dead letter is no longer parked.
    let (status, again) = world.dlq.post("/v1/replays", &request).await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(again["total"], 0, "{again}");
    assert_eq!(again["state"], "done");
    assert!(
        support::drain_queue(&world.inspector, &queue)
            .await
            .is_empty()
    );

    // The replayed event fails again: a new dead letter, and the old one says so.
    send_to_stage(&bus, CRM_WRITER, "evt-r1", copy.body.clone()).await;
    let (_stage, stop, task) = run_scripted(&bus, CRM_WRITER);
    let page = world
        .dlq
        .wait_list("event_id=evt-r1", Duration::from_secs(30), |p| p.total == 2)
        .await;
    stop.cancel();
    let _ = task.await;
    let newer = page
        .rows
        .iter()
        .find(|r| r.summary.id != parked.id)
        .expect("new one");
    let older = page
        .rows
        .iter()
        .find(|r| r.summary.id == parked.id)
        .expect("old one");
    let replay = older.state.replay.as_ref().expect("replay state");
    assert_eq!(
        replay.outcome.as_deref(),
        Some("failed_again"),
        "{older:#?}"
    );
    assert_eq!(
        replay.failed_again_as.as_deref(),
        Some(newer.summary.id.as_str())
    );

    // Every replay is in the audit log.
    let (_, audit) = world.dlq.get("/v1/audit").await;
    let actions: Vec<&str> = audit
        .as_array()
        .expect("audit")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(actions, ["replay", "replay"]);
    assert_eq!(audit[1]["reason"], "hubspot is back");
    assert_eq!(audit[1]["count"], 1);
    assert_eq!(audit[0]["count"], 0);
    bus.close().await;
    world.finish().await;
}

/// A job can be paused, resumed and cancelled; what it had not sent is parked again,
/// and what it sent is exactly what reached the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_pauses_resumes_and_cancels_without_losing_or_doubling() {
    let world = World::start().await;
    let queue = world.inspector.topology().stage_queue(NORMALIZER);
    world
        .park_failed(20, NORMALIZER, ErrorClass::Validation, |_, _| {})
        .await;
    // A renormalized event goes on to every writer: HubSpot's budget caps it too.
    let (_, plan) = world
        .dlq
        .post(
            "/v1/replays",
            &serde_json::json!({"filter": {"stage": "normalizer"}, "rate": 200.0, "mode": "renormalize", "dry_run": true}),
        )
        .await;
    assert_eq!(plan["rate"], 5.0, "{plan}");
    assert!(
        plan["rate_reason"]
            .as_str()
            .unwrap_or("")
            .contains("hubspot"),
        "{plan}"
    );
    let (status, job) = world
        .dlq
        .post("/v1/replays", &serde_json::json!({"filter": {"stage": "normalizer"}, "rate": 5.0, "mode": "renormalize"}))
        .await;
    assert_eq!(status, 201, "{job}");
    assert_eq!(job["total"], 20);
    assert_eq!(job["rate"], 5.0);
    let id = job["id"].as_str().expect("id").to_owned();
    tokio::time::sleep(Duration::from_millis(900)).await;
    let (status, paused) = world
        .dlq
        .post(&format!("/v1/replays/{id}/pause"), &serde_json::json!({}))
        .await;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["state"], "paused");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at_pause = world.dlq.get(&format!("/v1/replays/{id}")).await.1["sent"]
        .as_u64()
        .expect("sent");
    assert!(
        (2..=8).contains(&at_pause),
        "about 5/s for ~1 s: {at_pause}"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        world.dlq.get(&format!("/v1/replays/{id}")).await.1["sent"].as_u64(),
        Some(at_pause),
        "nothing is sent while paused"
    );
    world
        .dlq
        .post(&format!("/v1/replays/{id}/resume"), &serde_json::json!({}))
        .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, cancelled) = world
        .dlq
        .post(&format!("/v1/replays/{id}/cancel"), &serde_json::json!({}))
        .await;
    assert_eq!(status, 200, "{cancelled}");
    let job = world.dlq.wait_job(&id, Duration::from_secs(10)).await;
    assert_eq!(job["state"], "cancelled");
    let sent = job["sent"].as_u64().expect("sent");
    assert!(sent > at_pause && sent < 20, "{job}");
    // A finished job cannot be resumed.
    let (status, _) = world
        .dlq
        .post(&format!("/v1/replays/{id}/resume"), &serde_json::json!({}))
        .await;
    assert_eq!(status, 409);

    let copies = support::drain_queue(&world.inspector, &queue).await;
    assert_eq!(copies.len() as u64, sent, "what was sent is what arrived");
    let mut events: Vec<String> = copies.iter().filter_map(|c| c.message_id.clone()).collect();
    events.sort();
    events.dedup();
    assert_eq!(events.len() as u64, sent, "no event twice");
    assert!(copies.iter().all(
        |c| c.headers.get("x-handoff-replay-mode").map(String::as_str) == Some("renormalize")
    ));
    assert_eq!(world.dlq.list("status=replayed").await.total, sent);
    assert_eq!(world.dlq.list("status=parked").await.total, 20 - sent);
    assert_eq!(world.dlq.list("status=replaying").await.total, 0);
    let (_, audit) = world.dlq.get("/v1/audit").await;
    let actions: Vec<&str> = audit
        .as_array()
        .expect("audit")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        ["replay.cancel", "replay.resume", "replay.pause", "replay"]
    );
    world.finish().await;
}

/// A replay never piles messages up ahead of live traffic: it holds while the target
/// queue has more than `replay.max_backlog` ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_waits_while_its_target_queue_is_backed_up() {
    let world = World::start_with(|cfg| cfg.replay.max_backlog = 5).await;
    let queue = world.inspector.topology().stage_queue(CRM_WRITER);
    world
        .park_failed(30, CRM_WRITER, ErrorClass::RetriesExhausted, |_, r| {
            r.destination = "mailchimp".into();
        })
        .await;
    // 200/s asked; mailchimp's budget is 100/s and a replay may take half: 50/s.
    let (_, job) = world
        .dlq
        .post(
            "/v1/replays",
            &serde_json::json!({"filter": {"stage": "crm-writer"}, "rate": 200.0}),
        )
        .await;
    assert_eq!(job["rate"], 50.0, "{job}");
    let id = job["id"].as_str().expect("id").to_owned();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let waiting = world.inspector.message_count(&queue).await.expect("count");
    assert!(
        (5..=7).contains(&waiting),
        "held at the backlog bound of 5: {waiting}"
    );
    // Drain it as a consumer would; the job goes on to the end.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut received = Vec::new();
    loop {
        received.extend(support::drain_queue(&world.inspector, &queue).await);
        let (_, job) = world.dlq.get(&format!("/v1/replays/{id}")).await;
        if job["state"] == "done" && world.inspector.message_count(&queue).await.unwrap_or(1) == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(received.len(), 30);
    world.finish().await;
}

/// A report that fails after its event was replayed (the write-back of an event
/// delivered on replay) is not the event's replay failing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_same_message_failing_again_marks_a_replay_failed_again() {
    let world = World::start().await;
    let store = world.store();
    let queue = world.inspector.topology().stage_queue(CRM_WRITER);
    let dead_letter = |route: &str, message: &str| v1::DeadLetter {
        event_id: "evt-wb".into(),
        stage: CRM_WRITER.into(),
        error_class: ErrorClass::RetriesExhausted as i32,
        error_message: message.into(),
        origin_queue: queue.clone(),
        origin_routing_key: route.into(),
        original_body: envelope("evt-wb", "wb@example.com", "ok"),
        ..v1::DeadLetter::default()
    };
    let event = dead_letter("canonical.lead.created", "first");
    let summary = Summary::of(&event, b"first");
    store.park(&summary, &event).await.expect("park");
    let (_, job) = world
        .dlq
        .post("/v1/replays", &serde_json::json!({"ids": [summary.id]}))
        .await;
    world
        .dlq
        .wait_job(job["id"].as_str().expect("id"), Duration::from_secs(10))
        .await;
    support::drain_queue(&world.inspector, &queue).await;

    let report = dead_letter("email.subscriber.synced", "the write-back failed");
    store
        .park(&Summary::of(&report, b"report"), &report)
        .await
        .expect("park");
    let (_, detail) = world
        .dlq
        .get(&format!("/v1/dead-letters/{}", summary.id))
        .await;
    assert_eq!(detail["state"]["replay"]["outcome"], "sent", "{detail}");

    let again = dead_letter("canonical.lead.created", "second");
    let again_summary = Summary::of(&again, b"second");
    store.park(&again_summary, &again).await.expect("park");
    let (_, detail) = world
        .dlq
        .get(&format!("/v1/dead-letters/{}", summary.id))
        .await;
    assert_eq!(
        detail["state"]["replay"]["outcome"], "failed_again",
        "{detail}"
    );
    assert_eq!(
        detail["state"]["replay"]["failed_again_as"],
        again_summary.id.as_str()
    );
    world.finish().await;
}

/// The numbers an alert needs: parked per stage and class, the oldest's age, and a
/// replay's progress, on `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_say_what_is_parked_how_old_it_is_and_how_a_replay_goes() {
    let world = World::start().await;
    let an_hour_ago = time::OffsetDateTime::now_utc().unix_timestamp() - 3_600;
    world
        .park_failed(12, NORMALIZER, ErrorClass::Validation, |i, r| {
            r.dead_lettered_at = Some(handoff_events::Timestamp {
                seconds: an_hour_ago + i as i64,
                nanos: 0,
            });
        })
        .await;
    let metrics_url = format!("{}/metrics", world.dlq.service.admin_url);
    let scrape = || async {
        reqwest::get(&metrics_url)
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    };
    let value = |text: &str, prefix: &str| -> Option<f64> {
        text.lines()
            .find(|line| line.starts_with(prefix))
            .and_then(|line| line.rsplit(' ').next()?.parse().ok())
    };
    let parked = r#"handoff_dlq_parked{stage="normalizer",error_class="validation"}"#;
    let oldest =
        r#"handoff_dlq_oldest_parked_age_seconds{stage="normalizer",error_class="validation"}"#;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let text = loop {
        let text = scrape().await;
        if value(&text, parked) == Some(12.0) {
            break text;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let age = value(&text, oldest).expect("oldest age");
    assert!((3_590.0..3_700.0).contains(&age), "about an hour: {age}");
    assert!(value(&text, "handoff_dlq_oldest_parked_age_seconds_max").unwrap_or(0.0) >= age);

    // A paused replay: its progress, and nothing parked any more.
    let (_, job) = world
        .dlq
        .post(
            "/v1/replays",
            &serde_json::json!({"filter": {"stage": "normalizer"}, "rate": 2.0}),
        )
        .await;
    let id = job["id"].as_str().expect("id").to_owned();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    world
        .dlq
        .post(&format!("/v1/replays/{id}/pause"), &serde_json::json!({}))
        .await;
    let remaining = format!(r#"handoff_dlq_replay_remaining{{job="{id}"}}"#);
    let sent = format!(r#"handoff_dlq_replay_sent{{job="{id}"}}"#);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let text = scrape().await;
        let (r, s) = (value(&text, &remaining), value(&text, &sent));
        let now_sent = world.dlq.get(&format!("/v1/replays/{id}")).await.1["sent"].as_f64();
        if let (Some(r), Some(s)) = (r, s)
            && Some(s) == now_sent
            && s >= 1.0
            && r + s == 12.0
            && value(&text, parked) == Some(0.0)
        {
            assert_eq!(
                value(&text, "handoff_dlq_replays_running"),
                Some(1.0),
                "{text}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    world
        .dlq
        .post(&format!("/v1/replays/{id}/cancel"), &serde_json::json!({}))
        .await;
    world.dlq.wait_job(&id, Duration::from_secs(10)).await;
    world.finish().await;
}
