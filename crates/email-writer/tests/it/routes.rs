//! Every default route against the sandbox's Mailchimp: the right member (merge fields, tags,
//! status), the `email.subscriber.synced` report and the ledger; member events exactly once per
//! invoice however often the stream is redelivered, replayed or repeated under new event ids.

use std::time::Duration;

use handoff_bus::{CRM_CONTACT_SYNCED, EMAIL_WRITER};
use handoff_events::v1::canonical_payload::Event;
use handoff_events::v1::envelope::Payload;
use handoff_events::v1::{
    Attribution, Company, Contact, ContactUpdated, CustomerConverted, Deal, DealStageChanged,
    Envelope, ErrorClass, LeadCreated, Meeting, MeetingBooked, Payment, PaymentFailed,
    Subscription, Synced, SyncedRecord,
};
use handoff_sandbox::mailchimp::Status;

use crate::helpers::{World, envelope, merge, tags};

const T0: i64 = 1_774_000_000;
const EMAIL: &str = "jordan.lee@example.org";

fn jordan() -> Contact {
    Contact {
        email: Some(EMAIL.into()),
        first_name: Some("Jordan".into()),
        last_name: Some("Lee".into()),
        phone: Some("+14155550134".into()),
        country: Some("US".into()),
        marketing_opt_in: Some(true),
        ..Contact::default()
    }
}

fn only_email() -> Contact {
    Contact {
        email: Some(EMAIL.into()),
        ..Contact::default()
    }
}

fn payment_failed(event_id: &str, at: i64, email: &str, invoice: &str) -> Envelope {
    envelope(
        event_id,
        at,
        "billing",
        Event::PaymentFailed(PaymentFailed {
            contact: Some(Contact {
                email: Some(email.into()),
                ..Contact::default()
            }),
            payment: Some(Payment {
                invoice_id: Some(invoice.into()),
                amount_minor: Some(4_900),
                currency: Some("USD".into()),
                failure_code: Some("card_declined".into()),
                attempt_count: Some(1),
                ..Payment::default()
            }),
            subscription: Some(Subscription {
                plan: Some("pro".into()),
                ..Subscription::default()
            }),
            ticket: None,
        }),
    )
}

/// One event of each type, in time order, about the same person.
fn stream(prefix: &str) -> Vec<Envelope> {
    let id = |n: u32| format!("{prefix}-{n}");
    vec![
        envelope(
            &id(1),
            T0,
            "forms",
            Event::LeadCreated(LeadCreated {
                contact: Some(jordan()),
                company: Some(Company {
                    name: Some("Acme Analytics".into()),
                    ..Company::default()
                }),
                attribution: Some(Attribution {
                    utm_source: Some("google".into()),
                    utm_medium: Some("cpc".into()),
                    utm_campaign: Some("spring".into()),
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
                contact: Some(only_email()),
                meeting: Some(Meeting {
                    meeting_id: Some("mtg-77".into()),
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
                    ..Deal::default()
                }),
                contact: Some(only_email()),
                company: None,
            }),
        ),
        envelope(
            &id(4),
            T0 + 180,
            "billing",
            Event::CustomerConverted(CustomerConverted {
                contact: Some(Contact {
                    owner_email: Some("sam@seller.example".into()),
                    ..only_email()
                }),
                company: Some(Company {
                    name: Some("Acme Analytics Inc".into()),
                    ..Company::default()
                }),
                subscription: Some(Subscription {
                    plan: Some("pro".into()),
                    ..Subscription::default()
                }),
                ..CustomerConverted::default()
            }),
        ),
        payment_failed(&id(5), T0 + 240, EMAIL, "in_1001"),
        envelope(
            &id(6),
            T0 + 300,
            "app",
            Event::ContactUpdated(ContactUpdated {
                contact: Some(Contact {
                    first_name: Some("Jo".into()),
                    ..only_email()
                }),
                company: None,
            }),
        ),
    ]
}

/// The events of the stream whose routes are on by default.
const WRITTEN: [u32; 4] = [1, 4, 5, 6];

/// Publishes the stream one event at a time, waiting for each written one to be delivered. The
/// stale guard admits a field before its write, so two events writing the same field at once
/// could still land in the wrong order; in order, the values to expect are certain.
async fn publish_in_order(world: &World, events: &[Envelope]) {
    for (n, e) in (1..).zip(events) {
        world.publish(e).await;
        if WRITTEN.contains(&n) {
            world
                .wait_ledger(&e.event_id, "delivered", Duration::from_secs(20))
                .await;
        }
    }
}

fn synced_payload(envelope: &Envelope) -> &Synced {
    match &envelope.payload {
        Some(Payload::Synced(synced)) => synced,
        other => panic!("not a Synced report: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_default_route_writes_the_right_member_and_reports_it() {
    let world = World::start().await;
    let events = stream("routes");
    publish_in_order(&world, &events).await;
    world.wait_until_idle().await;

    let member = world.member(EMAIL);
    assert_eq!(member.status, Status::Subscribed, "opted in on the lead");
    assert_eq!(merge(&member, "FNAME").as_deref(), Some("Jo"));
    assert_eq!(merge(&member, "LNAME").as_deref(), Some("Lee"));
    assert_eq!(merge(&member, "PHONE").as_deref(), Some("+14155550134"));
    assert_eq!(merge(&member, "COUNTRY").as_deref(), Some("US"));
    assert_eq!(
        merge(&member, "COMPANY").as_deref(),
        Some("Acme Analytics Inc")
    );
    assert_eq!(
        merge(&member, "PLAN").as_deref(),
        Some("pro"),
        "billing owns PLAN"
    );
    assert_eq!(
        merge(&member, "OWNER").as_deref(),
        Some("sam@seller.example")
    );
    assert_eq!(
        tags(&member),
        [
            "campaign:spring",
            "customer",
            "journey:lead-nurture",
            "medium:cpc",
            "source:google"
        ]
    );

    let events_sent = world.events_of(EMAIL);
    assert_eq!(events_sent.len(), 1, "{events_sent:?}");
    let sent = &events_sent[0];
    assert_eq!(sent.name, "payment_failed");
    assert_eq!(sent.properties["invoice_id"], "in_1001");
    assert_eq!(sent.properties["amount"], "49.00");
    assert_eq!(sent.properties["currency"], "USD");
    assert_eq!(sent.properties["failure_code"], "card_declined");
    assert_eq!(sent.properties["plan"], "pro");
    assert!(sent.occurred_at.is_some());

    // The routes that are off were acked without a call, and the ledger says so.
    for n in [2, 3] {
        let ledger = world.ledger(&format!("routes-{n}")).await;
        assert_eq!(
            ledger
                .as_ref()
                .and_then(|l| l.stages.get(EMAIL_WRITER))
                .map(|s| s.status.as_str()),
            Some("skipped"),
            "routes-{n} is skipped: {ledger:?}"
        );
    }
    let stats = world.sandbox.stats();
    let puts = world
        .sandbox
        .requests()
        .iter()
        .filter(|r| r.method == "PUT")
        .count();
    assert_eq!(puts, WRITTEN.len(), "one upsert per written event");
    assert_eq!(stats.resubscribed, 0);

    // One report per written event, each about the member.
    let synced = world.synced().await;
    assert_eq!(synced.len(), WRITTEN.len());
    let mut reported: Vec<String> = synced.iter().map(|e| e.event_id.clone()).collect();
    reported.sort();
    assert_eq!(reported, ["routes-1", "routes-4", "routes-5", "routes-6"]);
    for report in &synced {
        let s = synced_payload(report);
        assert_eq!(s.stage, "email-writer");
        assert_eq!(s.destination, "mailchimp");
        assert_eq!(
            s.records,
            [SyncedRecord {
                kind: "subscriber".into(),
                id: member.id.clone(),
                key_property: "email".into(),
                key: EMAIL.into(),
                disposition: "upserted".into(),
            }]
        );
        assert_eq!(report.event_type, "email.subscriber.synced");
    }

    // The ledger: the member's id and status, the member event, and the email's timeline.
    let ledger = world
        .wait_ledger("routes-5", "delivered", Duration::from_secs(1))
        .await;
    let detail = &ledger["stages"]["email-writer"]["detail"];
    assert_eq!(detail["destination"], "mailchimp");
    assert_eq!(detail["records"]["subscriber"]["id"], member.id.as_str());
    assert_eq!(detail["records"]["subscriber"]["status"], "subscribed");
    assert_eq!(detail["member_event"], "sent");
    let timeline: Vec<String> = world
        .timeline(EMAIL)
        .await
        .into_iter()
        .map(|l| l.event_id)
        .collect();
    for n in WRITTEN {
        assert!(
            timeline.contains(&format!("routes-{n}")),
            "routes-{n} in {timeline:?}"
        );
    }
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliveries_and_a_replay_send_no_second_member_event() {
    let world = World::start().await;
    let events = stream("again");
    publish_in_order(&world, &events).await;
    world.wait_until_idle().await;
    let before = world.member(EMAIL);
    let requests_before = world.sandbox.stats().requests;

    // Three more deliveries of everything: duplicates, acked without a Mailchimp call.
    for _ in 0..3 {
        for e in &events {
            world.publish(e).await;
        }
    }
    world.wait_until_idle().await;
    assert_eq!(
        world.sandbox.stats().requests,
        requests_before,
        "duplicates never reach Mailchimp"
    );

    // A replay past the events' dedupe retention: the member is written again, identically, and
    // the invoice's event is remembered on its own, so it is not sent again.
    world.forget_event_dedupe().await;
    for e in &events {
        world.publish(e).await;
    }
    world
        .wait_for(Duration::from_secs(20), "replay written", |s| {
            s.requests > requests_before
        })
        .await;
    world.wait_until_idle().await;
    let ledger = world
        .wait_ledger("again-5", "delivered", Duration::from_secs(10))
        .await;
    assert_eq!(
        ledger["stages"]["email-writer"]["detail"]["member_event"],
        "already_sent"
    );
    let after = world.member(EMAIL);
    assert_eq!(after.merge_fields, before.merge_fields);
    assert_eq!(tags(&after), tags(&before));
    assert_eq!(after.status, before.status);
    assert_eq!(world.events_of(EMAIL).len(), 1, "one member event, ever");
    let stats = world.sandbox.stats();
    assert_eq!(stats.creates["members"].len(), 1);
    assert_eq!(stats.creates["members"][EMAIL], 1, "created once");
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_failed_twice_for_one_invoice_sends_one_member_event() {
    let world = World::start().await;
    // Billing reports the same failed invoice twice (two event ids), at once, and another
    // invoice once.
    let email = "dunning@example.com";
    let first = payment_failed("pay-a", T0, email, "in_77:2026/03");
    let second = payment_failed("pay-b", T0 + 5, email, "in_77:2026/03");
    let other = payment_failed("pay-c", T0 + 10, email, "in_78");
    world.publish(&first).await;
    world.publish(&second).await;
    world.publish(&other).await;
    let mut outcomes = Vec::new();
    for id in ["pay-a", "pay-b"] {
        let ledger = world
            .wait_ledger(id, "delivered", Duration::from_secs(30))
            .await;
        outcomes.push(
            ledger["stages"]["email-writer"]["detail"]["member_event"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    outcomes.sort();
    assert_eq!(outcomes, ["already_sent", "sent"]);
    world
        .wait_ledger("pay-c", "delivered", Duration::from_secs(10))
        .await;
    world.wait_until_idle().await;
    let sent = world.events_of(email);
    let mut invoices: Vec<String> = sent
        .iter()
        .map(|e| {
            e.properties["invoice_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    invoices.sort();
    assert_eq!(
        invoices,
        ["in_77:2026/03", "in_78"],
        "one event per invoice"
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crm_contact_synced_reports_are_acked_as_skipped() {
    let world = World::start().await;
    let report = Envelope {
        event_id: "crm-report-1".into(),
        event_type: CRM_CONTACT_SYNCED.into(),
        schema_version: 1,
        publisher_id: crate::helpers::PUBLISHER.into(),
        source: "forms".into(),
        payload: Some(Payload::Synced(Synced {
            stage: "crm-writer".into(),
            destination: "hubspot".into(),
            delivered_event_type: "lead.created".into(),
            records: vec![SyncedRecord {
                kind: "contact".into(),
                id: "1001".into(),
                key_property: "email".into(),
                key: EMAIL.into(),
                disposition: "created".into(),
            }],
        })),
        ..Envelope::default()
    };
    world.publish_to(CRM_CONTACT_SYNCED, &report).await;
    world.wait_until_idle().await;
    let writer = world.writer.as_ref().expect("writer");
    let metrics = writer.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("handoff_writer_events_total")
                && l.contains("stage=\"email-writer\"")
                && l.contains("event_type=\"crm.contact.synced\"")
                && l.contains("outcome=\"skipped\"")),
        "{metrics}"
    );
    assert_eq!(world.sandbox.stats().requests, 0);
    assert!(
        world
            .dead_letters(0, Duration::from_millis(10))
            .await
            .is_empty()
    );
    assert!(!world.claimed("crm-report-1").await, "no claim for a skip");
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_without_an_email_is_dead_lettered_without_a_claim() {
    let world = World::start().await;
    let no_email = envelope(
        "no-email",
        T0,
        "app",
        Event::ContactUpdated(ContactUpdated {
            contact: Some(Contact {
                crm_contact_id: Some("12345".into()),
                first_name: Some("Known by id".into()),
                ..Contact::default()
            }),
            company: None,
        }),
    );
    world.publish(&no_email).await;
    let letters = world.dead_letters(1, Duration::from_secs(10)).await;
    let letter = &letters[0];
    assert_eq!(letter.error_class(), ErrorClass::Validation);
    assert_eq!(letter.event_id, "no-email");
    assert_eq!(letter.stage, "email-writer");
    assert_eq!(letter.destination, "mailchimp");
    assert_eq!(letter.error_message, "no email to address the member by");
    world
        .wait_ledger("no-email", "dead_lettered", Duration::from_secs(5))
        .await;
    assert!(!world.claimed("no-email").await, "no claim taken");
    assert_eq!(world.sandbox.stats().requests, 0);
    world.finish().await;
}
