//! A writer stopped mid-flight and started again, and Redis going away and coming back: every
//! member is created once, every invoice's member event is posted once, nothing is lost or
//! dead-lettered.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use handoff_bus::EMAIL_WRITER;
use handoff_email_writer::Config;
use handoff_events::v1::canonical_payload::Event;
use handoff_events::v1::{Contact, Envelope, LeadCreated, Payment, PaymentFailed};
use handoff_sandbox::faults::FaultConfig;
use handoff_test_support::{self as support, TcpProxy};

use crate::helpers::{TestWriter, World, envelope, test_config};

const T0: i64 = 1_774_900_000;

/// The invoice each failed payment is about, in publishing order: the first six invoices are
/// reported twice in a row (billing reporting a failure again under a new event id, so the two
/// reports are in flight together), the other eight once.
const INVOICES: [u32; 20] = [
    0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 7, 8, 9, 10, 11, 12, 13,
];

/// Distinct invoices in [`INVOICES`].
const DISTINCT_INVOICES: usize = 14;

/// Twenty leads and twenty failed payments, interleaved; every lead and every invoice's payer is
/// a person of its own: 34 members.
fn events(prefix: &str) -> Vec<Envelope> {
    let mut out = Vec::new();
    for (i, invoice) in INVOICES.iter().enumerate() {
        out.push(envelope(
            &format!("{prefix}-lead-{i}"),
            T0,
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
        out.push(envelope(
            &format!("{prefix}-pay-{i}"),
            T0 + i as i64,
            "billing",
            Event::PaymentFailed(PaymentFailed {
                contact: Some(Contact {
                    email: Some(format!("{prefix}.payer{invoice}@example.com")),
                    ..Contact::default()
                }),
                payment: Some(Payment {
                    invoice_id: Some(format!("{prefix}_in_{invoice}")),
                    amount_minor: Some(4_200),
                    currency: Some("EUR".into()),
                    ..Payment::default()
                }),
                ..PaymentFailed::default()
            }),
        ));
    }
    out
}

/// The email-writer's ledger status of `event_id`, if it has one.
async fn status(world: &World, event_id: &str) -> Option<String> {
    world
        .ledger(event_id)
        .await
        .and_then(|ledger| ledger.stages.get(EMAIL_WRITER).map(|s| s.status.clone()))
}

/// The events whose ledger does not (yet) say the email-writer delivered them.
async fn undelivered(world: &World, events: &[Envelope]) -> Vec<String> {
    let mut out = Vec::new();
    for e in events {
        if status(world, &e.event_id).await.as_deref() != Some("delivered") {
            out.push(e.event_id.clone());
        }
    }
    out
}

/// Every member created once and the people the events name all there, exactly one
/// `payment_failed` per invoice, no dead letter and nobody resubscribed.
async fn assert_each_written_once(world: &World, prefix: &str) {
    world.wait_until_idle().await;
    let stats = world.sandbox.stats();
    let created = stats.creates.get("members").cloned().unwrap_or_default();
    let twice: Vec<(&String, &u64)> = created.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "members created more than once: {twice:?}"
    );
    let expected: BTreeSet<String> = (0..INVOICES.len())
        .map(|i| format!("{prefix}.lead{i}@example.com"))
        .chain((0..DISTINCT_INVOICES).map(|k| format!("{prefix}.payer{k}@example.com")))
        .collect();
    let got: BTreeSet<String> = created.keys().cloned().collect();
    assert_eq!(got, expected, "one member per person");

    let mut per_invoice: BTreeMap<String, usize> = BTreeMap::new();
    for e in world.sandbox.mailchimp_events() {
        assert_eq!(e.name, "payment_failed");
        let invoice = e.properties["invoice_id"].as_str().unwrap_or_default();
        *per_invoice.entry(invoice.to_owned()).or_default() += 1;
    }
    let expected: BTreeMap<String, usize> = (0..DISTINCT_INVOICES)
        .map(|k| (format!("{prefix}_in_{k}"), 1))
        .collect();
    assert_eq!(per_invoice, expected, "one payment_failed per invoice");

    assert!(
        world
            .dead_letters(0, Duration::from_millis(10))
            .await
            .is_empty(),
        "nothing dead-lettered"
    );
    assert_eq!(stats.resubscribed, 0, "nobody resubscribed");
}

/// The test configuration with few messages in flight at once: the stop leaves most of the
/// queue for the next writer, and every handler it interrupts is one it must let finish.
fn few_in_flight(cfg: &mut Config) {
    cfg.bus.prefetch = 8;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_flight_then_restart_delivers_everything_once() {
    let started = Instant::now();
    let mut world = World::start_with(few_in_flight).await;
    // Every request takes 200 ms: a lead is two requests, a failed payment three, so each
    // handler the stop finds is part-way through its writes.
    world.sandbox.set_faults(FaultConfig::slow(
        Duration::from_millis(200),
        Duration::ZERO,
    ));
    let prefix = "term";
    let events = events(prefix);
    for e in &events {
        world.publish(e).await;
    }

    // A quarter delivered: the first writer has been through a few prefetch windows, and the
    // stop finds a full window of handlers part-way through their writes.
    let deadline = Instant::now() + Duration::from_secs(20);
    while undelivered(&world, &events).await.len() > events.len() * 3 / 4 {
        assert!(
            Instant::now() < deadline,
            "the first writer delivered too little"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The shutdown token is what SIGTERM cancels in the binary; `stop` waits for the drain.
    let first = world.writer.take().expect("the first writer");
    let before_stop = events.len() - undelivered(&world, &events).await.len();
    let stopping = Instant::now();
    first.stop().await;
    let drain = stopping.elapsed();

    let mut delivered = 0;
    for e in &events {
        let status = status(&world, &e.event_id).await;
        if status.as_deref() == Some("delivered") {
            delivered += 1;
        }
        // The drain finished what it had started: a claim still held would block the event
        // until its lease (3 minutes by default) ran out.
        if world.claimed(&e.event_id).await {
            assert_eq!(
                status.as_deref(),
                Some("delivered"),
                "{} was left claimed but not delivered by the drain",
                e.event_id
            );
        }
    }
    assert!(
        delivered < events.len(),
        "the stop came mid-flight: {delivered} of {} delivered",
        events.len()
    );
    assert!(
        delivered > before_stop,
        "the drain let the handlers in flight finish: {before_stop} delivered at the stop, \
         {delivered} after"
    );

    let mut cfg = test_config(&world.namespace, &world.sandbox.base_url);
    few_in_flight(&mut cfg);
    world.writer = Some(TestWriter::start(cfg).await);
    for e in &events {
        world
            .wait_ledger(&e.event_id, "delivered", Duration::from_secs(30))
            .await;
    }
    assert_each_written_once(&world, prefix).await;
    eprintln!(
        "sigterm: {before_stop} delivered at the stop, {delivered} of {} after its drain \
         ({drain:?}), total {:?}",
        events.len(),
        started.elapsed()
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_and_back_delays_but_loses_and_duplicates_nothing() {
    let started = Instant::now();
    let proxy = TcpProxy::start(support::redis_addr()).await;
    let redis_url = support::url_via(&support::redis_url(), proxy.addr());
    // The default lease (3 minutes): a claim the cut kept the writer from releasing is released
    // in the background once Redis is back, so its retry does not wait the lease out.
    let world = World::start_with(|cfg| {
        cfg.redis.url = redis_url;
    })
    .await;
    world.writer.as_ref().expect("writer").wait_ready().await;
    world.sandbox.set_faults(FaultConfig::slow(
        Duration::from_millis(50),
        Duration::from_millis(50),
    ));
    let prefix = "redis";
    let events = events(prefix);
    let (before, during) = events.split_at(events.len() / 2);
    for e in before {
        world.publish(e).await;
    }
    // Cut once events are being finished, so the cut finds some between their first request
    // and the claim's completion, and some whose last request is in flight.
    let deadline = Instant::now() + Duration::from_secs(20);
    while undelivered(&world, before).await.len() > before.len() - 3 {
        assert!(Instant::now() < deadline, "nothing was delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Only the writer's Redis goes through the proxy; the world reads the ledger directly.
    proxy.cut();
    let cut_at = Instant::now();
    for e in during {
        world.publish(e).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();
    let down = cut_at.elapsed();

    // Every event's writes are done once its `email.subscriber.synced` report is out (it is
    // published after the writes and before the claim's completion, and needs no Redis).
    let mut reported: BTreeSet<String> = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        reported.extend(world.synced().await.into_iter().map(|e| e.event_id));
        let missing: Vec<&str> = events
            .iter()
            .map(|e| e.event_id.as_str())
            .filter(|id| !reported.contains(*id))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not written within 30 s of the restore: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let settled = started.elapsed();
    assert_each_written_once(&world, prefix).await;

    // An event whose writes succeed while Redis is away (its last request was in flight at the
    // cut) cannot record its completion, which carries the ledger update: `WriterStage::delivered`
    // goes on completing it in the background and retries the message, so every delivered
    // event's ledger says so in the end.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut missing = undelivered(&world, &events).await;
    while !missing.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        missing = undelivered(&world, &events).await;
    }
    eprintln!(
        "redis: down {down:?}, all written after {settled:?}, total {:?}, ledger missing {}",
        started.elapsed(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "written to Mailchimp, but no `delivered` in the ledger: {missing:?}"
    );
    world.finish().await;
}
