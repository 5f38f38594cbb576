//! The Mailchimp Marketing API v3 stand-in: the subset an email writer uses, with Mailchimp's
//! basic auth, connection limit and problem+json error bodies.
//!
//! | route | file |
//! |---|---|
//! | `PUT`/`GET /3.0/lists/{list_id}/members/{subscriber_hash}` | [`members`] |
//! | `POST /3.0/lists/{list_id}/members/{subscriber_hash}/tags` | [`members`] |
//! | `POST`/`GET /3.0/lists/{list_id}/members/{subscriber_hash}/events` | [`members`] |
//!
//! `subscriber_hash` is the MD5 of the lower-cased email ([`hash`]); `list_id` must be one of
//! `[mailchimp] lists` (404 otherwise). Members and events live in [`store::Store`]; error shapes
//! in [`error`]; the per-key connection limit in [`connections`].
//!
//! Two layers wrap the routes, as for HubSpot. The outer one ([`crate::vendor::faults_and_log`]
//! with `api = "mailchimp"`) takes a connection slot for a known key (429 beyond
//! `max_connections`), applies the injected faults with Mailchimp-shaped bodies, and writes the
//! request log. The inner one ([`authenticate`]) checks the API key, the password of
//! `Authorization: Basic` with any username (401 "API Key Invalid" otherwise).

pub mod config;
pub mod connections;
pub mod error;
pub mod hash;
pub mod members;
pub mod store;

use std::collections::BTreeSet;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::Response;
use axum::routing::{get, post};

pub use config::MailchimpConfig;
pub use store::{Event, Member, Status, Tag};

use crate::Sandbox;
use crate::vendor::{self, Api, authorization};

/// The Mailchimp part of the sandbox's state (behind the sandbox's one lock).
#[derive(Debug)]
pub struct MailchimpState {
    pub store: store::Store,
    /// The accepted API keys.
    pub keys: BTreeSet<String>,
    pub connections: connections::Connections,
}

impl MailchimpState {
    /// Empty audiences configured by `cfg`.
    pub fn new(cfg: &MailchimpConfig) -> Self {
        MailchimpState {
            store: store::Store::new(cfg),
            keys: cfg.api_keys.iter().cloned().collect(),
            connections: connections::Connections::default(),
        }
    }

    /// Empties the audiences; requests in flight keep their connection slots.
    pub fn reset(&mut self) {
        self.store.reset();
        self.connections.reset();
    }
}

/// The API key in an `Authorization` header value: the basic-auth password.
pub fn api_key(authorization: &str) -> Option<String> {
    hash::basic_password(authorization)
}

/// The Mailchimp routes with both layers, ready to merge into the sandbox's router.
pub fn router(sb: Sandbox) -> Router {
    let member = "/3.0/lists/{list_id}/members/{subscriber_hash}";
    Router::new()
        .route(member, get(members::get).put(members::upsert))
        .route(&format!("{member}/tags"), post(members::tags))
        .route(
            &format!("{member}/events"),
            get(members::list_events).post(members::events),
        )
        .route_layer(from_fn_with_state(sb.clone(), authenticate))
        .route_layer(from_fn_with_state(sb.clone(), faults_and_log))
        .with_state(sb)
}

/// A configured API key as the basic-auth password, else 401.
async fn authenticate(State(sb): State<Sandbox>, req: Request, next: Next) -> Response {
    let key = authorization(&req).and_then(|a| api_key(&a));
    let known = key.is_some_and(|k| sb.lock().mailchimp.keys.contains(&k));
    if known {
        next.run(req).await
    } else {
        error::unauthorized()
    }
}

/// Connection slot, injected faults, then the routes; every request ends up in the request log
/// (see [`crate::vendor`]).
async fn faults_and_log(State(sb): State<Sandbox>, req: Request, next: Next) -> Response {
    vendor::faults_and_log(sb, Api::Mailchimp, req, next).await
}
