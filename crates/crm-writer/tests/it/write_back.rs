//! The write-back: the email-writer's `email.subscriber.synced` report puts the subscriber id on
//! the CRM contact, once, in the order of the events it reports on.

use std::time::Duration;

use handoff_events::v1::canonical_payload::Event;
use handoff_events::v1::envelope::Payload;
use handoff_events::v1::{Contact, Envelope, LeadCreated, Synced, SyncedRecord};
use handoff_events::{Message as _, primary_email};
use handoff_idempotency::{RedisConfig, Store};
use handoff_sandbox::hubspot::ObjectType;
use handoff_test_support as support;

use crate::helpers::{PUBLISHER, World, envelope, record};

const T0: i64 = 1_774_100_000;
const WRITE_BACK: &str = "crm-writer.write-back";

fn lead(event_id: &str, at: i64, email: &str) -> Envelope {
    envelope(
        event_id,
        at,
        "forms",
        Event::LeadCreated(LeadCreated {
            contact: Some(Contact {
                email: Some(email.to_owned()),
                first_name: Some("Robin".into()),
                ..Contact::default()
            }),
            ..LeadCreated::default()
        }),
    )
}

/// The email-writer's report about `event` (its id, publisher and `occurred_at`).
fn report(event: &Envelope, subscriber_id: &str) -> Vec<u8> {
    let email = match &event.payload {
        Some(Payload::Canonical(c)) => primary_email(c).expect("email").to_owned(),
        _ => panic!("a canonical event"),
    };
    Envelope {
        event_type: handoff_bus::EMAIL_SUBSCRIBER_SYNCED.to_owned(),
        payload: Some(Payload::Synced(Synced {
            stage: "email-writer".into(),
            destination: "mailchimp".into(),
            delivered_event_type: event.event_type.clone(),
            records: vec![SyncedRecord {
                kind: "subscriber".into(),
                id: subscriber_id.into(),
                key_property: "email".into(),
                key: email,
                disposition: "updated".into(),
            }],
        })),
        ..event.clone()
    }
    .encode_to_vec()
}

async fn wait_write_back(world: &World, event_id: &str) -> handoff_idempotency::Ledger {
    let store = Store::new(
        &RedisConfig {
            url: support::redis_url(),
            op_timeout: Duration::from_secs(1),
        },
        &world.namespace,
    )
    .expect("store");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let ledger = store.ledger_get(PUBLISHER, event_id).await.expect("ledger");
        if let Some(ledger) = &ledger
            && ledger
                .stages
                .get(WRITE_BACK)
                .is_some_and(|s| s.status == "delivered")
        {
            return ledger.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no write-back of {event_id}: {ledger:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn subscriber_id(world: &World, email: &str) -> Option<String> {
    record(&world.sandbox, ObjectType::Contacts, "email", email)
        .and_then(|p| p.get("handoff_email_subscriber_id").cloned().flatten())
}

#[tokio::test]
async fn the_subscriber_id_lands_on_the_contact_once_and_in_event_order() {
    let world = World::start().await;
    let email = "robin.writeback@example.org";
    let first = lead("wb-1", T0, email);
    world.publish(&first).await;
    world
        .wait_ledger("wb-1", "delivered", Duration::from_secs(15))
        .await;

    world
        .publish_bytes(
            handoff_bus::EMAIL_SUBSCRIBER_SYNCED,
            report(&first, "sub-first"),
        )
        .await;
    let ledger = wait_write_back(&world, "wb-1").await;
    assert_eq!(subscriber_id(&world, email).as_deref(), Some("sub-first"));
    // The report has its own ledger entry; the event's own entry and type are untouched.
    assert_eq!(ledger.event_type.as_deref(), Some("lead.created"));
    assert_eq!(ledger.stages["crm-writer"].status, "delivered");
    let contact_id = ledger.stages[WRITE_BACK].detail["records"]["contact"]["id"].clone();
    assert!(contact_id.is_string(), "{ledger:?}");

    // A newer event's report, then an older one's: the newer id stays.
    let newer = lead("wb-2", T0 + 100, email);
    let older = lead("wb-3", T0 + 50, email);
    world
        .publish_bytes(
            handoff_bus::EMAIL_SUBSCRIBER_SYNCED,
            report(&newer, "sub-newer"),
        )
        .await;
    wait_write_back(&world, "wb-2").await;
    world
        .publish_bytes(
            handoff_bus::EMAIL_SUBSCRIBER_SYNCED,
            report(&older, "sub-older"),
        )
        .await;
    let ledger = wait_write_back(&world, "wb-3").await;
    assert_eq!(
        ledger.stages[WRITE_BACK].detail["records"]["contact"]["disposition"], "stale",
        "{ledger:?}"
    );
    assert_eq!(subscriber_id(&world, email).as_deref(), Some("sub-newer"));

    // Redelivered reports make no CRM request.
    let before = world.sandbox.stats().requests;
    for _ in 0..3 {
        world
            .publish_bytes(
                handoff_bus::EMAIL_SUBSCRIBER_SYNCED,
                report(&newer, "sub-newer"),
            )
            .await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while world.waiting().await > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(world.sandbox.stats().requests, before);
    assert_eq!(world.sandbox.stats().creates["contacts"][email], 1);
    world.finish().await;
}

#[tokio::test]
async fn a_report_before_the_contact_exists_creates_it_once() {
    let world = World::start().await;
    let email = "early.report@example.org";
    let event = lead("wb-early", T0, email);
    // The email-writer was faster than the crm-writer.
    world
        .publish_bytes(
            handoff_bus::EMAIL_SUBSCRIBER_SYNCED,
            report(&event, "sub-early"),
        )
        .await;
    wait_write_back(&world, "wb-early").await;
    world.publish(&event).await;
    world
        .wait_ledger("wb-early", "delivered", Duration::from_secs(15))
        .await;
    let contact = record(&world.sandbox, ObjectType::Contacts, "email", email).expect("contact");
    assert_eq!(
        contact
            .get("handoff_email_subscriber_id")
            .cloned()
            .flatten()
            .as_deref(),
        Some("sub-early")
    );
    assert_eq!(
        contact.get("firstname").cloned().flatten().as_deref(),
        Some("Robin")
    );
    assert_eq!(world.sandbox.stats().creates["contacts"][email], 1);
    world.finish().await;
}

#[tokio::test]
async fn a_report_without_a_subscriber_is_dead_lettered() {
    let world = World::start().await;
    let event = lead("wb-bad", T0, "nobody@example.org");
    let bad = Envelope {
        event_type: handoff_bus::EMAIL_SUBSCRIBER_SYNCED.to_owned(),
        payload: Some(Payload::Synced(Synced::default())),
        ..event
    };
    world
        .publish_bytes(handoff_bus::EMAIL_SUBSCRIBER_SYNCED, bad.encode_to_vec())
        .await;
    let dead = world.dead_letters(1, Duration::from_secs(10)).await;
    assert_eq!(dead[0].event_id, "wb-bad");
    assert!(
        dead[0].error_message.contains("no subscriber"),
        "{:?}",
        dead[0]
    );
    world.finish().await;
}
