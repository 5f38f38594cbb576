//! Mailchimp's 10 simultaneous connections per API key under a burst with a high prefetch: one
//! writer stays within them; two replicas that each take the full 10 (the misconfiguration the
//! `max_in_flight` docs warn about) meet 429s, wait them out and still lose nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use handoff_events::v1::canonical_payload::Event;
use handoff_events::v1::{Contact, Envelope, LeadCreated, Payment, PaymentFailed};
use handoff_sandbox::faults::FaultConfig;
use handoff_sandbox::testing::TEST_MAILCHIMP_KEY;

use crate::helpers::{TestWriter, World, envelope};

/// `pairs` leads and `pairs` failed payments about `pairs / 2` invoices (each reported twice,
/// under two event ids), interleaved.
fn burst(prefix: &str, pairs: u32) -> Vec<Envelope> {
    let mut events = Vec::new();
    for i in 0..pairs {
        events.push(envelope(
            &format!("{prefix}-lead-{i}"),
            1_774_800_000,
            "forms",
            Event::LeadCreated(LeadCreated {
                contact: Some(Contact {
                    email: Some(format!("{prefix}.lead{i}@example.com")),
                    first_name: Some(format!("Lead {i}")),
                    ..Contact::default()
                }),
                ..LeadCreated::default()
            }),
        ));
        let invoice = i / 2;
        events.push(envelope(
            &format!("{prefix}-pay-{i}"),
            1_774_800_000 + i64::from(i),
            "billing",
            Event::PaymentFailed(PaymentFailed {
                contact: Some(Contact {
                    email: Some(format!("{prefix}.payer{invoice}@example.com")),
                    ..Contact::default()
                }),
                payment: Some(Payment {
                    invoice_id: Some(format!("in_{invoice}")),
                    amount_minor: Some(2_500),
                    ..Payment::default()
                }),
                ..PaymentFailed::default()
            }),
        ));
    }
    events
}

/// Every event delivered, no dead letter, and exactly one member event per invoice.
async fn assert_all_delivered_once(world: &World, events: &[Envelope], pairs: usize) {
    for e in events {
        world
            .wait_ledger(&e.event_id, "delivered", Duration::from_secs(60))
            .await;
    }
    world.wait_until_idle().await;
    assert!(
        world
            .dead_letters(0, Duration::from_millis(10))
            .await
            .is_empty()
    );
    let mut per_invoice: BTreeMap<String, usize> = BTreeMap::new();
    for e in world.sandbox.mailchimp_events() {
        let invoice = e.properties["invoice_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        *per_invoice.entry(invoice).or_default() += 1;
    }
    assert_eq!(per_invoice.len(), pairs / 2, "{per_invoice:?}");
    assert!(
        per_invoice.values().all(|n| *n == 1),
        "an invoice's event sent twice: {per_invoice:?}"
    );
    let members = world.sandbox.mailchimp_members().len();
    assert_eq!(members, pairs + pairs / 2, "the leads and the payers");
}

fn slow_answers() -> FaultConfig {
    // Answers that take a while keep many requests in flight at once.
    FaultConfig::slow(Duration::from_millis(20), Duration::from_millis(30))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_200_with_a_high_prefetch_stays_within_10_connections() {
    let world = World::start_with(|cfg| cfg.bus.prefetch = 300).await;
    world.sandbox.set_faults(slow_answers());
    let events = burst("burst", 100);
    assert_eq!(events.len(), 200);
    world.publish_all(&events).await;
    assert_all_delivered_once(&world, &events, 100).await;
    let stats = world.sandbox.stats();
    let peak = world.sandbox.mailchimp_peak_connections()[TEST_MAILCHIMP_KEY];
    assert!(peak <= 10, "{peak} requests in flight at once");
    assert!(
        peak >= 5,
        "the burst used the connections it has: peak {peak}"
    );
    assert_eq!(stats.rate_limited, 0, "never over the limit: no 429");
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_over_the_limit_wait_out_429s_and_lose_nothing() {
    // Each replica takes all 10 connections: 20 at once on one key.
    let world = World::start_with(|cfg| cfg.bus.prefetch = 300).await;
    let mut cfg = crate::helpers::test_config(&world.namespace, &world.sandbox.base_url);
    cfg.bus.prefetch = 300;
    let replica = TestWriter::start(cfg).await;
    // Both subscribed before the burst, so the broker splits it between them.
    for writer in [world.writer.as_ref().expect("writer"), &replica] {
        writer.wait_ready().await;
    }
    world.wait_consumers(2).await;
    world.sandbox.set_faults(slow_answers());
    // Fewer events than the single writer's burst: every 429 pauses the key's shared pacer
    // for a second, so this run is slow by design.
    let events = burst("pair", 40);
    world.publish_all(&events).await;
    assert_all_delivered_once(&world, &events, 40).await;
    let stats = world.sandbox.stats();
    assert!(
        stats.rate_limited > 0,
        "20 in flight on one key meet Mailchimp's limit"
    );
    replica.stop().await;
    world.finish().await;
}
