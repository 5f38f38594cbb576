//! The handler, RabbitMQ and Redis (with AOF) restarted during parking and during a
//! replay: nothing lost, nothing doubled. The broker and Redis here are private
//! instances on their own ports, crashed with SIGKILL; the shared ones are untouched.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use handoff_bus::{Bus, CRM_WRITER, Delivery, Handler, Outcome, Topology};
use handoff_dead_letters::Config;
use handoff_events::v1::{self, ErrorClass};
use handoff_idempotency::{Claim, IdempotencyKey, RedisConfig, Store};
use handoff_test_support::private::{PrivateRabbit, PrivateRedis};
use handoff_test_support::{self as support};
use tokio_util::sync::CancellationToken;

use crate::helpers::{self, Dlq, envelope};

const EVENTS: usize = 300;

/// A stage that does its side effect once per event id, as the writers do: claim in the
/// idempotency store, record the effect, complete. What it recorded is "the destination".
struct DedupingStage {
    store: Store,
    effects: Mutex<Vec<String>>,
}

impl Handler for DedupingStage {
    async fn handle(&self, delivery: &Delivery) -> Outcome {
        let id = delivery.message_id.clone().unwrap_or_default();
        let key = IdempotencyKey::new("test-writer", "acme", &id);
        match self.store.claim(&key, "fp", Duration::from_secs(30)).await {
            Ok(Claim::Acquired(token)) => {
                if let Ok(mut effects) = self.effects.lock() {
                    effects.push(id);
                }
                match self
                    .store
                    .complete(&key, &token, "fp", Duration::from_secs(600), None)
                    .await
                {
                    Ok(()) => Outcome::Ack,
                    Err(err) => Outcome::RetryLater {
                        delay: Duration::from_millis(100),
                        error: err.to_string(),
                    },
                }
            }
            Ok(Claim::Done { .. }) => Outcome::Ack,
            Ok(Claim::InFlight { .. }) | Err(_) => Outcome::Defer {
                delay: Duration::from_millis(200),
                reason: "claim busy".into(),
            },
        }
    }
}

fn dlq_config(namespace: &str, rabbit: &PrivateRabbit, redis: &PrivateRedis) -> Config {
    let mut cfg = helpers::config(namespace, &rabbit.amqp_url(), &redis.url());
    // The private Redis runs with appendfsync always: the real requirement holds.
    cfg.store.require_durable = true;
    cfg.replay.max_rate = 1_000.0;
    // This test is about restarts, not pacing: HubSpot's budget out of the way.
    cfg.replay.budgets.insert("hubspot".into(), 1_000.0);
    cfg.replay.max_backlog = 10_000;
    cfg
}

/// Publishes until the broker confirms, through outages (a confirm lost in a crash
/// means the record may go twice: the handler must park it once).
async fn publish_until_confirmed(bus: &Bus, record: &v1::DeadLetter) {
    loop {
        let attempt =
            tokio::time::timeout(Duration::from_secs(5), publish_record_checked(bus, record)).await;
        if matches!(attempt, Ok(Ok(()))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn publish_record_checked(
    bus: &Bus,
    record: &v1::DeadLetter,
) -> Result<(), handoff_bus::BusError> {
    use handoff_events::Message as _;
    bus.publish_to(
        &bus.topology().dead_letter_exchange(),
        handoff_bus::OutgoingMessage {
            routing_key: format!("{}.test", record.stage),
            body: record.encode_to_vec(),
            content_type: Some(handoff_events::PROTOBUF_CONTENT_TYPE.into()),
            message_id: Some(record.event_id.clone()),
            message_type: Some(handoff_bus::consumer::DEAD_LETTER_MESSAGE_TYPE.into()),
            headers: Default::default(),
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarts_of_the_handler_the_broker_and_redis_lose_and_double_nothing() {
    support::init_telemetry();
    let rabbit = Arc::new(PrivateRabbit::start().await);
    let redis = Arc::new(PrivateRedis::start_aof().await);
    let namespace = support::namespace();
    let queue = format!("{namespace}.{CRM_WRITER}");

    let mut dlq = Dlq::start(dlq_config(&namespace, &rabbit, &redis)).await;
    dlq.service.wait_ready().await;
    let publisher = Bus::start(
        helpers::bus_config(&rabbit.amqp_url()),
        Topology::v1(&namespace),
        CancellationToken::new(),
    );
    publisher
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("publisher");
    // Ra 2.2 (RabbitMQ 3.10) persists its queue directory every 500 ms: a queue
    // declared just before a crash does not come back. Let it settle.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Parking, with Redis crashed, the handler restarted and the broker crashed.
    let records: Vec<v1::DeadLetter> = (0..EVENTS)
        .map(|i| v1::DeadLetter {
            event_id: format!("evt-{i:04}"),
            event_type: "lead.created".into(),
            publisher_id: "acme".into(),
            stage: CRM_WRITER.into(),
            error_class: ErrorClass::RetriesExhausted as i32,
            error_message: "gave up after 30 attempts: HTTP 503".into(),
            destination: "hubspot".into(),
            origin_queue: queue.clone(),
            original_body: envelope(&format!("evt-{i:04}"), &format!("p{i}@example.com"), "ok"),
            original_message_id: format!("evt-{i:04}"),
            ..v1::DeadLetter::default()
        })
        .collect();
    let feeder = {
        let publisher = publisher.clone();
        let records = records.clone();
        tokio::spawn(async move {
            for record in &records {
                publish_until_confirmed(&publisher, record).await;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(700)).await;
    redis.start_again().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    dlq.service.stop().await;
    dlq = Dlq::start(dlq_config(&namespace, &rabbit, &redis)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    rabbit.kill();
    rabbit.start_again().await;
    feeder.await.expect("feeder");
    dlq.service.wait_ready().await;
    let page = dlq
        .wait_list("", Duration::from_secs(60), |p| p.total as usize >= EVENTS)
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let page_again = dlq.list("").await;
    assert_eq!(
        page_again.total as usize, EVENTS,
        "parked once each, none lost: {}",
        page.total
    );
    let mut events: Vec<String> = page_again
        .rows
        .iter()
        .map(|r| r.summary.event_id.clone())
        .collect();
    events.sort();
    events.dedup();
    assert_eq!(events.len(), EVENTS);
    let waiting = publisher
        .message_count(&publisher.topology().dead_letter_queue())
        .await
        .expect("count");
    assert_eq!(waiting, 0, "everything parked was acked");

    // A replay of all of them, with Redis crashed, the handler restarted and the broker
    // crashed while it runs; a deduping stage consumes what it sends.
    let stage_store = Store::new(
        &RedisConfig {
            url: support::redis_url(),
            op_timeout: Duration::from_secs(1),
        },
        &namespace,
    )
    .expect("store");
    let stage = Arc::new(DedupingStage {
        store: stage_store,
        effects: Mutex::new(Vec::new()),
    });
    let stage_stop = CancellationToken::new();
    let stage_task = {
        let bus = publisher.clone();
        let (stage, stop) = (stage.clone(), stage_stop.clone());
        tokio::spawn(async move {
            let _ = handoff_bus::consumer::run(&bus, CRM_WRITER, stage, stop).await;
        })
    };
    let (status, job) = dlq
        .post(
            "/v1/replays",
            &serde_json::json!({"filter": {"stage": "crm-writer"}, "rate": 40.0, "reason": "restart test"}),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    let job_id = job["id"].as_str().expect("id").to_owned();
    assert_eq!(job["total"].as_u64(), Some(EVENTS as u64), "{job}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.start_again().await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    dlq.service.stop().await;
    dlq = Dlq::start(dlq_config(&namespace, &rabbit, &redis)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    rabbit.kill();
    rabbit.start_again().await;
    dlq.service.wait_ready().await;
    let job = dlq.wait_job(&job_id, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["sent"].as_u64(), Some(EVENTS as u64), "{job}");

    // Every event reached the stage, and its side effect happened exactly once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let done = stage.effects.lock().map(|e| e.len()).unwrap_or(0);
        if done >= EVENTS || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let effects = stage.effects.lock().map(|e| e.clone()).unwrap_or_default();
    let mut per_event: BTreeMap<&str, usize> = BTreeMap::new();
    for id in &effects {
        *per_event.entry(id.as_str()).or_default() += 1;
    }
    assert_eq!(per_event.len(), EVENTS, "every replayed event arrived");
    assert!(
        per_event.values().all(|n| *n == 1),
        "none twice: {:?}",
        per_event
            .iter()
            .filter(|(_, n)| **n > 1)
            .collect::<Vec<_>>()
    );
    assert_eq!(dlq.list("status=replayed").await.total as usize, EVENTS);
    assert_eq!(dlq.list("status=replaying").await.total, 0);

    stage_stop.cancel();
    let _ = stage_task.await;
    dlq.service.stop().await;
    if let Err(err) = publisher.teardown().await {
        eprintln!("teardown: {err}");
    }
    publisher.close().await;
    support::cleanup_redis(&namespace).await;
}
