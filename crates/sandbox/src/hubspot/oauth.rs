//! `POST /oauth/v1/token`: HubSpot's OAuth2 token endpoint, form-encoded. Grants:
//! `refresh_token` (with `client_id`, `client_secret`, `refresh_token`; the refresh token is handed
//! back unchanged, as HubSpot's do not rotate) and `client_credentials`. Issued access tokens expire
//! after `hubspot.oauth.access_token_ttl`; using one later gets 401 `EXPIRED_AUTHENTICATION`.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::time::Instant;

use super::error::oauth_error;
use crate::Sandbox;

/// Exchanges client credentials (and a refresh token) for an access token.
pub async fn token(State(sb): State<Sandbox>, body: Bytes) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    let cfg = &sb.config().hubspot.oauth;
    let Some(client) = cfg
        .clients
        .iter()
        .find(|c| c.client_id == field("client_id"))
    else {
        return oauth_error("BAD_CLIENT_ID", "missing or unknown client id");
    };
    if client.client_secret != field("client_secret") {
        return oauth_error("BAD_CLIENT_SECRET", "missing or invalid client secret");
    }
    let refresh_token = match field("grant_type") {
        "refresh_token" => {
            let presented = field("refresh_token");
            if !client.refresh_tokens.iter().any(|t| t == presented) {
                return oauth_error("BAD_REFRESH_TOKEN", "missing or unknown refresh token");
            }
            Some(presented.to_owned())
        }
        "client_credentials" => None,
        other => {
            return oauth_error(
                "BAD_GRANT_TYPE",
                &format!(
                    "unsupported grant_type {other:?}; use refresh_token or client_credentials"
                ),
            );
        }
    };
    let ttl = cfg.access_token_ttl;
    let access_token = sb
        .lock()
        .hubspot
        .tokens
        .issue(&client.client_id, ttl, Instant::now());
    let mut body = json!({
        "token_type": "bearer",
        "access_token": access_token,
        "expires_in": ttl.as_secs(),
    });
    if let Some(rt) = refresh_token {
        body["refresh_token"] = json!(rt);
    }
    Json(body).into_response()
}
