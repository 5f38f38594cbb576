//! The `/_sandbox/*` control API, for tests and for poking at a running sandbox with curl. Served on
//! the HTTP listener beside the vendor APIs; never authenticated, rate-limited, faulted or logged.
//!
//! | route | what |
//! |---|---|
//! | `GET /_sandbox/records/{type}` | every HubSpot record of `contacts`/`companies`/`deals`/`tickets`, all properties |
//! | `GET /_sandbox/associations` | every association |
//! | `GET /_sandbox/requests[?since=SEQ]` | the request log (entries after `SEQ`) |
//! | `GET /_sandbox/stats` | [`Stats`](crate::request_log::Stats) |
//! | `GET /_sandbox/faults` | faults in force, scopes left, seed |
//! | `PUT /_sandbox/faults` | replace all faults with the body ([`FaultConfig`] as JSON) |
//! | `PATCH /_sandbox/faults` | set the faults named in the body; a `null` value turns one off |
//! | `DELETE /_sandbox/faults` | turn every fault off |
//! | `GET /_sandbox/mailchimp/members` | every Mailchimp member of every list: status, merge fields, tags |
//! | `GET /_sandbox/mailchimp/events` | every event posted to a Mailchimp member, in arrival order |
//! | `POST /_sandbox/reset` | records, members, events, log, stats, rate windows and faults back to start-up |

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Sandbox;
use crate::faults::FaultConfig;
use crate::hubspot::ObjectType;

/// The control routes.
pub fn router(sb: Sandbox) -> Router {
    Router::new()
        .route("/_sandbox/records/{object_type}", get(records))
        .route("/_sandbox/associations", get(associations))
        .route("/_sandbox/mailchimp/members", get(mailchimp_members))
        .route("/_sandbox/mailchimp/events", get(mailchimp_events))
        .route("/_sandbox/requests", get(requests))
        .route("/_sandbox/stats", get(stats))
        .route(
            "/_sandbox/faults",
            get(get_faults)
                .put(put_faults)
                .patch(patch_faults)
                .delete(delete_faults),
        )
        .route("/_sandbox/reset", post(reset))
        .with_state(sb)
}

fn bad_request(message: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": message.into() })),
    )
        .into_response()
}

async fn records(State(sb): State<Sandbox>, Path(ty): Path<String>) -> Response {
    match ObjectType::parse(&ty) {
        Some(ty) => Json(sb.records(ty)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("unknown object type {ty:?}") })),
        )
            .into_response(),
    }
}

async fn associations(State(sb): State<Sandbox>) -> Response {
    Json(sb.associations()).into_response()
}

async fn mailchimp_members(State(sb): State<Sandbox>) -> Response {
    Json(sb.mailchimp_members()).into_response()
}

async fn mailchimp_events(State(sb): State<Sandbox>) -> Response {
    Json(sb.mailchimp_events()).into_response()
}

#[derive(Debug, Deserialize)]
struct Since {
    since: Option<u64>,
}

async fn requests(State(sb): State<Sandbox>, Query(q): Query<Since>) -> Response {
    let since = q.since.unwrap_or(0);
    let entries: Vec<_> = sb
        .requests()
        .into_iter()
        .filter(|e| e.seq > since)
        .collect();
    Json(entries).into_response()
}

async fn stats(State(sb): State<Sandbox>) -> Response {
    Json(sb.stats()).into_response()
}

async fn get_faults(State(sb): State<Sandbox>) -> Response {
    Json(sb.faults()).into_response()
}

/// The faults in `value`, or why they are refused (for a 400).
fn parse_faults(value: Value) -> Result<FaultConfig, String> {
    let cfg: FaultConfig = serde_json::from_value(value).map_err(|e| format!("faults: {e}"))?;
    cfg.validate()?;
    Ok(cfg)
}

async fn put_faults(State(sb): State<Sandbox>, body: Bytes) -> Response {
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(format!("body is not JSON: {e}")),
    };
    match parse_faults(value) {
        Ok(cfg) => {
            sb.set_faults(cfg);
            Json(sb.faults()).into_response()
        }
        Err(msg) => bad_request(msg),
    }
}

async fn patch_faults(State(sb): State<Sandbox>, body: Bytes) -> Response {
    let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("body must be a JSON object of faults");
    };
    let cleared: Vec<String> = map
        .iter()
        .filter(|(_, v)| v.is_null())
        .map(|(k, _)| k.clone())
        .collect();
    for k in &cleared {
        map.remove(k);
    }
    let patch = match parse_faults(Value::Object(map)) {
        Ok(p) => p,
        Err(msg) => return bad_request(msg),
    };
    {
        let mut st = sb.lock();
        for k in &cleared {
            if !st.faults.clear(k) {
                return bad_request(format!("unknown fault {k:?}"));
            }
        }
    }
    sb.add_faults(patch);
    Json(sb.faults()).into_response()
}

async fn delete_faults(State(sb): State<Sandbox>) -> Response {
    sb.clear_faults();
    Json(sb.faults()).into_response()
}

async fn reset(State(sb): State<Sandbox>) -> Response {
    sb.reset();
    StatusCode::NO_CONTENT.into_response()
}
