//! What every vendor API shares: the layer that applies injected faults ([`crate::faults`]) and
//! writes the request log ([`crate::request_log`], with each request's `traceparent`), and the
//! [`Writes`] extension handlers use to tell it which records they touched. Each vendor module
//! wraps its routes in [`faults_and_log`] with its own [`Api`], which picks the error bodies
//! faulted answers carry and how the caller's credential is read for the log.
//!
//! Mailchimp's connection limit is applied here too, before the fault decision: a request held by
//! a latency or timeout fault still occupies one of the key's connections, as it would at
//! Mailchimp, and the 429 it causes is logged like any answer.

use axum::body::Body;
use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use crate::Sandbox;
use crate::faults::{Decision, TimeoutMode};
use crate::request_log::{RequestEntry, Write};
use crate::{hubspot, mailchimp};

/// Which vendor API a request was addressed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    HubSpot,
    Mailchimp,
}

impl Api {
    /// The name in the request log's `api` field and the metrics' `api` label.
    pub fn name(self) -> &'static str {
        match self {
            Api::HubSpot => "hubspot",
            Api::Mailchimp => "mailchimp",
        }
    }

    /// The credential the request presents, as the log records it: HubSpot's bearer token or
    /// Mailchimp's API key (the basic-auth password).
    fn credential(self, authorization: Option<&str>) -> Option<String> {
        let auth = authorization?;
        match self {
            Api::HubSpot => crate::auth::bearer(auth).map(str::to_owned),
            Api::Mailchimp => mailchimp::api_key(auth),
        }
    }

    fn server_error(self, status: u16, retry_after: Option<std::time::Duration>) -> Response {
        match self {
            Api::HubSpot => hubspot::error::server_error(status, retry_after),
            Api::Mailchimp => mailchimp::error::server_error(status, retry_after),
        }
    }

    fn rate_limited(self, retry_after: std::time::Duration) -> Response {
        match self {
            Api::HubSpot => hubspot::error::rate_limited(retry_after),
            Api::Mailchimp => mailchimp::error::too_many_requests(
                "You have exceeded the limit of simultaneous connections.",
                Some(retry_after),
            ),
        }
    }
}

/// Records a handler touched, passed to the logging layer as a response extension.
#[derive(Debug, Clone, Default)]
pub struct Writes(pub Vec<Write>);

pub(crate) fn authorization(req: &Request) -> Option<String> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// An answer that never comes: the body fails before its first byte, so the server aborts the
/// connection and the client sees it closed without a response.
fn dropped() -> Response {
    let failing = futures::stream::once(async {
        Err::<axum::body::Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "the sandbox dropped this request (timeout fault)",
        ))
    });
    Response::new(Body::from_stream(failing))
}

/// Injected faults first, then the routes; every request ends up in the request log.
pub(crate) async fn faults_and_log(sb: Sandbox, api: Api, req: Request, next: Next) -> Response {
    // A client that gives up (its own timeout) drops this future with its connection. The real
    // service would still finish the request, and the log must still say what it did (writes of
    // a request whose answer never arrived are exactly what tests count), so the work runs on a
    // task of its own that a disconnect does not cancel.
    match tokio::spawn(serve_faulted_and_logged(sb, api, req, next)).await {
        Ok(response) => response,
        Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// What became of one request before logging: the answer (none when dropped), the fault that
/// shaped it, and the records written.
struct Outcome {
    answer: Option<Response>,
    fault: Option<&'static str>,
    writes: Vec<Write>,
}

async fn serve_faulted_and_logged(sb: Sandbox, api: Api, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let at = crate::clock::now_iso();
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let auth = authorization(&req);
    let credential = api.credential(auth.as_deref());
    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);

    // Held while the request is served, faults included, so a held request keeps its connection.
    let slot = match api {
        Api::Mailchimp => mailchimp::connections::admit(&sb, credential.as_deref()),
        Api::HubSpot => Ok(None),
    };
    let outcome = match slot {
        Ok(_slot) => apply_faults(&sb, api, started, req, next).await,
        Err(refused) => Outcome {
            answer: Some(refused.into_response()),
            fault: None,
            writes: Vec::new(),
        },
    };
    let Outcome {
        mut answer,
        fault,
        writes,
    } = outcome;

    let status = answer.as_ref().map(|r| r.status().as_u16());
    {
        let mut st = sb.lock();
        // Faulted HubSpot answers to a known caller carry the quota headers too, without using
        // quota.
        if api == Api::HubSpot
            && fault.is_some()
            && let Some(resp) = answer.as_mut()
            && let Ok(cred) = st.hubspot.tokens.authenticate(auth.as_deref(), started)
        {
            let v = st.hubspot.limiter.peek(&cred.rate_key, started);
            hubspot::set_rate_headers(resp, &v);
        }
        st.log.record(RequestEntry {
            seq: 0,
            at,
            elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            api: api.name().to_owned(),
            method,
            path,
            token: credential,
            traceparent,
            status,
            fault: fault.map(str::to_owned),
            writes,
        });
    }
    let class = status.map_or("dropped", |s| match s {
        200..=299 => "2xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    });
    metrics::counter!("handoff_sandbox_requests_total", "api" => api.name(), "status_class" => class)
        .increment(1);
    answer.unwrap_or_else(dropped)
}

async fn apply_faults(
    sb: &Sandbox,
    api: Api,
    started: Instant,
    req: Request,
    next: Next,
) -> Outcome {
    let decision = sb.lock().faults.decide(started);
    let mut fault: Option<&'static str> = None;
    let mut writes: Vec<Write> = Vec::new();
    let mut take_writes = |resp: &Response| {
        if let Some(w) = resp.extensions().get::<Writes>() {
            writes.extend(w.0.iter().cloned());
        }
    };
    let answer: Option<Response> = match decision {
        Decision::Outage {
            status,
            retry_after,
        } => {
            fault = Some("outage");
            Some(api.server_error(status, retry_after))
        }
        Decision::Storm { retry_after } => {
            fault = Some("storm");
            Some(api.rate_limited(retry_after))
        }
        Decision::Proceed {
            timeout: Some((hold, mode)),
            ..
        } => {
            fault = Some("timeout");
            match mode {
                TimeoutMode::Drop => {
                    sb.hold(hold).await;
                    None
                }
                TimeoutMode::Late => {
                    sb.hold(hold).await;
                    let resp = next.run(req).await;
                    take_writes(&resp);
                    Some(resp)
                }
                TimeoutMode::ApplyThenDrop => {
                    let resp = next.run(req).await;
                    take_writes(&resp);
                    sb.hold(hold).await;
                    None
                }
            }
        }
        Decision::Proceed {
            delay,
            timeout: None,
            error,
        } => {
            sb.hold(delay).await;
            match error {
                Some(status) => {
                    fault = Some("error");
                    Some(api.server_error(status, None))
                }
                None => {
                    let resp = next.run(req).await;
                    take_writes(&resp);
                    Some(resp)
                }
            }
        }
    };
    Outcome {
        answer,
        fault,
        writes,
    }
}
