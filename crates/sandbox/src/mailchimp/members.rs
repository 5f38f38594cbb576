//! The member routes (`/3.0/lists/{list_id}/members/{subscriber_hash}…`): upsert, get, tags,
//! events. Each handler parses the body itself so bad JSON gets Mailchimp's problem body, calls
//! the [`Store`](super::store::Store) under the sandbox's lock, and attaches what it wrote as a
//! [`Writes`] extension for the request log: `members` (create or update, keyed by the
//! lower-cased email), `tags` (update) and `events` (create), so `Stats.creates["events"][email]`
//! counts events per member.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::error::ApiError;
use super::hash::subscriber_hash;
use super::store::{Status, Upsert};
use crate::Sandbox;
use crate::request_log::{Write, WriteOp};
use crate::vendor::Writes;

fn parse_body(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::invalid("The request body must be a JSON object.")),
        Err(_) => Err(ApiError::JsonParse),
    }
}

fn optional_status(body: &Map<String, Value>, field: &str) -> Result<Option<Status>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_str().and_then(Status::parse).map(Some).ok_or_else(|| {
            ApiError::field(
                field,
                "Value must be one of: subscribed, unsubscribed, cleaned, pending, transactional.",
            )
        }),
    }
}

fn optional_object(body: &Map<String, Value>, field: &str) -> Result<Map<String, Value>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(_) => Err(ApiError::field(field, "Must be an object.")),
    }
}

fn write(object_type: &str, hash: &str, email: &str, op: WriteOp) -> Write {
    Write {
        object_type: object_type.to_owned(),
        id: hash.to_owned(),
        key: email.to_lowercase(),
        op,
    }
}

/// `PUT /3.0/lists/{list_id}/members/{subscriber_hash}` → 200 with the member.
///
/// `email_address` is required and its hash must be the path's `subscriber_hash` (400 "Invalid
/// Resource" otherwise). A new member takes `status_if_new` (or `status`; 400 if neither); an
/// existing member keeps its status unless `status` is given, which is how a careless client
/// resubscribes someone (counted in `Stats.resubscribed`). `merge_fields` are merged into the
/// existing ones. `tags` is ignored, as Mailchimp ignores it on this route (tags change only
/// through `…/tags`); other unknown fields are ignored too.
pub async fn upsert(
    State(sb): State<Sandbox>,
    Path((list_id, hash)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    sb.lock().mailchimp.store.list(&list_id)?;
    let body = parse_body(&body)?;
    let email = body
        .get("email_address")
        .and_then(Value::as_str)
        .filter(|e| e.contains('@'))
        .ok_or_else(|| ApiError::field("email_address", "This value should be a valid email."))?
        .to_owned();
    if subscriber_hash(&email) != hash.to_lowercase() {
        return Err(ApiError::invalid(format!(
            "The subscriber hash {hash} does not match the email address {email} (expected the MD5 of its lower-case form)."
        )));
    }
    let up = Upsert {
        status_if_new: optional_status(&body, "status_if_new")?,
        status: optional_status(&body, "status")?,
        merge_fields: optional_object(&body, "merge_fields")?,
        email_address: email,
    };
    let (member, op) = sb.lock().mailchimp.store.upsert(&list_id, up)?;
    let w = write("members", &member.id, &member.email_address, op);
    Ok((Extension(Writes(vec![w])), Json(member)).into_response())
}

/// `GET /3.0/lists/{list_id}/members/{subscriber_hash}` → 200 with the member, or 404.
pub async fn get(
    State(sb): State<Sandbox>,
    Path((list_id, hash)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let member = sb.lock().mailchimp.store.member(&list_id, &hash)?.clone();
    Ok(Json(member).into_response())
}

/// `POST …/members/{subscriber_hash}/tags` with `{"tags":[{"name","status":"active"|"inactive"}]}`
/// → 204; 404 for an unknown member, 400 for a bad tag.
pub async fn tags(
    State(sb): State<Sandbox>,
    Path((list_id, hash)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    sb.lock().mailchimp.store.member(&list_id, &hash)?;
    let body = parse_body(&body)?;
    let items = body
        .get("tags")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::field("tags", "Must be an array."))?;
    let mut tags = Vec::with_capacity(items.len());
    for item in items {
        let name = item
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.trim().is_empty())
            .ok_or_else(|| ApiError::field("tags.name", "This value should not be blank."))?;
        let active = match item.get("status").and_then(Value::as_str) {
            Some("active") => true,
            Some("inactive") => false,
            _ => {
                return Err(ApiError::field(
                    "tags.status",
                    "Value must be one of: active, inactive.",
                ));
            }
        };
        tags.push((name.to_owned(), active));
    }
    let member = sb.lock().mailchimp.store.set_tags(&list_id, &hash, tags)?;
    let w = write("tags", &member.id, &member.email_address, WriteOp::Update);
    Ok((Extension(Writes(vec![w])), StatusCode::NO_CONTENT).into_response())
}

/// Mailchimp's rule for event names: 2 to 30 letters, digits, `_` or `-`.
fn valid_event_name(name: &str) -> bool {
    (2..=30).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `POST …/members/{subscriber_hash}/events` with `{"name","properties"?,"occurred_at"?}` → 204;
/// 404 for an unknown member, 400 for a name outside `^[A-Za-z0-9_-]{2,30}$`. Every event is
/// kept (see `Sandbox::mailchimp_events`).
pub async fn events(
    State(sb): State<Sandbox>,
    Path((list_id, hash)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    sb.lock().mailchimp.store.member(&list_id, &hash)?;
    let body = parse_body(&body)?;
    let name = body
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| valid_event_name(n))
        .ok_or_else(|| {
            ApiError::field(
                "name",
                "Event names must be 2 to 30 characters of letters, digits, underscores or dashes.",
            )
        })?
        .to_owned();
    let properties = optional_object(&body, "properties")?;
    let occurred_at = match body.get("occurred_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(ApiError::field(
                "occurred_at",
                "Must be a date-time string.",
            ));
        }
    };
    let event =
        sb.lock()
            .mailchimp
            .store
            .add_event(&list_id, &hash, name, properties, occurred_at)?;
    let w = write(
        "events",
        &event.member_id,
        &event.email_address,
        WriteOp::Create,
    );
    Ok((Extension(Writes(vec![w])), StatusCode::NO_CONTENT).into_response())
}

#[cfg(test)]
mod tests {
    use super::valid_event_name;

    #[test]
    fn event_names_follow_mailchimp_rule() {
        assert!(valid_event_name("payment_failed"));
        assert!(valid_event_name("a-1"));
        assert!(!valid_event_name("x"));
        assert!(!valid_event_name("has space"));
        assert!(!valid_event_name(&"a".repeat(31)));
    }
}
