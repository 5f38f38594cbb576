//! Authentication: private-app bearer tokens, HubSpot's 401 bodies, and the OAuth2 token endpoint
//! with expiring access tokens.

use std::time::Duration;

use handoff_sandbox::testing::{self, TEST_TOKEN};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Hs, start, start_with};

#[tokio::test]
async fn missing_and_unknown_tokens_get_401_invalid_authentication() {
    let hs = start().await;
    let path = "/crm/v3/objects/contacts";
    let body = Some(json!({ "properties": { "email": "a@b.com" } }));
    for token in [None, Some("pat-unknown")] {
        let r = hs.send_as(token, Method::POST, path, body.clone()).await;
        assert_eq!(r.status, 401, "{token:?}");
        assert_eq!(r.body["status"], json!("error"));
        assert_eq!(r.body["category"], json!("INVALID_AUTHENTICATION"));
        assert!(r.body["correlationId"].is_string());
        assert!(
            r.header("x-hubspot-ratelimit-max").is_none(),
            "no quota for strangers"
        );
    }
    let ok = hs.send_as(Some(TEST_TOKEN), Method::POST, path, body).await;
    assert_eq!(ok.status, 201);
    let log = hs.sb.requests();
    assert_eq!(
        log.iter().map(|e| e.token.clone()).collect::<Vec<_>>(),
        vec![
            None,
            Some("pat-unknown".to_owned()),
            Some(TEST_TOKEN.to_owned())
        ]
    );
    assert_eq!(hs.sb.stats().by_status["401"], 2);
}

async fn token_request(hs: &Hs, form: &[(&str, &str)]) -> (u16, Value) {
    let resp = hs
        .http
        .post(hs.url("/oauth/v1/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form)
                .finish(),
        )
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn oauth_refresh_flow_issues_expiring_tokens() {
    let mut cfg = testing::config();
    cfg.hubspot.oauth.access_token_ttl = Duration::from_secs(1);
    let hs = start_with(cfg).await;
    let refresh = [
        ("grant_type", "refresh_token"),
        ("client_id", "sandbox-client"),
        ("client_secret", "sandbox-secret"),
        ("refresh_token", "sandbox-refresh-token"),
    ];
    let (status, body) = token_request(&hs, &refresh).await;
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(body["token_type"], json!("bearer"));
    assert_eq!(body["expires_in"], json!(1));
    assert_eq!(body["refresh_token"], json!("sandbox-refresh-token"));
    let access = body["access_token"].as_str().unwrap().to_owned();

    let path = "/crm/v3/objects/contacts/search";
    let ok = hs
        .send_as(Some(&access), Method::POST, path, Some(json!({})))
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("x-hubspot-ratelimit-max"), Some("100"));

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let expired = hs
        .send_as(Some(&access), Method::POST, path, Some(json!({})))
        .await;
    assert_eq!(expired.status, 401);
    assert_eq!(expired.body["category"], json!("EXPIRED_AUTHENTICATION"));
    assert!(
        expired.body["message"]
            .as_str()
            .unwrap()
            .starts_with("The OAuth token used to make this call expired")
    );

    let (_, again) = token_request(&hs, &refresh).await;
    let fresh = again["access_token"].as_str().unwrap();
    assert_ne!(fresh, access);
    let ok = hs
        .send_as(Some(fresh), Method::POST, path, Some(json!({})))
        .await;
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn oauth_client_credentials_and_refusals() {
    let hs = start().await;
    let (status, body) = token_request(
        &hs,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "sandbox-client"),
            ("client_secret", "sandbox-secret"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["expires_in"], json!(1800));
    assert!(body.get("refresh_token").is_none());

    for (form, expected) in [
        (
            vec![
                ("grant_type", "refresh_token"),
                ("client_id", "sandbox-client"),
                ("client_secret", "sandbox-secret"),
                ("refresh_token", "stolen"),
            ],
            "BAD_REFRESH_TOKEN",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "nobody"),
                ("client_secret", "x"),
            ],
            "BAD_CLIENT_ID",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "sandbox-client"),
                ("client_secret", "wrong"),
            ],
            "BAD_CLIENT_SECRET",
        ),
        (
            vec![
                ("grant_type", "password"),
                ("client_id", "sandbox-client"),
                ("client_secret", "sandbox-secret"),
            ],
            "BAD_GRANT_TYPE",
        ),
    ] {
        let (status, body) = token_request(&hs, &form).await;
        assert_eq!(status, 400);
        assert_eq!(body["status"], json!(expected));
    }
}
