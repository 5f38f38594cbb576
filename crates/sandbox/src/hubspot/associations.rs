//! Associations v4: `PUT /crm/v4/objects/{from}/{fromId}/associations/default/{to}/{toId}` links
//! two existing records with HubSpot's default (unlabeled) association type; `GET
//! /crm/v4/objects/{from}/{fromId}/associations/{to}` lists the linked ids. Associations are
//! symmetric, as in HubSpot: one PUT is visible from both ends.

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::Writes;
use super::error::ApiError;
use super::objects::{envelope, object_type};
use crate::Sandbox;

/// Creates the default association (idempotent: a repeat is logged as an update).
pub async fn put_default(
    State(sb): State<Sandbox>,
    Path((from, from_id, to, to_id)): Path<(String, String, String, String)>,
) -> Result<Response, ApiError> {
    let started = crate::clock::now_iso();
    let (from, to) = (object_type(&from)?, object_type(&to)?);
    let (result, write) = sb
        .lock()
        .hubspot
        .store
        .associate(from, &from_id, to, &to_id)?;
    let body = envelope(&started, json!([result]));
    Ok((Extension(Writes(vec![write])), Json(body)).into_response())
}

/// Lists the records of type `to` associated with the given record.
pub async fn list(
    State(sb): State<Sandbox>,
    Path((from, from_id, to)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let (from, to) = (object_type(&from)?, object_type(&to)?);
    let body = sb
        .lock()
        .hubspot
        .store
        .associations_of(from, &from_id, to)?;
    Ok(Json(body).into_response())
}
