//! The member event's check of Mailchimp's event list (`GET …/members/{hash}/events`) before it
//! posts: an event an earlier attempt posted, whose answer was lost or whose claim was never
//! completed, is found there and not posted again; a first-time event is posted once, after one
//! check.

use std::time::Duration;

use handoff_events::v1::canonical_payload::Event;
use handoff_events::v1::{Contact, ContactUpdated, Envelope, Payment, PaymentFailed};
use handoff_sandbox::faults::{FaultConfig, Latency, Timeout, TimeoutMode};
use handoff_sandbox::mailchimp::Status;
use handoff_sandbox::mailchimp::hash::subscriber_hash;
use handoff_sandbox::request_log::RequestEntry;
use handoff_sandbox::testing::TEST_MAILCHIMP_KEY;
use serde_json::{Map, Value, json};

use crate::helpers::{LIST, World, envelope};

const T0: i64 = 1_774_800_000;

fn payment_failed(event_id: &str, email: &str, invoice: &str) -> Envelope {
    envelope(
        event_id,
        T0,
        "billing",
        Event::PaymentFailed(PaymentFailed {
            contact: Some(Contact {
                email: Some(email.into()),
                ..Contact::default()
            }),
            payment: Some(Payment {
                invoice_id: Some(invoice.into()),
                amount_minor: Some(2_500),
                currency: Some("EUR".into()),
                failure_code: Some("card_declined".into()),
                ..Payment::default()
            }),
            ..PaymentFailed::default()
        }),
    )
}

/// The requests to the member's events route with `method` (`GET`: checks, `POST`: posts).
fn events_calls(world: &World, method: &str) -> Vec<RequestEntry> {
    world
        .sandbox
        .requests()
        .into_iter()
        .filter(|r| r.method == method && r.path.ends_with("/events"))
        .collect()
}

/// Records an event on the member straight in the sandbox's store, as a POST that Mailchimp
/// applied would have (the writer's own log and claims know nothing of it).
fn recorded_in_mailchimp(world: &World, email: &str, name: &str, invoice: &str) {
    let mut properties = Map::new();
    properties.insert("invoice_id".into(), json!(invoice));
    world
        .sandbox
        .lock()
        .mailchimp
        .store
        .add_event(
            LIST,
            &subscriber_hash(email),
            name.to_owned(),
            properties,
            Some("2026-03-29T10:00:00Z".to_owned()),
        )
        .expect("the member exists");
}

fn member_event_outcome(ledger: &Value) -> &str {
    ledger["stages"]["email-writer"]["detail"]["member_event"]
        .as_str()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_whose_answer_is_lost_is_found_on_retry_and_not_sent_again() {
    let world = World::start().await;
    let email = "lost.answer@example.com";
    // Faults cannot be aimed at one route, so they are switched between two requests: every
    // request takes a second until the upsert has been answered and the check is under way; then
    // the next request, the POST, is applied by Mailchimp and its answer never comes back.
    world.sandbox.set_faults(FaultConfig {
        latency: Some(Latency {
            fixed: Duration::from_secs(1),
            ..Latency::default()
        }),
        ..FaultConfig::default()
    });
    world
        .publish(&payment_failed("lost-1", email, "in_500"))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // The upsert was answered and the next request (the check) is held by the latency.
        let answered = world.sandbox.stats().requests >= 1;
        let held = world
            .sandbox
            .lock()
            .mailchimp
            .connections
            .in_flight()
            .get(TEST_MAILCHIMP_KEY)
            .copied()
            .unwrap_or(0);
        if answered && held == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the check never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Its faults were decided as it arrived, just after it took its connection.
    tokio::time::sleep(Duration::from_millis(100)).await;
    world.sandbox.set_faults(FaultConfig {
        timeout: Some(Timeout {
            requests: Some(1),
            hold: Duration::from_millis(200),
            mode: TimeoutMode::ApplyThenDrop,
            ..Timeout::default()
        }),
        ..FaultConfig::default()
    });

    let ledger = world
        .wait_ledger("lost-1", "delivered", Duration::from_secs(30))
        .await;
    assert_eq!(member_event_outcome(&ledger), "already_sent", "{ledger}");
    world.wait_until_idle().await;

    // The fault hit the POST: Mailchimp recorded the event, the writer never heard back.
    let posts = events_calls(&world, "POST");
    assert_eq!(posts.len(), 1, "posted once: {posts:#?}");
    assert_eq!(posts[0].fault.as_deref(), Some("timeout"));
    assert_eq!(posts[0].status, None, "the answer was dropped");
    assert_eq!(posts[0].writes.len(), 1, "and the event was written");
    // The retry checked again, found it, and did not post.
    let checks = events_calls(&world, "GET");
    assert_eq!(checks.len(), 2, "one check per attempt: {checks:#?}");
    assert!(checks.iter().all(|r| r.status == Some(200)));
    let events = world.events_of(email);
    assert_eq!(
        events.len(),
        1,
        "one payment_failed for the invoice: {events:?}"
    );
    assert_eq!(events[0].name, "payment_failed");
    assert_eq!(events[0].properties["invoice_id"], "in_500");

    let writer = world.writer.as_ref().expect("writer");
    let metrics = writer.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("handoff_writer_events_total")
                && l.contains("event_type=\"payment.failed\"")
                && l.contains("outcome=\"retry\"")),
        "the lost answer was retried through the broker: {metrics}"
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_posted_before_the_claim_was_recorded_is_not_sent_again() {
    let world = World::start().await;
    let email = "crashed@example.com";
    // A worker posted the event and died before recording it; its claim's lease has run out, so
    // Redis knows nothing. The event arrives afresh (attempt 1, not redelivered), as a deferred
    // redelivery or a second report of the invoice under a new event id would.
    world
        .sandbox
        .mailchimp_seed_member(LIST, email, Status::Subscribed)
        .expect("seeded");
    recorded_in_mailchimp(&world, email, "payment_failed", "in_600");

    world
        .publish(&payment_failed("crashed-1", email, "in_600"))
        .await;
    let ledger = world
        .wait_ledger("crashed-1", "delivered", Duration::from_secs(15))
        .await;
    assert_eq!(member_event_outcome(&ledger), "already_sent", "{ledger}");
    assert!(events_calls(&world, "POST").is_empty(), "nothing posted");
    assert_eq!(events_calls(&world, "GET").len(), 1);

    // The check completed the invoice's claim: the next report of it is settled in Redis,
    // without asking Mailchimp again.
    world
        .publish(&payment_failed("crashed-2", email, "in_600"))
        .await;
    let ledger = world
        .wait_ledger("crashed-2", "delivered", Duration::from_secs(15))
        .await;
    assert_eq!(member_event_outcome(&ledger), "already_sent", "{ledger}");
    world.wait_until_idle().await;
    assert_eq!(events_calls(&world, "GET").len(), 1, "no second check");
    assert!(events_calls(&world, "POST").is_empty());
    assert_eq!(world.events_of(email).len(), 1);
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_time_event_is_posted_once_after_one_check() {
    let world = World::start().await;
    let email = "first.time@example.com";
    // Events that are not this one: another invoice, and another event name for this invoice.
    world
        .sandbox
        .mailchimp_seed_member(LIST, email, Status::Subscribed)
        .expect("seeded");
    recorded_in_mailchimp(&world, email, "payment_failed", "in_699");
    recorded_in_mailchimp(&world, email, "payment_retried", "in_700");

    world
        .publish(&envelope(
            "first-0",
            T0,
            "app",
            Event::ContactUpdated(ContactUpdated {
                contact: Some(Contact {
                    email: Some(email.into()),
                    first_name: Some("First".into()),
                    ..Contact::default()
                }),
                company: None,
            }),
        ))
        .await;
    world
        .wait_ledger("first-0", "delivered", Duration::from_secs(15))
        .await;
    assert!(
        events_calls(&world, "GET").is_empty(),
        "an event without a member event makes no check"
    );

    world
        .publish(&payment_failed("first-1", email, "in_700"))
        .await;
    let ledger = world
        .wait_ledger("first-1", "delivered", Duration::from_secs(15))
        .await;
    assert_eq!(member_event_outcome(&ledger), "sent", "{ledger}");
    world.wait_until_idle().await;

    let calls: Vec<(String, String)> = world
        .sandbox
        .requests()
        .into_iter()
        .skip(1)
        .map(|r| {
            let tail = r.path.rsplit('/').next().unwrap_or_default().to_owned();
            (r.method, tail)
        })
        .collect();
    let hash = subscriber_hash(email);
    assert_eq!(
        calls,
        [
            ("PUT".to_owned(), hash),
            ("GET".to_owned(), "events".to_owned()),
            ("POST".to_owned(), "events".to_owned()),
        ],
        "upsert, one check, one post"
    );
    let sent: Vec<(String, String)> = world
        .events_of(email)
        .into_iter()
        .map(|e| {
            let invoice = e.properties["invoice_id"].as_str().unwrap_or_default();
            (e.name.clone(), invoice.to_owned())
        })
        .collect();
    assert_eq!(
        sent,
        [
            ("payment_failed".to_owned(), "in_699".to_owned()),
            ("payment_retried".to_owned(), "in_700".to_owned()),
            ("payment_failed".to_owned(), "in_700".to_owned()),
        ]
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_reads_every_page_of_a_long_history() {
    let world = World::start().await;
    let email = "long.history@example.com";
    world
        .sandbox
        .mailchimp_seed_member(LIST, email, Status::Subscribed)
        .expect("seeded");
    // The invoice's event, then 1,200 others with the same occurred_at: it is on the second page.
    recorded_in_mailchimp(&world, email, "payment_failed", "in_800");
    for i in 0..1_200 {
        recorded_in_mailchimp(&world, email, "page_viewed", &format!("view_{i}"));
    }
    world
        .publish(&payment_failed("long-1", email, "in_800"))
        .await;
    let ledger = world
        .wait_ledger("long-1", "delivered", Duration::from_secs(15))
        .await;
    assert_eq!(member_event_outcome(&ledger), "already_sent", "{ledger}");
    let checks = events_calls(&world, "GET");
    assert_eq!(checks.len(), 2, "two pages of 1,000: {checks:#?}");
    assert!(events_calls(&world, "POST").is_empty());
    world.finish().await;
}
