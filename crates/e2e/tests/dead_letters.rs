//! The dead-letter handler with the whole pipeline, every service in-process against the real
//! RabbitMQ and Redis and the sandbox as HubSpot and Mailchimp: every kind of failure arrives
//! parked with its context; a rejected event, fixed and replayed through the normalizer, is
//! delivered once; a CRM outage's dead letters, replayed as-is twice over, are delivered once; and
//! a replay beside live traffic keeps within HubSpot's quota without starving the live events.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use handoff_bus::CRM_WRITER;
use handoff_dead_letters::api::Detail;
use handoff_dead_letters::record::Summary;
use handoff_dead_letters::replay::Job;
use handoff_dead_letters::store::{DeadLetterStore, Page};
use handoff_delivery::{PacingConfig, RetryPolicy};
use handoff_e2e::{OPERATOR, PUBLISHER, Pipeline, Tweaks, redis_config, stage_status};
use handoff_events::v1::{self, ErrorClass};
use handoff_events::{Message as _, Timestamp};
use handoff_idempotency::Ledger;
use handoff_sandbox::faults::{FaultConfig, Outage};
use handoff_sandbox::hubspot::{Object, ObjectType};
use handoff_sandbox::request_log::{RequestEntry, WriteOp};
use handoff_sandbox::testing::{TEST_MAILCHIMP_LIST, TEST_TOKEN};
use serde_json::{Value, json};

/// A `lead.created` body for `email`, with `lead` fields added from `extra`.
fn lead(event_id: &str, email: &str, extra: Value) -> Value {
    let mut lead = json!({"email": email, "first_name": "Dee", "marketing_opt_in": true});
    if let (Some(lead), Value::Object(extra)) = (lead.as_object_mut(), extra) {
        lead.extend(extra);
    }
    json!({
        "event_id": event_id,
        "occurred_at": "2026-04-02T09:30:00Z",
        "source": "forms",
        "lead": lead,
    })
}

/// The crm-writer gives up after `attempts` quick tries, so an outage dead-letters in seconds.
fn give_up_after(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        base: Duration::from_millis(100),
        cap: Duration::from_millis(200),
        max_attempts: attempts,
        ..RetryPolicy::default()
    }
}

/// Retries at least every second and for longer than any outage here: the email-writer rides
/// the outage out and delivers soon after it ends.
fn ride_out() -> RetryPolicy {
    RetryPolicy {
        base: Duration::from_millis(100),
        cap: Duration::from_secs(1),
        ..RetryPolicy::default()
    }
}

/// Every vendor request answers 503 until cleared (both vendors: the sandbox has one switch).
fn outage() -> FaultConfig {
    FaultConfig {
        outage: Some(Outage {
            for_: Duration::from_secs(120),
            ..Outage::default()
        }),
        ..FaultConfig::default()
    }
}

/// `GET /v1/dead-letters?{query}` as a page.
async fn list(world: &Pipeline, query: &str) -> Page {
    let (status, body) = world
        .dlq_get(&format!("/v1/dead-letters?limit=1000&{query}"))
        .await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body).expect("a page")
}

/// Polls the list for `query` until `done` holds; fails with the last page after `within`.
async fn wait_list(
    world: &Pipeline,
    query: &str,
    within: Duration,
    done: impl Fn(&Page) -> bool,
) -> Page {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let page = list(world, query).await;
        if done(&page) {
            return page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead letters {query:?} not as expected within {within:?}: {page:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The one dead letter of `event_id`, once parked.
async fn parked_one(world: &Pipeline, event_id: &str) -> Detail {
    let page = wait_list(
        world,
        &format!("event_id={event_id}"),
        Duration::from_secs(20),
        |p| p.total == 1,
    )
    .await;
    show(world, &page.rows[0].summary.id).await
}

async fn show(world: &Pipeline, id: &str) -> Detail {
    let (status, body) = world.dlq_get(&format!("/v1/dead-letters/{id}")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body).expect("a dead letter")
}

/// `POST /v1/replays`, expecting 201; the job as created.
async fn replay(world: &Pipeline, request: &Value) -> Job {
    let (status, body) = world.dlq_post("/v1/replays", request).await;
    assert_eq!(status, 201, "{request} → {body}");
    serde_json::from_value(body).expect("a job")
}

async fn job(world: &Pipeline, id: &str) -> Job {
    let (status, body) = world.dlq_get(&format!("/v1/replays/{id}")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body).expect("a job")
}

/// Polls a replay job until it is done or cancelled.
async fn wait_job(world: &Pipeline, id: &str, within: Duration) -> Job {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let job = job(world, id).await;
        if job.state.is_finished() {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replay job {id} not finished within {within:?}: {job:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn is(status: &'static str) -> impl Fn(&str) -> bool {
    move |s| s == status
}

/// Waits until `stage` of `event_id`'s ledger satisfies `ok`.
async fn wait_stage(
    world: &Pipeline,
    event_id: &str,
    stage: &str,
    ok: impl Fn(&str) -> bool,
) -> Ledger {
    world
        .wait_ledger(event_id, Duration::from_secs(20), |l| {
            stage_status(l, stage).is_some_and(&ok)
        })
        .await
}

fn prop<'a>(object: &'a Object, name: &str) -> Option<&'a str> {
    object.properties.get(name).and_then(|v| v.as_deref())
}

/// The sandbox's HubSpot contacts with `email`.
fn contacts(world: &Pipeline, email: &str) -> Vec<Object> {
    world
        .sandbox
        .records(ObjectType::Contacts)
        .into_iter()
        .filter(|c| prop(c, "email") == Some(email))
        .collect()
}

/// Requests of `api` that answered 2xx and wrote `object_type` under `key` (with `op`, if given).
fn successful_writes(
    log: &[RequestEntry],
    api: &str,
    object_type: &str,
    key: &str,
    op: Option<WriteOp>,
) -> usize {
    log.iter()
        .filter(|r| r.api == api && r.status.is_some_and(|s| (200..300).contains(&s)))
        .filter(|r| {
            r.writes.iter().any(|w| {
                w.object_type == object_type && w.key == key && op.is_none_or(|op| w.op == op)
            })
        })
        .count()
}

/// How many times the sandbox created `object_type` under `key` (a second create is a duplicate).
fn creates(world: &Pipeline, object_type: &str, key: &str) -> u64 {
    world
        .sandbox
        .stats()
        .creates
        .get(object_type)
        .and_then(|keys| keys.get(key))
        .copied()
        .unwrap_or_default()
}

/// (i) the normalizer refusing an unmapped lifecycle stage, (ii) HubSpot refusing a property its
/// portal does not define, (iii) an outage outlasting the crm-writer's retries: each one parked
/// with what an operator needs to act on it, and its ledger saying `dead_lettered`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_park_every_failure_with_its_context() {
    let mut world = Pipeline::start_with(
        handoff_e2e::sandbox_config(),
        Tweaks {
            crm_writer: Some(Box::new(|cfg| {
                // Mapped to a contact property the sandbox's portal does not define.
                cfg.routes.values.custom_properties =
                    BTreeMap::from([("team_size".to_owned(), "team_headcount".to_owned())]);
                cfg.retry = give_up_after(3);
            })),
            email_writer: Some(Box::new(|cfg| cfg.retry = ride_out())),
            ..Tweaks::default()
        },
    )
    .await;
    world.start_dead_letters(|_| {}).await;

    // (i) Rejected by the normalizer: `champion` is in no lifecycle-stage map.
    let rejected = lead(
        "evt_dlq_unmapped",
        "casey@dlq.example",
        json!({"lifecycle_stage": "champion"}),
    );
    let (status, answer) = world.post("lead.created", &rejected).await;
    assert_eq!(status, 202, "{answer}");
    let parked = parked_one(&world, "evt_dlq_unmapped").await;
    let s = &parked.summary;
    assert_eq!(
        (s.stage.as_str(), s.error_class.as_str(), s.attempts),
        ("normalizer", "validation", 1),
        "{parked:#?}"
    );
    assert_eq!(s.event_type, "lead.created");
    assert_eq!(s.publisher_id, PUBLISHER);
    assert_eq!(s.email, "casey@dlq.example");
    assert_eq!(s.origin_queue, format!("{}.normalizer", world.namespace));
    let record = parked.record.as_ref().expect("the record");
    let field_errors = record["field_errors"].as_array().expect("field errors");
    assert_eq!(field_errors.len(), 1, "{record:#}");
    assert_eq!(
        field_errors[0]["path"], "lead.lifecycle_stage",
        "{record:#}"
    );
    assert!(
        field_errors[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("champion")),
        "{record:#}"
    );
    // The raw event as the publisher sent it, readable.
    let original = parked.original.as_ref().expect("the original envelope");
    assert_eq!(original["raw"]["body"], rejected, "{original:#}");
    let ledger = wait_stage(
        &world,
        "evt_dlq_unmapped",
        "normalizer",
        is("dead_lettered"),
    )
    .await;
    assert!(stage_status(&ledger, "crm-writer").is_none(), "{ledger:#?}");

    // (ii) Refused by HubSpot for good: 400 PROPERTY_DOESNT_EXIST.
    let refused = lead(
        "evt_dlq_property",
        "robin@dlq.example",
        json!({"custom_properties": {"team_size": 40}}),
    );
    let (status, answer) = world.post("lead.created", &refused).await;
    assert_eq!(status, 202, "{answer}");
    let parked = parked_one(&world, "evt_dlq_property").await;
    let s = &parked.summary;
    assert_eq!(
        (
            s.stage.as_str(),
            s.error_class.as_str(),
            s.destination.as_str(),
            s.error_code.as_str(),
            s.attempts
        ),
        ("crm-writer", "permanent", "hubspot", "400", 1),
        "{parked:#?}"
    );
    assert!(
        s.error_message.contains("PROPERTY_DOESNT_EXIST")
            && s.error_message.contains("team_headcount"),
        "HubSpot's own message: {}",
        s.error_message
    );
    assert_eq!(s.email, "robin@dlq.example");
    wait_stage(
        &world,
        "evt_dlq_property",
        "crm-writer",
        is("dead_lettered"),
    )
    .await;
    // The email side took it; its write-back must be done before the outage below, or it
    // would run out of retries there too.
    wait_stage(
        &world,
        "evt_dlq_property",
        "crm-writer.write-back",
        is("delivered"),
    )
    .await;

    // (iii) An outage longer than the crm-writer's three attempts.
    world.sandbox.set_faults(outage());
    let (status, answer) = world
        .post(
            "lead.created",
            &lead("evt_dlq_outage", "sky@dlq.example", json!({})),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let parked = parked_one(&world, "evt_dlq_outage").await;
    world.sandbox.clear_faults();
    let s = &parked.summary;
    assert_eq!(
        (
            s.stage.as_str(),
            s.error_class.as_str(),
            s.destination.as_str(),
            s.attempts
        ),
        ("crm-writer", "retries_exhausted", "hubspot", 3),
        "{parked:#?}"
    );
    let record = parked.record.as_ref().expect("the record");
    let attempts = record["attempts"].as_array().expect("attempts");
    let numbers: Vec<u64> = attempts
        .iter()
        .map(|a| a["number"].as_u64().unwrap_or_default())
        .collect();
    assert_eq!(numbers, [1, 2, 3], "{record:#}");
    for attempt in attempts {
        assert!(
            attempt["error"].as_str().is_some_and(|e| e.contains("503")),
            "each attempt says what failed: {attempt:#}"
        );
        assert!(attempt["at"].is_string(), "{attempt:#}");
    }
    wait_stage(&world, "evt_dlq_outage", "crm-writer", is("dead_lettered")).await;
    // The email-writer rode the outage out; its write-back then created the contact.
    wait_stage(
        &world,
        "evt_dlq_outage",
        "crm-writer.write-back",
        is("delivered"),
    )
    .await;

    // Exactly these three, three causes; nothing else (no write-back, no email) failed.
    let all = list(&world, "").await;
    assert_eq!(all.total, 3, "{all:#?}");
    let (status, groups) = world.dlq_get("/v1/dead-letters/groups").await;
    assert_eq!(status, 200, "{groups}");
    assert_eq!(groups["total"], 3, "{groups:#}");
    assert_eq!(
        groups["groups"].as_array().map(Vec::len),
        Some(3),
        "{groups:#}"
    );
    world.finish().await;
}

/// The unmapped lifecycle stage fixed in the normalizer's map, then the rejected event replayed
/// through the normalizer: delivered once, with the mapped value, and the dead letter `replayed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_fixed_in_the_map_and_renormalized_are_delivered_once() {
    let mut world = Pipeline::start().await;
    world.start_dead_letters(|_| {}).await;
    let email = "casey@fixed.example";
    let (status, answer) = world
        .post(
            "lead.created",
            &lead("evt_dlq_fix", email, json!({"lifecycle_stage": "Champion"})),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let parked = parked_one(&world, "evt_dlq_fix").await;
    assert_eq!(parked.summary.error_class, "validation");
    wait_stage(&world, "evt_dlq_fix", "normalizer", is("dead_lettered")).await;
    assert!(contacts(&world, email).is_empty());

    // RevOps adds the value to the map; the normalizer is redeployed with it.
    world
        .restart_normalizer(|cfg| {
            cfg.normalize
                .lifecycle_stage
                .values
                .insert("champion".to_owned(), "evangelist".to_owned());
        })
        .await;
    let (status, plan) = world
        .dlq_post(
            "/v1/replays",
            &json!({"ids": [parked.summary.id], "mode": "renormalize", "dry_run": true}),
        )
        .await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["count"], 1, "{plan:#}");
    assert_eq!(
        plan["targets"][format!("{}.normalizer", world.namespace)],
        1,
        "{plan:#}"
    );
    let started = replay(
        &world,
        &json!({"ids": [parked.summary.id], "mode": "renormalize",
                "reason": "champion mapped to evangelist"}),
    )
    .await;
    assert_eq!(started.total, 1, "{started:#?}");
    let done = wait_job(&world, &started.id, Duration::from_secs(20)).await;
    assert_eq!(
        (done.state.label(), done.sent, done.skipped),
        ("done", 1, 0),
        "{done:#?}"
    );

    // Delivered once: the ledger, the CRM record, the request log.
    let ledger = wait_stage(&world, "evt_dlq_fix", "crm-writer", is("delivered")).await;
    assert_eq!(stage_status(&ledger, "normalizer"), Some("normalized"));
    wait_stage(
        &world,
        "evt_dlq_fix",
        "crm-writer.write-back",
        is("delivered"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let found = contacts(&world, email);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(prop(&found[0], "lifecyclestage"), Some("evangelist"));
    assert_eq!(creates(&world, "contacts", email), 1);
    let log = world.sandbox.requests();
    assert_eq!(
        successful_writes(&log, "hubspot", "contacts", email, Some(WriteOp::Create)),
        1
    );
    assert_eq!(creates(&world, "members", email), 1);

    // The dead letter says what became of it; nothing failed again.
    let after = show(&world, &parked.summary.id).await;
    assert_eq!(
        after.state.status.map(|s| s.label()),
        Some("replayed"),
        "{after:#?}"
    );
    let replayed = after.state.replay.as_ref().expect("replay state");
    assert_eq!(
        (
            replayed.job.as_str(),
            replayed.mode.as_str(),
            replayed.outcome.as_deref()
        ),
        (started.id.as_str(), "renormalize", Some("sent")),
        "{after:#?}"
    );
    assert_eq!(list(&world, "").await.total, 1);
    let (status, audit) = world.dlq_get("/v1/audit").await;
    assert_eq!(status, 200, "{audit}");
    assert_eq!(audit[0]["action"], "replay", "{audit:#}");
    assert_eq!(audit[0]["operator"], OPERATOR, "{audit:#}");
    assert_eq!(audit[0]["job"], started.id.as_str(), "{audit:#}");
    world.finish().await;
}

/// Five contacts dead-lettered by a HubSpot outage; once it is over the same replay is started
/// twice at once, and the first job's dead letters once more after it is done: each event reaches
/// HubSpot once and the email platform once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_of_an_outage_replayed_twice_over_are_delivered_once() {
    let mut world = Pipeline::start_with(
        handoff_e2e::sandbox_config(),
        Tweaks {
            crm_writer: Some(Box::new(|cfg| cfg.retry = give_up_after(3))),
            email_writer: Some(Box::new(|cfg| cfg.retry = ride_out())),
            ..Tweaks::default()
        },
    )
    .await;
    world.start_dead_letters(|_| {}).await;
    let people: Vec<(String, String)> = (0..5)
        .map(|n| {
            (
                format!("evt_dlq_down_{n}"),
                format!("person{n}@down.example"),
            )
        })
        .collect();

    world.sandbox.set_faults(outage());
    for (id, email) in &people {
        let (status, answer) = world
            .post("lead.created", &lead(id, email, json!({})))
            .await;
        assert_eq!(status, 202, "{answer}");
    }
    let filter = "stage=crm-writer&error_class=retries_exhausted";
    let parked = wait_list(&world, filter, Duration::from_secs(25), |p| p.total == 5).await;
    world.sandbox.clear_faults();
    for (id, _) in &people {
        wait_stage(&world, id, "crm-writer", is("dead_lettered")).await;
    }
    // One cause, whatever the event: one group.
    let (_, groups) = world
        .dlq_get("/v1/dead-letters/groups?stage=crm-writer")
        .await;
    assert_eq!(
        groups["groups"].as_array().map(Vec::len),
        Some(1),
        "{groups:#}"
    );
    assert_eq!(groups["groups"][0]["count"], 5, "{groups:#}");

    // The same replay, started twice at once: one job takes all five, the other nothing.
    let request = json!({"filter": {"stage": "crm-writer", "error_class": "retries_exhausted"},
                         "mode": "as_is", "reason": "hubspot is back"});
    let (first, second) = tokio::join!(replay(&world, &request), replay(&world, &request));
    let (taker, other) = if first.total > 0 {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!((taker.total, other.total), (5, 0), "{taker:#?} {other:#?}");
    // It either found them taken (refused) or, planning after the other took them,
    // found none parked: nothing to send either way.
    assert!(
        matches!(other.refused, 0 | 5) && other.state.label() == "done" && other.sent == 0,
        "{other:#?}"
    );
    let done = wait_job(&world, &taker.id, Duration::from_secs(20)).await;
    assert_eq!((done.state.label(), done.sent), ("done", 5), "{done:#?}");

    // Those five again, by id, after the job: refused, since none is parked any more.
    let ids: Vec<&str> = parked.rows.iter().map(|r| r.summary.id.as_str()).collect();
    let (status, plan) = world
        .dlq_post("/v1/replays", &json!({"ids": ids, "dry_run": true}))
        .await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["count"], 0, "{plan:#}");
    for id in &ids {
        assert!(
            plan["refused"][id]
                .as_str()
                .is_some_and(|why| why.contains("replayed, not parked")),
            "{plan:#}"
        );
    }
    let again = replay(&world, &json!({"ids": ids, "reason": "once more"})).await;
    assert_eq!(
        (again.total, again.refused, again.state.label()),
        (0, 5, "done"),
        "{again:#?}"
    );

    // Each event delivered by the crm-writer, and its email side done (the write-back too).
    for (id, _) in &people {
        wait_stage(&world, id, "crm-writer", is("delivered")).await;
        wait_stage(&world, id, "email-writer", is("delivered")).await;
        wait_stage(&world, id, "crm-writer.write-back", is("delivered")).await;
    }
    // Anything a second send would have caused has had time to arrive.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = world.sandbox.requests();
    for (_, email) in &people {
        assert_eq!(contacts(&world, email).len(), 1, "{email}");
        assert_eq!(creates(&world, "contacts", email), 1, "{email}");
        // The replayed event and the email-writer's write-back: two writes, not three.
        assert_eq!(
            successful_writes(&log, "hubspot", "contacts", email, None),
            2,
            "{email}"
        );
        // The email platform: one member, written once (the outage's attempts were refused).
        assert_eq!(creates(&world, "members", email), 1, "{email}");
        assert_eq!(
            successful_writes(&log, "mailchimp", "members", email, None),
            1,
            "{email}"
        );
        assert!(
            world
                .sandbox
                .mailchimp_member(TEST_MAILCHIMP_LIST, email)
                .is_some(),
            "{email}"
        );
    }
    assert!(world.sandbox.mailchimp_events().is_empty());
    // Every dead letter replayed once, by the one job; none failed again.
    let all = list(&world, "").await;
    assert_eq!(all.total, 5, "{all:#?}");
    for row in &all.rows {
        let replay = row.state.replay.as_ref().expect("replay state");
        assert_eq!(
            (
                row.state.status.map(|s| s.label()),
                replay.job.as_str(),
                replay.outcome.as_deref()
            ),
            (Some("replayed"), taker.id.as_str(), Some("sent")),
            "{row:#?}"
        );
    }
    world.finish().await;
}

/// Dead letters parked for the pacing scenario: the 5,000 of the acceptance criterion.
const PARKED: usize = 5_000;
/// How long the replay runs beside live traffic before it is cancelled. Replaying all 5,000 at
/// the 5/s a HubSpot replay is capped to takes 1,000 s, too long for CI; the pacing is the same
/// all along, and 25 s covers two and a half of HubSpot's 10 s windows.
const RUN: Duration = Duration::from_secs(25);
/// One live event every 250 ms through ingest: with the replay's 5/s, about 93% of the
/// crm-writer's pacing (97 per 10 s), so HubSpot's quota is pressed, not idle.
const LIVE_EVERY: Duration = Duration::from_millis(250);
/// The longest a live event may take from ingest to HubSpot beside the replay (the slowest takes
/// about 0.15 s). Behind a replay that ignored its cap, live events wait for the crm-writer's
/// prefetch (200) and the replay's backlog bound (50) to drain at 9.7/s: about 25 s, measured.
const LIVE_WITHIN: Duration = Duration::from_secs(6);

/// A crm-writer dead letter as the pipeline makes one: the lead normalized by the normalization
/// library into the canonical envelope the normalizer publishes, given up on after three 503s.
fn crm_dead_letter(
    namespace: &str,
    normalizer: &handoff_normalize::Normalizer,
    n: usize,
) -> v1::DeadLetter {
    let event_id = format!("evt_dlq_parked_{n}");
    let raw = lead(&event_id, &parked_email(n), json!({}));
    let body = serde_json::to_vec(&raw).expect("json");
    let normalized = normalizer
        .normalize(handoff_events::EventType::LeadCreated, 1, &body)
        .expect("a valid lead");
    let occurred_at = time::OffsetDateTime::parse(
        raw["occurred_at"].as_str().expect("occurred_at"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("RFC 3339");
    let now = std::time::SystemTime::now();
    let envelope = v1::Envelope {
        event_id: event_id.clone(),
        event_type: "lead.created".to_owned(),
        schema_version: handoff_events::CURRENT_SCHEMA_VERSION,
        occurred_at: Some(Timestamp {
            seconds: occurred_at.unix_timestamp(),
            nanos: 0,
        }),
        received_at: Some(Timestamp::from(now - Duration::from_secs(3))),
        source: "forms".to_owned(),
        publisher_id: PUBLISHER.to_owned(),
        content_sha256: <sha2::Sha256 as sha2::Digest>::digest(&body).to_vec(),
        attributes: Default::default(),
        payload: Some(v1::envelope::Payload::Canonical(normalized.payload)),
    };
    let error = "contact.upsert: HTTP 503 SERVICE_UNAVAILABLE: Service Unavailable";
    v1::DeadLetter {
        event_id: event_id.clone(),
        event_type: "lead.created".to_owned(),
        publisher_id: PUBLISHER.to_owned(),
        stage: CRM_WRITER.to_owned(),
        error_class: ErrorClass::RetriesExhausted as i32,
        error_message: format!("gave up after 3 attempts: {error}"),
        destination: "hubspot".to_owned(),
        attempts: (1..=3)
            .map(|number| v1::Attempt {
                number,
                at: Some(Timestamp::from(now)),
                error: error.to_owned(),
                outcome: "transient".to_owned(),
            })
            .collect(),
        first_failed_at: Some(Timestamp::from(now - Duration::from_secs(2))),
        last_failed_at: Some(Timestamp::from(now)),
        origin_exchange: format!("{namespace}.events"),
        origin_routing_key: "canonical.lead.created".to_owned(),
        origin_queue: format!("{namespace}.{CRM_WRITER}"),
        original_body: envelope.encode_to_vec(),
        original_content_type: handoff_events::PROTOBUF_CONTENT_TYPE.to_owned(),
        original_message_id: event_id,
        dead_lettered_at: Some(Timestamp::from(now)),
        ..v1::DeadLetter::default()
    }
}

fn parked_email(n: usize) -> String {
    format!("parked{n}@pace.example")
}

/// RFC 3339 to an instant on the Unix clock.
fn at(text: &str) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|err| panic!("{text:?} is not RFC 3339: {err}"))
}

/// A time-bounded version of "replaying 5,000 events against a 100 per 10 s quota never exceeds
/// the quota together with live traffic": 5,000 crm-writer dead letters are parked and a replay
/// of all of them is asked for at 200/s beside a steady stream of live events; the replay runs
/// capped at half of HubSpot's budget for 25 s and is cancelled. HubSpot never answers 429 and
/// never admits more than 100 requests in 10 s, live events keep flowing, the replay kept its
/// rate, and every dead letter is either replayed and delivered once or parked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_5000_replayed_for_25s_beside_live_traffic_keep_the_hubspot_quota() {
    // HubSpot's real quota this time, and the crm-writer pacing to it as it does in production.
    let mut world = Pipeline::start_with(
        handoff_sandbox::testing::config(),
        Tweaks {
            crm_writer: Some(Box::new(|cfg| cfg.hubspot.pacing = PacingConfig::default())),
            // Leads stay out of the email platform: one HubSpot request per event, no write-back.
            email_writer: Some(Box::new(|cfg| cfg.routes.lead_created.enabled = false)),
            ..Tweaks::default()
        },
    )
    .await;
    world.start_dead_letters(|_| {}).await;
    let quota = world.sandbox.config().hubspot.rate_limit.clone();
    assert_eq!((quota.requests, quota.per), (100, Duration::from_secs(10)));

    // Parked straight into the handler's store, eight at a time: the pipeline would take
    // minutes to dead-letter 5,000 through a paced crm-writer.
    let store = DeadLetterStore::new(&redis_config(), &world.namespace).expect("store");
    let normalizer = std::sync::Arc::new(
        handoff_normalize::Normalizer::new(&Default::default()).expect("the default maps"),
    );
    let parking = Instant::now();
    let mut parkers = tokio::task::JoinSet::new();
    for first in 0..8 {
        let (store, normalizer, namespace) =
            (store.clone(), normalizer.clone(), world.namespace.clone());
        parkers.spawn(async move {
            for n in (first..PARKED).step_by(8) {
                let record = crm_dead_letter(&namespace, &normalizer, n);
                let summary = Summary::of(&record, &record.encode_to_vec());
                assert!(store.park(&summary, &record).await.expect("parked"), "{n}");
            }
        });
    }
    while let Some(done) = parkers.join_next().await {
        done.expect("parking");
    }
    eprintln!("parked {PARKED} in {:?}", parking.elapsed());

    // Asked for far more than HubSpot can take: planned at half its budget.
    let request = json!({"filter": {"stage": "crm-writer", "error_class": "retries_exhausted"},
                         "mode": "as_is", "rate": 200.0, "reason": "hubspot is back"});
    let mut dry = request.clone();
    dry["dry_run"] = json!(true);
    let (status, plan) = world.dlq_post("/v1/replays", &dry).await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["count"], PARKED, "{plan:#}");
    assert_eq!(plan["rate"], 5.0, "{plan:#}");
    assert!(
        plan["rate_reason"]
            .as_str()
            .is_some_and(|r| r.contains("hubspot")),
        "{plan:#}"
    );

    // Live events through ingest, at a steady pace, for as long as the replay runs.
    let stop_live = tokio_util::sync::CancellationToken::new();
    let live = tokio::spawn({
        let (http, url, stop) = (
            world.http.clone(),
            world.ingest_url.clone(),
            stop_live.clone(),
        );
        async move {
            let mut sent = Vec::new();
            let mut tick = tokio::time::interval(LIVE_EVERY);
            while !stop.is_cancelled() {
                tick.tick().await;
                let n = sent.len();
                let (id, email) = (format!("evt_live_{n}"), format!("live{n}@pace.example"));
                let answer = http
                    .post(format!("{url}/v1/events/lead.created"))
                    .bearer_auth(handoff_e2e::KEY)
                    .json(&lead(&id, &email, json!({})))
                    .send()
                    .await
                    .expect("post a live event");
                assert_eq!(answer.status().as_u16(), 202, "{id}");
                sent.push((id, email));
            }
            sent
        }
    });

    let asked = Instant::now();
    let started = replay(&world, &request).await;
    let created = Instant::now();
    assert_eq!(
        (started.total, started.rate),
        (PARKED as u64, 5.0),
        "{started:#?}"
    );
    while created.elapsed() < RUN {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = job(&world, &started.id).await;
        eprintln!("{:?}: replay sent {}", created.elapsed(), now.sent);
    }
    let (status, cancelling) = world
        .dlq_post(&format!("/v1/replays/{}/cancel", started.id), &json!({}))
        .await;
    assert_eq!(status, 200, "{cancelling}");
    let ran = created.elapsed();
    let ran_at_most = asked.elapsed();
    let cancelled = wait_job(&world, &started.id, Duration::from_secs(10)).await;
    stop_live.cancel();
    let live = live.await.expect("the live traffic");
    assert_eq!(cancelled.state.label(), "cancelled", "{cancelled:#?}");

    // The replay kept to its capped rate, and made progress at it.
    let rate = started.rate;
    let sent = cancelled.sent;
    eprintln!(
        "replay: {sent} sent in {ran:?} ({:.2}/s); {} live events",
        sent as f64 / ran.as_secs_f64(),
        live.len()
    );
    assert!(
        sent as f64 <= rate * ran_at_most.as_secs_f64() + 2.0,
        "faster than {rate}/s: {sent} in {ran_at_most:?}"
    );
    assert!(
        sent as f64 >= 0.8 * rate * ran.as_secs_f64(),
        "the replay fell behind its {rate}/s: {sent} in {ran:?}"
    );

    // Live events were not starved: each reached HubSpot soon after ingest took it.
    let mut latencies = Vec::new();
    for (id, _) in &live {
        let ledger = wait_stage(&world, id, "crm-writer", is("delivered")).await;
        let took = at(&ledger.stages["crm-writer"].at) - at(&ledger.stages["ingest"].at);
        latencies.push((took.unsigned_abs(), id.clone()));
    }
    latencies.sort();
    let (slowest, slowest_id) = latencies.last().cloned().expect("live events");
    eprintln!(
        "live: median {:?}, slowest {slowest:?}",
        latencies[latencies.len() / 2].0
    );
    assert!(
        slowest <= LIVE_WITHIN,
        "{slowest_id} took {slowest:?} to reach HubSpot beside the replay"
    );

    // Every dead letter replayed and delivered, or parked again; none lost, none doubled.
    let replayed = list(&world, "status=replayed").await;
    assert_eq!(replayed.total, sent, "{:#?}", cancelled);
    assert_eq!(list(&world, "status=replaying").await.total, 0);
    let mut parked_again = 0;
    for offset in (0..PARKED).step_by(1000) {
        let page = list(&world, &format!("status=parked&offset={offset}")).await;
        assert_eq!(page.total, PARKED as u64 - sent);
        for row in &page.rows {
            let replay = row.state.replay.as_ref().expect("taken by the job");
            assert_eq!(
                (replay.job.as_str(), replay.outcome.as_deref()),
                (started.id.as_str(), Some("cancelled")),
                "{row:#?}"
            );
        }
        parked_again += page.rows.len() as u64;
    }
    assert_eq!(parked_again + sent, PARKED as u64);
    let mut expected: BTreeSet<String> = live.iter().map(|(_, email)| email.clone()).collect();
    for row in &replayed.rows {
        wait_stage(&world, &row.summary.event_id, "crm-writer", is("delivered")).await;
        expected.insert(row.summary.email.clone());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = world.sandbox.stats();
    let created: BTreeMap<&str, u64> = stats
        .creates
        .get("contacts")
        .map(|keys| keys.iter().map(|(k, n)| (k.as_str(), *n)).collect())
        .unwrap_or_default();
    assert_eq!(
        created
            .keys()
            .map(|k| (*k).to_owned())
            .collect::<BTreeSet<_>>(),
        expected,
        "contacts created: the live and the replayed, nothing parked"
    );
    assert!(created.values().all(|n| *n == 1), "{created:?}");

    // HubSpot's quota held with both together: no 429, never more than 100 in any 10 s.
    assert_eq!(stats.rate_limited, 0, "{:?}", stats.by_status);
    let admitted = stats
        .max_in_window
        .get(TEST_TOKEN)
        .copied()
        .unwrap_or_default();
    let mut times: Vec<time::OffsetDateTime> = world
        .sandbox
        .requests()
        .iter()
        .filter(|r| r.api == "hubspot" && r.status != Some(429))
        .map(|r| at(&r.at))
        .collect();
    times.sort();
    let logged = handoff_test_support::busiest_window(&times, quota.per);
    eprintln!("HubSpot: at most {admitted} admitted in 10 s (request log: {logged})");
    assert!(
        admitted <= u64::from(quota.requests) && logged <= quota.requests as usize,
        "{admitted} / {logged} in one window"
    );
    // …and the quota was pressed, not idle: otherwise this would prove nothing.
    assert!(
        admitted >= 70,
        "only {admitted} requests in the busiest 10 s"
    );
    world.finish().await;
}
