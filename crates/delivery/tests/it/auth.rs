//! `Credentials` against the HubSpot sandbox's token endpoint and the real Redis: static tokens,
//! both OAuth2 grants, refresh ahead of expiry, one refresh shared by concurrent callers and
//! "replicas" (separate Redis connections), refusals and outages, and secrets kept out of every
//! `Debug` and error message.

use std::time::{Duration, Instant};

use futures::future::join_all;
use handoff_delivery::{AuthConfig, AuthError, Credentials, OAuthGrant, RedisHandle, SecretSource};
use handoff_idempotency::RedisConfig;
use handoff_sandbox::faults::{ErrorRate, FaultConfig};
use handoff_sandbox::testing::{self, Running, TEST_TOKEN};
use secrecy::{ExposeSecret, SecretString};

use crate::Fixture;

const CLIENT_ID: &str = "sandbox-client";
const CLIENT_SECRET: &str = "sandbox-secret";
const REFRESH_TOKEN: &str = "sandbox-refresh-token";

/// A sandbox whose access tokens live `ttl`.
async fn sandbox(ttl: Duration) -> Running {
    let mut cfg = testing::config();
    cfg.hubspot.oauth.access_token_ttl = ttl;
    testing::spawn(cfg).await.expect("sandbox starts")
}

fn refresh_grant(sandbox: &Running, client_secret: &str, refresh_token: &str) -> AuthConfig {
    AuthConfig::OAuth2 {
        token_url: format!("{}/oauth/v1/token", sandbox.base_url),
        client_id: CLIENT_ID.to_owned(),
        client_secret: SecretSource::literal(client_secret),
        grant: OAuthGrant::RefreshToken {
            refresh_token: SecretSource::literal(refresh_token),
        },
        refresh_ahead: Duration::from_secs(300),
    }
}

/// The sandbox's own OAuth app, refresh-token grant.
fn oauth(sandbox: &Running) -> AuthConfig {
    refresh_grant(sandbox, CLIENT_SECRET, REFRESH_TOKEN)
}

/// One "replica": credentials on a Redis connection of their own.
fn replica(fx: &Fixture, name: &str, cfg: &AuthConfig) -> Credentials {
    let redis = RedisHandle::new(&RedisConfig {
        url: handoff_test_support::redis_url(),
        op_timeout: Duration::from_secs(2),
    })
    .expect("valid url");
    Credentials::new(name, cfg, redis, &fx.ns, reqwest::Client::new()).expect("credentials")
}

/// How many token requests the sandbox has seen.
fn token_requests(sandbox: &Running) -> usize {
    sandbox
        .requests()
        .iter()
        .filter(|e| e.path == "/oauth/v1/token")
        .count()
}

/// The status of a CRM read with `token`: 404 (no such contact) once authenticated, 401 if not.
async fn crm_status(sandbox: &Running, token: &SecretString) -> u16 {
    reqwest::Client::new()
        .get(format!("{}/crm/v3/objects/contacts/1", sandbox.base_url))
        .bearer_auth(token.expose_secret())
        .send()
        .await
        .expect("sandbox answers")
        .status()
        .as_u16()
}

fn text(token: &SecretString) -> String {
    token.expose_secret().to_owned()
}

#[tokio::test]
async fn a_static_token_is_sent_as_is_and_a_rejection_is_permanent() {
    let fx = Fixture::new().await;
    let sandbox = sandbox(Duration::from_secs(60)).await;
    let cfg = AuthConfig::Static {
        token: SecretSource::literal(TEST_TOKEN),
    };
    let creds = replica(&fx, "hubspot-pat", &cfg);
    assert_eq!(creds.name(), "hubspot-pat");
    let token = creds.bearer().await.expect("bearer");
    assert_eq!(text(&token), TEST_TOKEN);
    assert_eq!(crm_status(&sandbox, &token).await, 404);
    let err = creds.after_rejection(&token).await.expect_err("rejected");
    assert!(matches!(err, AuthError::Rejected { .. }), "{err:?}");
    assert!(!err.is_transient());
    assert!(!err.to_string().contains(TEST_TOKEN), "{err}");
    // From the environment (Cargo sets CARGO_PKG_NAME for the tests it runs): no `set_var`.
    let cfg = AuthConfig::Static {
        token: SecretSource::from_env("CARGO_PKG_NAME"),
    };
    let creds = replica(&fx, "from-env", &cfg);
    assert_eq!(
        text(&creds.bearer().await.expect("bearer")),
        "handoff-delivery"
    );
    assert_eq!(token_requests(&sandbox), 0);
    fx.cleanup().await;
}

#[tokio::test]
async fn the_refresh_token_grant_gets_a_token_the_crm_accepts_and_shares_it() {
    let mut fx = Fixture::new().await;
    let sandbox = sandbox(Duration::from_secs(3)).await;
    let creds = replica(&fx, "hubspot-oauth", &oauth(&sandbox));
    let token = creds.bearer().await.expect("bearer");
    assert!(
        text(&token).starts_with("sandbox-oauth-"),
        "{}",
        text(&token)
    );
    assert_eq!(crm_status(&sandbox, &token).await, 404);
    // Cached: the next call asks nobody.
    assert_eq!(text(&creds.bearer().await.expect("bearer")), text(&token));
    assert_eq!(token_requests(&sandbox), 1);
    // Shared in Redis for as long as it lives; the lock is gone.
    let key = format!("{}:auth:hubspot-oauth", fx.ns);
    let ttl = fx.pttl(&key).await;
    assert!(ttl > 2_000 && ttl <= 3_000, "{ttl}");
    assert_eq!(fx.pttl(&format!("{key}:lock")).await, -2);
    let stored: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut fx.raw)
        .await
        .expect("GET");
    let stored: serde_json::Value = serde_json::from_str(&stored).expect("JSON");
    assert_eq!(stored["access_token"], text(&token));
    assert_eq!(stored["lifetime_ms"], 3_000);
    // The refresh token and the client secret never go to Redis.
    assert!(!stored.to_string().contains(REFRESH_TOKEN));
    assert!(!stored.to_string().contains(CLIENT_SECRET));
    fx.cleanup().await;
}

/// With 3 s tokens the refresh is due with 1 s left: a token is kept while more is left, replaced
/// after, and over two lifetimes of calls every token handed out is still accepted.
#[tokio::test]
async fn tokens_are_refreshed_ahead_of_expiry_and_never_handed_out_expired() {
    let fx = Fixture::new().await;
    let sandbox = sandbox(Duration::from_secs(3)).await;
    let creds = replica(&fx, "hubspot-oauth", &oauth(&sandbox));
    let start = Instant::now();
    let first = creds.bearer().await.expect("bearer");
    tokio::time::sleep(Duration::from_millis(1_200).saturating_sub(start.elapsed())).await;
    assert_eq!(text(&creds.bearer().await.expect("bearer")), text(&first));
    tokio::time::sleep(Duration::from_millis(2_300).saturating_sub(start.elapsed())).await;
    let second = creds.bearer().await.expect("bearer");
    assert_ne!(text(&second), text(&first));
    // The old one had not expired yet: the refresh came ahead of time.
    assert_eq!(crm_status(&sandbox, &first).await, 404);

    let mut seen = vec![text(&first), text(&second)];
    while start.elapsed() < Duration::from_millis(6_500) {
        let token = creds.bearer().await.expect("bearer");
        assert_eq!(
            crm_status(&sandbox, &token).await,
            404,
            "token handed out at {:?} was refused",
            start.elapsed()
        );
        if !seen.contains(&text(&token)) {
            seen.push(text(&token));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // About one token per two seconds of a 3 s lifetime, each asked for once.
    assert!((3..=5).contains(&seen.len()), "{} tokens", seen.len());
    assert_eq!(token_requests(&sandbox), seen.len());
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_make_one_token_request_for_fifty_concurrent_calls() {
    let fx = Fixture::new().await;
    let sandbox = sandbox(Duration::from_secs(60)).await;
    let cfg = oauth(&sandbox);
    let replicas = [
        replica(&fx, "hubspot-oauth", &cfg),
        replica(&fx, "hubspot-oauth", &cfg),
    ];
    let calls = (0..50).map(|i| {
        let creds = replicas[i % 2].clone();
        tokio::spawn(async move { creds.bearer().await })
    });
    let tokens: Vec<String> = join_all(calls)
        .await
        .into_iter()
        .map(|joined| text(&joined.expect("task").expect("bearer")))
        .collect();
    assert_eq!(tokens.len(), 50);
    assert!(tokens.iter().all(|t| *t == tokens[0]), "{tokens:?}");
    assert_eq!(token_requests(&sandbox), 1);
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_rejection_refreshes_once_for_ten_concurrent_callers() {
    let fx = Fixture::new().await;
    let sandbox = sandbox(Duration::from_secs(60)).await;
    let cfg = oauth(&sandbox);
    let replicas = [
        replica(&fx, "hubspot-oauth", &cfg),
        replica(&fx, "hubspot-oauth", &cfg),
    ];
    let rejected = replicas[0].bearer().await.expect("bearer");
    assert_eq!(
        text(&replicas[1].bearer().await.expect("bearer")),
        text(&rejected)
    );
    assert_eq!(token_requests(&sandbox), 1);
    let calls = (0..10).map(|i| {
        let creds = replicas[i % 2].clone();
        let rejected = rejected.clone();
        tokio::spawn(async move { creds.after_rejection(&rejected).await })
    });
    let tokens: Vec<String> = join_all(calls)
        .await
        .into_iter()
        .map(|joined| text(&joined.expect("task").expect("after_rejection")))
        .collect();
    assert!(tokens.iter().all(|t| *t == tokens[0]), "{tokens:?}");
    assert_ne!(tokens[0], text(&rejected));
    assert_eq!(token_requests(&sandbox), 2);
    // Every later call gets the new token, and a late report of the old 401 costs nothing.
    for creds in &replicas {
        assert_eq!(text(&creds.bearer().await.expect("bearer")), tokens[0]);
        let again = creds.after_rejection(&rejected).await.expect("again");
        assert_eq!(text(&again), tokens[0]);
    }
    assert_eq!(token_requests(&sandbox), 2);
    fx.cleanup().await;
}

#[tokio::test]
async fn the_client_credentials_grant_works() {
    let fx = Fixture::new().await;
    let sandbox = sandbox(Duration::from_secs(60)).await;
    let cfg = AuthConfig::OAuth2 {
        token_url: format!("{}/oauth/v1/token", sandbox.base_url),
        client_id: CLIENT_ID.to_owned(),
        client_secret: SecretSource::literal(CLIENT_SECRET),
        grant: OAuthGrant::ClientCredentials {
            scope: Some("crm.objects.contacts.write".to_owned()),
        },
        refresh_ahead: Duration::from_secs(300),
    };
    let creds = replica(&fx, "hubspot-app", &cfg);
    let token = creds.bearer().await.expect("bearer");
    assert_eq!(crm_status(&sandbox, &token).await, 404);
    assert_eq!(token_requests(&sandbox), 1);
    fx.cleanup().await;
}

#[tokio::test]
async fn a_refused_secret_or_refresh_token_is_a_permanent_error_with_the_status() {
    let mut fx = Fixture::new().await;
    let sandbox = sandbox(Duration::from_secs(60)).await;
    // (client secret, refresh token, the error code HubSpot puts in its body)
    let rows = [
        ("wrong-secret-123", REFRESH_TOKEN, "BAD_CLIENT_SECRET"),
        (CLIENT_SECRET, "wrong-refresh-456", "BAD_REFRESH_TOKEN"),
    ];
    for (i, (secret, refresh, code)) in rows.into_iter().enumerate() {
        let creds = replica(
            &fx,
            &format!("bad-{i}"),
            &refresh_grant(&sandbox, secret, refresh),
        );
        let err = creds.bearer().await.expect_err("refused");
        assert!(
            matches!(&err, AuthError::Refused { status: 400, body, .. } if body.contains(code)),
            "{err:?}"
        );
        assert!(!err.is_transient());
        let shown = format!("{err} {err:?}");
        assert!(shown.contains("400"), "{shown}");
        for secret in [secret, refresh, CLIENT_SECRET, REFRESH_TOKEN] {
            assert!(!shown.contains(secret), "{shown}");
        }
        // Nothing was shared, and the lock was let go.
        let lock = format!("{}:auth:bad-{i}:lock", fx.ns);
        assert_eq!(fx.pttl(&lock).await, -2);
        assert_eq!(fx.pttl(&format!("{}:auth:bad-{i}", fx.ns)).await, -2);
    }
    fx.cleanup().await;
}

#[tokio::test]
async fn an_unreachable_or_failing_endpoint_is_transient() {
    let fx = Fixture::new().await;
    // A port nobody listens on.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let cfg = AuthConfig::OAuth2 {
        token_url: format!("http://{closed}/oauth/v1/token"),
        client_id: CLIENT_ID.to_owned(),
        client_secret: SecretSource::literal(CLIENT_SECRET),
        grant: OAuthGrant::ClientCredentials { scope: None },
        refresh_ahead: Duration::from_secs(300),
    };
    let err = replica(&fx, "nowhere", &cfg)
        .bearer()
        .await
        .expect_err("unreachable");
    assert!(
        matches!(err, AuthError::Unavailable { status: None, .. }),
        "{err:?}"
    );
    assert!(err.is_transient());

    let sandbox = sandbox(Duration::from_secs(60)).await;
    sandbox.set_faults(FaultConfig {
        errors: Some(ErrorRate {
            rate: 1.0,
            statuses: vec![503],
        }),
        ..FaultConfig::default()
    });
    let err = replica(&fx, "failing", &oauth(&sandbox))
        .bearer()
        .await
        .expect_err("503");
    assert!(
        matches!(
            err,
            AuthError::Unavailable {
                status: Some(503),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_transient());
    fx.cleanup().await;
}

/// A refresh that fails while the old token is still valid keeps the old one in use, and is not
/// retried on every call.
#[tokio::test]
async fn a_failed_refresh_keeps_the_valid_token_in_use() {
    let fx = Fixture::new().await;
    let sandbox = sandbox(Duration::from_secs(6)).await;
    let creds = replica(&fx, "hubspot-oauth", &oauth(&sandbox));
    let start = Instant::now();
    let token = creds.bearer().await.expect("bearer");
    sandbox.set_faults(FaultConfig {
        errors: Some(ErrorRate {
            rate: 1.0,
            statuses: vec![502],
        }),
        ..FaultConfig::default()
    });
    // Due for a refresh after 4 s (2 s left); the refresh fails, the old token goes on.
    tokio::time::sleep(Duration::from_millis(4_200).saturating_sub(start.elapsed())).await;
    for _ in 0..10 {
        assert_eq!(text(&creds.bearer().await.expect("bearer")), text(&token));
    }
    assert_eq!(token_requests(&sandbox), 2);
    sandbox.clear_faults();
    fx.cleanup().await;
}

/// A replica that took the refresh lock and died holds nobody up for longer than the lock lives.
#[tokio::test]
async fn a_dead_lock_holder_is_replaced_when_its_lock_expires() {
    let mut fx = Fixture::new().await;
    let sandbox = sandbox(Duration::from_secs(60)).await;
    let creds = replica(&fx, "hubspot-oauth", &oauth(&sandbox));
    let _: () = redis::cmd("SET")
        .arg(format!("{}:auth:hubspot-oauth:lock", fx.ns))
        .arg("a-replica-that-died")
        .arg("PX")
        .arg(700)
        .query_async(&mut fx.raw)
        .await
        .expect("SET");
    let start = Instant::now();
    let token = creds.bearer().await.expect("bearer");
    assert!(
        start.elapsed() >= Duration::from_millis(600),
        "{:?}",
        start.elapsed()
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(crm_status(&sandbox, &token).await, 404);
    assert_eq!(token_requests(&sandbox), 1);
    fx.cleanup().await;
}

#[tokio::test]
async fn a_missing_secret_fails_at_construction_naming_the_variable() {
    let fx = Fixture::new().await;
    let sandbox = sandbox(Duration::from_secs(60)).await;
    let cfg = AuthConfig::OAuth2 {
        token_url: format!("{}/oauth/v1/token", sandbox.base_url),
        client_id: CLIENT_ID.to_owned(),
        client_secret: SecretSource::from_env("HANDOFF_AUTH_IT_NEVER_SET"),
        grant: OAuthGrant::RefreshToken {
            refresh_token: SecretSource::literal(REFRESH_TOKEN),
        },
        refresh_ahead: Duration::from_secs(300),
    };
    let err = Credentials::new(
        "hubspot-oauth",
        &cfg,
        fx.redis.clone(),
        &fx.ns,
        reqwest::Client::new(),
    )
    .expect_err("missing");
    let shown = err.to_string();
    assert!(
        matches!(
            err,
            AuthError::MissingSecret {
                what: "client_secret",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(shown.contains("HANDOFF_AUTH_IT_NEVER_SET"), "{shown}");
    assert!(!shown.contains(REFRESH_TOKEN), "{shown}");
    assert!(!err.is_transient());
    // A name that would make an ambiguous Redis key is refused too.
    let err = Credentials::new(
        "a:lock",
        &oauth(&sandbox),
        fx.redis.clone(),
        &fx.ns,
        reqwest::Client::new(),
    )
    .expect_err("bad name");
    assert!(matches!(err, AuthError::Config { .. }), "{err:?}");
    assert_eq!(token_requests(&sandbox), 0);
    fx.cleanup().await;
}

#[tokio::test]
async fn debug_output_shows_no_secret() {
    let fx = Fixture::new().await;
    let sandbox = sandbox(Duration::from_secs(60)).await;
    let oauth_cfg = oauth(&sandbox);
    let static_cfg = AuthConfig::Static {
        token: SecretSource::literal(TEST_TOKEN),
    };
    let oauth_creds = replica(&fx, "hubspot-oauth", &oauth_cfg);
    let static_creds = replica(&fx, "hubspot-pat", &static_cfg);
    let access = oauth_creds.bearer().await.expect("bearer");
    static_creds.bearer().await.expect("bearer");
    let shown = [
        format!("{oauth_cfg:?}"),
        format!("{static_cfg:?}"),
        format!("{oauth_cfg:#?}"),
        format!("{oauth_creds:?}"),
        format!("{static_creds:?}"),
        format!("{access:?}"),
        serde_json::to_string(&oauth_cfg).expect("serialize"),
    ];
    for text in &shown {
        for secret in [
            CLIENT_SECRET,
            REFRESH_TOKEN,
            TEST_TOKEN,
            access.expose_secret(),
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
    assert!(shown[3].contains("hubspot-oauth"), "{}", shown[3]);
    fx.cleanup().await;
}
