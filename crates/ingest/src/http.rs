//! The public HTTP API: routes, request reading and response shapes.
//!
//! Checks run cheapest first and in the order a publisher can act on:
//! who you are (401), what you send (404/403), how often (429), in what
//! form (415/413/400), whether it fits the contract (422), and only then
//! dedupe and publish.
//!
//! Two read routes answer from the status ledger, each for the calling
//! publisher's events only: `GET /v1/events/{event_id}` (one event) and
//! `GET /v1/contacts/{email}/events` (the events about one person, newest
//! first).

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::future::join_all;
use handoff_bus::Headers;
use handoff_events::EventType;
use opentelemetry::trace::TraceContextExt;
use serde_json::{Value, json};
use tracing::{Instrument, Span, field};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::accept::{Accepted, Acceptor, Candidate, fingerprint};
use crate::auth::{Publisher, Publishers};
use crate::contract::{self, FieldError};
use crate::error::ApiError;
use crate::metrics;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub publishers: Publishers,
    pub acceptor: Acceptor,
    pub body_limit: usize,
    pub batch_body_limit: usize,
    pub batch_max_events: usize,
    pub request_timeout: std::time::Duration,
}

/// The API's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/events:batch", post(post_batch))
        .route(
            "/v1/events/{event_type_or_id}",
            post(post_event).get(get_event),
        )
        .route("/v1/contacts/{email}/events", get(get_contact_events))
        .fallback(not_found)
        .with_state(Arc::new(state))
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; see POST /v1/events/{event_type}".to_owned())
}

/// `POST /v1/events/{event_type}`
async fn post_event(
    State(state): State<Arc<AppState>>,
    Path(event_type): Path<String>,
    request: Request,
) -> Response {
    let span = request_span("POST /v1/events/{event_type}", request.headers());
    respond(&state, "single", span, async {
        let (accepted, event_id) = accept_one(&state, &event_type, request).await?;
        Ok(match accepted {
            Accepted::New { trace_id } => (
                StatusCode::ACCEPTED,
                axum::Json(
                    json!({"event_id": event_id, "status": "accepted", "trace_id": trace_id}),
                ),
            )
                .into_response(),
            Accepted::Duplicate => (
                StatusCode::OK,
                axum::Json(json!({"event_id": event_id, "status": "duplicate"})),
            )
                .into_response(),
        })
    })
    .await
}

/// Runs one request's work inside its server span, bounded by the request
/// timeout; turns errors into their JSON answer and counts the request.
async fn respond(
    state: &AppState,
    endpoint: &'static str,
    span: Span,
    work: impl Future<Output = Result<Response, ApiError>>,
) -> Response {
    let started = Instant::now();
    async {
        let result = tokio::time::timeout(state.request_timeout, work)
            .await
            .unwrap_or_else(|_| Err(ApiError::timeout()));
        let response = result.unwrap_or_else(|err| {
            metrics::rejected(&err);
            err.into_response()
        });
        metrics::request(endpoint, response.status(), started.elapsed());
        Span::current().record("http.response.status_code", response.status().as_u16());
        response
    }
    .instrument(span)
    .await
}

async fn accept_one(
    state: &AppState,
    event_type: &str,
    request: Request,
) -> Result<(Accepted, String), ApiError> {
    let publisher = state.publishers.authenticate(request.headers())?;
    Span::current().record("publisher_id", publisher.id.as_str());
    let event_type: EventType = event_type
        .parse()
        .map_err(|_| ApiError::unknown_event_type(event_type))?;
    publisher.check_allowed(event_type)?;
    publisher.check_rate(1)?;
    let body = read_json_body(request, state.body_limit).await?;
    let value: Value = serde_json::from_slice(&body).map_err(|e| ApiError::malformed_json(&e))?;
    let checked = contract::check(event_type, &value).map_err(ApiError::validation_failed)?;
    let event_id = checked.event_id.as_str().to_owned();
    Span::current().record("event_id", event_id.as_str());
    let accepted = state
        .acceptor
        .accept(Candidate {
            publisher_id: &publisher.id,
            event_type,
            fingerprint: fingerprint(&value),
            checked,
            body: body.to_vec(),
        })
        .await?;
    metrics::accepted(event_type, &accepted);
    Ok((accepted, event_id))
}

/// `POST /v1/events:batch` — `{"events":[{"event_type":"lead.created", …event fields…}, …]}`.
///
/// Every item gets its own result; one bad item does not fail the others.
async fn post_batch(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let span = request_span("POST /v1/events:batch", request.headers());
    respond(&state, "batch", span, async {
        let body = accept_batch(&state, request).await?;
        Ok((StatusCode::OK, axum::Json(body)).into_response())
    })
    .await
}

async fn accept_batch(state: &AppState, request: Request) -> Result<Value, ApiError> {
    let publisher = state.publishers.authenticate(request.headers())?;
    Span::current().record("publisher_id", publisher.id.as_str());
    let body = read_json_body(request, state.batch_body_limit).await?;
    let value: Value = serde_json::from_slice(&body).map_err(|e| ApiError::malformed_json(&e))?;
    let Value::Object(mut batch) = value else {
        return Err(ApiError::bad_batch(
            "the body must be an object with an `events` array".into(),
        ));
    };
    let Some(Value::Array(items)) = batch.remove("events") else {
        return Err(ApiError::bad_batch(
            "the body must have an `events` array".into(),
        ));
    };
    if let Some(extra) = batch.keys().next() {
        return Err(ApiError::bad_batch(format!(
            "{extra:?} is not a known batch field; only `events` is"
        )));
    }
    if items.is_empty() || items.len() > state.batch_max_events {
        return Err(ApiError::bad_batch(format!(
            "`events` must hold 1 to {} events, not {}",
            state.batch_max_events,
            items.len()
        )));
    }
    publisher.check_rate(u32::try_from(items.len()).unwrap_or(u32::MAX))?;

    // Each event is its own trace, linked to the batch request's span.
    let batch_context = Span::current().context();
    let results = join_all(items.into_iter().enumerate().map(|(index, item)| {
        let item_span = tracing::info_span!(
            parent: None,
            "ingest.batch_item",
            otel.kind = "internal",
            event_id = field::Empty,
            trace_id = field::Empty,
        );
        item_span.add_link(batch_context.span().span_context().clone());
        let publisher = publisher.clone();
        async move {
            if let Some(trace_id) = handoff_bus::trace::current_trace_id() {
                Span::current().record("trace_id", trace_id.as_str());
            }
            let result = accept_item(state, &publisher, item).await;
            batch_result(index, result)
        }
        .instrument(item_span)
    }))
    .await;
    let count = |status: &str| results.iter().filter(|r| r["status"] == status).count();
    Ok(json!({
        "accepted": count("accepted"),
        "duplicates": count("duplicate"),
        "rejected": count("rejected"),
        "results": results,
    }))
}

async fn accept_item(
    state: &AppState,
    publisher: &Publisher,
    item: Value,
) -> Result<(Accepted, String), (ApiError, Option<String>)> {
    let Value::Object(mut event) = item else {
        return Err((
            ApiError::bad_batch("each item must be an event object".into()),
            None,
        ));
    };
    let event_type = match event.remove("event_type") {
        Some(Value::String(t)) => t,
        _ => {
            let fields = vec![contract::FieldError {
                path: "event_type".into(),
                message: "is required and must be a string".into(),
            }];
            return Err((ApiError::validation_failed(fields), None));
        }
    };
    let event_id_hint = event
        .get("event_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let fail = |e: ApiError| (e, event_id_hint.clone());
    let event_type: EventType = event_type
        .parse()
        .map_err(|_| fail(ApiError::unknown_event_type(&event_type)))?;
    publisher.check_allowed(event_type).map_err(fail)?;
    let value = Value::Object(event);
    let checked =
        contract::check(event_type, &value).map_err(|f| fail(ApiError::validation_failed(f)))?;
    let event_id = checked.event_id.as_str().to_owned();
    Span::current().record("event_id", event_id.as_str());
    let body =
        serde_json::to_vec(&value).map_err(|e| fail(ApiError::unreadable_body(e.to_string())))?;
    let accepted = state
        .acceptor
        .accept(Candidate {
            publisher_id: &publisher.id,
            event_type,
            fingerprint: fingerprint(&value),
            checked,
            body,
        })
        .await
        .map_err(fail)?;
    metrics::accepted(event_type, &accepted);
    Ok((accepted, event_id))
}

fn batch_result(
    index: usize,
    result: Result<(Accepted, String), (ApiError, Option<String>)>,
) -> Value {
    match result {
        Ok((Accepted::New { trace_id }, event_id)) => json!({
            "index": index, "event_id": event_id, "status": "accepted", "status_code": 202, "trace_id": trace_id,
        }),
        Ok((Accepted::Duplicate, event_id)) => json!({
            "index": index, "event_id": event_id, "status": "duplicate", "status_code": 200,
        }),
        Err((err, event_id)) => {
            metrics::rejected(&err);
            let mut v = json!({
                "index": index, "status": "rejected", "status_code": err.status.as_u16(), "error": err.to_json(),
            });
            if let Some(id) = event_id {
                v["event_id"] = Value::String(id);
            }
            if let Some(wait) = err.retry_after {
                v["retry_after_seconds"] = json!(crate::error::retry_after_secs(wait));
            }
            v
        }
    }
}

/// `GET /v1/events/{event_id}` — what is known of the event so far, per stage.
async fn get_event(
    State(state): State<Arc<AppState>>,
    Path(event_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let span = request_span("GET /v1/events/{event_id}", &headers);
    respond(&state, "status", span, async {
        let publisher = state.publishers.authenticate(&headers)?;
        let ledger = state
            .acceptor
            .store
            .ledger_get(&publisher.id, &event_id)
            .await
            .map_err(|_| ApiError::unavailable("the status ledger", state.acceptor.retry_after))?;
        let ledger = ledger.ok_or_else(|| {
            ApiError::not_found(format!("no event {event_id:?} is known for this publisher"))
        })?;
        Ok((StatusCode::OK, axum::Json(ledger)).into_response())
    })
    .await
}

/// How many events `GET /v1/contacts/{email}/events` answers unless `limit` says otherwise.
pub const TIMELINE_DEFAULT_LIMIT: usize = 20;
/// The most events one `GET /v1/contacts/{email}/events` answers: a page a person can read, and
/// a bounded number of ledger reads per request.
pub const TIMELINE_MAX_LIMIT: usize = 100;

/// The query string of `GET /v1/contacts/{email}/events`; other parameters are ignored.
#[derive(Debug, serde::Deserialize)]
struct TimelineQuery {
    /// Read as text so that a bad value gets our error body, not the extractor's.
    limit: Option<String>,
}

/// `GET /v1/contacts/{email}/events?limit=N` — the publisher's events about one person, newest
/// first (by when each was first seen), each as `GET /v1/events/{event_id}` reports it.
///
/// The path's email is normalized as the normalizer normalizes a contact's email
/// (`handoff_normalize::field::email`: trimmed, lower-cased, domain in punycode), so
/// `" Alex@Example.COM "` finds the events of `alex@example.com`. The normalizer's optional alias
/// rules (`+tag` and Gmail dots stripped) are its own configuration and are not applied here:
/// with them on, ask for the address without the alias. An address that cannot be normalized is
/// a 400; one with no events is a 200 with an empty list.
async fn get_contact_events(
    State(state): State<Arc<AppState>>,
    email: Result<Path<String>, PathRejection>,
    query: Result<Query<TimelineQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let span = request_span("GET /v1/contacts/{email}/events", &headers);
    respond(&state, "timeline", span, async {
        let publisher = state.publishers.authenticate(&headers)?;
        Span::current().record("publisher_id", publisher.id.as_str());
        let limit = match query {
            Ok(Query(query)) => timeline_limit(query.limit.as_deref())?,
            Err(err) => return Err(invalid_parameter("query", err.body_text())),
        };
        let email = match email {
            Ok(Path(raw)) => handoff_normalize::field::email(&raw, false)
                .map_err(|err| invalid_parameter("email", err.to_string()))?,
            Err(err) => return Err(invalid_parameter("email", err.body_text())),
        };
        let events = state
            .acceptor
            .store
            .ledger_by_email(&publisher.id, &email, limit)
            .await
            .map_err(|_| ApiError::unavailable("the status ledger", state.acceptor.retry_after))?;
        Ok((
            StatusCode::OK,
            axum::Json(json!({"email": email, "events": events})),
        )
            .into_response())
    })
    .await
}

/// `limit` as a number of events: [`TIMELINE_DEFAULT_LIMIT`] when absent, else a whole number
/// from 1 to [`TIMELINE_MAX_LIMIT`].
fn timeline_limit(raw: Option<&str>) -> Result<usize, ApiError> {
    let Some(raw) = raw else {
        return Ok(TIMELINE_DEFAULT_LIMIT);
    };
    match raw.trim().parse::<usize>() {
        Ok(limit) if (1..=TIMELINE_MAX_LIMIT).contains(&limit) => Ok(limit),
        _ => Err(invalid_parameter(
            "limit",
            format!("must be a whole number from 1 to {TIMELINE_MAX_LIMIT}"),
        )),
    }
}

fn invalid_parameter(path: &str, message: String) -> ApiError {
    ApiError::invalid_parameters(vec![FieldError {
        path: path.to_owned(),
        message,
    }])
}

/// The server span of one request, a child of the caller's `traceparent` if any.
fn request_span(route: &'static str, headers: &HeaderMap) -> Span {
    // `route` is "METHOD /template": the span's name, per the HTTP conventions; `http.route` is
    // the template alone.
    let (method, template) = route.split_once(' ').unwrap_or(("POST", route));
    let span = tracing::info_span!(
        "ingest.request",
        otel.name = route,
        otel.kind = "server",
        http.request.method = method,
        http.route = template,
        url.scheme = "http",
        http.response.status_code = field::Empty,
        publisher_id = field::Empty,
        event_id = field::Empty,
        trace_id = field::Empty,
    );
    let mut carrier = Headers::new();
    for name in ["traceparent", "tracestate"] {
        if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
            carrier.insert(name.to_owned(), value.to_owned());
        }
    }
    if !carrier.is_empty() {
        let _ = span.set_parent(handoff_bus::trace::extract(&carrier));
    }
    if let Some(trace_id) = span.in_scope(handoff_bus::trace::current_trace_id) {
        span.record("trace_id", trace_id.as_str());
    }
    span
}

/// Reads a JSON body: 415 unless declared JSON, 413 past `limit` (checked on
/// `Content-Length` first, then while reading), 400 if the stream breaks.
async fn read_json_body(request: Request, limit: usize) -> Result<Bytes, ApiError> {
    let headers = request.headers();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("?"));
    let is_json = content_type.is_some_and(|ct| {
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        essence == "application/json"
            || (essence.starts_with("application/") && essence.ends_with("+json"))
    });
    if !is_json {
        return Err(ApiError::unsupported_media_type(content_type));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::payload_too_large(limit));
    }
    let body: Body = request.into_body();
    axum::body::to_bytes(body, limit).await.map_err(|err| {
        let too_large = std::error::Error::source(&err)
            .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::payload_too_large(limit)
        } else {
            ApiError::unreadable_body(format!("the request body could not be read: {err}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeline_limit_defaults_and_is_bounded() {
        assert_eq!(timeline_limit(None).ok(), Some(TIMELINE_DEFAULT_LIMIT));
        assert_eq!(timeline_limit(Some("1")).ok(), Some(1));
        assert_eq!(timeline_limit(Some("100")).ok(), Some(100));
        for bad in [
            "0",
            "101",
            "-1",
            "ten",
            "",
            "1.5",
            "99999999999999999999999",
        ] {
            let err = timeline_limit(Some(bad)).expect_err(bad);
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(err.code, "invalid_parameter");
            assert_eq!(err.fields[0].path, "limit");
        }
    }
}
