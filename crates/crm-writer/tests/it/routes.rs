//! Every route against the sandbox CRM: the right records, and exactly one create per entity
//! however often the stream is redelivered or replayed.

use std::time::Duration;

use handoff_events::v1::canonical_payload::Event;
use handoff_events::v1::{
    Attribution, Company, Contact, ContactUpdated, CustomerConverted, Deal, DealStageChanged,
    Envelope, LeadCreated, Meeting, MeetingBooked, Payment, PaymentFailed, Subscription,
};
use handoff_sandbox::hubspot::ObjectType;

use crate::helpers::{World, envelope, record};

const T0: i64 = 1_774_000_000;

fn jordan() -> Contact {
    Contact {
        email: Some("jordan.lee@example.org".into()),
        first_name: Some("Jordan".into()),
        last_name: Some("Lee".into()),
        phone: Some("+14155550134".into()),
        country: Some("US".into()),
        lifecycle_stage: Some("marketingqualifiedlead".into()),
        ..Contact::default()
    }
}

fn acme() -> Company {
    Company {
        name: Some("Acme Analytics".into()),
        domain: Some("acme-analytics.example".into()),
        ..Company::default()
    }
}

/// One event of each type, in time order, about the same person where it makes sense.
pub fn stream(prefix: &str) -> Vec<Envelope> {
    let id = |n: u32| format!("{prefix}-{n}");
    vec![
        envelope(
            &id(1),
            T0,
            "forms",
            Event::LeadCreated(LeadCreated {
                contact: Some(jordan()),
                company: Some(acme()),
                attribution: Some(Attribution {
                    utm_source: Some("google".into()),
                    utm_medium: Some("cpc".into()),
                    gclid: Some("Cj0KCQjw_example".into()),
                    ..Attribution::default()
                }),
                form_id: Some("demo-request".into()),
            }),
        ),
        envelope(
            &id(2),
            T0 + 60,
            "scheduler",
            Event::MeetingBooked(MeetingBooked {
                contact: Some(Contact {
                    email: Some("jordan.lee@example.org".into()),
                    ..Contact::default()
                }),
                meeting: Some(Meeting {
                    meeting_id: Some("mtg-77".into()),
                    meeting_type: Some("demo".into()),
                    ..Meeting::default()
                }),
                attribution: None,
            }),
        ),
        envelope(
            &id(3),
            T0 + 120,
            "crm",
            Event::DealStageChanged(DealStageChanged {
                deal: Some(Deal {
                    deal_id: Some("meeting:mtg-77".into()),
                    stage: Some("contractsent".into()),
                    previous_stage: Some("appointmentscheduled".into()),
                    ..Deal::default()
                }),
                contact: Some(Contact {
                    email: Some("jordan.lee@example.org".into()),
                    ..Contact::default()
                }),
                company: None,
            }),
        ),
        envelope(
            &id(4),
            T0 + 180,
            "billing",
            Event::CustomerConverted(CustomerConverted {
                contact: Some(Contact {
                    email: Some("jordan.lee@example.org".into()),
                    ..Contact::default()
                }),
                company: Some(acme()),
                deal: Some(Deal {
                    deal_id: Some("meeting:mtg-77".into()),
                    amount_minor: Some(120_000),
                    currency: Some("USD".into()),
                    ..Deal::default()
                }),
                subscription: Some(Subscription {
                    plan: Some("pro".into()),
                    status: Some("active".into()),
                    ..Subscription::default()
                }),
                attribution: None,
            }),
        ),
        envelope(
            &id(5),
            T0 + 240,
            "billing",
            Event::PaymentFailed(PaymentFailed {
                contact: Some(Contact {
                    email: Some("jordan.lee@example.org".into()),
                    ..Contact::default()
                }),
                payment: Some(Payment {
                    invoice_id: Some("in_1001".into()),
                    amount_minor: Some(4_900),
                    currency: Some("USD".into()),
                    failure_code: Some("card_declined".into()),
                    ..Payment::default()
                }),
                subscription: None,
                ticket: None,
            }),
        ),
        envelope(
            &id(6),
            T0 + 300,
            "app",
            Event::ContactUpdated(ContactUpdated {
                contact: Some(Contact {
                    email: Some("jordan.lee@example.org".into()),
                    job_title: Some("Head of Data".into()),
                    ..Contact::default()
                }),
                company: None,
            }),
        ),
    ]
}

fn prop(props: &std::collections::BTreeMap<String, Option<String>>, name: &str) -> Option<String> {
    props.get(name).cloned().flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_writes_the_right_records_and_replays_create_nothing_twice() {
    let world = World::start().await;
    let events = stream("routes");
    for e in &events {
        world.publish(e).await;
    }
    for e in &events {
        world
            .wait_ledger(&e.event_id, "delivered", Duration::from_secs(20))
            .await;
    }

    let sb = &world.sandbox;
    let contact =
        record(sb, ObjectType::Contacts, "email", "jordan.lee@example.org").expect("contact");
    assert_eq!(prop(&contact, "firstname").as_deref(), Some("Jordan"));
    assert_eq!(prop(&contact, "phone").as_deref(), Some("+14155550134"));
    assert_eq!(
        prop(&contact, "handoff_utm_source").as_deref(),
        Some("google")
    );
    assert_eq!(
        prop(&contact, "handoff_gclid").as_deref(),
        Some("Cj0KCQjw_example")
    );
    assert_eq!(
        prop(&contact, "lifecyclestage").as_deref(),
        Some("customer")
    );
    assert_eq!(prop(&contact, "plan").as_deref(), Some("pro"));
    assert_eq!(prop(&contact, "handoff_health").as_deref(), Some("at_risk"));
    assert_eq!(prop(&contact, "jobtitle").as_deref(), Some("Head of Data"));

    let company = record(
        sb,
        ObjectType::Companies,
        "handoff_external_id",
        "domain:acme-analytics.example",
    )
    .expect("company");
    assert_eq!(prop(&company, "name").as_deref(), Some("Acme Analytics"));

    let deal = record(sb, ObjectType::Deals, "handoff_deal_id", "meeting:mtg-77").expect("deal");
    assert_eq!(prop(&deal, "dealstage").as_deref(), Some("closedwon"));
    assert_eq!(prop(&deal, "amount").as_deref(), Some("1200.00"));

    let ticket = record(
        sb,
        ObjectType::Tickets,
        "handoff_ticket_key",
        "invoice:in_1001",
    )
    .expect("ticket");
    assert_eq!(prop(&ticket, "hs_ticket_priority").as_deref(), Some("HIGH"));
    assert!(
        prop(&ticket, "content")
            .unwrap_or_default()
            .contains("card_declined")
    );

    // Associations: contact–company, deal–contact, deal–company, ticket–contact.
    let links = sb.associations();
    let has = |from: ObjectType, to: ObjectType| {
        links.iter().any(|a| a.from_type == from && a.to_type == to)
    };
    assert!(
        has(ObjectType::Contacts, ObjectType::Companies),
        "{links:?}"
    );
    assert!(has(ObjectType::Deals, ObjectType::Contacts), "{links:?}");
    assert!(has(ObjectType::Deals, ObjectType::Companies), "{links:?}");
    assert!(has(ObjectType::Tickets, ObjectType::Contacts), "{links:?}");

    // Every delivered event that touched a contact reported it.
    let synced = world.synced().await;
    assert_eq!(
        synced.len(),
        5,
        "all but deal.stage_changed touch a contact"
    );

    // Redeliver every message three more times: all duplicates, acked without a CRM call.
    let requests_before = sb.stats().requests;
    for _ in 0..3 {
        for e in &events {
            world.publish(e).await;
        }
    }
    wait_until_idle(&world).await;
    assert_eq!(
        sb.stats().requests,
        requests_before,
        "duplicates never reach the CRM"
    );

    // Replay the whole stream once more with the dedupe records gone (past their retention):
    // every write is an upsert by natural key, so records are updated, never created again.
    forget_dedupe(&world.namespace).await;
    for e in &events {
        world.publish(e).await;
    }
    world
        .wait_for(Duration::from_secs(20), "replay written", |s| {
            s.requests > requests_before
        })
        .await;
    wait_until_idle(&world).await;
    assert!(
        sb.stats().requests >= requests_before + events.len() as u64,
        "the replay wrote every event again"
    );

    let stats = sb.stats();
    for (object_type, keys) in &stats.creates {
        for (key, n) in keys {
            assert_eq!(*n, 1, "{object_type} {key} created {n} times");
        }
    }
    let created: Vec<(&str, usize)> = stats
        .creates
        .iter()
        .map(|(t, keys)| (t.as_str(), keys.len()))
        .collect();
    assert_eq!(
        created,
        [
            ("associations", 4),
            ("companies", 1),
            ("contacts", 1),
            ("deals", 1),
            ("tickets", 1)
        ],
        "one contact, company, deal and ticket, and their four links"
    );
    // After the replay the stale guard let each record's same-time updates through again.
    assert!(
        stats
            .updates
            .values()
            .map(|k| k.values().sum::<u64>())
            .sum::<u64>()
            > 0
    );
    world.finish().await;
}

/// Waits until the writer's queue is empty and the sandbox saw no request for 500 ms.
pub async fn wait_until_idle(world: &World) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let before = world.sandbox.stats().requests;
        tokio::time::sleep(Duration::from_millis(500)).await;
        if world.waiting().await == 0 && world.sandbox.stats().requests == before {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the writer never went idle"
        );
    }
}

/// Deletes the crm-writer's dedupe records of `namespace`, as if their retention had passed.
pub async fn forget_dedupe(namespace: &str) {
    let client = redis::Client::open(handoff_test_support::redis_url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{namespace}:idem:crm-writer:*"))
        .query_async(&mut conn)
        .await
        .expect("keys");
    assert!(!keys.is_empty(), "the writer keeps dedupe records");
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .expect("del");
}
