//! [`Destination`]: one vendor API as the writers call it — every request paced, authenticated,
//! traced, timed out and classified in one place.
//!
//! A call goes round this loop until it has an answer the caller must act on:
//!
//! 1. reserve a send slot from the shared [`Pacer`] (Redis; every replica and task draws on the
//!    same quota) and wait for it;
//! 2. take the current access token from [`Credentials`];
//! 3. send, in a client span whose context travels in `traceparent`, with a timeout;
//! 4. read the vendor's rate-limit headers into the pacer ([`Pacer::observe`]) and classify the
//!    answer ([`classify`]):
//!    - `429`: the pacer is told (`Retry-After`, or a default pause) and the request goes round
//!      again — a rate limit never costs a retry attempt. Only after `max_rate_limit_wait` in
//!      total does the call give up with [`CallError::RateLimited`], so the caller can defer the
//!      message through the broker instead of holding it;
//!    - `401`: the token is refreshed once and the request goes round again; a second `401` is
//!      permanent;
//!    - anything else is returned: success, [`CallError::AlreadyExists`], transient or permanent.
//!
//! Retrying transient failures is not done here: the writers send the message back through the
//! broker's delay queues with the [`crate::RetryPolicy`], which survives restarts and does not
//! hold a consumer's prefetch.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use handoff_bus::Headers;
use reqwest::Method;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;
use tracing::{Instrument, field};

use crate::{
    AuthError, Credentials, IoFailure, PaceKey, Pacer, PacingError, RateInfo, Vendor, Verdict,
    classify,
};

/// How a destination is reached (`[hubspot]`, `[rest]` … in a writer's TOML file, beside its
/// `auth` and `pacing`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Longest a whole request (connect, send, answer) may take (humantime). HubSpot answers in
    /// well under a second; ten leaves room for a slow day without holding messages for long.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Longest a connection may take to open (humantime).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long one call may keep waiting out 429s before the message is deferred through the
    /// broker instead (humantime).
    #[serde(with = "humantime_serde")]
    pub max_rate_limit_wait: Duration,
    /// The pause after a 429 without a usable `Retry-After` (humantime); HubSpot's window is 10 s.
    #[serde(with = "humantime_serde")]
    pub default_retry_after: Duration,
    /// Requests of one process that may be on their way at once, waiting for their pacing slot
    /// included. Each waiting request holds a slot it booked, so this bounds how far ahead the
    /// quota is booked (32 slots: 3.3 s of HubSpot's 97 per 10 s) and so how soon a 429's
    /// back-off takes effect; with the bus's prefetch of 200 and no bound, 20 s of slots were
    /// booked and kept firing into a full window (`make bench`). 32 is still far more than one
    /// process needs to fill an unlimited quota at this API's latency.
    pub max_in_flight: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            max_rate_limit_wait: Duration::from_secs(60),
            default_retry_after: Duration::from_secs(10),
            max_in_flight: 32,
        }
    }
}

impl HttpConfig {
    /// Checks what serde cannot: positive timeouts, at least one request in flight.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_in_flight == 0 {
            return Err("max_in_flight: must be at least 1".to_owned());
        }
        for (key, value) in [
            ("timeout", self.timeout),
            ("connect_timeout", self.connect_timeout),
            ("default_retry_after", self.default_retry_after),
        ] {
            if value.is_zero() {
                return Err(format!("{key}: must be more than zero"));
            }
        }
        Ok(())
    }

    /// An HTTP client with these timeouts, shared by every call of a service.
    pub fn client(&self, user_agent: &str) -> Result<reqwest::Client, reqwest::Error> {
        reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            .user_agent(user_agent)
            .build()
    }
}

/// One request to a destination.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    pub method: Method,
    /// Path and query, appended to the destination's base URL (`/crm/v3/objects/contacts/…`),
    /// or a whole `http(s)://` URL that a template already built under that base.
    pub path: String,
    /// A JSON body, if any.
    pub body: Option<Value>,
    /// What the request does, a bounded name for metrics and span names (`contact.upsert`).
    pub operation: &'static str,
    /// Extra headers (e.g. an `Idempotency-Key`).
    pub headers: Vec<(String, String)>,
}

impl ApiRequest {
    /// A request without extra headers.
    pub fn new(method: Method, path: impl Into<String>, operation: &'static str) -> Self {
        ApiRequest {
            method,
            path: path.into(),
            body: None,
            operation,
            headers: Vec::new(),
        }
    }

    /// With a JSON body.
    pub fn json(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }
}

/// A successful answer.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: u16,
    /// The body as JSON, `Value::Null` when empty or not JSON.
    pub body: Value,
}

/// Why a call did not succeed; each variant says what the writer does next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The record exists already (e.g. HubSpot's 409 on a unique value): fetch it, treat the
    /// write as done.
    #[error("{operation}: already exists: {reason}")]
    AlreadyExists {
        operation: &'static str,
        reason: String,
    },
    /// Still rate limited after waiting `max_rate_limit_wait`: defer without using an attempt.
    #[error("{operation}: rate limited; the destination asks to wait {retry_after:?}")]
    RateLimited {
        operation: &'static str,
        retry_after: Duration,
    },
    /// Might work later (5xx, timeout, connection, Redis or the token endpoint unavailable).
    #[error("{operation}: {reason}")]
    Transient {
        operation: &'static str,
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Refused for good: dead-letter with the destination's own error.
    #[error("{operation}: {reason}")]
    Permanent {
        operation: &'static str,
        /// The HTTP status, when there was an answer.
        status: Option<u16>,
        reason: String,
    },
}

impl CallError {
    /// The HTTP status of a permanent refusal, as the dead letter's code.
    pub fn status(&self) -> Option<u16> {
        match self {
            CallError::Permanent { status, .. } => *status,
            _ => None,
        }
    }
}

/// A destination API; cheap to clone.
#[derive(Clone)]
pub struct Destination {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    vendor: Vendor,
    base_url: String,
    http: reqwest::Client,
    pacer: Pacer,
    pace_key: PaceKey,
    credentials: Credentials,
    cfg: HttpConfig,
    in_flight: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destination")
            .field("name", &self.inner.name)
            .field("base_url", &self.inner.base_url)
            .finish_non_exhaustive()
    }
}

impl Destination {
    /// A destination called `name` (`hubspot`; a label in metrics and Redis keys) at `base_url`.
    /// Its quota is keyed by (`name`, the credential's name), so replicas with the same
    /// credential share it.
    pub fn new(
        name: &str,
        vendor: Vendor,
        base_url: &str,
        http: reqwest::Client,
        pacer: Pacer,
        credentials: Credentials,
        cfg: HttpConfig,
    ) -> Destination {
        let pace_key = PaceKey::new(name, credentials.name());
        Destination {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                vendor,
                base_url: base_url.trim_end_matches('/').to_owned(),
                http,
                pacer,
                pace_key,
                credentials,
                in_flight: tokio::sync::Semaphore::new(
                    usize::try_from(cfg.max_in_flight.max(1)).unwrap_or(1),
                ),
                cfg,
            }),
        }
    }

    /// The destination's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Sends `request`, pacing, authenticating and retrying rate limits and one token refresh as
    /// the module docs say.
    pub async fn call(&self, request: &ApiRequest) -> Result<ApiResponse, CallError> {
        let inner = &*self.inner;
        let op = request.operation;
        // Held from booking a slot to the answer (see `HttpConfig::max_in_flight`). The
        // semaphore is never closed, so acquiring cannot fail.
        let _permit = inner.in_flight.acquire().await.ok();
        let mut refreshed = false;
        let mut rate_limited_for = Duration::ZERO;
        loop {
            let wait = inner
                .pacer
                .acquire(&inner.pace_key)
                .await
                .map_err(|err| pacing_error(op, err))?;
            if !wait.is_zero() {
                metrics::histogram!("handoff_delivery_pacing_wait_seconds", "destination" => inner.name.clone())
                    .record(wait.as_secs_f64());
                tokio::time::sleep(wait).await;
            }
            let token = inner
                .credentials
                .bearer()
                .await
                .map_err(|err| auth_error(op, &err))?;
            let authorization = inner.credentials.header_value(&token);
            let answer = self.send(request, authorization.expose_secret()).await;
            let (status, headers, body) = match answer {
                Ok(parts) => parts,
                Err(failure) => {
                    self.count(op, "transient");
                    let reason = match Verdict::from_io(failure) {
                        Verdict::Transient { reason, .. } => reason,
                        other => format!("{other:?}"),
                    };
                    return Err(CallError::Transient {
                        operation: op,
                        reason,
                        retry_after: None,
                    });
                }
            };
            let now = SystemTime::now();
            let info = RateInfo::from_headers(
                headers
                    .iter()
                    .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))),
                now,
            );
            if let Err(err) = inner.pacer.observe(&inner.pace_key, &info).await {
                tracing::debug!(error = %err, "Could not pass the rate-limit headers to the pacer.");
            }
            let retry_after = headers
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok());
            match classify(inner.vendor, status, retry_after, &body) {
                Verdict::Success => {
                    self.count(op, "success");
                    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    return Ok(ApiResponse { status, body });
                }
                Verdict::AlreadyExists => {
                    self.count(op, "already_exists");
                    return Err(CallError::AlreadyExists {
                        operation: op,
                        reason: String::from_utf8_lossy(&body).into_owned(),
                    });
                }
                Verdict::RateLimited { retry_after } => {
                    self.count(op, "rate_limited");
                    let pause = retry_after.unwrap_or(inner.cfg.default_retry_after);
                    if let Err(err) = inner.pacer.penalize(&inner.pace_key, pause).await {
                        return Err(pacing_error(op, err));
                    }
                    rate_limited_for += pause;
                    if rate_limited_for > inner.cfg.max_rate_limit_wait {
                        return Err(CallError::RateLimited {
                            operation: op,
                            retry_after: pause,
                        });
                    }
                    tracing::debug!(?pause, "Rate limited; waiting for the next slot.");
                }
                Verdict::Reauthenticate if !refreshed => {
                    self.count(op, "reauthenticate");
                    refreshed = true;
                    if let Err(err) = inner.credentials.after_rejection(&token).await {
                        let refused = CallError::Permanent {
                            operation: op,
                            status: Some(status),
                            reason: format!(
                                "{status}: the credentials were refused and could not be renewed: {err}"
                            ),
                        };
                        return Err(if err.is_transient() {
                            auth_error(op, &err)
                        } else {
                            refused
                        });
                    }
                }
                Verdict::Reauthenticate => {
                    self.count(op, "permanent");
                    return Err(CallError::Permanent {
                        operation: op,
                        status: Some(status),
                        reason: format!(
                            "{status}: the credentials were refused again after a token refresh"
                        ),
                    });
                }
                Verdict::Transient {
                    retry_after,
                    reason,
                } => {
                    self.count(op, "transient");
                    return Err(CallError::Transient {
                        operation: op,
                        reason,
                        retry_after,
                    });
                }
                Verdict::Permanent { reason } => {
                    self.count(op, "permanent");
                    return Err(CallError::Permanent {
                        operation: op,
                        status: Some(status),
                        reason,
                    });
                }
            }
        }
    }

    /// One HTTP exchange in a client span; the span's context travels in `traceparent`.
    async fn send(
        &self,
        request: &ApiRequest,
        authorization: &str,
    ) -> Result<(u16, reqwest::header::HeaderMap, Vec<u8>), IoFailure> {
        let inner = &*self.inner;
        let url = if request.path.starts_with("http://") || request.path.starts_with("https://") {
            request.path.clone()
        } else {
            format!("{}{}", inner.base_url, request.path)
        };
        // `server.address` / `server.port` are required by the HTTP client conventions.
        let parsed = url::Url::parse(&url).ok();
        let server_address = parsed
            .as_ref()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        let server_port = parsed
            .as_ref()
            .and_then(url::Url::port_or_known_default)
            .unwrap_or_default();
        let span = tracing::info_span!(
            "http",
            otel.name = %format_args!("{} {}", request.method, request.operation),
            otel.kind = "client",
            http.request.method = %request.method,
            url.full = %url,
            server.address = %server_address,
            server.port = server_port,
            handoff.destination = %inner.name,
            http.response.status_code = field::Empty,
        );
        let started = Instant::now();
        let result = async {
            let mut trace_headers = Headers::new();
            handoff_bus::trace::inject_current(&mut trace_headers);
            let mut builder = inner.http.request(request.method.clone(), &url);
            // Marked sensitive, as `bearer_auth` would, so no debug output ever shows it.
            if let Ok(mut value) = reqwest::header::HeaderValue::from_str(authorization) {
                value.set_sensitive(true);
                builder = builder.header(reqwest::header::AUTHORIZATION, value);
            }
            for (k, v) in trace_headers
                .iter()
                .chain(request.headers.iter().map(|(k, v)| (k, v)))
            {
                builder = builder.header(k.as_str(), v.as_str());
            }
            if let Some(body) = &request.body {
                builder = builder.json(body);
            }
            let response = builder.send().await.map_err(io_failure)?;
            let status = response.status().as_u16();
            tracing::Span::current().record("http.response.status_code", status);
            let headers = response.headers().clone();
            let body = response.bytes().await.map_err(io_failure)?.to_vec();
            Ok((status, headers, body))
        }
        .instrument(span)
        .await;
        metrics::histogram!(
            "handoff_delivery_request_seconds",
            "destination" => inner.name.clone(),
            "operation" => request.operation
        )
        .record(started.elapsed().as_secs_f64());
        result
    }

    fn count(&self, operation: &'static str, outcome: &'static str) {
        metrics::counter!(
            "handoff_delivery_requests_total",
            "destination" => self.inner.name.clone(),
            "operation" => operation,
            "outcome" => outcome
        )
        .increment(1);
    }
}

fn io_failure(err: reqwest::Error) -> IoFailure {
    if err.is_timeout() {
        IoFailure::Timeout
    } else if err.is_connect() {
        IoFailure::Connect
    } else {
        IoFailure::Reset
    }
}

fn pacing_error(operation: &'static str, err: PacingError) -> CallError {
    if err.is_transient() {
        CallError::Transient {
            operation,
            reason: format!("the pacer is unavailable: {err}"),
            retry_after: None,
        }
    } else {
        CallError::Permanent {
            operation,
            status: None,
            reason: err.to_string(),
        }
    }
}

fn auth_error(operation: &'static str, err: &AuthError) -> CallError {
    if err.is_transient() {
        CallError::Transient {
            operation,
            reason: format!("no access token: {err}"),
            retry_after: None,
        }
    } else {
        CallError::Permanent {
            operation,
            status: None,
            reason: format!("no access token: {err}"),
        }
    }
}
