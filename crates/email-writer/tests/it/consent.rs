//! Consent is the email platform's: an upsert never resubscribes a member who unsubscribed or was
//! cleaned, whatever the event says, while their merge fields still update; new members get the
//! configured `status_if_new`.

use std::time::Duration;

use handoff_events::v1::canonical_payload::Event;
use handoff_events::v1::{
    Company, Contact, ContactUpdated, CustomerConverted, Envelope, LeadCreated, Subscription,
};
use handoff_sandbox::mailchimp::Status;

use crate::helpers::{LIST, World, envelope, merge};
use handoff_email_writer::routes::NewMemberStatus;

const T0: i64 = 1_774_600_000;

fn opted_in(email: &str, first_name: &str) -> Contact {
    Contact {
        email: Some(email.into()),
        first_name: Some(first_name.into()),
        marketing_opt_in: Some(true),
        ..Contact::default()
    }
}

/// A lead, a conversion and an update about `email`, each saying the person opted in.
fn events(prefix: &str, email: &str) -> Vec<Envelope> {
    vec![
        envelope(
            &format!("{prefix}-lead"),
            T0,
            "forms",
            Event::LeadCreated(LeadCreated {
                contact: Some(opted_in(email, "Lead")),
                company: Some(Company {
                    name: Some("Left Co".into()),
                    ..Company::default()
                }),
                ..LeadCreated::default()
            }),
        ),
        envelope(
            &format!("{prefix}-converted"),
            T0 + 10,
            "billing",
            Event::CustomerConverted(CustomerConverted {
                contact: Some(opted_in(email, "Customer")),
                subscription: Some(Subscription {
                    plan: Some("team".into()),
                    ..Subscription::default()
                }),
                ..CustomerConverted::default()
            }),
        ),
        envelope(
            &format!("{prefix}-updated"),
            T0 + 20,
            "app",
            Event::ContactUpdated(ContactUpdated {
                contact: Some(opted_in(email, "Updated")),
                company: None,
            }),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribed_and_cleaned_members_are_never_resubscribed() {
    let world = World::start().await;
    let cases = [
        ("left@example.com", Status::Unsubscribed, "left"),
        ("bounced@example.com", Status::Cleaned, "bounced"),
    ];
    for (email, status, _) in &cases {
        world
            .sandbox
            .mailchimp_seed_member(LIST, email, *status)
            .expect("seeded");
    }
    for (email, _, prefix) in &cases {
        for e in events(prefix, email) {
            world.publish(&e).await;
            world
                .wait_ledger(&e.event_id, "delivered", Duration::from_secs(15))
                .await;
        }
    }
    let stats = world.sandbox.stats();
    assert_eq!(stats.resubscribed, 0, "nobody resubscribed");
    for (email, status, prefix) in &cases {
        let member = world.member(email);
        assert_eq!(member.status, *status, "{email} keeps its status");
        assert_eq!(
            merge(&member, "FNAME").as_deref(),
            Some("Updated"),
            "{email}'s merge fields still update"
        );
        assert_eq!(merge(&member, "COMPANY").as_deref(), Some("Left Co"));
        assert_eq!(merge(&member, "PLAN").as_deref(), Some("team"));
        let ledger = world
            .wait_ledger(
                &format!("{prefix}-updated"),
                "delivered",
                Duration::from_secs(1),
            )
            .await;
        let expected = match status {
            Status::Unsubscribed => "unsubscribed",
            _ => "cleaned",
        };
        assert_eq!(
            ledger["stages"]["email-writer"]["detail"]["records"]["subscriber"]["status"],
            expected
        );
    }

    // New people get status_if_new from their consent: subscribed when opted in, transactional
    // when not (or when unknown).
    let fresh = [
        ("yes@example.com", Some(true), Status::Subscribed),
        ("no@example.com", Some(false), Status::Transactional),
        ("unknown@example.com", None, Status::Transactional),
    ];
    for (i, (email, opt_in, _)) in fresh.iter().enumerate() {
        let e = envelope(
            &format!("fresh-{i}"),
            T0,
            "forms",
            Event::LeadCreated(LeadCreated {
                contact: Some(Contact {
                    email: Some((*email).into()),
                    marketing_opt_in: *opt_in,
                    ..Contact::default()
                }),
                ..LeadCreated::default()
            }),
        );
        world.publish(&e).await;
        world
            .wait_ledger(&e.event_id, "delivered", Duration::from_secs(15))
            .await;
    }
    for (email, _, status) in &fresh {
        assert_eq!(world.member(email).status, *status, "{email}");
    }
    assert_eq!(world.sandbox.stats().resubscribed, 0);
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_opt_in_creates_pending_members() {
    let world = World::start_with(|cfg| {
        cfg.routes.consent.opted_in = NewMemberStatus::Pending;
    })
    .await;
    let e = envelope(
        "double-1",
        T0,
        "forms",
        Event::LeadCreated(LeadCreated {
            contact: Some(opted_in("confirm.me@example.com", "Confirm")),
            ..LeadCreated::default()
        }),
    );
    world.publish(&e).await;
    world
        .wait_ledger("double-1", "delivered", Duration::from_secs(15))
        .await;
    assert_eq!(
        world.member("confirm.me@example.com").status,
        Status::Pending
    );
    world.finish().await;
}
