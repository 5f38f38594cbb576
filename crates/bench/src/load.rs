//! The HTTP load generator: a fixed number of workers, each with its own
//! keep-alive HTTP/1.1 client (one connection), taking pre-built request
//! bodies from a shared list until it is exhausted or time runs out.
//!
//! Closed-loop on purpose: each worker sends its next request only when the
//! previous one is answered, so concurrency is fixed and latency is the
//! service's, not a queue inside the generator.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use reqwest::header::CONTENT_TYPE;
use reqwest::{Client, StatusCode};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::measure::{Failures, Latencies};

/// Which endpoint a load run posts to, and so how an answer is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/events/{type}`: one event, 202 when accepted.
    Single,
    /// `POST /v1/events:batch`: 200 with `accepted` counting the accepted items.
    Batch,
}

/// One request to send.
pub struct Job {
    pub body: Vec<u8>,
    /// Events the body carries.
    pub events: usize,
}

/// What one load run saw.
pub struct LoadResult {
    /// One sample per answered request, from send to the end of the response body.
    pub latencies: Latencies,
    pub accepted_events: u64,
    pub failures: Failures,
    /// Wall time from the first send to the last answer.
    pub wall: Duration,
}

/// Keep-alive clients, one per worker, reused across warm-up and scenarios so measured
/// requests never pay for a TCP handshake.
pub fn clients(count: usize) -> anyhow::Result<Vec<Client>> {
    (0..count)
        .map(|_| {
            Client::builder()
                .http1_only()
                .no_proxy()
                // One worker, one connection: the server sees exactly `count` connections.
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(60))
                .build()
                .context("building an HTTP client")
        })
        .collect()
}

/// Where and how long a load run sends.
pub struct Plan<'a> {
    pub url: &'a str,
    pub key: &'a str,
    pub endpoint: Endpoint,
    /// Workers stop taking jobs after this long.
    pub within: Duration,
    /// Workers stop taking jobs once this is cancelled (Ctrl-C).
    pub stop: &'a CancellationToken,
}

/// Posts every job with one worker per client.
pub async fn run(clients: &[Client], plan: Plan<'_>, jobs: Vec<Job>) -> anyhow::Result<LoadResult> {
    let Plan {
        url,
        key,
        endpoint,
        within,
        stop,
    } = plan;
    let jobs = Arc::new(jobs);
    let next = Arc::new(AtomicUsize::new(0));
    let url: Arc<str> = Arc::from(url);
    let auth: Arc<str> = Arc::from(format!("Bearer {key}"));
    let started = Instant::now();
    let deadline = started + within;
    let workers: Vec<_> = clients
        .iter()
        .map(|client| {
            let (client, jobs, next) = (client.clone(), jobs.clone(), next.clone());
            let (url, auth, stop) = (url.clone(), auth.clone(), stop.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(jobs.len() / 8);
                let mut accepted = 0u64;
                let mut failures = Failures::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= jobs.len() || Instant::now() >= deadline || stop.is_cancelled() {
                        break;
                    }
                    let job = &jobs[i];
                    let sent = Instant::now();
                    let answer = send(&client, &url, &auth, job).await;
                    latencies.push(sent.elapsed());
                    match answer {
                        Ok((status, body)) => {
                            judge(endpoint, job, status, &body, &mut accepted, &mut failures);
                        }
                        Err(err) => failures.add(job.events as u64, || format!("{err:#}")),
                    }
                }
                (latencies, accepted, failures)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(workers.len());
    let mut failures = Vec::with_capacity(workers.len());
    let mut accepted_events = 0;
    for worker in workers {
        let (l, a, f) = worker.await.context("a load worker panicked")?;
        latencies.push(l);
        accepted_events += a;
        failures.push(f);
    }
    Ok(LoadResult {
        wall: started.elapsed(),
        latencies: Latencies::merge(latencies),
        accepted_events,
        failures: Failures::merge(failures),
    })
}

async fn send(
    client: &Client,
    url: &str,
    auth: &str,
    job: &Job,
) -> anyhow::Result<(StatusCode, Vec<u8>)> {
    let response = client
        .post(url)
        .header(reqwest::header::AUTHORIZATION, auth)
        .header(CONTENT_TYPE, "application/json")
        // A copy per request: a memcpy of at most a few tens of KiB, noise next to the request.
        .body(job.body.clone())
        .send()
        .await
        .context("sending the request")?;
    let status = response.status();
    let body = response.bytes().await.context("reading the response")?;
    Ok((status, body.to_vec()))
}

/// Counts what an answer accepted; anything else is a failure to report.
fn judge(
    endpoint: Endpoint,
    job: &Job,
    status: StatusCode,
    body: &[u8],
    accepted: &mut u64,
    failures: &mut Failures,
) {
    let describe = || {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        format!("HTTP {status}: {text}")
    };
    match endpoint {
        Endpoint::Single if status == StatusCode::ACCEPTED => *accepted += 1,
        Endpoint::Batch if status == StatusCode::OK => {
            let answer: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let n = answer["accepted"].as_u64().unwrap_or(0);
            *accepted += n;
            let missing = (job.events as u64).saturating_sub(n);
            if missing > 0 {
                let first_problem = answer["results"]
                    .as_array()
                    .and_then(|items| items.iter().find(|r| r["status"] != "accepted"))
                    .map_or_else(describe, |item| format!("batch item: {item}"));
                failures.add(missing, || first_problem);
            }
        }
        _ => failures.add(job.events as u64, describe),
    }
}
