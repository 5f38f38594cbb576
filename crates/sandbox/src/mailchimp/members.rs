//! The member routes (`/3.0/lists/{list_id}/members/{subscriber_hash}…`): upsert, get, tags,
//! events (post and list). Each handler parses the body itself so bad JSON gets Mailchimp's
//! problem body, calls the [`Store`](super::store::Store) under the sandbox's lock, and attaches
//! what it wrote as a [`Writes`] extension for the request log: `members` (create or update, keyed
//! by the lower-cased email), `tags` (update) and `events` (create), so
//! `Stats.creates["events"][email]` counts events per member. Reads write nothing.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::macros::format_description;

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

/// Events per page when the caller gives no `count`, and the most it may ask for (Mailchimp's).
const DEFAULT_COUNT: usize = 10;
const MAX_COUNT: usize = 1000;

/// `GET …/members/{subscriber_hash}/events` → 200
/// `{"events":[{"name","occurred_at","properties"}],"total_items","_links"}`, Mailchimp's "List
/// member events"; 404 for an unknown member.
///
/// Newest first by `occurred_at` (the time of the POST when none was given; see
/// [`Store::member_events`](super::store::Store::member_events)), in Mailchimp's
/// `YYYY-MM-DDTHH:MM:SS+00:00`. Query: `count` (10 by default, at most 1000), `offset` (0 by
/// default), and `fields` / `exclude_fields` (comma-separated, sub-objects in dot notation:
/// `events.properties.invoice_id`). A `count` or `offset` that is not a whole number in range is
/// 400 "Invalid Resource" (the sandbox is strict where Mailchimp's behaviour is not documented).
pub async fn list_events(
    State(sb): State<Sandbox>,
    Path((list_id, hash)): Path<(String, String)>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let param = |name: &str| {
        query
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let count = match param("count") {
        None => DEFAULT_COUNT,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= MAX_COUNT)
            .ok_or_else(|| ApiError::field("count", "Must be a whole number from 0 to 1000."))?,
    };
    let offset = match param("offset") {
        None => 0,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| ApiError::field("offset", "Must be a whole number of 0 or more."))?,
    };
    let (events, total) = {
        let st = sb.lock();
        let all = st.mailchimp.store.member_events(&list_id, &hash)?;
        let page: Vec<Value> = all
            .iter()
            .skip(offset)
            .take(count)
            .map(|e| {
                json!({
                    "name": e.name,
                    "occurred_at": mailchimp_time(e.when()),
                    "properties": e.properties,
                })
            })
            .collect();
        (page, all.len())
    };
    let path = format!("/3.0/lists/{list_id}/members/{}", hash.to_lowercase());
    let mut body = json!({
        "events": events,
        "total_items": total,
        "_links": [
            { "rel": "self", "href": format!("{path}/events"), "method": "GET" },
            { "rel": "parent", "href": path, "method": "GET" },
            { "rel": "create", "href": format!("{path}/events"), "method": "POST" },
        ],
    });
    if let Some(fields) = param("fields") {
        let paths: Vec<Vec<&str>> = dotted(fields).collect();
        keep_fields(&mut body, &paths);
    }
    if let Some(excluded) = param("exclude_fields") {
        for path in dotted(excluded) {
            drop_field(&mut body, &path);
        }
    }
    Ok(Json(body).into_response())
}

/// A time as Mailchimp writes it: UTC, whole seconds, `+00:00`.
fn mailchimp_time(at: OffsetDateTime) -> String {
    let fmt = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]+00:00");
    at.to_offset(time::UtcOffset::UTC)
        .format(&fmt)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

/// The comma-separated dotted paths of a `fields` / `exclude_fields` value.
fn dotted(list: &str) -> impl Iterator<Item = Vec<&str>> {
    list.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.split('.').collect())
}

/// Keeps only the fields `paths` name (and what lies under them); arrays apply the paths to each
/// item.
fn keep_fields(value: &mut Value, paths: &[Vec<&str>]) {
    match value {
        Value::Array(items) => {
            for item in items {
                keep_fields(item, paths);
            }
        }
        Value::Object(map) => map.retain(|key, inner| {
            let below: Vec<Vec<&str>> = paths
                .iter()
                .filter(|p| p.first() == Some(&key.as_str()))
                .map(|p| p[1..].to_vec())
                .collect();
            if below.is_empty() {
                return false;
            }
            if !below.iter().any(Vec::is_empty) {
                keep_fields(inner, &below);
            }
            true
        }),
        _ => {}
    }
}

/// Removes the field at `path`; arrays apply it to each item.
fn drop_field(value: &mut Value, path: &[&str]) {
    match value {
        Value::Array(items) => {
            for item in items {
                drop_field(item, path);
            }
        }
        Value::Object(map) => match path {
            [last] => {
                map.remove(*last);
            }
            [first, rest @ ..] => {
                if let Some(inner) = map.get_mut(*first) {
                    drop_field(inner, rest);
                }
            }
            [] => {}
        },
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::{dotted, drop_field, keep_fields, valid_event_name};
    use serde_json::json;

    #[test]
    fn fields_keep_and_exclude_dotted_paths_through_arrays() {
        let body = json!({
            "events": [
                {"name": "a", "occurred_at": "t", "properties": {"invoice_id": "1", "amount": "2"}},
                {"name": "b", "occurred_at": "t", "properties": {}},
            ],
            "total_items": 2,
            "_links": [],
        });
        let mut kept = body.clone();
        let paths: Vec<Vec<&str>> =
            dotted("events.name, events.properties.invoice_id,total_items").collect();
        keep_fields(&mut kept, &paths);
        assert_eq!(
            kept,
            json!({
                "events": [
                    {"name": "a", "properties": {"invoice_id": "1"}},
                    {"name": "b", "properties": {}},
                ],
                "total_items": 2,
            })
        );
        let mut dropped = body;
        for path in dotted("_links,events.properties.amount,events.occurred_at") {
            drop_field(&mut dropped, &path);
        }
        assert_eq!(
            dropped,
            json!({
                "events": [
                    {"name": "a", "properties": {"invoice_id": "1"}},
                    {"name": "b", "properties": {}},
                ],
                "total_items": 2,
            })
        );
    }

    #[test]
    fn event_names_follow_mailchimp_rule() {
        assert!(valid_event_name("payment_failed"));
        assert!(valid_event_name("a-1"));
        assert!(!valid_event_name("x"));
        assert!(!valid_event_name("has space"));
        assert!(!valid_event_name(&"a".repeat(31)));
    }
}
