//! HubSpot's error answers, in its documented shapes:
//! `{"status":"error","message":…,"correlationId":…,"category":…}` for API errors, the
//! `RATE_LIMIT` body with `policyName` for 429s, and the OAuth endpoint's
//! `{"status":"BAD_REFRESH_TOKEN",…}`.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::ratelimit::ceil_secs;

/// A fresh correlation id, as HubSpot puts in every error.
pub fn correlation_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// `{"status":"error","message","correlationId","category"}`.
pub fn error_body(message: &str, category: &str) -> Value {
    json!({
        "status": "error",
        "message": message,
        "correlationId": correlation_id(),
        "category": category,
    })
}

/// A request HubSpot refuses; each variant is one category.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `VALIDATION_ERROR`: bad JSON, unknown or invalid properties, bad batch input.
    #[error("{message}")]
    Validation {
        message: String,
        /// `errors[]` items (`{message, code, context}`), one per bad property.
        errors: Vec<Value>,
    },
    /// 404 `OBJECT_NOT_FOUND`.
    #[error("{message}")]
    NotFound { message: String, id: String },
    /// 409 `CONFLICT`: a unique value that another record already has.
    #[error("{0}")]
    Conflict(String),
}

impl ApiError {
    /// A validation error with a plain message.
    pub fn validation(message: impl Into<String>) -> Self {
        ApiError::Validation {
            message: message.into(),
            errors: Vec::new(),
        }
    }

    /// HubSpot's "not found" for `id`.
    pub fn not_found(id: &str) -> Self {
        ApiError::NotFound {
            message: "Object not found.  objectId are usually numeric.".to_owned(),
            id: id.to_owned(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::Validation { message, errors } => {
                let mut body = error_body(&message, "VALIDATION_ERROR");
                if !errors.is_empty() {
                    body["errors"] = Value::Array(errors);
                }
                (StatusCode::BAD_REQUEST, body)
            }
            ApiError::NotFound { message, id } => {
                let mut body = error_body(&message, "OBJECT_NOT_FOUND");
                body["context"] = json!({ "id": [id] });
                (StatusCode::NOT_FOUND, body)
            }
            ApiError::Conflict(message) => (StatusCode::CONFLICT, error_body(&message, "CONFLICT")),
        };
        (status, Json(body)).into_response()
    }
}

/// 401 for a missing or unknown token (`INVALID_AUTHENTICATION`) or an expired one
/// (`EXPIRED_AUTHENTICATION`).
pub fn unauthorized(err: &crate::auth::AuthError) -> Response {
    use crate::auth::AuthError;
    let body = match err {
        AuthError::Missing | AuthError::Unknown => error_body(
            "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
            "INVALID_AUTHENTICATION",
        ),
        AuthError::Expired { ago } => error_body(
            &format!(
                "The OAuth token used to make this call expired {} second(s) ago.",
                ago.as_secs()
            ),
            "EXPIRED_AUTHENTICATION",
        ),
    };
    (StatusCode::UNAUTHORIZED, Json(body)).into_response()
}

/// 429 with HubSpot's rate-limit body and `Retry-After` (whole seconds, rounded up).
pub fn rate_limited(retry_after: Duration) -> Response {
    let body = json!({
        "status": "error",
        "message": "You have reached your ten_secondly_rolling limit.",
        "errorType": "RATE_LIMIT",
        "correlationId": correlation_id(),
        "policyName": "TEN_SECONDLY_ROLLING",
    });
    let mut resp = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(ceil_secs(retry_after)),
    );
    resp
}

/// A 5xx as HubSpot's edge answers it, with an optional `Retry-After`.
pub fn server_error(status: u16, retry_after: Option<Duration>) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let (message, category) = match status {
        500 => ("internal error", "INTERNAL_ERROR"),
        502 => ("Bad Gateway", "BAD_GATEWAY"),
        504 => ("Gateway Timeout", "GATEWAY_TIMEOUT"),
        _ => ("Service Unavailable", "SERVICE_UNAVAILABLE"),
    };
    let mut resp = (code, Json(error_body(message, category))).into_response();
    if let Some(after) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(ceil_secs(after)));
    }
    resp
}

/// 400 from `POST /oauth/v1/token`: `{"status":"BAD_…","message","correlationId"}`.
pub fn oauth_error(status: &str, message: &str) -> Response {
    let body = json!({
        "status": status,
        "message": message,
        "correlationId": correlation_id(),
    });
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}
