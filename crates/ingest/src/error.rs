//! The API's error responses: one JSON shape for every 4xx and 5xx,
//! `{"error":{"code":…,"message":…,"fields":[…]}}`, so publishers can act on
//! the code and show the message.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::contract::FieldError;

/// An error answer: status, machine-readable code, sentence, and field errors.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub fields: Vec<FieldError>,
    /// Sent as `Retry-After` (whole seconds, at least 1) with 429 and 503.
    pub retry_after: Option<Duration>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    fields: &'a [FieldError],
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            fields: Vec::new(),
            retry_after: None,
        }
    }

    /// 401: no key, or a key no publisher has.
    pub fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: the publisher may not send this event type.
    pub fn forbidden(message: String) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404: the event type is not part of contract v1.
    pub fn unknown_event_type(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_event_type",
            format!(
                "{name:?} is not a v1 event type; expected one of {}",
                handoff_events::EventType::ALL
                    .map(|t| t.as_str())
                    .join(", ")
            ),
        )
    }

    /// 404: nothing is known of this event.
    pub fn not_found(message: String) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 415: the body is not declared as JSON.
    pub fn unsupported_media_type(got: Option<&str>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            match got {
                Some(ct) => format!("content type {ct:?} is not accepted; send application/json"),
                None => "the Content-Type header is missing; send application/json".to_owned(),
            },
        )
    }

    /// 413: the body is over the configured limit.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    }

    /// 400: the body is not JSON; says where it broke.
    pub fn malformed_json(err: &serde_json::Error) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!(
                "the body is not valid JSON: {} at line {} column {}",
                describe_json_error(err),
                err.line(),
                err.column()
            ),
        )
    }

    /// 400: the body could not be read (client went away, broken chunking).
    pub fn unreadable_body(message: String) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unreadable_body", message)
    }

    /// 400: a path or query parameter of a read route is not valid, with every bad parameter
    /// as a field error (`limit`, `email`).
    pub fn invalid_parameters(fields: Vec<FieldError>) -> Self {
        let mut err = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            format!(
                "the request has {} invalid parameter{}",
                fields.len(),
                if fields.len() == 1 { "" } else { "s" }
            ),
        );
        err.fields = fields;
        err
    }

    /// 422: valid JSON that breaks the event contract, with every bad field.
    pub fn validation_failed(fields: Vec<FieldError>) -> Self {
        let mut err = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            format!(
                "the event does not match its contract ({} field error{})",
                fields.len(),
                if fields.len() == 1 { "" } else { "s" }
            ),
        );
        err.fields = fields;
        err
    }

    /// 422 for a malformed batch envelope (not an object with an `events` array, too many events).
    pub fn bad_batch(message: String) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_batch", message)
    }

    /// 409: the id was already used for different content.
    pub fn conflict(event_id: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "event_id_conflict",
            format!(
                "event_id {event_id:?} was already accepted with different content; \
                 use a new event_id for a new event"
            ),
        )
    }

    /// 503: the same event is being accepted by another request right now.
    pub fn in_flight(event_id: &str) -> Self {
        let mut err = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "in_flight",
            format!("event_id {event_id:?} is being accepted by another request; retry shortly"),
        );
        err.retry_after = Some(Duration::from_secs(1));
        err
    }

    /// 429: over the publisher's rate limit.
    pub fn rate_limited(wait: Duration) -> Self {
        let mut err = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "the publisher's rate limit is exceeded; retry after the Retry-After delay",
        );
        err.retry_after = Some(wait);
        err
    }

    /// 503: the broker or Redis is unavailable; nothing was stored.
    pub fn unavailable(what: &str, retry_after: Duration) -> Self {
        Self::unavailable_because(
            format!(
                "{what} is unavailable; the event was not stored, retry after the Retry-After delay"
            ),
            retry_after,
        )
    }

    /// 503: the broker did not confirm the event in time (see [`ApiError::maybe_stored`]).
    pub fn unconfirmed(waited: Duration, retry_after: Duration) -> Self {
        Self::maybe_stored(
            &format!(
                "the message broker did not confirm the event within {} s",
                waited.as_secs_f64()
            ),
            retry_after,
        )
    }

    /// 503: the event was sent to the broker but not confirmed, `what_happened`. Unlike
    /// [`ApiError::unavailable`] it may be stored after all, so the answer says so, and that
    /// sending it again with the same `event_id` is safe: a second copy is recognised
    /// downstream and delivered once.
    pub fn maybe_stored(what_happened: &str, retry_after: Duration) -> Self {
        Self::unavailable_because(
            format!(
                "{what_happened}, so it may or may not be stored; send it again with the same \
                 event_id after the Retry-After delay (it will not be delivered twice)"
            ),
            retry_after,
        )
    }

    /// 503: the broker refused the event (a nack, e.g. a full queue); nothing was stored.
    pub fn refused(retry_after: Duration) -> Self {
        Self::unavailable_because(
            "the message broker refused the event; it was not stored, retry after the \
             Retry-After delay"
                .to_owned(),
            retry_after,
        )
    }

    /// The one shape of every `unavailable` answer: 503, the message, and `Retry-After`.
    fn unavailable_because(message: String, retry_after: Duration) -> Self {
        let mut err = Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
        err.retry_after = Some(retry_after);
        err
    }

    /// 504/503 when the whole request ran out of time.
    pub fn timeout() -> Self {
        let mut err = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the event could not be stored in time; it may or may not have been stored, retry with the same event_id",
        );
        err.retry_after = Some(Duration::from_secs(1));
        err
    }

    /// The JSON body, for embedding in batch results.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "code": self.code,
            "message": self.message,
            "fields": self.fields,
        })
    }
}

fn describe_json_error(err: &serde_json::Error) -> String {
    // serde_json appends " at line L column C" to its Display; we say it ourselves.
    let text = err.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// Seconds for a `Retry-After` header: rounded up, at least one.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                fields: &self.fields,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(wait) = self.retry_after {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(wait)),
            );
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(10)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(5)), 5);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }

    #[test]
    fn malformed_json_names_line_and_column() {
        let err = serde_json::from_str::<serde_json::Value>("{\n  \"a\": ,\n}").unwrap_err();
        let api = ApiError::malformed_json(&err);
        assert!(api.message.contains("line 2 column"), "{}", api.message);
        assert_eq!(api.status, StatusCode::BAD_REQUEST);
    }
}
