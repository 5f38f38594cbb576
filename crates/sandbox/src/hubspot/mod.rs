//! The HubSpot CRM v3 stand-in: the subset of HubSpot's documented API a CRM adapter uses, with
//! HubSpot's auth, rate limits and error bodies.
//!
//! | route | file |
//! |---|---|
//! | `POST /crm/v3/objects/{type}` · `GET`/`PATCH /crm/v3/objects/{type}/{id}[?idProperty=]` | [`objects`] |
//! | `POST /crm/v3/objects/{type}/batch/upsert` · `POST /crm/v3/objects/{type}/search` | [`objects`] |
//! | `PUT /crm/v4/objects/{from}/{id}/associations/default/{to}/{toId}` · `GET …/associations/{to}` | [`associations`] |
//! | `POST /oauth/v1/token` (`refresh_token`, `client_credentials`) | [`oauth`] |
//!
//! `{type}` is `contacts`, `companies`, `deals` or `tickets` (or the singular, or `0-1` …).
//! Records live in [`store::Store`]; error shapes in [`error`].
//!
//! Two layers wrap the routes. The outer one ([`faults_and_log`]) covers every HubSpot route,
//! OAuth included: it applies the injected faults (which therefore never use quota) and writes the
//! request log. The inner one ([`authenticate`]) covers the CRM routes only: bearer token (401),
//! then the rolling-window limiter (429), and it puts the `X-HubSpot-RateLimit-*` headers on every
//! answer to an authenticated caller.

pub mod associations;
pub mod config;
pub mod error;
pub mod oauth;
pub mod objects;
pub mod store;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use tokio::time::Instant;

pub use config::HubSpotConfig;
pub use store::{AssociationRecord, Object, ObjectType};

use crate::Sandbox;
use crate::auth::{Tokens, bearer};
use crate::faults::{Decision, TimeoutMode};
use crate::ratelimit::{Limiter, Verdict};
use crate::request_log::{RequestEntry, Write};

/// The HubSpot part of the sandbox's state (behind the sandbox's one lock).
#[derive(Debug)]
pub struct HubSpotState {
    pub store: store::Store,
    pub limiter: Limiter,
    pub tokens: Tokens,
}

impl HubSpotState {
    /// An empty portal configured by `cfg`.
    pub fn new(cfg: &HubSpotConfig) -> Self {
        HubSpotState {
            store: store::Store::new(cfg),
            limiter: Limiter::new(cfg.rate_limit.clone()),
            tokens: Tokens::new(&cfg.tokens),
        }
    }

    /// Empties the portal and the rate windows. Issued OAuth tokens survive, so a client that
    /// holds one is not logged out by a test's reset.
    pub fn reset(&mut self) {
        self.store.reset();
        self.limiter.reset();
    }
}

/// Records a handler touched, passed to the logging layer as a response extension.
#[derive(Debug, Clone, Default)]
pub struct Writes(pub Vec<Write>);

/// The HubSpot routes with both layers, ready to merge into the sandbox's router.
pub fn router(sb: Sandbox) -> Router {
    let crm = Router::new()
        .route("/crm/v3/objects/{object_type}", post(objects::create))
        .route(
            "/crm/v3/objects/{object_type}/search",
            post(objects::search),
        )
        .route(
            "/crm/v3/objects/{object_type}/batch/upsert",
            post(objects::batch_upsert),
        )
        .route(
            "/crm/v3/objects/{object_type}/{id}",
            get(objects::get).patch(objects::update),
        )
        .route(
            "/crm/v4/objects/{from_type}/{from_id}/associations/default/{to_type}/{to_id}",
            put(associations::put_default),
        )
        .route(
            "/crm/v4/objects/{from_type}/{from_id}/associations/{to_type}",
            get(associations::list),
        )
        .route_layer(from_fn_with_state(sb.clone(), authenticate));
    let oauth = Router::new().route("/oauth/v1/token", post(oauth::token));
    crm.merge(oauth)
        .route_layer(from_fn_with_state(sb.clone(), faults_and_log))
        .with_state(sb)
}

fn authorization(req: &Request) -> Option<String> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn set_rate_headers(resp: &mut Response, v: &Verdict) {
    let h = resp.headers_mut();
    h.insert("x-hubspot-ratelimit-max", HeaderValue::from(v.max));
    h.insert(
        "x-hubspot-ratelimit-remaining",
        HeaderValue::from(v.remaining),
    );
    let ms = u64::try_from(v.interval.as_millis()).unwrap_or(u64::MAX);
    h.insert(
        "x-hubspot-ratelimit-interval-milliseconds",
        HeaderValue::from(ms),
    );
}

/// Bearer token, then the limiter; the rate-limit headers go on every answer to a known caller.
async fn authenticate(State(sb): State<Sandbox>, req: Request, next: Next) -> Response {
    let now = Instant::now();
    let auth = authorization(&req);
    let verdict = {
        let mut st = sb.lock();
        let hs = &mut st.hubspot;
        match hs.tokens.authenticate(auth.as_deref(), now) {
            Ok(cred) => hs.limiter.check(&cred.rate_key, now),
            Err(err) => return error::unauthorized(&err),
        }
    };
    let mut resp = match verdict.retry_after {
        Some(after) if !verdict.allowed => error::rate_limited(after),
        _ => next.run(req).await,
    };
    set_rate_headers(&mut resp, &verdict);
    resp
}

/// An answer that never comes: the body fails before its first byte, so the server aborts the
/// connection and the client sees it closed without a response.
fn dropped() -> Response {
    let failing = futures::stream::once(async {
        Err::<axum::body::Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "the sandbox dropped this request (timeout fault)",
        ))
    });
    Response::new(Body::from_stream(failing))
}

/// Injected faults first, then the routes; every request ends up in the request log.
async fn faults_and_log(State(sb): State<Sandbox>, req: Request, next: Next) -> Response {
    // A client that gives up (its own timeout) drops this future with its connection. The real
    // service would still finish the request, and the log must still say what it did (writes of
    // a request whose answer never arrived are exactly what tests count), so the work runs on a
    // task of its own that a disconnect does not cancel.
    match tokio::spawn(serve_faulted_and_logged(sb, req, next)).await {
        Ok(response) => response,
        Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn serve_faulted_and_logged(sb: Sandbox, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let at = crate::clock::now_iso();
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let auth = authorization(&req);
    let decision = sb.lock().faults.decide(started);

    let mut fault: Option<&'static str> = None;
    let mut writes: Vec<Write> = Vec::new();
    let mut take_writes = |resp: &Response| {
        if let Some(w) = resp.extensions().get::<Writes>() {
            writes.extend(w.0.iter().cloned());
        }
    };
    let answer: Option<Response> = match decision {
        Decision::Outage {
            status,
            retry_after,
        } => {
            fault = Some("outage");
            Some(error::server_error(status, retry_after))
        }
        Decision::Storm { retry_after } => {
            fault = Some("storm");
            Some(error::rate_limited(retry_after))
        }
        Decision::Proceed {
            timeout: Some((hold, mode)),
            ..
        } => {
            fault = Some("timeout");
            match mode {
                TimeoutMode::Drop => {
                    sb.hold(hold).await;
                    None
                }
                TimeoutMode::Late => {
                    sb.hold(hold).await;
                    let resp = next.run(req).await;
                    take_writes(&resp);
                    Some(resp)
                }
                TimeoutMode::ApplyThenDrop => {
                    let resp = next.run(req).await;
                    take_writes(&resp);
                    sb.hold(hold).await;
                    None
                }
            }
        }
        Decision::Proceed {
            delay,
            timeout: None,
            error,
        } => {
            sb.hold(delay).await;
            match error {
                Some(status) => {
                    fault = Some("error");
                    Some(error::server_error(status, None))
                }
                None => {
                    let resp = next.run(req).await;
                    take_writes(&resp);
                    Some(resp)
                }
            }
        }
    };

    let mut answer = answer;
    let status = answer.as_ref().map(|r| r.status().as_u16());
    {
        let mut st = sb.lock();
        // Faulted answers to a known caller carry the quota headers too, without using quota.
        if fault.is_some()
            && let Some(resp) = answer.as_mut()
            && let Ok(cred) = st.hubspot.tokens.authenticate(auth.as_deref(), started)
        {
            let v = st.hubspot.limiter.peek(&cred.rate_key, started);
            set_rate_headers(resp, &v);
        }
        st.log.record(RequestEntry {
            seq: 0,
            at,
            elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            api: "hubspot".to_owned(),
            method,
            path,
            token: auth.as_deref().and_then(bearer).map(str::to_owned),
            status,
            fault: fault.map(str::to_owned),
            writes,
        });
    }
    let class = status.map_or("dropped", |s| match s {
        200..=299 => "2xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    });
    metrics::counter!("handoff_sandbox_requests_total", "api" => "hubspot", "status_class" => class)
        .increment(1);
    answer.unwrap_or_else(dropped)
}
