//! The HubSpot adapter: carries out a [`Plan`] with HubSpot CRM v3 calls through the shared
//! delivery engine.
//!
//! | plan step | HubSpot call |
//! |---|---|
//! | upsert by a unique property | `POST /crm/v3/objects/{type}/batch/upsert` with one input (`idProperty`, `id`, `properties`): HubSpot creates the record the first time and updates it after, so a repeat is never a second create |
//! | update by CRM id | `PATCH /crm/v3/objects/{type}/{id}` (a 404 is permanent: the record the event names does not exist) |
//! | association | `PUT /crm/v4/objects/{from}/{id}/associations/default/{to}/{toId}` (idempotent) |
//!
//! Before each record: field ownership (properties another system owns are left out) and the
//! stale guard, per field (a field a newer event has already written is left out and counted; a
//! record whose every field is stale is not written at all).
//!
//! The writer never creates blind, so HubSpot's "409 already exists on a create: fetch it" rule
//! never applies: a 409 on an upsert means another record holds one of the unique values (two
//! contacts claiming one external id), a data conflict that is dead-lettered with HubSpot's
//! message for a person to resolve.

use std::collections::BTreeMap;

use handoff_bus::CRM_WRITER;
use handoff_delivery::writer::metrics;
use handoff_delivery::{
    ApiRequest, CallError, Destination, OwnershipConfig, StaleGuard, WriteError,
};
use reqwest::Method;
use serde_json::{Value, json};
use tracing::debug;

use crate::plan::{Plan, RecordKey};

/// The name of the destination in metrics, pacing and stale-guard keys, and in ownership tables.
pub const DESTINATION: &str = "hubspot";

/// What the writer knows about the event besides its plan.
#[derive(Debug, Clone, Copy)]
pub struct WriteFacts<'a> {
    pub event_id: &'a str,
    pub event_type: &'a str,
    /// The system the event came from (the envelope's `source`), for field ownership.
    pub source: &'a str,
    /// When the event happened, in ms since the epoch, for the stale guard.
    pub occurred_at_ms: i64,
}

/// One record the event touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touched {
    pub key: RecordKey,
    /// The CRM's record id; `None` for a record skipped as stale.
    pub id: Option<String>,
    /// `created`, `updated` or `stale` (not written: newer events wrote every field).
    pub disposition: &'static str,
}

/// The adapter; cheap to clone.
#[derive(Debug, Clone)]
pub struct HubSpot {
    pub destination: Destination,
    pub stale: StaleGuard,
    pub ownership: OwnershipConfig,
}

impl HubSpot {
    /// Writes every record of `plan`, then the associations between records that were written.
    pub async fn apply(
        &self,
        plan: &Plan,
        facts: WriteFacts<'_>,
    ) -> Result<Vec<Touched>, WriteError> {
        let mut touched: Vec<Touched> = Vec::with_capacity(plan.upserts.len());
        for upsert in &plan.upserts {
            let filtered =
                self.ownership
                    .writable(DESTINATION, facts.source, upsert.properties.clone());
            for (field, owner) in &filtered.skipped {
                metrics::owned_field_skipped(CRM_WRITER, owner);
                debug!(field, owner, "Left out a field another system owns.");
            }
            // The key property is the record's identity, not a value that can go stale.
            let fields: Vec<&str> = filtered
                .write
                .keys()
                .map(String::as_str)
                .filter(|f| *f != upsert.key.id_property)
                .collect();
            // Admission and write in one turn per record, so they land in admission order.
            let _turn = self
                .stale
                .lock_record(DESTINATION, &upsert.key.guard_key())
                .await;
            let admission = self
                .stale
                .admit_fields(
                    DESTINATION,
                    &upsert.key.guard_key(),
                    facts.occurred_at_ms,
                    facts.event_id,
                    &fields,
                )
                .await
                .map_err(|err| WriteError::Guard(err.to_string()))?;
            if !admission.stale.is_empty() {
                metrics::stale_skipped(
                    CRM_WRITER,
                    facts.event_type,
                    upsert.key.kind.label(),
                    admission.stale.len(),
                );
                debug!(
                    record = %upsert.key.guard_key(),
                    fields = ?admission.stale,
                    newer_seen = admission.newer_seen,
                    "Left out fields a newer event has written."
                );
                if admission.apply.is_empty() {
                    touched.push(Touched {
                        key: upsert.key.clone(),
                        id: None,
                        disposition: "stale",
                    });
                    continue;
                }
            }
            let mut write = filtered.write;
            write.retain(|field, _| {
                field == &upsert.key.id_property || !admission.stale.contains(field)
            });
            let (id, disposition) = self.write(&upsert.key, write).await?;
            touched.push(Touched {
                key: upsert.key.clone(),
                id: Some(id),
                disposition,
            });
        }
        let id_of = |key: &RecordKey| {
            touched
                .iter()
                .find(|t| &t.key == key)
                .and_then(|t| t.id.clone())
        };
        for (from, to) in &plan.associations {
            let (Some(from_id), Some(to_id)) = (id_of(from), id_of(to).or_else(|| crm_id(to)))
            else {
                // A side skipped as stale: the newer event that won has made its own links.
                continue;
            };
            let path = format!(
                "/crm/v4/objects/{}/{from_id}/associations/default/{}/{to_id}",
                from.kind.api_name(),
                to.kind.api_name()
            );
            self.destination
                .call(&ApiRequest::new(Method::PUT, path, "association.put"))
                .await?;
        }
        Ok(touched)
    }

    /// Writes one record; returns its id and whether it was created.
    async fn write(
        &self,
        key: &RecordKey,
        properties: BTreeMap<String, String>,
    ) -> Result<(String, &'static str), WriteError> {
        let kind = key.kind.api_name();
        if key.is_crm_id() {
            let request = ApiRequest::new(
                Method::PATCH,
                format!("/crm/v3/objects/{kind}/{}", path_segment(&key.id)),
                operation(key, "update"),
            )
            .json(json!({ "properties": properties }));
            let response = self.destination.call(&request).await?;
            let id = record_id(&response.body).ok_or_else(|| {
                WriteError::Unexpected(format!("{kind} update answered without an id"))
            })?;
            return Ok((id, "updated"));
        }
        let request = ApiRequest::new(
            Method::POST,
            format!("/crm/v3/objects/{kind}/batch/upsert"),
            operation(key, "upsert"),
        )
        .json(json!({
            "inputs": [{ "idProperty": key.id_property, "id": key.id, "properties": properties }]
        }));
        match self.destination.call(&request).await {
            Ok(response) => {
                let result = response
                    .body
                    .get("results")
                    .and_then(Value::as_array)
                    .and_then(|r| r.first())
                    .cloned()
                    .unwrap_or(Value::Null);
                let id = record_id(&result).ok_or_else(|| {
                    WriteError::Unexpected(format!("{kind} upsert answered without a record id"))
                })?;
                let created = result.get("new").and_then(Value::as_bool).unwrap_or(false);
                Ok((id, if created { "created" } else { "updated" }))
            }
            Err(CallError::AlreadyExists { reason, .. }) => {
                // Every write is an upsert by a unique property, so a 409 cannot mean "our
                // create raced itself": another record holds one of the other unique values
                // (say, the external id). Which record is right is for a person to decide.
                Err(WriteError::Call(CallError::Permanent {
                    operation: operation(key, "upsert"),
                    status: Some(409),
                    reason: format!("another record holds a unique value of this one: {reason}"),
                }))
            }
            Err(other) => Err(other.into()),
        }
    }
}

/// A key that is a CRM id already names the record without a lookup.
fn crm_id(key: &RecordKey) -> Option<String> {
    key.is_crm_id().then(|| key.id.clone())
}

fn record_id(body: &Value) -> Option<String> {
    match body.get("id")? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A bounded operation name for metrics and spans.
fn operation(key: &RecordKey, verb: &str) -> &'static str {
    use crate::plan::ObjectKind::*;
    match (key.kind, verb) {
        (Contact, "upsert") => "contact.upsert",
        (Contact, "update") => "contact.update",
        (Contact, _) => "contact.get",
        (Company, "upsert") => "company.upsert",
        (Company, "update") => "company.update",
        (Company, _) => "company.get",
        (Deal, "upsert") => "deal.upsert",
        (Deal, "update") => "deal.update",
        (Deal, _) => "deal.get",
        (Ticket, "upsert") => "ticket.upsert",
        (Ticket, "update") => "ticket.update",
        (Ticket, _) => "ticket.get",
    }
}

/// Percent-encodes a value for one path segment (an email's `@` and `+` stay readable but `/`,
/// `?`, `#` and `%` cannot change the path).
fn path_segment(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'@' | b'+' => {
                out.push(char::from(b));
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_cannot_escape() {
        assert_eq!(path_segment("alex+1@example.com"), "alex+1@example.com");
        assert_eq!(path_segment("../x?y#z"), "..%2Fx%3Fy%23z");
        assert_eq!(path_segment("ünï"), "%C3%BCn%C3%AF");
    }

    #[test]
    fn record_ids_read_strings_and_numbers() {
        assert_eq!(record_id(&json!({"id": "42"})), Some("42".into()));
        assert_eq!(record_id(&json!({"id": 42})), Some("42".into()));
        assert_eq!(record_id(&json!({})), None);
    }
}
