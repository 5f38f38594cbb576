//! Credentials as the writer uses them: an OAuth app whose short-lived tokens are refreshed ahead
//! of expiry while events flow, and a token the CRM refuses.

use std::time::Duration;

use handoff_delivery::{AuthConfig, OAuthGrant, SecretSource};
use handoff_events::v1::canonical_payload::Event;
use handoff_events::v1::{Contact, ContactUpdated, ErrorClass};

use crate::helpers::{World, envelope};

fn event(i: usize) -> handoff_events::v1::Envelope {
    envelope(
        &format!("auth-{i}"),
        1_774_500_000,
        "app",
        Event::ContactUpdated(ContactUpdated {
            contact: Some(Contact {
                email: Some(format!("auth{i}@example.com")),
                job_title: Some("Buyer".into()),
                ..Contact::default()
            }),
            company: None,
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oauth_app_keeps_writing_across_token_expiries_without_a_401() {
    let mut sandbox = handoff_sandbox::testing::config();
    sandbox.hubspot.oauth.access_token_ttl = Duration::from_secs(3);
    let world = World::start_full(sandbox, |cfg| {
        cfg.hubspot.auth = AuthConfig::OAuth2 {
            token_url: format!("{}/oauth/v1/token", cfg.hubspot.base_url),
            client_id: "sandbox-client".into(),
            client_secret: SecretSource::literal("sandbox-secret"),
            grant: OAuthGrant::RefreshToken {
                refresh_token: SecretSource::literal("sandbox-refresh-token"),
            },
            refresh_ahead: Duration::from_secs(1),
        };
    })
    .await;
    // Events over about eight seconds: the 3 s tokens expire twice or more meanwhile.
    for i in 0..16 {
        world.publish(&event(i)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for i in 0..16 {
        world
            .wait_ledger(&format!("auth-{i}"), "delivered", Duration::from_secs(10))
            .await;
    }
    let requests = world.sandbox.requests();
    let token_requests = requests
        .iter()
        .filter(|r| r.path == "/oauth/v1/token")
        .count();
    assert!(
        token_requests >= 3,
        "the token was refreshed as it expired ({token_requests} token requests)"
    );
    let refused = requests.iter().filter(|r| r.status == Some(401)).count();
    assert_eq!(refused, 0, "refreshed ahead of expiry, never refused");
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_the_crm_refuses_dead_letters_the_event_without_retrying() {
    let world = World::start_with(|cfg| {
        cfg.hubspot.auth = AuthConfig::Static {
            token: SecretSource::literal("pat-revoked"),
        };
    })
    .await;
    world.publish(&event(0)).await;
    let letters = world.dead_letters(1, Duration::from_secs(10)).await;
    assert_eq!(letters[0].error_class(), ErrorClass::Permanent);
    assert!(
        letters[0].error_message.contains("credentials"),
        "{}",
        letters[0].error_message
    );
    assert!(
        !letters[0].error_message.contains("pat-revoked"),
        "a secret never reaches a dead letter: {}",
        letters[0].error_message
    );
    let refused = world
        .sandbox
        .requests()
        .iter()
        .filter(|r| r.status == Some(401))
        .count();
    assert_eq!(
        refused, 1,
        "a static token cannot be refreshed: no second try"
    );
    world.finish().await;
}
