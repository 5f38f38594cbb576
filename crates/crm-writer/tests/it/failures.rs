//! What the CRM refuses, limits or fails at, and what the writer makes of it.

use std::collections::BTreeMap;
use std::time::Duration;

use handoff_events::v1::canonical_payload::Event;
use handoff_events::v1::{Contact, ContactUpdated, ErrorClass};
use handoff_sandbox::faults::{ErrorRate, FaultConfig, Outage, Storm, Timeout, TimeoutMode};
use handoff_sandbox::hubspot::ObjectType;

use crate::helpers::{World, envelope, record};

const T0: i64 = 1_774_100_000;

fn contact_updated(
    event_id: &str,
    at: i64,
    email: &str,
    job_title: &str,
) -> handoff_events::v1::Envelope {
    envelope(
        event_id,
        at,
        "app",
        Event::ContactUpdated(ContactUpdated {
            contact: Some(Contact {
                email: Some(email.into()),
                job_title: Some(job_title.into()),
                ..Contact::default()
            }),
            company: None,
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_400_is_dead_lettered_at_once_with_the_crm_error_and_others_keep_flowing() {
    // A custom property mapped to a HubSpot property the portal does not define.
    let world = World::start_with(|cfg| {
        cfg.routes.values.custom_properties.insert(
            "not_a_portal_property".into(),
            "not_a_portal_property".into(),
        );
    })
    .await;
    let mut bad = contact_updated("perm-1", T0, "bad@example.com", "x");
    if let Some(handoff_events::v1::envelope::Payload::Canonical(c)) = &mut bad.payload
        && let Some(Event::ContactUpdated(e)) = &mut c.event
        && let Some(contact) = e.contact.as_mut()
    {
        contact
            .custom_properties
            .insert("not_a_portal_property".into(), "1".into());
    }
    world.publish(&bad).await;
    world
        .publish(&contact_updated("perm-2", T0, "good@example.com", "CTO"))
        .await;

    let letters = world.dead_letters(1, Duration::from_secs(15)).await;
    let letter = &letters[0];
    assert_eq!(letter.error_class(), ErrorClass::Permanent);
    assert_eq!(letter.event_id, "perm-1");
    assert_eq!(letter.stage, "crm-writer");
    assert_eq!(letter.destination, "hubspot");
    assert_eq!(letter.error_code, "400");
    assert!(
        letter.error_message.contains("not_a_portal_property"),
        "the CRM's own error is kept: {}",
        letter.error_message
    );
    // The one attempt that was refused, and no retry.
    assert_eq!(
        letter.attempts.len(),
        1,
        "refused at once, never retried: {:?}",
        letter.attempts
    );
    assert_eq!(letter.attempts[0].outcome, "permanent");
    world
        .wait_ledger("perm-2", "delivered", Duration::from_secs(10))
        .await;
    world
        .wait_ledger("perm-1", "dead_lettered", Duration::from_secs(5))
        .await;
    let bad_requests = world
        .sandbox
        .requests()
        .iter()
        .filter(|r| r.status == Some(400))
        .count();
    assert_eq!(bad_requests, 1, "a permanent refusal is not retried");
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_is_waited_out_to_the_second_without_using_an_attempt() {
    let world = World::start().await;
    world.sandbox.set_faults(FaultConfig {
        storm: Some(Storm {
            requests: Some(2),
            retry_after: Duration::from_secs(2),
            ..Storm::default()
        }),
        ..FaultConfig::default()
    });
    world
        .publish(&contact_updated("storm-1", T0, "storm@example.com", "VP"))
        .await;
    let ledger = world
        .wait_ledger("storm-1", "delivered", Duration::from_secs(20))
        .await;
    let requests = world.sandbox.requests();
    let times: Vec<(Option<u16>, time::OffsetDateTime)> = requests
        .iter()
        .map(|r| {
            let at =
                time::OffsetDateTime::parse(&r.at, &time::format_description::well_known::Rfc3339)
                    .expect("request time");
            (r.status, at)
        })
        .collect();
    assert_eq!(
        times.iter().filter(|(s, _)| *s == Some(429)).count(),
        2,
        "{requests:?}"
    );
    for pair in times.windows(2) {
        if pair[0].0 == Some(429) {
            let gap = pair[1].1 - pair[0].1;
            assert!(
                gap >= time::Duration::milliseconds(1_950),
                "a request came {gap} after a 429 with Retry-After: 2"
            );
        }
    }
    // No attempt was used: the event was never sent round the retry queues.
    let stages = &ledger["stages"]["crm-writer"];
    assert_eq!(stages["status"], "delivered");
    assert!(
        world
            .dead_letters(0, Duration::from_millis(10))
            .await
            .is_empty()
    );
    let retried = world
        .sandbox
        .requests()
        .iter()
        .filter(|r| r.status.is_some_and(|s| s >= 500))
        .count();
    assert_eq!(retried, 0);
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_timeouts_are_retried_until_delivered() {
    let world = World::start_with(|cfg| {
        cfg.hubspot.http.timeout = Duration::from_millis(500);
    })
    .await;
    world.sandbox.set_faults(FaultConfig {
        errors: Some(ErrorRate {
            rate: 1.0,
            ..ErrorRate::default()
        }),
        ..FaultConfig::default()
    });
    for n in 0..5 {
        world
            .publish(&contact_updated(
                &format!("flaky-{n}"),
                T0,
                &format!("flaky{n}@example.com"),
                "Eng",
            ))
            .await;
    }
    world
        .wait_for(Duration::from_secs(10), "errors served", |s| {
            s.faults.get("error").copied().unwrap_or(0) >= 10
        })
        .await;
    // Then requests hang past the client's timeout, and the connection is dropped after the
    // write happened: a blind create would now duplicate.
    world.sandbox.set_faults(FaultConfig {
        timeout: Some(Timeout {
            requests: Some(3),
            hold: Duration::from_secs(1),
            mode: TimeoutMode::ApplyThenDrop,
            ..Timeout::default()
        }),
        ..FaultConfig::default()
    });
    for n in 0..5 {
        world
            .wait_ledger(&format!("flaky-{n}"), "delivered", Duration::from_secs(30))
            .await;
    }
    // The dropped requests are logged once their hold is over.
    let stats = world
        .wait_for(Duration::from_secs(5), "dropped requests logged", |s| {
            s.by_status.get("dropped").copied().unwrap_or(0) >= 3
        })
        .await;
    for keys in stats.creates.values() {
        for (key, n) in keys {
            assert_eq!(*n, 1, "{key} created {n} times");
        }
    }
    assert_eq!(
        stats.creates.get("contacts").map(|k| k.len()),
        Some(5),
        "{stats:#?}"
    );
    assert!(
        world
            .dead_letters(0, Duration::from_millis(10))
            .await
            .is_empty()
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_spread_out_with_jitter_through_an_outage_and_nothing_is_lost() {
    // A two-minute outage, as the issue asks; the backoff's cap keeps the last retries within
    // 15 s of the recovery so the test does not wait out HubSpot-sized pauses.
    let world = World::start_with(|cfg| {
        cfg.retry.base = Duration::from_secs(1);
        cfg.retry.cap = Duration::from_secs(15);
    })
    .await;
    world.sandbox.set_faults(FaultConfig {
        outage: Some(Outage {
            for_: Duration::from_secs(120),
            status: 503,
            retry_after: None,
        }),
        ..FaultConfig::default()
    });
    let n = 20;
    for i in 0..n {
        world
            .publish(&contact_updated(
                &format!("out-{i}"),
                T0,
                &format!("out{i}@example.com"),
                "Ops",
            ))
            .await;
    }
    for i in 0..n {
        world
            .wait_ledger(&format!("out-{i}"), "delivered", Duration::from_secs(180))
            .await;
    }
    // Each event's failed tries in order, by its trace (a retry keeps the message's trace).
    let mut tries: BTreeMap<String, Vec<i128>> = BTreeMap::new();
    for r in world.sandbox.requests() {
        if r.fault.as_deref() != Some("outage") {
            continue;
        }
        let trace_id = r
            .traceparent
            .as_deref()
            .and_then(|tp| tp.split('-').nth(1))
            .expect("every request carries its event's traceparent")
            .to_owned();
        let at = time::OffsetDateTime::parse(&r.at, &time::format_description::well_known::Rfc3339)
            .expect("time")
            .unix_timestamp_nanos()
            / 1_000_000;
        tries.entry(trace_id).or_default().push(at);
    }
    assert_eq!(
        tries.len(),
        n,
        "every event failed at least once, one trace each"
    );
    for times in tries.values_mut() {
        times.sort_unstable();
    }
    // Jitter: the events failed together, so without it their k-th retries would come together
    // too, within a few milliseconds of each other at every backoff step. With full jitter the
    // k-th retry is the sum of k random waits, spread over seconds from the second step on. A
    // stalled box can bunch the retries due during the stall, but not across whole seconds.
    for k in 2..=4 {
        let kth: Vec<i128> = tries
            .values()
            .filter_map(|times| times.get(k).copied())
            .collect();
        assert_eq!(
            kth.len(),
            n,
            "every event retried at least {k} times in two minutes"
        );
        let spread = kth.iter().max().unwrap_or(&0) - kth.iter().min().unwrap_or(&0);
        assert!(
            spread >= 250,
            "retry {k} of the {n} events came within {spread} ms of each other: a wave"
        );
    }
    let stats = world.sandbox.stats();
    assert_eq!(stats.creates.get("contacts").map(|k| k.len()), Some(n));
    assert!(
        stats
            .creates
            .values()
            .flat_map(|k| k.values())
            .all(|c| *c == 1)
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_event_after_a_newer_one_does_not_roll_fields_back() {
    let world = World::start().await;
    world
        .publish(&contact_updated(
            "newer",
            T0 + 100,
            "order@example.com",
            "Director",
        ))
        .await;
    world
        .wait_ledger("newer", "delivered", Duration::from_secs(10))
        .await;
    world
        .publish(&contact_updated(
            "older",
            T0 + 50,
            "order@example.com",
            "Intern",
        ))
        .await;
    let ledger = world
        .wait_ledger("older", "delivered", Duration::from_secs(10))
        .await;
    assert_eq!(
        ledger["stages"]["crm-writer"]["detail"]["records"]["contact"]["disposition"],
        "stale"
    );
    let contact = record(
        &world.sandbox,
        ObjectType::Contacts,
        "email",
        "order@example.com",
    )
    .expect("contact");
    assert_eq!(
        contact.get("jobtitle").cloned().flatten().as_deref(),
        Some("Director")
    );
    world.finish().await;
}

/// An older update admitted first must not land after a newer one admitted while its request
/// was on its way. Twenty contacts each get an older and a newer update back to back, handled
/// concurrently, with HubSpot answering after 0–150 ms at random: without each record's
/// admission and write taking one turn, about half of the older writes land last (the e2e
/// pipeline test caught one in CI).
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
                &email,
                "Intern",
            ))
            .await;
        world
            .publish(&contact_updated(
                &format!("race-newer-{i}"),
                T0 + 100,
                &email,
                "Director",
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
        .filter(|email| {
            let contact =
                record(&world.sandbox, ObjectType::Contacts, "email", email).expect("contact");
            contact.get("jobtitle").cloned().flatten().as_deref() != Some("Director")
        })
        .collect();
    assert!(
        rolled_back.is_empty(),
        "rolled back to the older title: {rolled_back:?}"
    );
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
        .publish(&contact_updated("after", T0, "after@example.com", "CEO"))
        .await;
    world
        .wait_ledger("after", "delivered", Duration::from_secs(10))
        .await;
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_dead_letter_with_the_attempt_history() {
    let world = World::start_with(|cfg| {
        cfg.retry.max_attempts = 3;
    })
    .await;
    world.sandbox.set_faults(FaultConfig {
        outage: Some(Outage {
            for_: Duration::from_secs(600),
            status: 502,
            retry_after: None,
        }),
        ..FaultConfig::default()
    });
    world
        .publish(&contact_updated(
            "gives-up",
            T0,
            "gives.up@example.com",
            "PM",
        ))
        .await;
    let letters = world.dead_letters(1, Duration::from_secs(20)).await;
    let letter = &letters[0];
    assert_eq!(letter.error_class(), ErrorClass::RetriesExhausted);
    assert!(
        letter.error_message.starts_with("gave up after 3 attempts"),
        "{}",
        letter.error_message
    );
    assert_eq!(letter.attempts.len(), 3, "{:?}", letter.attempts);
    for (n, attempt) in letter.attempts.iter().enumerate() {
        assert_eq!(attempt.number as usize, n + 1);
        assert!(attempt.error.contains("502"), "{}", attempt.error);
    }
    assert!(letter.first_failed_at.is_some());
    world
        .wait_ledger("gives-up", "dead_lettered", Duration::from_secs(5))
        .await;
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unique_value_held_by_another_record_is_a_conflict_for_a_person() {
    let world = World::start().await;
    // Another contact already claims the external id this event carries.
    let status = reqwest::Client::new()
        .post(format!(
            "{}/crm/v3/objects/contacts",
            world.sandbox.base_url
        ))
        .bearer_auth(handoff_sandbox::testing::TEST_TOKEN)
        .json(&serde_json::json!({"properties": {
            "email": "first@example.com", "handoff_external_id": "user-7"
        }}))
        .send()
        .await
        .expect("create")
        .status();
    assert_eq!(status.as_u16(), 201);
    let mut event = contact_updated("conflict", T0, "second@example.com", "Lead");
    if let Some(handoff_events::v1::envelope::Payload::Canonical(c)) = &mut event.payload
        && let Some(Event::ContactUpdated(e)) = &mut c.event
        && let Some(contact) = e.contact.as_mut()
    {
        contact.external_id = Some("user-7".into());
    }
    world.publish(&event).await;
    let letters = world.dead_letters(1, Duration::from_secs(10)).await;
    assert_eq!(letters[0].error_class(), ErrorClass::Permanent);
    assert_eq!(letters[0].error_code, "409");
    assert!(
        letters[0].error_message.contains("another record"),
        "{}",
        letters[0].error_message
    );
    let stats = world.sandbox.stats();
    assert_eq!(
        stats.creates.get("contacts").map(|k| k.len()),
        Some(1),
        "nothing created for the conflicting event"
    );
    world.finish().await;
}
