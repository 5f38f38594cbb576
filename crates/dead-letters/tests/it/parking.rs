//! Parking: every way a message fails ends parked, once, with its context.

use std::time::Duration;

use handoff_bus::consumer::DEAD_LETTER_MESSAGE_TYPE;
use handoff_bus::{CRM_WRITER, OutgoingMessage};
use handoff_events::v1;
use handoff_events::{Message, PROTOBUF_CONTENT_TYPE};
use handoff_test_support::{self as support, TcpProxy};

use crate::helpers::{self, Dlq, World, envelope, run_scripted, send_to_stage};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn validation_permanent_exhausted_and_broker_dead_letters_are_all_parked_with_their_context()
{
    let world = World::start().await;
    let bus = world.bus().await;
    let (_stage, stop, task) = run_scripted(&bus, CRM_WRITER);
    for (id, outcome) in [
        ("evt-valid", "validation"),
        ("evt-perm", "permanent"),
        ("evt-trans", "transient"),
        ("evt-poison", "panic"),
    ] {
        let email = format!("  {}@Example.COM ", id.to_uppercase());
        send_to_stage(&bus, CRM_WRITER, id, envelope(id, email.trim(), outcome)).await;
    }
    let page = world
        .dlq
        .wait_list("", Duration::from_secs(60), |p| p.total == 4)
        .await;
    stop.cancel();
    let _ = task.await;
    let by_event = |id: &str| {
        page.rows
            .iter()
            .find(|r| r.summary.event_id == id)
            .unwrap_or_else(|| panic!("{id} parked: {page:#?}"))
            .clone()
    };

    let valid = by_event("evt-valid");
    assert_eq!(valid.summary.stage, "crm-writer");
    assert_eq!(valid.summary.error_class, "validation");
    assert_eq!(valid.summary.cause, "deal.stage: unmapped value <value>");
    assert_eq!(valid.summary.event_type, "lead.created");
    assert_eq!(valid.summary.publisher_id, "acme");
    assert_eq!(valid.summary.email, "evt-valid@example.com");
    assert_eq!(valid.summary.attempts, 1);
    assert_eq!(valid.state.status.map(|s| s.label()), Some("parked"));

    let perm = by_event("evt-perm");
    assert_eq!(perm.summary.error_class, "permanent");
    assert_eq!(perm.summary.error_code, "400");
    assert_eq!(perm.summary.destination, "hubspot");
    assert!(
        perm.summary
            .error_message
            .contains("lifecyclestage evt-perm"),
        "{perm:?}"
    );

    let exhausted = by_event("evt-trans");
    assert_eq!(exhausted.summary.error_class, "retries_exhausted");
    assert_eq!(
        exhausted.summary.attempts, 2,
        "max_attempts is 2: {exhausted:?}"
    );

    let poison = by_event("evt-poison");
    assert_eq!(poison.summary.error_class, "broker");
    assert_eq!(poison.summary.error_code, "delivery_limit");
    assert_eq!(poison.summary.stage, "crm-writer");
    assert_eq!(
        poison.summary.origin_queue,
        format!("{}.crm-writer", world.namespace)
    );
    assert_eq!(poison.summary.email, "evt-poison@example.com");

    // `show`: the record with its field errors and attempts, the original event decoded.
    let (status, detail) = world
        .dlq
        .get(&format!("/v1/dead-letters/{}", valid.summary.id))
        .await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["record"]["field_errors"][0]["path"], "deal.stage");
    assert_eq!(detail["original"]["event_id"], "evt-valid");
    assert_eq!(
        detail["original"]["canonical"]["lead_created"]["contact"]["email"],
        "EVT-VALID@Example.COM"
    );
    assert!(detail["record"].get("original_body").is_none(), "{detail}");
    let (_, detail) = world
        .dlq
        .get(&format!("/v1/dead-letters/{}", exhausted.summary.id))
        .await;
    let attempts = detail["record"]["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{detail}");
    assert_eq!(attempts[0]["error"], "HTTP 503 from hubspot");
    assert!(
        !detail["summary"]["trace_id"]
            .as_str()
            .unwrap_or("")
            .is_empty(),
        "{detail}"
    );

    // Nothing is left on the dead-letter queue: everything was parked and acked.
    let left = world
        .inspector
        .message_count(&world.inspector.topology().dead_letter_queue())
        .await
        .expect("count");
    assert_eq!(left, 0);
    bus.close().await;
    world.finish().await;
}

/// The same record delivered twice (a crash between parking and the ack) is parked once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redelivered_dead_letter_is_parked_once() {
    let world = World::start().await;
    let bus = world.bus().await;
    let record = v1::DeadLetter {
        event_id: "evt-twice".into(),
        stage: "normalizer".into(),
        error_class: v1::ErrorClass::Validation as i32,
        error_message: "bad".into(),
        dead_lettered_at: Some(handoff_events::Timestamp {
            seconds: 1_764_000_000,
            nanos: 5,
        }),
        ..v1::DeadLetter::default()
    };
    for _ in 0..2 {
        publish_record(&bus, &record).await;
    }
    let other = v1::DeadLetter {
        error_message: "another failure of the same event".into(),
        ..record.clone()
    };
    publish_record(&bus, &other).await;
    world
        .dlq
        .wait_list("", Duration::from_secs(20), |p| p.total >= 2)
        .await;
    // Give a wrongly doubled one time to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let page = world.dlq.list("event_id=evt-twice").await;
    assert_eq!(page.total, 2, "{page:#?}");
    bus.close().await;
    world.finish().await;
}

/// Redis away: dead letters wait unacked and are parked, each once, when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_and_back_parks_everything_once() {
    let proxy = TcpProxy::start(support::redis_addr()).await;
    let redis_via_proxy = support::url_via(&support::redis_url(), proxy.addr());
    let namespace = support::namespace();
    let mut guard = support::TeardownOnDrop::new(&namespace, &helpers::TIERS);
    let inspector = support::inspector_with(&namespace, &helpers::TIERS).await;
    let cfg = helpers::config(&namespace, &support::amqp_url(), &redis_via_proxy);
    let dlq = Dlq::start(cfg).await;
    dlq.service.wait_ready().await;
    let bus = handoff_bus::Bus::start(
        helpers::bus_config(&support::amqp_url()),
        handoff_bus::Topology::v1(&namespace),
        tokio_util::sync::CancellationToken::new(),
    );
    bus.wait_ready(Duration::from_secs(20)).await.expect("bus");

    proxy.cut();
    for i in 0..20 {
        let record = v1::DeadLetter {
            event_id: format!("evt-{i}"),
            stage: "normalizer".into(),
            error_class: v1::ErrorClass::Validation as i32,
            error_message: "bad".into(),
            ..v1::DeadLetter::default()
        };
        publish_record(&bus, &record).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, _) = dlq.get("/v1/dead-letters").await;
    assert_eq!(status, 503, "the API says the store is away");
    proxy.restore();
    let page = dlq
        .wait_list("", Duration::from_secs(30), |p| p.total == 20)
        .await;
    let mut ids: Vec<&str> = page
        .rows
        .iter()
        .map(|r| r.summary.event_id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 20);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(dlq.list("").await.total, 20);
    let left = inspector
        .message_count(&inspector.topology().dead_letter_queue())
        .await
        .expect("count");
    assert_eq!(left, 0);

    bus.close().await;
    dlq.service.stop().await;
    support::remove_namespace(inspector, &namespace).await;
    guard.disarm();
}

/// Publishes a `DeadLetter` record to the dead-letter exchange, as a stage does.
pub async fn publish_record(bus: &handoff_bus::Bus, record: &v1::DeadLetter) {
    bus.publish_to(
        &bus.topology().dead_letter_exchange(),
        OutgoingMessage {
            routing_key: format!("{}.test", record.stage),
            body: record.encode_to_vec(),
            content_type: Some(PROTOBUF_CONTENT_TYPE.into()),
            message_id: Some(record.event_id.clone()),
            message_type: Some(DEAD_LETTER_MESSAGE_TYPE.into()),
            headers: Default::default(),
        },
    )
    .await
    .expect("publish a dead letter");
}
