//! What Mailchimp refuses, limits or fails at, and what the writer makes of it; the stale guard
//! and field ownership on merge fields.

use std::time::Duration;

use handoff_events::v1::canonical_payload::Event;
use handoff_events::v1::{
    Company, Contact, ContactUpdated, CustomerConverted, Envelope, ErrorClass, LeadCreated,
    Payment, PaymentFailed, Subscription,
};
use handoff_sandbox::faults::{ErrorRate, FaultConfig, Storm};

use crate::helpers::{World, envelope, merge};

const T0: i64 = 1_774_700_000;

fn contact_updated(event_id: &str, at: i64, contact: Contact) -> Envelope {
    envelope(
        event_id,
        at,
        "app",
        Event::ContactUpdated(ContactUpdated {
            contact: Some(contact),
            company: None,
        }),
    )
}

fn named(email: &str, first: &str, last: &str) -> Contact {
    Contact {
        email: Some(email.into()),
        first_name: Some(first.into()),
        last_name: Some(last.into()),
        ..Contact::default()
    }
}

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
                amount_minor: Some(1_999),
                currency: Some("EUR".into()),
                ..Payment::default()
            }),
            ..PaymentFailed::default()
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_is_dead_lettered_at_once_with_mailchimps_detail_and_others_keep_flowing() {
    let world = World::start().await;
    // Not an address Mailchimp takes: 400 "Invalid Resource" with a field error.
    world
        .publish(&envelope(
            "bad-1",
            T0,
            "forms",
            Event::LeadCreated(LeadCreated {
                contact: Some(named("not-an-address.example.com", "No", "At")),
                ..LeadCreated::default()
            }),
        ))
        .await;
    world
        .publish(&contact_updated(
            "good-1",
            T0,
            named("good@example.com", "Good", "One"),
        ))
        .await;

    let letters = world.dead_letters(1, Duration::from_secs(15)).await;
    let letter = &letters[0];
    assert_eq!(letter.event_id, "bad-1");
    assert_eq!(letter.error_class(), ErrorClass::Permanent);
    assert_eq!(letter.stage, "email-writer");
    assert_eq!(letter.destination, "mailchimp");
    assert_eq!(letter.error_code, "400");
    assert!(
        letter.error_message.contains("Invalid Resource")
            && letter.error_message.contains("email_address"),
        "Mailchimp's own title and field error are kept: {}",
        letter.error_message
    );
    assert_eq!(letter.attempts.len(), 1, "{:?}", letter.attempts);
    assert_eq!(letter.attempts[0].outcome, "permanent");
    world
        .wait_ledger("good-1", "delivered", Duration::from_secs(10))
        .await;
    world
        .wait_ledger("bad-1", "dead_lettered", Duration::from_secs(5))
        .await;
    let refused = world
        .sandbox
        .requests()
        .iter()
        .filter(|r| r.status == Some(400))
        .count();
    assert_eq!(refused, 1, "a permanent refusal is not retried");
    assert_eq!(
        world.member("good@example.com").status,
        handoff_sandbox::mailchimp::Status::Transactional
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_server_errors_is_retried_and_each_event_delivered_once() {
    let world = World::start().await;
    world.sandbox.set_faults(FaultConfig {
        errors: Some(ErrorRate {
            rate: 1.0,
            ..ErrorRate::default()
        }),
        ..FaultConfig::default()
    });
    let n = 5;
    for i in 0..n {
        world
            .publish(&payment_failed(
                &format!("flaky-{i}"),
                &format!("flaky{i}@example.com"),
                &format!("in_{i}"),
            ))
            .await;
    }
    world
        .wait_for(Duration::from_secs(15), "errors served", |s| {
            s.faults.get("error").copied().unwrap_or(0) >= 2 * n as u64
        })
        .await;
    world.sandbox.clear_faults();
    for i in 0..n {
        let ledger = world
            .wait_ledger(&format!("flaky-{i}"), "delivered", Duration::from_secs(30))
            .await;
        assert_eq!(
            ledger["stages"]["email-writer"]["detail"]["member_event"],
            "sent"
        );
    }
    world.wait_until_idle().await;
    for i in 0..n {
        let events = world.events_of(&format!("flaky{i}@example.com"));
        assert_eq!(events.len(), 1, "flaky{i}: {events:?}");
    }
    assert!(
        world
            .dead_letters(0, Duration::from_millis(10))
            .await
            .is_empty()
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_is_waited_out_without_using_an_attempt() {
    let world = World::start().await;
    world.sandbox.set_faults(FaultConfig {
        storm: Some(Storm {
            requests: Some(3),
            retry_after: Duration::from_secs(1),
            ..Storm::default()
        }),
        ..FaultConfig::default()
    });
    world
        .publish(&contact_updated(
            "storm-1",
            T0,
            named("storm@example.com", "Storm", "Y"),
        ))
        .await;
    world
        .wait_ledger("storm-1", "delivered", Duration::from_secs(20))
        .await;
    // Waited out in the engine: the same call went round again after each Retry-After, never
    // back through the broker's retry queues (which would count `outcome="retry"`).
    let statuses: Vec<Option<u16>> = world.sandbox.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Some(429), Some(429), Some(429), Some(200)]);
    let writer = world.writer.as_ref().expect("writer");
    let metrics = writer.metrics().await;
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("handoff_writer_events_total")
                && l.contains("event_type=\"contact.updated\"")
                && l.contains("outcome=\"retry\"")),
        "{metrics}"
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_event_does_not_roll_merge_fields_back() {
    let world = World::start().await;
    let email = "order@example.com";
    world
        .publish(&contact_updated(
            "newer",
            T0 + 100,
            Contact {
                email: Some(email.into()),
                first_name: Some("Newer".into()),
                ..Contact::default()
            },
        ))
        .await;
    world
        .wait_ledger("newer", "delivered", Duration::from_secs(10))
        .await;
    // Older, but it also carries a field no newer event wrote: that one still lands.
    world
        .publish(&contact_updated(
            "older",
            T0 + 50,
            named(email, "Older", "Family"),
        ))
        .await;
    let ledger = world
        .wait_ledger("older", "delivered", Duration::from_secs(10))
        .await;
    assert_eq!(
        ledger["stages"]["email-writer"]["detail"]["stale_fields"],
        serde_json::json!(["FNAME"])
    );
    let member = world.member(email);
    assert_eq!(merge(&member, "FNAME").as_deref(), Some("Newer"));
    assert_eq!(merge(&member, "LNAME").as_deref(), Some("Family"));
    world.finish().await;
}

/// An older update admitted first must not land after a newer one admitted while its request
/// was on its way: twenty members each get an older and a newer update back to back, handled
/// concurrently, with Mailchimp answering after 0–150 ms at random. Without the member's
/// admission and write taking one turn, older names land last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_update_admitted_first_never_lands_after_a_newer_one() {
    let world = World::start().await;
    world.sandbox.set_faults(FaultConfig {
        seed: Some(7),
        ..FaultConfig::slow(Duration::ZERO, Duration::from_millis(150))
    });
    let n = 20;
    for i in 0..n {
        let email = format!("race{i}@example.com");
        world
            .publish(&contact_updated(
                &format!("race-older-{i}"),
                T0 + 50,
                named(&email, "Older", "Family"),
            ))
            .await;
        world
            .publish(&contact_updated(
                &format!("race-newer-{i}"),
                T0 + 100,
                named(&email, "Newer", "Family"),
            ))
            .await;
    }
    for i in 0..n {
        for which in ["older", "newer"] {
            world
                .wait_ledger(
                    &format!("race-{which}-{i}"),
                    "delivered",
                    Duration::from_secs(30),
                )
                .await;
        }
    }
    let rolled_back: Vec<String> = (0..n)
        .map(|i| format!("race{i}@example.com"))
        .filter(|email| merge(&world.member(email), "FNAME").as_deref() != Some("Newer"))
        .collect();
    assert!(
        rolled_back.is_empty(),
        "rolled back to the older name: {rolled_back:?}"
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_billing_writes_the_plan() {
    let world = World::start().await;
    let email = "owner@example.com";
    let converted = |id: &str, source: &str, plan: &str| {
        envelope(
            id,
            T0,
            source,
            Event::CustomerConverted(CustomerConverted {
                contact: Some(Contact {
                    email: Some(email.into()),
                    ..Contact::default()
                }),
                company: Some(Company {
                    name: Some(format!("{source} co")),
                    ..Company::default()
                }),
                subscription: Some(Subscription {
                    plan: Some(plan.into()),
                    ..Subscription::default()
                }),
                ..CustomerConverted::default()
            }),
        )
    };
    world.publish(&converted("from-app", "app", "free")).await;
    let ledger = world
        .wait_ledger("from-app", "delivered", Duration::from_secs(10))
        .await;
    // Left out because billing owns it, and said so (it is not stale: nothing newer wrote it).
    let detail = &ledger["stages"]["email-writer"]["detail"];
    assert_eq!(
        detail["owned_fields"],
        serde_json::json!(["PLAN"]),
        "{ledger}"
    );
    assert!(detail.get("stale_fields").is_none(), "{ledger}");
    let member = world.member(email);
    assert_eq!(merge(&member, "PLAN"), None, "the app does not own PLAN");
    assert_eq!(merge(&member, "COMPANY").as_deref(), Some("app co"));
    world
        .publish(&converted("from-billing", "billing", "pro"))
        .await;
    world
        .wait_ledger("from-billing", "delivered", Duration::from_secs(10))
        .await;
    assert_eq!(merge(&world.member(email), "PLAN").as_deref(), Some("pro"));
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_message_is_dead_lettered_and_the_writer_keeps_running() {
    let world = World::start().await;
    world
        .publish_bytes("canonical.lead.created", b"\xff\xff not protobuf".to_vec())
        .await;
    let letters = world.dead_letters(1, Duration::from_secs(10)).await;
    assert_eq!(letters[0].error_class(), ErrorClass::Undecodable);
    world
        .publish(&contact_updated(
            "after",
            T0,
            named("after@example.com", "After", "Math"),
        ))
        .await;
    world
        .wait_ledger("after", "delivered", Duration::from_secs(10))
        .await;
    world.finish().await;
}
