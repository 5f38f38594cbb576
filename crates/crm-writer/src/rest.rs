//! The generic REST adapter: for an internal tool instead of HubSpot, each event becomes the HTTP
//! requests its `[[rest.routes]]` templates describe (see `handoff_delivery::RestConfig` for the
//! template syntax), sent through the same engine: paced, authenticated, classified with the
//! generic table, retried through the broker and deduplicated per event.
//!
//! The tool cannot be asked for record ids, so there are no associations, no stale guard per
//! record and no `crm.contact.synced` report; a route that must be safe to repeat should send the
//! event id as an `Idempotency-Key` header or use `PUT` by a natural key.

use handoff_delivery::{ApiRequest, Destination, EventMeta, RestRoutes, event_view};
use handoff_events::v1::{CanonicalPayload, Envelope};

use crate::hubspot::ApplyError;

/// The adapter; cheap to clone.
#[derive(Debug, Clone)]
pub struct RestAdapter {
    pub destination: Destination,
    pub routes: std::sync::Arc<RestRoutes>,
}

/// The name of the destination in metrics, pacing keys and dead letters.
pub const DESTINATION: &str = "rest";

impl RestAdapter {
    /// Whether any route handles `event_type`.
    pub fn handles(&self, event_type: &str) -> bool {
        self.routes.routes_for(event_type).next().is_some()
    }

    /// Sends the event's requests, in route order; returns how many were sent.
    pub async fn apply(
        &self,
        envelope: &Envelope,
        canonical: &CanonicalPayload,
    ) -> Result<usize, ApplyError> {
        let payload = handoff_events::json::message_to_json(canonical)
            .map_err(|err| ApplyError::Render(format!("rendering the event as JSON: {err}")))?;
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
                .map_err(|err| ApplyError::Render(err.to_string()))?;
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
