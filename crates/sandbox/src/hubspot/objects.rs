//! The CRM object routes (`/crm/v3/objects/{type}…`): create, get, update, batch upsert by unique
//! property, search. Each handler parses the body itself so that bad JSON gets HubSpot's 400 body,
//! calls the [`Store`](super::store::Store) under the sandbox's lock, and attaches the records it
//! wrote as a [`Writes`] extension for the request log.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::Writes;
use super::error::ApiError;
use super::store::ObjectType;
use crate::Sandbox;

/// The type named in a path, or HubSpot's 400 for one it does not know.
pub fn object_type(s: &str) -> Result<ObjectType, ApiError> {
    ObjectType::parse(s)
        .ok_or_else(|| ApiError::validation(format!("Unable to infer object type from: {s}")))
}

/// A JSON body, or HubSpot's "Invalid input JSON" 400.
pub fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::validation(format!(
            "Invalid input JSON on line {}, column {}: {e}",
            e.line(),
            e.column()
        ))
    })
}

fn properties_of(body: &Value) -> Result<&Map<String, Value>, ApiError> {
    body.get("properties")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::validation("properties must be an object"))
}

/// `idProperty` and `properties` (comma-separated or repeated) from a query string.
fn read_params(query: &[(String, String)]) -> (Option<String>, Option<Vec<String>>) {
    let id_property = query
        .iter()
        .find(|(k, _)| k == "idProperty")
        .map(|(_, v)| v.clone());
    let props: Vec<String> = query
        .iter()
        .filter(|(k, _)| k == "properties")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    (id_property, (!props.is_empty()).then_some(props))
}

/// HubSpot's batch answer around `results`.
pub(crate) fn envelope(started: &str, results: Value) -> Value {
    json!({
        "status": "COMPLETE",
        "results": results,
        "startedAt": started,
        "completedAt": crate::clock::now_iso(),
    })
}

/// `POST /crm/v3/objects/{type}` → 201 with the record, or 409 if a unique value is taken.
pub async fn create(
    State(sb): State<Sandbox>,
    Path(ty): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ty = object_type(&ty)?;
    let body = parse_body(&body)?;
    let written = sb.lock().hubspot.store.create(ty, properties_of(&body)?)?;
    Ok((
        StatusCode::CREATED,
        Extension(Writes(vec![written.write])),
        Json(written.object),
    )
        .into_response())
}

/// `GET /crm/v3/objects/{type}/{id}[?idProperty=email][&properties=a,b]`.
pub async fn get(
    State(sb): State<Sandbox>,
    Path((ty, id)): Path<(String, String)>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let ty = object_type(&ty)?;
    let (id_property, props) = read_params(&query);
    let object = sb
        .lock()
        .hubspot
        .store
        .get(ty, &id, id_property.as_deref(), props.as_deref())?;
    Ok(Json(object).into_response())
}

/// `PATCH /crm/v3/objects/{type}/{id}[?idProperty=email]` → 200 with the record.
pub async fn update(
    State(sb): State<Sandbox>,
    Path((ty, id)): Path<(String, String)>,
    Query(query): Query<Vec<(String, String)>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ty = object_type(&ty)?;
    let (id_property, _) = read_params(&query);
    let body = parse_body(&body)?;
    let written =
        sb.lock()
            .hubspot
            .store
            .update(ty, &id, id_property.as_deref(), properties_of(&body)?)?;
    Ok((Extension(Writes(vec![written.write])), Json(written.object)).into_response())
}

/// `POST /crm/v3/objects/{type}/batch/upsert` with `{"inputs":[{"idProperty","id","properties"}]}`
/// → 200 `{"status":"COMPLETE","results":[… "new": bool]}`.
pub async fn batch_upsert(
    State(sb): State<Sandbox>,
    Path(ty): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let started = crate::clock::now_iso();
    let ty = object_type(&ty)?;
    let body = parse_body(&body)?;
    let inputs = body
        .get("inputs")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::validation("inputs must be an array"))?;
    let written = sb.lock().hubspot.store.upsert_batch(ty, inputs)?;
    let writes = written.iter().map(|w| w.write.clone()).collect();
    let objects: Vec<_> = written.into_iter().map(|w| w.object).collect();
    let body = envelope(&started, json!(objects));
    Ok((Extension(Writes(writes)), Json(body)).into_response())
}

/// `POST /crm/v3/objects/{type}/search` with `filterGroups`, `properties`, `limit`, `after`.
pub async fn search(
    State(sb): State<Sandbox>,
    Path(ty): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ty = object_type(&ty)?;
    let body = parse_body(&body)?;
    let found = sb.lock().hubspot.store.search(ty, &body)?;
    Ok(Json(found).into_response())
}
