//! Bad messages become dead letters with the right reason, at once, and the
//! service keeps going.

use std::time::Duration;

use handoff_bus::NORMALIZER;
use handoff_events::v1::ErrorClass;
use handoff_events::{EventType, Message};
use handoff_idempotency::{RedisConfig, Store};
use handoff_test_support as support;

use crate::helpers::{World, canonical, raw_envelope, seed_with_id};

/// Nothing waits in the stage's queue or its delay queue: the failure was not retried.
async fn assert_not_retried(world: &World) {
    let topology = world.inspector.topology();
    assert_eq!(world.raw_waiting().await, 0, "left in the stage queue");
    let delay = topology.delay_queue(NORMALIZER, Duration::from_secs(1));
    assert_eq!(
        world.count(&delay).await,
        0,
        "sent to the retry delay queue"
    );
}

#[tokio::test]
async fn an_undecodable_message_is_dead_lettered_at_once_and_the_service_keeps_running() {
    let world = World::start().await;
    let garbage = b"\xff\xfe definitely not protobuf".to_vec();
    world
        .publish_bytes(
            "raw.customer.converted".into(),
            garbage.clone(),
            Some("junk-1".into()),
        )
        .await;

    let dead = world.dead_letters(1, Duration::from_secs(20)).await;
    let record = &dead[0];
    assert_eq!(record.stage, "normalizer");
    assert_eq!(record.error_class(), ErrorClass::Undecodable);
    assert!(
        record.error_message.contains("not a handoff.v1.Envelope"),
        "{}",
        record.error_message
    );
    assert_eq!(record.original_body, garbage);
    assert_eq!(record.original_message_id, "junk-1");
    assert_eq!(record.origin_routing_key, "raw.customer.converted");
    assert_eq!(record.attempts.len(), 1, "{:?}", record.attempts);
    assert_not_retried(&world).await;

    // Still running: a good event right after goes through.
    world
        .publish_raw(
            EventType::CustomerConverted,
            "evt_after_junk",
            1,
            &seed_with_id("evt_after_junk"),
        )
        .await;
    let out = world.canonical(1, Duration::from_secs(20)).await;
    assert_eq!(canonical(&out[0]).0.event_id, "evt_after_junk");
    assert!(world.normalizer().is_ready().await);
    world.finish().await;
}

#[tokio::test]
async fn an_invalid_event_is_dead_lettered_with_every_field_reason() {
    let world = World::start().await;
    let body = r#"{"event_id":"evt_invalid_1","occurred_at":"2026-03-19T10:15:22Z",
      "customer":{"email":"alex@@example","country":"Atlantis","timezone":"Mars/Olympus","first_name":"Alex"}}"#;
    world
        .publish_raw(EventType::CustomerConverted, "evt_invalid_1", 1, body)
        .await;

    let dead = world.dead_letters(1, Duration::from_secs(20)).await;
    let record = &dead[0];
    assert_eq!(record.error_class(), ErrorClass::Validation);
    assert_eq!(record.event_id, "evt_invalid_1");
    assert_eq!(record.event_type, "customer.converted");
    assert_eq!(record.publisher_id, "acme");
    let paths: Vec<&str> = record
        .field_errors
        .iter()
        .map(|f| f.path.as_str())
        .collect();
    for path in ["customer.email", "customer.country", "customer.timezone"] {
        assert!(
            paths.contains(&path),
            "{path} missing from {:?}",
            record.field_errors
        );
    }
    assert!(record.field_errors.iter().all(|f| !f.message.is_empty()));
    assert_eq!(record.attempts.len(), 1);
    // The original raw envelope is kept byte for byte, so it can be replayed once fixed.
    let original =
        handoff_events::v1::Envelope::decode(record.original_body.as_slice()).expect("envelope");
    assert_eq!(original.event_id, "evt_invalid_1");
    assert_not_retried(&world).await;

    // The ledger says it was dead-lettered, and why.
    let store = Store::new(
        &RedisConfig {
            url: support::redis_url(),
            ..RedisConfig::default()
        },
        &world.namespace,
    )
    .expect("store");
    let ledger = store
        .ledger_get("acme", "evt_invalid_1")
        .await
        .expect("ledger")
        .expect("a ledger entry");
    let stage = &ledger.stages["normalizer"];
    assert_eq!(stage.status, "dead_lettered");
    assert_eq!(stage.detail["error_class"], "validation");
    // Nothing was claimed: a fixed replay is not mistaken for a duplicate.
    assert_eq!(
        world
            .count(
                &world
                    .inspector
                    .topology()
                    .stage_queue(handoff_bus::CRM_WRITER)
            )
            .await,
        0
    );
    world.finish().await;
}

#[tokio::test]
async fn an_unsupported_schema_version_and_an_unknown_type_are_dead_lettered() {
    let world = World::start().await;
    world
        .publish_raw(EventType::LeadCreated, "evt_v9", 9, &seed_with_id("evt_v9"))
        .await;
    let mut unknown = raw_envelope(EventType::LeadCreated, "evt_unknown_type", 1, "{}");
    unknown.event_type = "lead.deleted".into();
    world
        .publish_envelope("raw.lead.deleted".into(), &unknown)
        .await;

    let mut dead = world.dead_letters(2, Duration::from_secs(20)).await;
    dead.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    assert_eq!(dead[0].event_id, "evt_unknown_type");
    assert_eq!(dead[0].error_class(), ErrorClass::Undecodable);
    assert!(
        dead[0].error_message.contains("unknown event type"),
        "{}",
        dead[0].error_message
    );
    assert_eq!(dead[1].event_id, "evt_v9");
    assert_eq!(dead[1].error_class(), ErrorClass::UnsupportedSchema);
    assert!(
        dead[1].error_message.contains("unsupported schema version"),
        "{}",
        dead[1].error_message
    );
    assert_not_retried(&world).await;
    world.finish().await;
}
