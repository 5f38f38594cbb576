//! The operator API (`/v1/…`), authenticated with operator tokens (never publisher
//! keys): lists, groups, stats, one dead letter, replay jobs, purges and the audit log.
//! The `handoff-dlq` CLI is a client of exactly this. Errors are
//! `{"error":{"code":…,"message":…}}`, like ingest's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use handoff_events::Message;
use handoff_idempotency::StoreError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::config::{OperatorConfig, Role};
use crate::record::{self, Status};
use crate::replay::{JobState, ReplayError, ReplayRequest, Replayer};
use crate::store::{AuditEntry, DeadLetterStore, Filter, QueryError, Selection};

/// Rows a list returns when no `limit` is given, and the most it may ask for.
const DEFAULT_LIMIT: u64 = 50;
const MAX_LIMIT: u64 = 1_000;

#[derive(Clone)]
pub struct Api {
    pub store: DeadLetterStore,
    pub replayer: Replayer,
    pub operators: Arc<Operators>,
    pub max_selection: u64,
}

/// Operators by token hash.
#[derive(Debug, Default)]
pub struct Operators {
    by_hash: HashMap<String, (String, Role)>,
}

impl Operators {
    pub fn new(configured: &[OperatorConfig]) -> Operators {
        Operators {
            by_hash: configured
                .iter()
                .map(|o| {
                    (
                        o.token_sha256.to_ascii_lowercase(),
                        (o.name.clone(), o.role),
                    )
                })
                .collect(),
        }
    }

    fn authenticate(&self, headers: &HeaderMap) -> Result<(String, Role), ApiError> {
        let value = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "an operator token is needed: send `Authorization: Bearer <token>`",
                )
            })?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be `Bearer <token>`")
            })?;
        self.by_hash
            .get(&hex::encode(Sha256::digest(token.as_bytes())))
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("the operator token is not valid"))
    }
}

/// The operator, after authentication.
struct Operator {
    name: String,
    role: Role,
}

impl Operator {
    fn may_change(&self) -> Result<(), ApiError> {
        if self.role == Role::Viewer {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "operator {} is a viewer: replays and purges need the operator role",
                    self.name
                ),
            ));
        }
        Ok(())
    }
}

impl Api {
    /// Writes `entry` to the audit log as `operator`'s `action`, now.
    async fn audit(
        &self,
        operator: &Operator,
        action: &str,
        entry: AuditEntry,
    ) -> Result<(), ApiError> {
        self.store
            .audit(&AuditEntry {
                at: record::rfc3339(OffsetDateTime::now_utc()),
                operator: operator.name.clone(),
                action: action.to_owned(),
                ..entry
            })
            .await?;
        Ok(())
    }

    fn operator(&self, headers: &HeaderMap) -> Result<Operator, ApiError> {
        let (name, role) = self.operators.authenticate(headers)?;
        Ok(Operator { name, role })
    }
}

pub fn router(api: Api) -> Router {
    Router::new()
        .route("/v1/dead-letters", get(list))
        .route("/v1/dead-letters/groups", get(groups))
        .route("/v1/dead-letters/stats", get(stats))
        .route("/v1/dead-letters/{id}", get(show))
        .route("/v1/replays", post(start_replay).get(list_replays))
        .route("/v1/replays/{id}", get(show_replay))
        .route("/v1/replays/{id}/{action}", post(control_replay))
        .route("/v1/purges", post(purge))
        .route("/v1/audit", get(audit))
        .with_state(api)
}

/// Query string of the list, groups and stats endpoints.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListQuery {
    pub stage: Option<String>,
    pub event_type: Option<String>,
    pub error_class: Option<String>,
    pub destination: Option<String>,
    pub code: Option<String>,
    pub publisher: Option<String>,
    pub email: Option<String>,
    pub fingerprint: Option<String>,
    pub event_id: Option<String>,
    pub status: Option<String>,
    /// RFC 3339, or a duration ago (`2h`, `3d`).
    pub since: Option<String>,
    pub until: Option<String>,
    pub offset: Option<u64>,
    pub limit: Option<u64>,
}

impl ListQuery {
    fn filter(&self) -> Result<Filter, ApiError> {
        let status = self
            .status
            .as_deref()
            .filter(|s| !s.is_empty() && *s != "all")
            .map(|s| {
                Status::parse(s).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "status {s:?} is not one of parked, replaying, replayed, purged, all"
                    ))
                })
            })
            .transpose()?;
        Ok(Filter {
            stage: self.stage.clone(),
            event_type: self.event_type.clone(),
            error_class: self.error_class.clone(),
            destination: self.destination.clone(),
            code: self.code.clone(),
            publisher: self.publisher.clone(),
            email: self.email.clone(),
            fingerprint: self.fingerprint.clone(),
            event_id: self.event_id.clone(),
            status,
            since: self.since.as_deref().map(absolute_time).transpose()?,
            until: self.until.as_deref().map(absolute_time).transpose()?,
        })
    }
}

/// RFC 3339 as is; a duration (`90m`, `2h`, `3d`) as that long before now.
pub fn absolute_time(text: &str) -> Result<String, ApiError> {
    use time::format_description::well_known::Rfc3339;
    if OffsetDateTime::parse(text, &Rfc3339).is_ok() {
        return Ok(text.to_owned());
    }
    let ago = humantime::parse_duration(text).map_err(|_| {
        ApiError::bad_request(format!(
            "{text:?} is neither an RFC 3339 time nor a duration such as 2h"
        ))
    })?;
    let at = OffsetDateTime::now_utc() - ago;
    Ok(record::rfc3339(at))
}

async fn list(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    api.operator(&headers)?;
    let filter = query.filter()?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    let page = api
        .store
        .list(&filter, query.offset.unwrap_or(0), limit)
        .await?;
    Ok(Json(page).into_response())
}

async fn groups(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    api.operator(&headers)?;
    let facets = api.store.facets(&query.filter()?).await?;
    Ok(Json(serde_json::json!({"total": facets.total, "groups": facets.groups})).into_response())
}

async fn stats(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    api.operator(&headers)?;
    let facets = api.store.facets(&query.filter()?).await?;
    Ok(Json(facets).into_response())
}

/// One dead letter: summary, state, the record (without the original bytes) and the
/// original event decoded, as JSON.
#[derive(Debug, Serialize, Deserialize)]
pub struct Detail {
    pub summary: record::Summary,
    pub state: crate::store::State,
    /// The `DeadLetter` record as JSON (the `.proto` field names), without `original_body`.
    pub record: Option<serde_json::Value>,
    /// The original message decoded as a `handoff.v1.Envelope` (raw payloads shown as
    /// their JSON), or `null` when it is not one.
    pub original: Option<serde_json::Value>,
    /// The original bytes, base64, when they are not an envelope.
    pub original_base64: Option<String>,
}

async fn show(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    api.operator(&headers)?;
    let parked = api
        .store
        .get(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no dead letter {id}")))?;
    let (record, original, original_base64) = match &parked.record {
        Some(dead_letter) => {
            let mut without_body = dead_letter.clone();
            let body = std::mem::take(&mut without_body.original_body);
            let record = handoff_events::json::to_json(
                "handoff.v1.DeadLetter",
                &without_body.encode_to_vec(),
            )
            .ok();
            let original = decode_original(&body);
            let base64 = original.is_none().then(|| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(&body)
            });
            (record, original, base64)
        }
        None => (None, None, None),
    };
    Ok(Json(Detail {
        summary: parked.summary,
        state: parked.state,
        record,
        original,
        original_base64,
    })
    .into_response())
}

/// The envelope as JSON, with a raw payload's body shown as the JSON it carries.
fn decode_original(body: &[u8]) -> Option<serde_json::Value> {
    use handoff_events::v1;
    let envelope = v1::Envelope::decode(body).ok()?;
    let mut json = handoff_events::json::to_json("handoff.v1.Envelope", body).ok()?;
    if let Some(v1::envelope::Payload::Raw(raw)) = &envelope.payload
        && let Ok(parsed) = serde_json::from_slice::<serde_json::Value>(&raw.body)
        && let Some(raw_json) = json.get_mut("raw")
    {
        raw_json["body"] = parsed;
    }
    Some(json)
}

async fn start_replay(
    State(api): State<Api>,
    headers: HeaderMap,
    Json(request): Json<ReplayRequest>,
) -> Result<Response, ApiError> {
    let operator = api.operator(&headers)?;
    if request.dry_run {
        let (plan, _) = api.replayer.plan(&request).await?;
        return Ok(Json(plan).into_response());
    }
    operator.may_change()?;
    let job = api.replayer.start(&request, &operator.name).await?;
    api.audit(
        &operator,
        "replay",
        AuditEntry {
            filter: request.selection().ok().and_then(|s| s.filter().cloned()),
            ids: request.ids.clone(),
            count: job.total,
            reason: request.reason.clone(),
            job: job.id.clone(),
            detail: format!(
                "mode {}, {:.2}/s, {} refused",
                job.mode.label(),
                job.rate,
                job.refused
            ),
            ..AuditEntry::default()
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(job)).into_response())
}

async fn list_replays(State(api): State<Api>, headers: HeaderMap) -> Result<Response, ApiError> {
    api.operator(&headers)?;
    Ok(Json(api.replayer.jobs(100).await?).into_response())
}

async fn show_replay(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    api.operator(&headers)?;
    Ok(Json(api.replayer.job(&id).await?).into_response())
}

async fn control_replay(
    State(api): State<Api>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let operator = api.operator(&headers)?;
    operator.may_change()?;
    let to = match action.as_str() {
        "pause" => JobState::Paused,
        "resume" => JobState::Running,
        "cancel" => JobState::Cancelled,
        other => {
            return Err(ApiError::not_found(format!(
                "{other:?} is not a replay action (pause, resume, cancel)"
            )));
        }
    };
    let job = api.replayer.control(&id, to).await?;
    api.audit(
        &operator,
        &format!("replay.{action}"),
        AuditEntry {
            job: id,
            count: job.total.saturating_sub(job.sent + job.skipped),
            detail: format!("{} sent of {}", job.sent, job.total),
            ..AuditEntry::default()
        },
    )
    .await?;
    Ok(Json(job).into_response())
}

/// A purge: what, and why. `confirm` must be true (the CLI's `--yes`).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PurgeRequest {
    pub ids: Vec<String>,
    pub filter: Option<Filter>,
    pub group: Option<String>,
    pub reason: String,
    pub confirm: bool,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct PurgeResult {
    pub purged: u64,
    /// Selected but left alone: not parked or replayed (a replay in flight, or purged before).
    pub left: u64,
    pub ids: Vec<String>,
}

async fn purge(
    State(api): State<Api>,
    headers: HeaderMap,
    Json(request): Json<PurgeRequest>,
) -> Result<Response, ApiError> {
    let operator = api.operator(&headers)?;
    operator.may_change()?;
    if !request.confirm {
        return Err(ApiError::bad_request(
            "a purge deletes dead letters for good: confirm it (`confirm: true`, the CLI's --yes)",
        ));
    }
    if request.reason.trim().is_empty() {
        return Err(ApiError::bad_request(
            "a purge needs a reason, for the audit log",
        ));
    }
    let selection = Selection::of(
        &request.ids,
        request.filter.as_ref(),
        request.group.as_deref(),
    )
    .map_err(ApiError::bad_request)?;
    let ids = api.store.select(&selection, api.max_selection).await?;
    let mut patch = serde_json::Map::new();
    patch.insert(
        "purge".into(),
        serde_json::json!({
            "by": operator.name,
            "reason": request.reason,
            "at": record::rfc3339(OffsetDateTime::now_utc()),
        }),
    );
    let purged = api
        .store
        .transition(
            &ids,
            &[Status::Parked, Status::Replayed],
            Status::Purged,
            patch,
            true,
            None,
        )
        .await?;
    api.audit(
        &operator,
        "purge",
        AuditEntry {
            filter: selection.filter().cloned(),
            ids: request.ids.clone(),
            count: purged.len() as u64,
            reason: request.reason.clone(),
            detail: format!("{} selected, {} purged", ids.len(), purged.len()),
            ..AuditEntry::default()
        },
    )
    .await?;
    Ok(Json(PurgeResult {
        purged: purged.len() as u64,
        left: (ids.len() - purged.len()) as u64,
        ids: purged,
    })
    .into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct AuditQuery {
    limit: Option<usize>,
}

async fn audit(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(query): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    api.operator(&headers)?;
    let entries = api
        .store
        .audit_log(query.limit.unwrap_or(100).min(10_000))
        .await?;
    Ok(Json(entries).into_response())
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

/// The message alone, for the CLI, which calls [`absolute_time`] itself.
impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        tracing::warn!(error = %err, "A dead-letter store operation failed.");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("the dead-letter store is unavailable: {err}"),
        )
    }
}

impl From<QueryError> for ApiError {
    fn from(err: QueryError) -> Self {
        match err {
            QueryError::BadFilter(reason) => ApiError::bad_request(reason),
            QueryError::Store(err) => err.into(),
        }
    }
}

impl From<ReplayError> for ApiError {
    fn from(err: ReplayError) -> Self {
        match err {
            ReplayError::BadRequest(reason) => ApiError::bad_request(reason),
            ReplayError::NoSuchJob(_) => ApiError::not_found(err.to_string()),
            ReplayError::Finished(..) => {
                Self::new(StatusCode::CONFLICT, "conflict", err.to_string())
            }
            ReplayError::Store(err) => err.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        }
        response
    }
}

/// Bounds every request, so a stalled Redis is an answer, not a hung CLI.
pub fn with_timeout(router: Router, timeout: Duration) -> Router {
    router.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        StatusCode::SERVICE_UNAVAILABLE,
        timeout,
    ))
}
