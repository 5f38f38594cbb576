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
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::{Next, from_fn_with_state};
use axum::response::Response;
use axum::routing::{get, post, put};
use tokio::time::Instant;

pub use config::HubSpotConfig;
pub use store::{AssociationRecord, Object, ObjectType};

pub use crate::vendor::Writes;

use crate::Sandbox;
use crate::auth::Tokens;
use crate::ratelimit::{Limiter, Verdict};
use crate::vendor::{self, Api, authorization};

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

pub(crate) fn set_rate_headers(resp: &mut Response, v: &Verdict) {
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

/// Injected faults first, then the routes; every request ends up in the request log (see
/// [`crate::vendor`]).
async fn faults_and_log(State(sb): State<Sandbox>, req: Request, next: Next) -> Response {
    vendor::faults_and_log(sb, Api::HubSpot, req, next).await
}
