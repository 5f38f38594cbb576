//! The generic REST adapter: for an internal tool instead of a vendor's API, each event becomes
//! the HTTP requests its `[[rest.routes]]` templates describe (see [`RestConfig`] for the
//! template syntax), sent through the same engine: paced, authenticated, classified with the
//! generic table, retried through the broker and deduplicated per event. Either writer can use
//! it (`adapter = "rest"`).
//!
//! The tool cannot be asked for record ids, so there are no associations, no stale guard per
//! record and no `*.synced` report; a route that must be safe to repeat should send the event id
//! as an `Idempotency-Key` header or use `PUT` by a natural key.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use handoff_events::v1::{CanonicalPayload, Envelope};
use serde::{Deserialize, Serialize};

use crate::auth::{AuthConfig, SecretSource};
use crate::classify::Vendor;
use crate::engine::{ApiRequest, Destination, HttpConfig};
use crate::pacing::PacingConfig;
use crate::redis_handle::RedisHandle;
use crate::rest::{EventMeta, RestConfig, RestRouteConfig, RestRoutes, event_view};
use crate::service::{BuildError, DestinationParts};
use crate::writer::WriteError;

/// The name of the destination in metrics, pacing keys and dead letters.
pub const REST_DESTINATION: &str = "rest";

/// `[rest]`: the generic REST adapter's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestSettings {
    /// The tool's API root; every route's path is joined under it.
    pub base_url: String,
    /// Headers sent with every request (a route's own header of the same name wins).
    pub headers: BTreeMap<String, String>,
    /// Per event type requests (`[[rest.routes]]`); an event type without one is acked unsent.
    pub routes: Vec<RestRouteConfig>,
    /// The default reads a bearer token from `REST_API_TOKEN`.
    pub auth: AuthConfig,
    pub pacing: PacingConfig,
    pub http: HttpConfig,
}

impl Default for RestSettings {
    fn default() -> Self {
        RestSettings {
            base_url: "http://127.0.0.1:8091/api".to_owned(),
            headers: BTreeMap::new(),
            routes: Vec::new(),
            auth: AuthConfig::Static {
                token: SecretSource {
                    env: Some("REST_API_TOKEN".to_owned()),
                    file: None::<PathBuf>,
                    value: None,
                },
            },
            pacing: PacingConfig::default(),
            http: HttpConfig::default(),
        }
    }
}

impl RestSettings {
    /// The template part, as [`RestConfig::compile`] takes it.
    pub fn templates(&self) -> RestConfig {
        RestConfig {
            base_url: self.base_url.clone(),
            headers: self.headers.clone(),
            routes: self.routes.clone(),
        }
    }

    /// Checks the whole section; `Err` names the key (`rest.auth`, …) and the reason.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        self.templates().validate().map_err(|r| ("rest", r))?;
        for route in &self.routes {
            if route
                .event_type
                .parse::<handoff_events::EventType>()
                .is_err()
            {
                return Err((
                    "rest.routes",
                    format!("{:?} is not an event type", route.event_type),
                ));
            }
        }
        self.auth.validate().map_err(|r| ("rest.auth", r))?;
        self.pacing.validate().map_err(|r| ("rest.pacing", r))?;
        self.http.validate().map_err(|r| ("rest.http", r))?;
        Ok(())
    }
}

/// The adapter; cheap to clone.
#[derive(Debug, Clone)]
pub struct RestAdapter {
    pub destination: Destination,
    pub routes: Arc<RestRoutes>,
}

/// Why the `[rest]` section could not become an adapter.
#[derive(Debug, thiserror::Error)]
pub enum RestBuildError {
    #[error("compiling [rest] routes: {0}")]
    Routes(String),
    #[error(transparent)]
    Destination(#[from] BuildError),
}

impl RestAdapter {
    /// The adapter `settings` describe: its routes compiled, its destination (`rest`) with its
    /// own client, credentials and shared pacer.
    pub fn build(
        settings: &RestSettings,
        redis: &RedisHandle,
        namespace: &str,
        user_agent: &str,
    ) -> Result<RestAdapter, RestBuildError> {
        let routes = settings
            .templates()
            .compile()
            .map_err(RestBuildError::Routes)?;
        let parts = DestinationParts {
            name: REST_DESTINATION,
            vendor: Vendor::Generic,
            base_url: &settings.base_url,
            auth: &settings.auth,
            pacing: &settings.pacing,
            http: &settings.http,
            user_agent,
        };
        Ok(RestAdapter {
            destination: Destination::build(parts, redis, namespace)?,
            routes: Arc::new(routes),
        })
    }

    /// Whether any route handles `event_type`.
    pub fn handles(&self, event_type: &str) -> bool {
        self.routes.routes_for(event_type).next().is_some()
    }

    /// Sends the event's requests, in route order; returns how many were sent.
    pub async fn apply(
        &self,
        envelope: &Envelope,
        canonical: &CanonicalPayload,
    ) -> Result<usize, WriteError> {
        let payload = handoff_events::json::message_to_json(canonical)
            .map_err(|err| WriteError::Render(format!("rendering the event as JSON: {err}")))?;
        let occurred_at = envelope
            .occurred_at
            .as_ref()
            .and_then(handoff_events::to_offset_date_time);
        let meta = EventMeta {
            event_id: &envelope.event_id,
            event_type: &envelope.event_type,
            occurred_at,
            source: &envelope.source,
            publisher_id: &envelope.publisher_id,
        };
        let view = event_view(&meta, payload);
        let mut sent = 0;
        for route in self.routes.routes_for(&envelope.event_type) {
            let rendered = route
                .render(self.routes.base_url(), &view)
                .map_err(|err| WriteError::Render(err.to_string()))?;
            let request = ApiRequest {
                method: rendered.method,
                path: rendered.url.to_string(),
                body: rendered.body,
                operation: "rest.request",
                headers: rendered.headers,
            };
            self.destination.call(&request).await?;
            sent += 1;
        }
        Ok(sent)
    }
}
