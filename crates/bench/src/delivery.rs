//! The crm-writer under test ([7/10]): its real release binary in a child
//! process ([`Service`]) with a throw-away configuration (a namespace of its
//! own, a free admin port, JSON logs at `warn`, the token in
//! `HUBSPOT_ACCESS_TOKEN`, everything else its production defaults), writing
//! to the sandbox CRM, `handoff-sandbox`'s release binary on free ports, in
//! two parts.
//!
//! **(a) Throughput without a quota** ([`throughput`]). The sandbox allows ten
//! million requests per 10 s and the writer paces at a million a second, so no
//! quota is what limits it. N canonical `contact.updated` envelopes, each for
//! a person of its own ([`payload::contact_updated`]: one contact upsert, so
//! one CRM request, per event), are published to `canonical.contact.updated`
//! *before* the writer starts (timed separately, not measured); like the
//! normalizer's output they reach `{ns}.crm-writer` and `{ns}.email-writer`.
//! The window runs from the first request the sandbox sees to the N-th event
//! delivered (or `--max-seconds`), so start-up is left out.
//!
//! "Delivered" is counted in the email-writer queue. For every event that
//! touched a contact (each of these) the writer publishes one
//! `crm.contact.synced` after the CRM answered and just before it writes the
//! ledger's `delivered` and acks; nobody consumes that queue here, so its
//! depth minus the N preloaded copies is the number delivered, read with one
//! passive declare per poll as [5/10] reads its output. The alternatives are
//! worse: `GET /_sandbox/stats` serialises every key created so far under the
//! sandbox's lock (a megabyte at 20,000 events) on each poll, work that would
//! take the two cores from the writer being measured; and the writer's own
//! input queue counts only ready messages, so it reaches zero while a
//! prefetch's worth (200) is still being written. The sandbox is polled only
//! until its first request, while its stats are still a few bytes.
//!
//! Figures: events/s = events delivered in the window over its length;
//! requests/s = the requests the sandbox had counted at the window's end over
//! the same length; the ratio to the relay ceiling [4/10] of the same run; the
//! CPU of each process over the window and the writer's peak RSS; p50/p99 of
//! a CRM request → answer from the writer's `handoff_delivery_request_seconds`
//! histogram, interpolated within buckets as [5/10] does (so "≈").
//!
//! Afterwards the writer is stopped with SIGTERM and "exactly once" is
//! checked: the sandbox created each of the N contacts once and updated none,
//! the writer's queue is empty, nothing is dead-lettered, N
//! `crm.contact.synced` reports were published, and the ledger of every event
//! says `delivered` for the crm-writer.
//!
//! **(b) HubSpot's quota** ([`quota`]). The sandbox enforces HubSpot's
//! private-app quota, 100 requests per rolling 10 s per token, with 429s
//! taking a place in the window (its default, `count_rejected`); the writer
//! runs with its *default* pacing (or `--pacing-limit`). A backlog of
//! one-request events larger than the window can take is preloaded. From the
//! first request the sandbox sees, `--quota-seconds` (30 by default) are
//! judged by the sandbox's own request log (each entry's `at` is its arrival
//! on the sandbox's clock, so the bench's polling adds no error): requests
//! answered 2xx that arrived in [first, first + window) over the window, as a
//! share of the quota's 10/s; 429s as a share of every request in the window;
//! and the most requests admitted in any rolling 10 s window
//! (`max_in_window`, the sandbox's count, over the whole run). Aim: at least
//! 95% of the quota with under 1% of requests answered 429. The writer is then
//! stopped; the rest of the backlog goes with the namespace.
//!
//! Both parts remove their namespace, Redis keys (dedupe, ledger, stale guard,
//! pacing) and processes afterwards, whatever happens.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use handoff_bus::{BusConfig, CRM_WRITER, EMAIL_WRITER, Topology};
use handoff_idempotency::{RedisConfig, Store};
use lapin::{Channel, Connection};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;

use crate::ceiling::{self, Backlog, Leftovers, Target};
use crate::measure::{Latencies, Measured};
use crate::options::Options;
use crate::payload;
use crate::procs::{self, Watched};
use crate::prometheus::{histogram, outcomes, quantile};
use crate::queues::{Counter, PollPace};
use crate::report::thousands;
use crate::service::{Service, free_port};

/// The private-app token the sandbox accepts and the writer presents.
pub(crate) const SANDBOX_TOKEN: &str = "pat-bench";
/// The Mailchimp API key the sandbox accepts and the email-writer presents ([8/10]).
pub(crate) const MAILCHIMP_KEY: &str = "sandbox-key-us1";
/// The sandbox's Mailchimp audience ([8/10]).
pub(crate) const MAILCHIMP_LIST: &str = "sandbox-list";
/// HubSpot's private-app quota, which part (b) gives the sandbox: requests per rolling window.
pub const QUOTA_REQUESTS: u64 = 100;
/// The rolling window of that quota.
pub const QUOTA_WINDOW: Duration = Duration::from_secs(10);
/// The share of the quota the writer should use…
pub const QUOTA_AIM_SHARE: f64 = 0.95;
/// …while fewer than this share of its requests are answered 429.
pub const QUOTA_AIM_REJECTED: f64 = 0.01;
/// The smallest backlog part (b) preloads; more when the window is long (twice what the
/// quota lets through in it), so the writer never runs dry.
const QUOTA_MIN_BACKLOG: u64 = 500;

/// How long the writer may take from its start to its first CRM request.
const FIRST_WRITE_WITHIN: Duration = Duration::from_secs(30);
/// How long the rest of a backlog may take after the measured window ran out, before the
/// delivery check (which needs every event through) is given up.
const FINISH_WITHIN: Duration = Duration::from_secs(120);
/// After the quota window closes, how long before the sandbox's log is read: a request is
/// logged once it is answered, so one that arrived just inside the window needs a moment.
const LOG_SETTLE: Duration = Duration::from_secs(1);
/// SIGTERM to exit: the writer's drain (`[shutdown] grace`, 5 s below) plus closing.
const STOP_WITHIN: Duration = Duration::from_secs(15);

/// What part (a) found.
pub struct Throughput {
    pub measured: Measured,
    /// Events preloaded, and how long that took (not measured).
    pub expected: u64,
    pub preload: Duration,
    /// Encoded size of one input envelope.
    pub input_bytes: usize,
    /// Whether every event was delivered within the measured window.
    pub drained_in_window: bool,
    /// Requests the sandbox had counted when the window closed.
    pub requests: u64,
    /// From the writer's start to the sandbox's first request (not measured).
    pub first_request_after: Duration,
    /// p50 and p99 of CRM request → answer, from the writer's histogram.
    pub request_latency: Option<(Duration, Duration)>,
    /// `handoff_writer_events_total` by outcome, e.g. "delivered 20,000".
    pub outcomes: String,
    /// Peak resident memory of the writer (`VmHWM`).
    pub peak_rss_kib: Option<u64>,
    /// The delivery check line, and what makes the run invalid.
    pub delivery_check: String,
    pub problems: Vec<String>,
}

impl Throughput {
    /// CRM requests per second over the measured window.
    pub fn requests_per_second(&self) -> f64 {
        let secs = self.measured.cpu.wall.as_secs_f64();
        if secs > 0.0 {
            self.requests as f64 / secs
        } else {
            0.0
        }
    }
}

/// What part (b) found.
pub struct Quota {
    /// The measured window, from the sandbox's first request.
    pub window: Duration,
    /// The writer's pacing limit per 10 s when `--pacing-limit` set one; `None` = its default.
    pub pacing_limit: Option<u32>,
    /// Events preloaded.
    pub backlog: u64,
    /// The requests of the window, from the sandbox's log.
    pub figures: QuotaFigures,
    /// The most requests admitted in any rolling window, by the sandbox's own count.
    pub max_in_window: u64,
    /// `handoff_writer_events_total` by outcome when the window closed.
    pub outcomes: String,
    pub problems: Vec<String>,
}

impl Quota {
    /// The quota's rate: 100 per 10 s = 10 requests/s.
    pub fn quota_per_second() -> f64 {
        QUOTA_REQUESTS as f64 / QUOTA_WINDOW.as_secs_f64()
    }

    /// Requests answered 2xx per second of the window.
    pub fn achieved_per_second(&self) -> f64 {
        self.figures.admitted as f64 / self.window.as_secs_f64()
    }

    /// [`Quota::achieved_per_second`] as a share of the quota.
    pub fn share_of_quota(&self) -> f64 {
        self.achieved_per_second() / Quota::quota_per_second()
    }

    /// Whether the aim (≥ 95% of the quota, < 1% answered 429) was met.
    pub fn aim_met(&self) -> bool {
        self.share_of_quota() >= QUOTA_AIM_SHARE
            && self.figures.rejected_share() < QUOTA_AIM_REJECTED
    }
}

/// The requests that arrived in the quota window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuotaFigures {
    /// Every request, whatever its answer (a dropped connection included).
    pub requests: u64,
    /// Answered 2xx: what the quota admitted and the writer got done.
    pub admitted: u64,
    /// Answered 429.
    pub rejected: u64,
    /// [`QuotaFigures::admitted`] per quota period (10 s) of the window, in order: a rate that
    /// holds shows the same number each time, one that collapses later in the window does not.
    pub admitted_per_period: Vec<u64>,
}

impl QuotaFigures {
    /// The requests of `log` (arrival, status) that arrived within `window` of the first.
    fn of(log: &[(OffsetDateTime, Option<u16>)], window: Duration) -> QuotaFigures {
        let Some(first) = log.iter().map(|(at, _)| *at).min() else {
            return QuotaFigures::default();
        };
        let end = first + window;
        let periods = (window.as_secs_f64() / QUOTA_WINDOW.as_secs_f64()).ceil() as usize;
        let mut figures = QuotaFigures {
            admitted_per_period: vec![0; periods],
            ..QuotaFigures::default()
        };
        for (at, status) in log {
            if *at >= end {
                continue;
            }
            figures.requests += 1;
            match status {
                Some(429) => figures.rejected += 1,
                Some(s) if (200..300).contains(s) => {
                    figures.admitted += 1;
                    let period =
                        ((*at - first).as_seconds_f64() / QUOTA_WINDOW.as_secs_f64()) as usize;
                    if let Some(n) = figures.admitted_per_period.get_mut(period) {
                        *n += 1;
                    }
                }
                _ => {}
            }
        }
        figures
    }

    /// 429s as a share of every request in the window.
    pub fn rejected_share(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.rejected as f64 / self.requests as f64
        }
    }
}

/// The sandbox and the writer of one part; whichever is still running when the part ends
/// early is stopped by [`Processes::stop`].
#[derive(Default)]
struct Processes {
    sandbox: Option<Service>,
    writer: Option<Service>,
}

impl Leftovers for Processes {
    /// Stops both (only on an error: each part stops them itself before its checks).
    async fn stop_all(&mut self) {
        if let Some(writer) = self.writer.take() {
            let _ = writer.stop(STOP_WITHIN).await;
        }
        if let Some(sandbox) = self.sandbox.take() {
            let _ = sandbox.stop(STOP_WITHIN).await;
        }
    }
}

/// Part (a) in a namespace of its own; the processes are stopped and the namespace and its
/// Redis keys removed afterwards whatever happens.
pub async fn throughput(
    opts: &Options,
    run_id: &str,
    watched: &mut Watched,
    interrupted: &CancellationToken,
) -> anyhow::Result<Throughput> {
    let result = ceiling::in_namespace(
        &format!("bench-{run_id}-delivery"),
        async |bus, processes: &mut Processes| {
            let connection = ceiling::connect(bus, "crm-writer").await?;
            let topology = bus.topology();
            let result = drain(
                opts,
                run_id,
                watched,
                topology,
                &connection,
                processes,
                interrupted,
            )
            .await;
            let _ = connection.close(200, "bench done".into()).await;
            result
        },
    )
    .await;
    watched.crm_writer = None;
    watched.sandbox = None;
    result
}

/// Part (b) in a namespace of its own, cleaned up as [`throughput`] is.
pub async fn quota(
    opts: &Options,
    run_id: &str,
    interrupted: &CancellationToken,
) -> anyhow::Result<Quota> {
    ceiling::in_namespace(
        &format!("bench-{run_id}-quota"),
        async |bus, processes: &mut Processes| {
            let connection = ceiling::connect(bus, "crm-writer").await?;
            let result = paced(
                opts,
                run_id,
                bus.topology(),
                &connection,
                processes,
                interrupted,
            )
            .await;
            let _ = connection.close(200, "bench done".into()).await;
            result
        },
    )
    .await
}

async fn drain(
    opts: &Options,
    run_id: &str,
    watched: &mut Watched,
    topology: &Topology,
    connection: &Connection,
    processes: &mut Processes,
    interrupted: &CancellationToken,
) -> anyhow::Result<Throughput> {
    let namespace = topology.namespace();
    let input_queue = topology.stage_queue(CRM_WRITER);
    let reports_queue = topology.stage_queue(EMAIL_WRITER);
    let counter = Counter::open(connection).await?;
    let channels = ceiling::confirm_channels(connection).await?;

    let Backlog {
        expected,
        input_bytes,
        took: preload,
    } = preload_contacts(
        &channels,
        &counter,
        topology,
        (run_id, 'D', opts.events as u64),
        opts.concurrency,
        interrupted,
    )
    .await?;
    println!(
        "      preloaded {} canonical {} envelopes into {input_queue} in {:.1} s (not measured); \
         starting {} and {}…",
        thousands(expected),
        payload::WRITER_EVENT_TYPE.as_str(),
        preload.as_secs_f64(),
        opts.sandbox_bin.display(),
        opts.crm_writer_bin.display(),
    );

    let (sandbox, crm) = spawn_sandbox(&opts.sandbox_bin, namespace, SandboxQuota::Unlimited)?;
    let sandbox = processes.sandbox.insert(sandbox);
    watched.sandbox = Some(sandbox.pid());
    sandbox.wait_ready(Duration::from_secs(30)).await?;
    let api = SandboxApi::new(&crm)?;

    let started = Instant::now();
    let writer = processes.writer.insert(spawn_writer(
        &opts.crm_writer_bin,
        namespace,
        &crm,
        Pacing::Unlimited,
    )?);
    watched.crm_writer = Some(writer.pid());

    // Start-up is not measured: the window opens at the sandbox's first request.
    first_request(&api, sandbox, writer, started, interrupted).await?;
    let window_start = Instant::now();
    let before = watched.sample();
    let first_request_after = started.elapsed();
    println!(
        "      first CRM request {:.2} s after the writer's start; draining…",
        first_request_after.as_secs_f64()
    );
    let window_end = window_start + opts.max_duration;
    let reported = |count: u32| u64::from(count).saturating_sub(expected);
    let mut delivered = reported(counter.count(&reports_queue).await?);
    let pace = PollPace::new(delivered);
    while delivered < expected && Instant::now() < window_end {
        tokio::time::sleep(pace.next(delivered, expected)).await;
        if interrupted.is_cancelled() {
            bail!("interrupted");
        }
        writer.check_alive().context("while draining")?;
        delivered = reported(counter.count(&reports_queue).await?);
    }
    let after = watched.sample();
    let wall = window_start.elapsed();
    let drained_in_window = delivered >= expected;
    let requests = u64_at(&api.stats().await?, "/requests");

    // The delivery check needs every event through, measured or not.
    let finish_by = Instant::now() + FINISH_WITHIN;
    let mut total = delivered;
    while total < expected && Instant::now() < finish_by {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if interrupted.is_cancelled() {
            bail!("interrupted");
        }
        writer
            .check_alive()
            .context("while finishing the backlog")?;
        total = reported(counter.count(&reports_queue).await?);
    }

    let metrics = writer.metrics().await;
    let peak_rss_kib = procs::peak_rss_kib(writer.pid());
    let mut problems = Vec::new();
    if let Some(writer) = processes.writer.take() {
        stopped("the crm-writer", writer, &mut problems).await;
    }
    watched.crm_writer = None;

    // After the stop: anything the writer still held unacked is back in its input queue.
    let counts = DeliveryCounts {
        input: counter.count(&input_queue).await?,
        reports: reported(counter.count(&reports_queue).await?),
        dead: counter.count(&topology.dead_letter_queue()).await?,
        crm: CrmCounts::of(&api.stats().await?),
        ledger_delivered: ledger_delivered(namespace, run_id, 'D', expected).await,
    };
    if let Some(sandbox) = processes.sandbox.take() {
        stopped("the sandbox", sandbox, &mut problems).await;
    }
    watched.sandbox = None;
    let (delivery_check, problem) = counts.check(expected);
    problems.extend(problem);

    let (request_latency, outcomes) = match metrics {
        Ok(text) => {
            let buckets = histogram(&text, "handoff_delivery_request_seconds");
            let quantile = |q| quantile(&buckets, q).map(Duration::from_secs_f64);
            (
                quantile(0.5).zip(quantile(0.99)),
                outcomes(&text, "handoff_writer_events_total"),
            )
        }
        Err(err) => (None, format!("unknown ({err:#})")),
    };
    let mut cpu = before.until(&after);
    cpu.wall = wall;
    Ok(Throughput {
        measured: Measured {
            concurrency: usize::from(BusConfig::default().prefetch),
            events: delivered,
            failed_events: 0,
            errors: Vec::new(),
            latencies: Latencies::default(),
            cpu,
        },
        expected,
        preload,
        input_bytes,
        drained_in_window,
        requests,
        first_request_after,
        request_latency,
        outcomes,
        peak_rss_kib,
        delivery_check,
        problems,
    })
}

async fn paced(
    opts: &Options,
    run_id: &str,
    topology: &Topology,
    connection: &Connection,
    processes: &mut Processes,
    interrupted: &CancellationToken,
) -> anyhow::Result<Quota> {
    let namespace = topology.namespace();
    let counter = Counter::open(connection).await?;
    let channels = ceiling::confirm_channels(connection).await?;
    let window = opts.quota_duration;
    let backlog = quota_backlog(window);
    let Backlog { took: preload, .. } = preload_contacts(
        &channels,
        &counter,
        topology,
        (run_id, 'Q', backlog),
        opts.concurrency,
        interrupted,
    )
    .await?;
    println!(
        "      preloaded {} canonical {} envelopes in {:.1} s; sandbox at {} requests per {} s \
         per token, writer pacing {}; measuring {} s from the first request…",
        thousands(backlog),
        payload::WRITER_EVENT_TYPE.as_str(),
        preload.as_secs_f64(),
        QUOTA_REQUESTS,
        QUOTA_WINDOW.as_secs(),
        pacing_label(opts.pacing_limit),
        window.as_secs(),
    );

    let (sandbox, crm) = spawn_sandbox(&opts.sandbox_bin, namespace, SandboxQuota::HubSpot)?;
    let sandbox = processes.sandbox.insert(sandbox);
    sandbox.wait_ready(Duration::from_secs(30)).await?;
    let api = SandboxApi::new(&crm)?;
    let pacing = opts.pacing_limit.map_or(Pacing::Default, Pacing::Limit);
    let started = Instant::now();
    let writer =
        processes
            .writer
            .insert(spawn_writer(&opts.crm_writer_bin, namespace, &crm, pacing)?);

    first_request(&api, sandbox, writer, started, interrupted).await?;
    // The sandbox's clock decides what is in the window; this only waits until it is over.
    let read_at = Instant::now() + window + LOG_SETTLE;
    while Instant::now() < read_at {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if interrupted.is_cancelled() {
            bail!("interrupted");
        }
        writer.check_alive().context("while paced")?;
        sandbox.check_alive().context("while paced")?;
    }
    let log = api.requests().await?;
    let stats = api.stats().await?;
    let outcomes = match writer.metrics().await {
        Ok(text) => outcomes(&text, "handoff_writer_events_total"),
        Err(err) => format!("unknown ({err:#})"),
    };
    let mut problems = Vec::new();
    if let Some(writer) = processes.writer.take() {
        stopped("the crm-writer", writer, &mut problems).await;
    }
    if let Some(sandbox) = processes.sandbox.take() {
        stopped("the sandbox", sandbox, &mut problems).await;
    }

    let arrivals = arrivals(&log)?;
    let max_in_window = stats
        .pointer("/max_in_window")
        .and_then(Value::as_object)
        .and_then(|keys| keys.values().filter_map(Value::as_u64).max())
        .unwrap_or(0);
    Ok(Quota {
        window,
        pacing_limit: opts.pacing_limit,
        backlog,
        figures: QuotaFigures::of(&arrivals, window),
        max_in_window,
        outcomes,
        problems,
    })
}

/// "its default" or "limit 98 per 10 s (--pacing-limit)".
pub fn pacing_label(limit: Option<u32>) -> String {
    match limit {
        None => "its default".to_owned(),
        Some(limit) => format!("limit {limit} per 10 s (--pacing-limit)"),
    }
}

/// Events part (b) preloads for a window: twice what the quota admits in it, at least
/// [`QUOTA_MIN_BACKLOG`].
fn quota_backlog(window: Duration) -> u64 {
    let admitted = (window.as_secs_f64() * Quota::quota_per_second()).ceil() as u64;
    (2 * admitted).max(QUOTA_MIN_BACKLOG)
}

/// Publishes `count` canonical contact updates (ids marked `tag`) to `canonical.<type>`,
/// as the normalizer does, and checks that the writer's queue then holds exactly that many.
async fn preload_contacts(
    channels: &[Channel],
    counter: &Counter,
    topology: &Topology,
    (run_id, tag, count): (&str, char, u64),
    concurrency: usize,
    interrupted: &CancellationToken,
) -> anyhow::Result<Backlog> {
    let queue = topology.stage_queue(CRM_WRITER);
    let messages: Vec<(String, Vec<u8>)> = (0..count as usize)
        .map(|i| payload::contact_updated(run_id, tag, i))
        .collect();
    let input_bytes = messages.first().map_or(0, |(_, body)| body.len());
    let started = Instant::now();
    ceiling::publish_every(
        channels,
        &Target {
            exchange: topology.events_exchange(),
            routing_key: payload::WRITER_EVENT_TYPE.canonical_routing_key(),
        },
        messages,
        concurrency,
        interrupted,
    )
    .await
    .with_context(|| format!("preloading {queue}"))?;
    let took = started.elapsed();
    let queued = counter.count(&queue).await?;
    if u64::from(queued) != count {
        bail!("{queue} holds {queued} messages after preloading {count}");
    }
    Ok(Backlog {
        expected: count,
        input_bytes,
        took,
    })
}

/// Polls the sandbox until it has seen a request, failing early if either process exits.
async fn first_request(
    api: &SandboxApi,
    sandbox: &mut Service,
    writer: &mut Service,
    started: Instant,
    interrupted: &CancellationToken,
) -> anyhow::Result<()> {
    loop {
        writer
            .check_alive()
            .context("waiting for its first CRM request")?;
        sandbox
            .check_alive()
            .context("waiting for the writer's first request")?;
        if interrupted.is_cancelled() {
            bail!("interrupted");
        }
        if u64_at(&api.stats().await?, "/requests") > 0 {
            return Ok(());
        }
        if started.elapsed() >= FIRST_WRITE_WITHIN {
            bail!(
                "the crm-writer sent the sandbox nothing within {FIRST_WRITE_WITHIN:?} of its \
                 start; its output:\n{}",
                writer.log_tail(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Stops `service` with SIGTERM and records an unclean exit as a problem.
pub(crate) async fn stopped(name: &str, service: Service, problems: &mut Vec<String>) {
    match service.stop(STOP_WITHIN).await {
        Ok(status) if status.success() => {}
        Ok(status) => problems.push(format!("{name} exited with {status} after SIGTERM")),
        Err(err) => problems.push(format!("stopping {name}: {err:#}")),
    }
}

/// How many of the run's events (`tag`, `0..expected`) the ledger says the crm-writer
/// delivered; `None` if Redis could not be read.
async fn ledger_delivered(namespace: &str, run_id: &str, tag: char, expected: u64) -> Option<u64> {
    let store = Store::new(
        &RedisConfig {
            url: handoff_test_support::redis_url(),
            ..RedisConfig::default()
        },
        namespace,
    )
    .ok()?;
    let delivered = futures::stream::iter(0..expected as usize)
        .map(|i| {
            let store = store.clone();
            async move {
                let id = payload::event_id(run_id, tag, i);
                let ledger = store.ledger_get(payload::PUBLISHER_ID, &id).await.ok()?;
                Some(ledger.is_some_and(|l| {
                    l.stages
                        .get(CRM_WRITER)
                        .is_some_and(|s| s.status == "delivered")
                }))
            }
        })
        // Enough in flight that 20,000 reads take a moment, few enough not to queue in Redis.
        .buffer_unordered(32)
        .collect::<Vec<Option<bool>>>()
        .await;
    delivered
        .into_iter()
        .try_fold(0, |n, ok| ok.map(|ok| n + u64::from(ok)))
}

/// What part (a) left behind, once the writer stopped.
struct DeliveryCounts {
    /// `{ns}.crm-writer`: should be empty.
    input: u32,
    /// `crm.contact.synced` reports in `{ns}.email-writer` (its depth less the preloaded copies).
    reports: u64,
    /// `{ns}.dead-letters`.
    dead: u32,
    crm: CrmCounts,
    /// Ledger entries saying `delivered` for the crm-writer.
    ledger_delivered: Option<u64>,
}

impl DeliveryCounts {
    /// One line for the report and, unless every one of `n` events was delivered exactly
    /// once, the problem that makes the run invalid.
    fn check(&self, n: u64) -> (String, Option<String>) {
        let crm = &self.crm;
        let ok = crm.contacts == n
            && crm.created_twice == 0
            && crm.updates == 0
            && crm.other_creates == 0
            && self.input == 0
            && self.dead == 0
            && self.reports == n
            && self.ledger_delivered == Some(n);
        let line = format!(
            "sandbox created {} of {} contacts, {} more than once, {} updates, {} other records; \
             crm-writer queue {}, dead letters {}, crm.contact.synced {}, ledger delivered {}: {}",
            thousands(crm.contacts),
            thousands(n),
            thousands(crm.created_twice),
            thousands(crm.updates),
            thousands(crm.other_creates),
            thousands(u64::from(self.input)),
            thousands(u64::from(self.dead)),
            thousands(self.reports),
            self.ledger_delivered
                .map_or("unreadable".to_owned(), thousands),
            if ok { "✓" } else { "MISMATCH ✗" }
        );
        let problem = (!ok).then(|| format!("crm-writer delivery: check failed: {line}"));
        (line, problem)
    }
}

/// The sandbox's side of part (a)'s check, from `/_sandbox/stats`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct CrmCounts {
    /// Distinct contacts created.
    pub(crate) contacts: u64,
    /// Contacts created more than once (a duplicate).
    pub(crate) created_twice: u64,
    /// Updates of any record: each event's upsert should have created its contact, once.
    pub(crate) updates: u64,
    /// Records of other types created (none expected).
    pub(crate) other_creates: u64,
}

impl CrmCounts {
    pub(crate) fn of(stats: &Value) -> CrmCounts {
        let mut counts = CrmCounts::default();
        let keys = |table: &str| -> Vec<(String, u64)> {
            stats
                .pointer(table)
                .and_then(Value::as_object)
                .map(|types| {
                    types
                        .iter()
                        .filter_map(|(ty, keys)| Some((ty.clone(), keys.as_object()?)))
                        .flat_map(|(ty, keys)| {
                            keys.values()
                                .map(move |n| (ty.clone(), n.as_u64().unwrap_or(0)))
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        for (ty, n) in keys("/creates") {
            if ty == "contacts" {
                counts.contacts += 1;
                counts.created_twice += u64::from(n > 1);
            } else {
                counts.other_creates += n;
            }
        }
        counts.updates = keys("/updates").iter().map(|(_, n)| n).sum();
        counts
    }
}

/// `(arrival, status)` of every entry of `/_sandbox/requests`.
pub(crate) fn arrivals(log: &[Value]) -> anyhow::Result<Vec<(OffsetDateTime, Option<u16>)>> {
    log.iter()
        .map(|entry| {
            let at = entry
                .get("at")
                .and_then(Value::as_str)
                .context("a request log entry without `at`")?;
            let at = OffsetDateTime::parse(at, &Rfc3339)
                .with_context(|| format!("a request log entry at {at:?}"))?;
            let status = entry
                .get("status")
                .and_then(Value::as_u64)
                .and_then(|s| u16::try_from(s).ok());
            Ok((at, status))
        })
        .collect()
}

pub(crate) fn u64_at(value: &Value, pointer: &str) -> u64 {
    value.pointer(pointer).and_then(Value::as_u64).unwrap_or(0)
}

/// The sandbox's `/_sandbox` control API.
pub(crate) struct SandboxApi {
    client: reqwest::Client,
    base: String,
}

impl SandboxApi {
    pub(crate) fn new(base: &str) -> anyhow::Result<SandboxApi> {
        let client = reqwest::Client::builder()
            .no_proxy()
            // The request log of a long run is several megabytes.
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the sandbox client")?;
        Ok(SandboxApi {
            client,
            base: base.to_owned(),
        })
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        self.client
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?
            .error_for_status()
            .with_context(|| format!("GET {url}"))?
            .json()
            .await
            .with_context(|| format!("reading {url}"))
    }

    /// `GET /_sandbox/stats`.
    pub(crate) async fn stats(&self) -> anyhow::Result<Value> {
        self.get("/_sandbox/stats").await
    }

    /// `GET /_sandbox/requests`: every logged request, oldest first.
    pub(crate) async fn requests(&self) -> anyhow::Result<Vec<Value>> {
        match self.get("/_sandbox/requests").await? {
            Value::Array(entries) => Ok(entries),
            other => bail!("/_sandbox/requests answered {other}, not a list"),
        }
    }
}

/// The quota the sandbox enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SandboxQuota {
    /// Far above what the writer can send: part (a).
    Unlimited,
    /// HubSpot's private-app quota: part (b).
    HubSpot,
}

/// Starts the sandbox on free ports; returns it and its base URL.
pub(crate) fn spawn_sandbox(
    bin: &Path,
    namespace: &str,
    quota: SandboxQuota,
) -> anyhow::Result<(Service, String)> {
    let http = free_port().context("finding a free port for the sandbox's API")?;
    let admin = free_port().context("finding a free port for the sandbox's admin server")?;
    let service = Service::spawn(
        "the sandbox",
        bin,
        namespace,
        &sandbox_config(http, admin, quota),
        admin,
    )?;
    Ok((service, format!("http://127.0.0.1:{http}")))
}

/// The sandbox's configuration file: the listeners, the token and the quota; no faults.
fn sandbox_config(http: u16, admin: u16, quota: SandboxQuota) -> String {
    let rate_limit = match quota {
        SandboxQuota::Unlimited => format!(
            "# Far beyond what one writer sends: part (a) measures the writer, not a quota.\n\
             rate_limit = {{ requests = 10000000, per = \"{}s\" }}",
            QUOTA_WINDOW.as_secs()
        ),
        SandboxQuota::HubSpot => format!(
            "# HubSpot's private-app quota; whether 429s take a place in the window\n\
             # (count_rejected) is left at the sandbox's default, HubSpot's behaviour.\n\
             rate_limit = {{ requests = {QUOTA_REQUESTS}, per = \"{}s\" }}",
            QUOTA_WINDOW.as_secs()
        ),
    };
    format!(
        r#"# Written by handoff-bench; removed when the run ends.
[http]
listen = "127.0.0.1:{http}"

[admin]
listen = "127.0.0.1:{admin}"

[shutdown]
grace = "5s"

[telemetry]
# Nothing is logged per request at warn.
log_format = "json"
log_filter = "warn"

[hubspot]
tokens = ["{SANDBOX_TOKEN}"]
{rate_limit}

[mailchimp]
# The sandbox's defaults, spelled out because the pipeline part [8/10] depends on them;
# 10 simultaneous connections per key is the real Mailchimp's limit, kept.
api_keys = ["{MAILCHIMP_KEY}"]
lists = ["{MAILCHIMP_LIST}"]
max_connections = 10
"#
    )
}

/// The writer's `[hubspot.pacing]`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pacing {
    /// Far above what it can do: part (a).
    Unlimited,
    /// Its default (HubSpot's quota): part (b).
    Default,
    /// Its default with another `limit` per 10 s (`--pacing-limit`).
    Limit(u32),
}

/// Starts the writer against the sandbox at `crm`, its token in `HUBSPOT_ACCESS_TOKEN`.
pub(crate) fn spawn_writer(
    bin: &Path,
    namespace: &str,
    crm: &str,
    pacing: Pacing,
) -> anyhow::Result<Service> {
    let admin = free_port().context("finding a free port for the admin server")?;
    Service::spawn_with_env(
        "the crm-writer",
        bin,
        namespace,
        &writer_config(namespace, admin, crm, pacing),
        admin,
        &[("HUBSPOT_ACCESS_TOKEN", SANDBOX_TOKEN)],
    )
}

/// The writer's configuration file: everything the bench depends on is spelled out, the
/// rest is the writer's defaults (the production settings: prefetch, retry policy, dedupe
/// lease and retention, routes, ownership, HTTP timeouts, and in part (b) the pacing).
fn writer_config(namespace: &str, admin: u16, crm: &str, pacing: Pacing) -> String {
    let amqp = handoff_test_support::amqp_url();
    let redis = handoff_test_support::redis_url();
    let pacing = match pacing {
        Pacing::Unlimited => "\n[hubspot.pacing]\n\
             # Far above what one writer can do, so no quota is measured; a burst so that no\n\
             # request waits microseconds for its slot (a timer would round that up to 1 ms).\n\
             limit = 1000000\n\
             per = \"1s\"\n\
             burst = 10000\n"
            .to_owned(),
        Pacing::Default => String::new(),
        Pacing::Limit(limit) => format!(
            "\n[hubspot.pacing]\n\
             # --pacing-limit; every other pacing key keeps its default.\n\
             limit = {limit}\n"
        ),
    };
    format!(
        r#"# Written by handoff-bench; removed when the run ends.
namespace = "{namespace}"

[admin]
listen = "127.0.0.1:{admin}"

[bus]
url = "{amqp}"

[redis]
url = "{redis}"

[hubspot]
# This run's sandbox; the token comes from HUBSPOT_ACCESS_TOKEN ([hubspot.auth]'s default).
base_url = "{crm}"
{pacing}
[shutdown]
# Part (a) has nothing in flight by the time the bench stops the writer; part (b) leaves the
# rest of its backlog behind. Keep the wait short.
grace = "5s"

[telemetry]
# Production's format; nothing is logged per event at warn.
log_format = "json"
log_filter = "warn"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: f64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + Duration::from_secs_f64(1_774_000_000.0 + secs)
    }

    #[test]
    fn the_quota_window_starts_at_the_first_arrival() {
        let log = vec![
            (at(0.3), Some(200)),
            (at(0.1), Some(200)),
            (at(5.0), Some(429)),
            (at(9.999), None),
            (at(10.1), Some(200)),
            (at(12.0), Some(200)),
        ];
        let figures = QuotaFigures::of(&log, Duration::from_secs(10));
        assert_eq!(
            figures,
            QuotaFigures {
                requests: 4,
                admitted: 2,
                rejected: 1,
                admitted_per_period: vec![2],
            }
        );
        let longer = QuotaFigures::of(&log, Duration::from_secs(25));
        assert_eq!(longer.admitted_per_period, vec![2, 2, 0]);
        assert!((figures.rejected_share() - 0.25).abs() < 1e-9);
        assert_eq!(QuotaFigures::of(&[], Duration::from_secs(10)).requests, 0);
    }

    #[test]
    fn the_aim_needs_both_the_rate_and_few_429s() {
        let quota = |admitted, rejected| Quota {
            window: Duration::from_secs(30),
            pacing_limit: None,
            backlog: 600,
            figures: QuotaFigures {
                requests: admitted + rejected,
                admitted,
                rejected,
                admitted_per_period: Vec::new(),
            },
            max_in_window: 100,
            outcomes: String::new(),
            problems: Vec::new(),
        };
        assert!((quota(300, 0).share_of_quota() - 1.0).abs() < 1e-9);
        assert!(quota(290, 2).aim_met());
        assert!(!quota(280, 0).aim_met(), "93% of the quota");
        assert!(!quota(300, 4).aim_met(), "1.3% answered 429");
        assert_eq!(quota_backlog(Duration::from_secs(30)), 600);
        assert_eq!(quota_backlog(Duration::from_secs(10)), 500);
    }

    #[test]
    fn crm_counts_find_duplicates_and_updates() {
        let stats = serde_json::json!({
            "requests": 5,
            "creates": {
                "contacts": { "a@x.com": 1, "b@x.com": 2 },
                "companies": { "ext-1": 1 }
            },
            "updates": { "contacts": { "a@x.com": 3 } }
        });
        assert_eq!(
            CrmCounts::of(&stats),
            CrmCounts {
                contacts: 2,
                created_twice: 1,
                updates: 3,
                other_creates: 1
            }
        );
        assert_eq!(CrmCounts::of(&serde_json::json!({})), CrmCounts::default());
    }

    #[test]
    fn request_log_entries_are_read() {
        let log = vec![serde_json::json!({
            "seq": 1, "at": "2026-03-19T10:15:22.123Z", "status": 429, "writes": []
        })];
        let parsed = arrivals(&log).expect("parses");
        assert_eq!(parsed[0].1, Some(429));
        assert_eq!(parsed[0].0.millisecond(), 123);
    }

    #[test]
    fn configs_spell_out_what_the_bench_depends_on() {
        let unlimited = writer_config("ns", 1, "http://127.0.0.1:2", Pacing::Unlimited);
        assert!(unlimited.contains("limit = 1000000"));
        let default = writer_config("ns", 1, "http://127.0.0.1:2", Pacing::Default);
        assert!(!default.contains("[hubspot.pacing]"));
        let limited = writer_config("ns", 1, "http://127.0.0.1:2", Pacing::Limit(98));
        assert!(limited.contains("limit = 98"));
        assert!(sandbox_config(1, 2, SandboxQuota::HubSpot).contains("requests = 100,"));
        assert!(sandbox_config(1, 2, SandboxQuota::Unlimited).contains("max_connections = 10"));
    }
}
