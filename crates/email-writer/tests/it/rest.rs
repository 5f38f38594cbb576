//! The generic REST adapter end to end (`adapter = "rest"`): routes from configuration, sent
//! through the same engine, here against the sandbox's CRM API standing in for an internal tool.

use std::time::Duration;

use handoff_delivery::{AuthConfig, RestRouteConfig, SecretSource};
use handoff_email_writer::AdapterKind;
use handoff_events::v1::canonical_payload::Event;
use handoff_events::v1::{Contact, ContactUpdated, LeadCreated};
use handoff_sandbox::hubspot::ObjectType;
use handoff_sandbox::testing::TEST_TOKEN;

use crate::helpers::{World, envelope};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_routes_render_and_send_and_unrouted_types_are_skipped() {
    let world = World::start_with(|cfg| {
        cfg.adapter = AdapterKind::Rest;
        cfg.rest.base_url = cfg.mailchimp.base_url.clone();
        cfg.rest.auth = AuthConfig::Static {
            token: SecretSource::literal(TEST_TOKEN),
        };
        cfg.rest.pacing = cfg.mailchimp.pacing.clone();
        cfg.rest.routes = vec![RestRouteConfig {
            event_type: "lead.created".into(),
            method: "POST".into(),
            path: "/crm/v3/objects/contacts/batch/upsert".into(),
            headers: [("Idempotency-Key".to_owned(), "{{event_id}}".to_owned())]
                .into_iter()
                .collect(),
            body: Some(serde_json::json!({
                "inputs": [{
                    "idProperty": "email",
                    "id": "{{contact.email}}",
                    "properties": {
                        "email": "{{contact.email}}",
                        "firstname": "{{contact.first_name}}",
                        "handoff_source_event": "{{event_id}}"
                    }
                }]
            })),
        }];
    })
    .await;
    let email = "rest.subscriber@example.com";
    world
        .publish(&envelope(
            "rest-1",
            1_774_900_000,
            "forms",
            Event::LeadCreated(LeadCreated {
                contact: Some(Contact {
                    email: Some(email.into()),
                    first_name: Some("Rest".into()),
                    ..Contact::default()
                }),
                ..LeadCreated::default()
            }),
        ))
        .await;
    let ledger = world
        .wait_ledger("rest-1", "delivered", Duration::from_secs(10))
        .await;
    assert_eq!(
        ledger["stages"]["email-writer"]["detail"]["destination"],
        "rest"
    );
    let record = world
        .sandbox
        .records(ObjectType::Contacts)
        .into_iter()
        .find(|o| o.properties.get("email").cloned().flatten().as_deref() == Some(email))
        .expect("the tool got the subscriber");
    assert_eq!(
        record.properties["firstname"].as_deref(),
        Some("Rest"),
        "{record:?}"
    );
    assert_eq!(
        record.properties["handoff_source_event"].as_deref(),
        Some("rest-1")
    );
    let timeline = world.timeline(email).await;
    assert_eq!(timeline.len(), 1, "indexed under the email");

    // No route for contact.updated: acked without a request, nothing in Mailchimp either.
    let before = world.sandbox.stats().requests;
    world
        .publish(&envelope(
            "rest-2",
            1_774_900_001,
            "app",
            Event::ContactUpdated(ContactUpdated {
                contact: Some(Contact {
                    email: Some(email.into()),
                    ..Contact::default()
                }),
                company: None,
            }),
        ))
        .await;
    world.wait_until_idle().await;
    assert_eq!(world.sandbox.stats().requests, before);
    assert!(world.sandbox.mailchimp_members().is_empty());
    world.finish().await;
}
