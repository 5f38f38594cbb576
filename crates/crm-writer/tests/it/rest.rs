//! The generic REST adapter end to end: routes from configuration, sent through the same engine
//! (pacing, token, classification), here against the sandbox's HTTP API as the "internal tool".

use std::time::Duration;

use handoff_crm_writer::AdapterKind;
use handoff_delivery::{AuthConfig, RestRouteConfig, SecretSource};
use handoff_events::v1::canonical_payload::Event;
use handoff_events::v1::{Contact, ContactUpdated, ErrorClass, LeadCreated, MeetingBooked};
use handoff_sandbox::hubspot::ObjectType;
use handoff_sandbox::testing::TEST_TOKEN;

use crate::helpers::{World, envelope, record};

fn routes() -> Vec<RestRouteConfig> {
    let body: serde_json::Value = serde_json::json!({
        "inputs": [{
            "idProperty": "email",
            "id": "{{contact.email}}",
            "properties": {
                "email": "{{contact.email}}",
                "firstname": "{{contact.first_name}}",
                "lastname": "{{contact.last_name}}",
                "handoff_form_id": "{{form_id}}",
                "handoff_source_event": "{{event_id}}"
            }
        }]
    });
    vec![
        RestRouteConfig {
            event_type: "lead.created".into(),
            method: "POST".into(),
            path: "/crm/v3/objects/contacts/batch/upsert".into(),
            headers: [("X-Handoff-Event".to_owned(), "{{event_id}}".to_owned())]
                .into_iter()
                .collect(),
            body: Some(body),
        },
        // A route whose path needs a value some events lack: those cannot be sent.
        RestRouteConfig {
            event_type: "meeting.booked".into(),
            method: "GET".into(),
            path: "/crm/v3/objects/contacts/{{contact.external_id}}".into(),
            headers: Default::default(),
            body: None,
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_routes_render_send_and_dead_letter_what_cannot_be_built() {
    let world = World::start_with(|cfg| {
        cfg.adapter = AdapterKind::Rest;
        cfg.rest.base_url = cfg.hubspot.base_url.clone();
        cfg.rest.auth = AuthConfig::Static {
            token: SecretSource {
                env: None,
                file: None,
                value: Some(TEST_TOKEN.to_owned().into()),
            },
        };
        cfg.rest.pacing = cfg.hubspot.pacing.clone();
        cfg.rest.routes = routes();
    })
    .await;

    let lead = envelope(
        "rest-1",
        1_774_400_000,
        "forms",
        Event::LeadCreated(LeadCreated {
            contact: Some(Contact {
                email: Some("rest.lead@example.com".into()),
                first_name: Some("Rest".into()),
                ..Contact::default()
            }),
            form_id: Some("signup".into()),
            ..LeadCreated::default()
        }),
    );
    world.publish(&lead).await;
    let ledger = world
        .wait_ledger("rest-1", "delivered", Duration::from_secs(10))
        .await;
    assert_eq!(
        ledger["stages"]["crm-writer"]["detail"]["destination"],
        "rest"
    );
    let contact = record(
        &world.sandbox,
        ObjectType::Contacts,
        "email",
        "rest.lead@example.com",
    )
    .expect("the tool got the contact");
    assert_eq!(contact["firstname"].as_deref(), Some("Rest"));
    assert_eq!(contact["handoff_form_id"].as_deref(), Some("signup"));
    assert_eq!(contact["handoff_source_event"].as_deref(), Some("rest-1"));
    assert!(
        !contact.contains_key("lastname") || contact["lastname"].is_none(),
        "a field the event lacks is left out, not blanked"
    );

    // No route for contact.updated: acked without a request.
    let before = world.sandbox.stats().requests;
    world
        .publish(&envelope(
            "rest-2",
            1_774_400_001,
            "app",
            Event::ContactUpdated(ContactUpdated {
                contact: Some(Contact {
                    email: Some("rest.lead@example.com".into()),
                    ..Contact::default()
                }),
                company: None,
            }),
        ))
        .await;
    // A meeting without the external id its route's path needs: dead-lettered, never sent.
    world
        .publish(&envelope(
            "rest-3",
            1_774_400_002,
            "scheduler",
            Event::MeetingBooked(MeetingBooked {
                contact: Some(Contact {
                    email: Some("rest.lead@example.com".into()),
                    ..Contact::default()
                }),
                ..MeetingBooked::default()
            }),
        ))
        .await;
    let letters = world.dead_letters(1, Duration::from_secs(10)).await;
    assert_eq!(letters[0].event_id, "rest-3");
    assert_eq!(letters[0].error_class(), ErrorClass::Validation);
    assert!(
        letters[0].error_message.contains("contact.external_id"),
        "{}",
        letters[0].error_message
    );
    assert_eq!(letters[0].destination, "rest");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        world.sandbox.stats().requests,
        before,
        "nothing sent for either"
    );
    assert_eq!(world.waiting().await, 0);
    world.finish().await;
}
