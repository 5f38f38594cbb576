//! Mailchimp's error answers: RFC 7807 problem documents,
//! `{"type","title","status","detail","instance"}` with content type `application/problem+json`,
//! plus `errors[]` (`{field, message}`) on validation failures.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::ratelimit::ceil_secs;

/// The `type` of every Mailchimp error.
pub const ERROR_TYPE: &str = "https://mailchimp.com/developer/marketing/docs/errors/";

/// A problem+json answer; `instance` is a fresh id, as Mailchimp puts in every error.
pub fn problem(
    status: StatusCode,
    title: &str,
    detail: &str,
    errors: Option<Vec<Value>>,
) -> Response {
    let mut body = json!({
        "type": ERROR_TYPE,
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
        "instance": uuid::Uuid::new_v4().to_string(),
    });
    if let Some(errors) = errors {
        body["errors"] = Value::Array(errors);
    }
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp
}

/// A request Mailchimp refuses.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 "JSON Parse Error": the body is not JSON.
    #[error("we encountered an unspecified JSON parsing error")]
    JsonParse,
    /// 400 "Invalid Resource": the body is JSON but not a valid resource.
    #[error("{detail}")]
    InvalidResource {
        detail: String,
        /// `{field, message}` items, one per bad field.
        errors: Vec<Value>,
    },
    /// 404 "Resource Not Found": unknown list or member.
    #[error("the requested resource could not be found")]
    NotFound,
}

impl ApiError {
    /// An invalid resource with one bad `field`.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        ApiError::InvalidResource {
            detail: "The resource submitted could not be validated. For field-specific details, see the 'errors' array.".to_owned(),
            errors: vec![json!({ "field": field, "message": message.into() })],
        }
    }

    /// An invalid resource explained by `detail` alone.
    pub fn invalid(detail: impl Into<String>) -> Self {
        ApiError::InvalidResource {
            detail: detail.into(),
            errors: Vec::new(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::JsonParse => problem(
                StatusCode::BAD_REQUEST,
                "JSON Parse Error",
                "We encountered an unspecified JSON parsing error.",
                None,
            ),
            ApiError::InvalidResource { detail, errors } => problem(
                StatusCode::BAD_REQUEST,
                "Invalid Resource",
                &detail,
                (!errors.is_empty()).then_some(errors),
            ),
            ApiError::NotFound => problem(
                StatusCode::NOT_FOUND,
                "Resource Not Found",
                "The requested resource could not be found.",
                None,
            ),
        }
    }
}

/// 401 for a missing or unknown API key.
pub fn unauthorized() -> Response {
    problem(
        StatusCode::UNAUTHORIZED,
        "API Key Invalid",
        "Your API key may be invalid, or you've attempted to access the wrong datacenter.",
        None,
    )
}

/// 429 "Too Many Requests", with `Retry-After` when given (storms set one; the connection limit
/// does not, as Mailchimp's does not).
pub fn too_many_requests(detail: &str, retry_after: Option<Duration>) -> Response {
    let mut resp = problem(
        StatusCode::TOO_MANY_REQUESTS,
        "Too Many Requests",
        detail,
        None,
    );
    if let Some(after) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(ceil_secs(after)));
    }
    resp
}

/// A 5xx as Mailchimp answers it, with an optional `Retry-After`.
pub fn server_error(status: u16, retry_after: Option<Duration>) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let (title, detail) = match status {
        500 => (
            "Internal Server Error",
            "An unexpected internal error has occurred. Please contact Support for more information.",
        ),
        502 => ("Bad Gateway", "The server received an invalid response."),
        504 => ("Gateway Timeout", "The server did not answer in time."),
        _ => (
            "Service Unavailable",
            "The service is temporarily unavailable. Please try again later.",
        ),
    };
    let mut resp = problem(code, title, detail, None);
    if let Some(after) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(ceil_secs(after)));
    }
    resp
}
