//! 10,000 events of every type through the whole pipeline while things go wrong: 10% of them
//! sent twice by their publisher, both writers' broker connections cut mid-run (so the broker
//! redelivers what they had in flight), 5% of vendor requests answered 5xx and a 429 storm on
//! each vendor. Every event must end accounted for in the ledger, with no record created twice,
//! no member event sent twice for one invoice, and no unsubscribed member resubscribed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use handoff_e2e::{PUBLISHER, Pipeline, Tweaks, stage_status};
use handoff_idempotency::Ledger;
use handoff_sandbox::faults::{ErrorRate, FaultConfig, Storm};
use handoff_sandbox::mailchimp::Status;
use handoff_sandbox::testing::TEST_MAILCHIMP_LIST;
use handoff_test_support::{self as support, TcpProxy};
use serde_json::{Value, json};

const EVENTS: usize = 10_000;
const PEOPLE: usize = 1_500;
/// People who unsubscribed before the run: no event may resubscribe them.
const UNSUBSCRIBED: usize = 60;
/// Events a publisher sends twice (10%).
const DUPLICATE_EVERY: usize = 10;
const BATCH: usize = 250;

fn email(person: usize) -> String {
    format!("person{person}@mixed.example")
}

/// Event `n`: its type and body. Deterministic, so a failure can be replayed. Two of every three
/// `payment.failed` are a pair of different events about one invoice (a billing system retrying
/// its webhook with a new id): one member event per invoice is allowed, not one per event.
fn event(n: usize) -> (String, Value) {
    let person = (n * 7919) % PEOPLE;
    let email = email(person);
    let id = format!("evt_mixed_{n}");
    let at = format!(
        "2026-04-01T{:02}:{:02}:{:02}Z",
        (n / 3600) % 24,
        (n / 60) % 60,
        n % 60
    );
    let (event_type, body) = match n % 20 {
        0..=5 => (
            "lead.created",
            json!({"lead": {"email": email, "first_name": format!("P{person}"), "marketing_opt_in": !n.is_multiple_of(3),
                            "company": format!("Company {}", person % 97)},
                   "attribution": {"utm_source": "newsletter", "utm_medium": "email"}}),
        ),
        6..=9 => (
            "contact.updated",
            json!({"contact": {"email": email, "job_title": format!("Title {n}"), "marketing_opt_in": true}}),
        ),
        10..=12 => (
            "customer.converted",
            json!({"customer": {"email": email, "plan": "pro", "owner_email": "owner@mixed.example"},
                   "context": {"deal_id": format!("D-{person}")}}),
        ),
        13..=15 => {
            // 13 and 14: one invoice of one customer, reported twice; 15: an invoice of its own.
            let (invoice, payer) = if n % 20 == 15 {
                (format!("in_solo_{n}"), email.clone())
            } else {
                (
                    format!("in_pair_{}", n / 20),
                    self::email((n / 20 * 7919) % PEOPLE),
                )
            };
            (
                "payment.failed",
                json!({"customer": {"email": payer},
                       "payment": {"invoice_id": invoice, "amount": 49.0, "currency": "usd",
                                   "failure_code": "card_declined"}}),
            )
        }
        16..=17 => (
            "meeting.booked",
            json!({"contact": {"email": email},
                   "meeting": {"meeting_id": format!("mtg_{n}"), "starts_at": "2026-05-01T15:00:00Z"}}),
        ),
        _ => (
            "deal.stage_changed",
            json!({"deal": {"deal_id": format!("D-{person}"), "stage": "contract_sent"},
                   "contact": {"email": email}}),
        ),
    };
    let mut body = body;
    body["event_id"] = json!(id);
    body["occurred_at"] = json!(at);
    body["source"] = json!("mixed");
    body["event_type"] = json!(event_type);
    (event_type.to_owned(), body)
}

/// Every stage has had its final say about the event.
fn settled(ledger: &Ledger) -> bool {
    let done = |stage: &str| {
        matches!(
            stage_status(ledger, stage),
            Some("delivered" | "skipped" | "dead_lettered")
        )
    };
    done("crm-writer") && done("email-writer")
}

async fn amqp_addr() -> SocketAddr {
    let url = support::amqp_url();
    let host_port = url
        .rsplit('@')
        .next()
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("127.0.0.1:5672")
        .to_owned();
    tokio::net::lookup_host(host_port)
        .await
        .expect("resolve the broker")
        .next()
        .expect("an address")
}

fn through(proxy: &TcpProxy) -> String {
    let url = support::amqp_url();
    let (credentials, rest) = url.rsplit_once('@').unwrap_or(("amqp://guest:guest", &url));
    let vhost = rest.split_once('/').map(|(_, v)| v).unwrap_or("%2f");
    format!("{credentials}@{}/{vhost}", proxy.addr())
}

/// Posts one batch as a publisher following the API's contract does: an item refused with 503
/// `unavailable` (the broker was away, or did not confirm in time, in which case the item may
/// be stored already and the second copy is deduped downstream) is sent again, with the same
/// `event_id`, after its `retry_after_seconds`. Any other refusal fails the test. Returns how
/// many were sent again.
async fn post_batch(world: &Pipeline, mut items: Vec<Value>) -> usize {
    const ROUNDS: usize = 5;
    let mut sent_again = 0;
    for round in 1..=ROUNDS {
        let answer = world
            .http
            .post(format!("{}/v1/events:batch", world.ingest_url))
            .bearer_auth(handoff_e2e::KEY)
            .json(&json!({ "events": items }))
            .send()
            .await
            .expect("post a batch");
        assert_eq!(answer.status().as_u16(), 200);
        let answer: Value = answer.json().await.expect("json");
        let results = answer["results"].as_array().expect("results");
        assert_eq!(results.len(), items.len(), "one result per item");
        let mut again = Vec::new();
        let mut wait = 0;
        for (r, item) in results.iter().zip(&items) {
            match r["status"].as_str().unwrap_or_default() {
                "accepted" | "duplicate" => {}
                "rejected" if r["status_code"] == 503 && r["error"]["code"] == "unavailable" => {
                    eprintln!("round {round}: {r}");
                    wait = wait.max(r["retry_after_seconds"].as_u64().unwrap_or(1));
                    again.push(item.clone());
                }
                _ => panic!("an item was refused: {r}"),
            }
        }
        if again.is_empty() {
            return sent_again;
        }
        sent_again += again.len();
        items = again;
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
    panic!("{} items still refused after {ROUNDS} rounds", items.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_mixed_events_with_faults_are_all_accounted_for_once() {
    let broker = amqp_addr().await;
    let crm_proxy = TcpProxy::start(broker).await;
    let email_proxy = TcpProxy::start(broker).await;
    let crm_url = through(&crm_proxy);
    let email_url = through(&email_proxy);
    let world = Pipeline::start_with(
        handoff_e2e::sandbox_config(),
        Tweaks {
            crm_writer: Some(Box::new(move |cfg| {
                cfg.bus.url = crm_url;
                // Quick retries: the point is that they happen, not how long they wait.
                cfg.retry.base = Duration::from_millis(100);
                cfg.retry.cap = Duration::from_secs(2);
            })),
            email_writer: Some(Box::new(move |cfg| {
                cfg.bus.url = email_url;
                cfg.retry.base = Duration::from_millis(100);
                cfg.retry.cap = Duration::from_secs(2);
            })),
            ..Tweaks::default()
        },
    )
    .await;
    let sandbox = &world.sandbox.sandbox;
    for person in 0..UNSUBSCRIBED {
        sandbox.mailchimp_seed_member(TEST_MAILCHIMP_LIST, &email(person), Status::Unsubscribed);
    }
    sandbox.set_faults(FaultConfig {
        seed: Some(20_261_128),
        errors: Some(ErrorRate {
            rate: 0.05,
            ..ErrorRate::default()
        }),
        ..FaultConfig::default()
    });

    let events: Vec<(String, Value)> = (0..EVENTS).map(event).collect();
    let started = std::time::Instant::now();
    let mut sent = 0;
    let mut refused_for_a_while = 0;
    for (batch_no, batch) in events.chunks(BATCH).enumerate() {
        // Each batch item carries its type; every tenth event is sent again in the next batch.
        let mut items: Vec<Value> = batch.iter().map(|(_, body)| body.clone()).collect();
        if batch_no > 0 {
            let previous = &events[(batch_no - 1) * BATCH..batch_no * BATCH];
            items.extend(
                previous
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i.is_multiple_of(DUPLICATE_EVERY))
                    .map(|(_, (_, body))| body.clone()),
            );
        }
        refused_for_a_while += post_batch(&world, items).await;
        sent += batch.len();
        match batch_no {
            // A 429 storm on both vendors, then the writers' broker connections cut in turn.
            8 => sandbox.add_faults(FaultConfig {
                storm: Some(Storm {
                    requests: Some(40),
                    retry_after: Duration::from_secs(1),
                    ..Storm::default()
                }),
                ..FaultConfig::default()
            }),
            16 => {
                crm_proxy.cut();
                tokio::time::sleep(Duration::from_millis(500)).await;
                crm_proxy.restore();
            }
            28 => {
                email_proxy.cut();
                tokio::time::sleep(Duration::from_millis(500)).await;
                email_proxy.restore();
            }
            _ => {}
        }
    }
    assert_eq!(sent, EVENTS);
    eprintln!(
        "sent {EVENTS} events in {:?}; {refused_for_a_while} items sent again after a 503",
        started.elapsed()
    );

    // Every event settles: both writers delivered it, skipped it (no route) or dead-lettered it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    let mut pending: BTreeSet<usize> = (0..EVENTS).collect();
    let mut ledgers: BTreeMap<usize, Ledger> = BTreeMap::new();
    while !pending.is_empty() {
        let mut still = BTreeSet::new();
        let mut states: BTreeMap<String, usize> = BTreeMap::new();
        for &n in &pending {
            let id = format!("evt_mixed_{n}");
            match world.store.ledger_get(PUBLISHER, &id).await {
                Ok(Some(ledger)) if settled(&ledger) => {
                    ledgers.insert(n, ledger);
                }
                other => {
                    let state = match &other {
                        Ok(Some(l)) => format!(
                            "{:?}/{:?}/{:?}",
                            stage_status(l, "normalizer"),
                            stage_status(l, "crm-writer"),
                            stage_status(l, "email-writer")
                        ),
                        _ => "none".to_owned(),
                    };
                    *states.entry(state).or_default() += 1;
                    still.insert(n);
                }
            }
        }
        eprintln!("{states:?}");
        pending = still;
        eprintln!(
            "{:?}: {} settled, {} pending",
            started.elapsed(),
            ledgers.len(),
            pending.len()
        );
        if pending.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} events unsettled, e.g. {:?}",
            pending.len(),
            pending.iter().take(5).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Let the write-backs and in-flight retries finish before counting.
    sandbox.clear_faults();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Accounted for: accepted, normalized, and delivered (nothing here is invalid, and retries
    // outlast 5% errors, so nothing should be dead-lettered).
    let mut dead = Vec::new();
    for (n, ledger) in &ledgers {
        assert_eq!(stage_status(ledger, "ingest"), Some("accepted"), "{n}");
        assert_eq!(
            stage_status(ledger, "normalizer"),
            Some("normalized"),
            "{n}"
        );
        for stage in ["crm-writer", "email-writer"] {
            if stage_status(ledger, stage) == Some("dead_lettered") {
                dead.push((n, stage, ledger.stages[stage].detail.clone()));
            }
        }
    }
    assert!(dead.is_empty(), "dead-lettered: {dead:#?}");

    // Zero duplicate creates at either vendor (HubSpot records, Mailchimp members and events).
    let stats = sandbox.stats();
    let twice: Vec<_> = stats
        .creates
        .iter()
        .flat_map(|(kind, keys)| keys.iter().map(move |(k, n)| (kind, k, *n)))
        .filter(|(kind, _, n)| *n > 1 && kind.as_str() != "events")
        .collect();
    assert!(twice.is_empty(), "created more than once: {twice:?}");

    // One `payment_failed` member event per invoice, for exactly the invoices of the run.
    let mut per_invoice: BTreeMap<String, usize> = BTreeMap::new();
    for e in sandbox.mailchimp_events() {
        assert_eq!(e.name, "payment_failed", "{e:?}");
        let invoice = e.properties["invoice_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        *per_invoice.entry(invoice).or_default() += 1;
    }
    let invoices: BTreeSet<String> = events
        .iter()
        .filter(|(t, _)| t == "payment.failed")
        .filter_map(|(_, b)| b["payment"]["invoice_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        per_invoice.keys().cloned().collect::<BTreeSet<_>>(),
        invoices
    );
    let repeated: Vec<_> = per_invoice.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "member events sent twice: {repeated:?}"
    );

    // Consent: nobody resubscribed; the seeded unsubscribed members are still unsubscribed.
    assert_eq!(stats.resubscribed, 0);
    for person in 0..UNSUBSCRIBED {
        let member = sandbox
            .mailchimp_member(TEST_MAILCHIMP_LIST, &email(person))
            .expect("seeded");
        assert_eq!(member.status, Status::Unsubscribed, "{}", email(person));
    }
    // The faults did happen: vendor errors and 429s, and redeliveries that each writer
    // recognised as already done (its `duplicate` outcome counts nothing else).
    let metrics = handoff_kit::metrics::install().render();
    for stage in ["crm-writer", "email-writer"] {
        let redelivered: f64 = metrics
            .lines()
            .filter(|l| {
                l.starts_with("handoff_writer_events_total{")
                    && l.contains(&format!("stage=\"{stage}\""))
                    && l.contains("outcome=\"duplicate\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(redelivered > 0.0, "the {stage} saw no redelivery");
    }
    assert!(
        stats.faults.values().sum::<u64>() > 100,
        "{:?}",
        stats.faults
    );
    assert!(stats.rate_limited >= 40, "{}", stats.rate_limited);
    world.finish().await;
}
