//! The HTTP load generator: a fixed number of workers, each with its own
//! keep-alive HTTP/1.1 client (one connection), taking pre-built request
//! bodies from a shared list until it is exhausted or time runs out.
//!
//! Closed-loop on purpose ([`run`]): each worker sends its next request only
//! when the previous one is answered, so concurrency is fixed and latency is
//! the service's, not a queue inside the generator.
//!
//! [`open_loop`] is the other kind, for a latency at a given rate ([8/10]):
//! request `i` is due at `start + i / rate` whether earlier ones were answered
//! or not, and its latency counts from when it was due, so a stall inside the
//! service shows in the figures instead of slowing the generator down
//! (coordinated omission).
//!
//! Both note the wall-clock time each event was accepted at
//! ([`LoadResult::accepted_at`]): the pipeline part measures 202 → done
//! against timestamps the services write.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

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
    /// Where to post it when not the plan's URL (another event type's endpoint).
    pub url: Option<Arc<str>>,
}

/// What one load run saw.
pub struct LoadResult {
    /// One sample per answered request, from send to the end of the response body.
    pub latencies: Latencies,
    pub accepted_events: u64,
    pub failures: Failures,
    /// Wall time from the first send to the last answer.
    pub wall: Duration,
    /// `(job index, when its answer arrived)` on the system clock, for every request whose
    /// events were all accepted, in no particular order.
    pub accepted_at: Vec<(usize, SystemTime)>,
    /// The most requests that were on their way at once.
    pub max_in_flight: usize,
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
                let mut accepted_at = Vec::with_capacity(jobs.len() / 8);
                let mut failures = Failures::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= jobs.len() || Instant::now() >= deadline || stop.is_cancelled() {
                        break;
                    }
                    let job = &jobs[i];
                    let sent = Instant::now();
                    let answer =
                        send(&client, job.url.as_deref().unwrap_or(&url), &auth, job).await;
                    latencies.push(sent.elapsed());
                    let answered = SystemTime::now();
                    match answer {
                        Ok((status, body)) => {
                            if judge(endpoint, job, status, &body, &mut accepted, &mut failures) {
                                accepted_at.push((i, answered));
                            }
                        }
                        Err(err) => failures.add(job.events as u64, || format!("{err:#}")),
                    }
                }
                (latencies, accepted, accepted_at, failures)
            })
        })
        .collect();
    let max_in_flight = workers.len();
    let mut latencies = Vec::with_capacity(workers.len());
    let mut failures = Vec::with_capacity(workers.len());
    let mut accepted_at = Vec::with_capacity(jobs.len());
    let mut accepted_events = 0;
    for worker in workers {
        let (l, a, at, f) = worker.await.context("a load worker panicked")?;
        latencies.push(l);
        accepted_events += a;
        accepted_at.extend(at);
        failures.push(f);
    }
    Ok(LoadResult {
        wall: started.elapsed(),
        latencies: Latencies::merge(latencies),
        accepted_events,
        failures: Failures::merge(failures),
        accepted_at,
        max_in_flight,
    })
}

/// At most this many requests of an open-loop run on their way at once; past it, requests
/// start late, and their latency (counted from when they were due) says so.
pub const OPEN_LOOP_MAX_IN_FLIGHT: usize = 512;

/// One client for an open-loop run: a pool of keep-alive HTTP/1.1 connections, as many as
/// requests are on their way at once (at most `max_idle`), each reused once answered.
pub fn open_client(max_idle: usize) -> anyhow::Result<Client> {
    Client::builder()
        .http1_only()
        .no_proxy()
        .pool_max_idle_per_host(max_idle)
        .timeout(Duration::from_secs(60))
        .build()
        .context("building an HTTP client")
}

/// Posts `jobs` open loop: job `i` is due `i / rate` seconds after the start, sent then on a
/// task of its own through `client`'s pool of keep-alive connections, however many earlier
/// ones are still waiting. A latency counts from when its request was due.
pub async fn open_loop(
    client: &Client,
    plan: Plan<'_>,
    jobs: Vec<Job>,
    rate: f64,
) -> anyhow::Result<LoadResult> {
    let Plan {
        url,
        key,
        endpoint,
        within,
        stop,
    } = plan;
    anyhow::ensure!(rate > 0.0, "an open-loop rate must be positive");
    let jobs = Arc::new(jobs);
    let url: Arc<str> = Arc::from(url);
    let auth: Arc<str> = Arc::from(format!("Bearer {key}"));
    let slots = Arc::new(tokio::sync::Semaphore::new(OPEN_LOOP_MAX_IN_FLIGHT));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_in_flight = Arc::new(AtomicUsize::new(0));
    let started = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..jobs.len() {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        if due.duration_since(started) >= within || stop.is_cancelled() {
            break;
        }
        tokio::time::sleep_until(due).await;
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .context("the open-loop slots closed")?;
        let (client, jobs, url, auth) = (client.clone(), jobs.clone(), url.clone(), auth.clone());
        let (in_flight, max_in_flight) = (in_flight.clone(), max_in_flight.clone());
        tasks.spawn(async move {
            let now = in_flight.fetch_add(1, Ordering::Relaxed) + 1;
            max_in_flight.fetch_max(now, Ordering::Relaxed);
            let job = &jobs[i];
            let answer = send(&client, job.url.as_deref().unwrap_or(&url), &auth, job).await;
            let latency = due.elapsed();
            let answered = SystemTime::now();
            in_flight.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
            let mut accepted = 0u64;
            let mut failures = Failures::default();
            let ok = match answer {
                Ok((status, body)) => {
                    judge(endpoint, job, status, &body, &mut accepted, &mut failures)
                }
                Err(err) => {
                    failures.add(job.events as u64, || format!("{err:#}"));
                    false
                }
            };
            (latency, accepted, ok.then_some((i, answered)), failures)
        });
    }
    let mut latencies = Vec::with_capacity(jobs.len());
    let mut accepted_at = Vec::with_capacity(jobs.len());
    let mut failures = Vec::new();
    let mut accepted_events = 0;
    while let Some(joined) = tasks.join_next().await {
        let (latency, accepted, at, f) = joined.context("an open-loop request panicked")?;
        latencies.push(latency);
        accepted_events += accepted;
        accepted_at.extend(at);
        failures.push(f);
    }
    Ok(LoadResult {
        wall: started.elapsed(),
        latencies: Latencies::merge([latencies]),
        accepted_events,
        failures: Failures::merge(failures),
        accepted_at,
        max_in_flight: max_in_flight.load(Ordering::Relaxed),
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

/// Counts what an answer accepted; anything else is a failure to report. True when every
/// event of the job was accepted.
fn judge(
    endpoint: Endpoint,
    job: &Job,
    status: StatusCode,
    body: &[u8],
    accepted: &mut u64,
    failures: &mut Failures,
) -> bool {
    let describe = || {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        format!("HTTP {status}: {text}")
    };
    match endpoint {
        Endpoint::Single if status == StatusCode::ACCEPTED => {
            *accepted += 1;
            true
        }
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
            missing == 0
        }
        _ => {
            failures.add(job.events as u64, describe);
            false
        }
    }
}
