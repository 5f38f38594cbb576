//! The whole pipeline end to end ([8/10]): every service's real release
//! binary in a child process ([`Service`]) on one namespace of its own —
//! `handoff-ingest` (one publisher key, its rate limit out of the way),
//! `handoff-normalizer`, `handoff-crm-writer` and `handoff-email-writer`
//! (pacing unlimited, everything else their production defaults) — writing to
//! `handoff-sandbox` (HubSpot without a quota; Mailchimp with its real limit of
//! 10 simultaneous connections per key, which the email-writer's default
//! `max_in_flight` keeps to). JSON logs at `warn`, free ports.
//!
//! Events: a mix of `lead.created` and `customer.converted`, in turn, each for a
//! person (and company or deal) of its own ([`payload::pipeline_event`]),
//! posted one per request to `POST /v1/events/{type}` over keep-alive
//! HTTP/1.1 connections ([`load`]). Each one becomes, downstream: a raw and a
//! canonical message, HubSpot upserts and associations, a Mailchimp member
//! upsert and tags, a `crm.contact.synced` report (acked unused by the
//! email-writer) and an `email.subscriber.synced` report that the crm-writer
//! writes back onto the contact.
//!
//! **Done** = both writers' ledger entries say `delivered`. An event's time is
//! read from its ledger after the run (`{ns}:ledger:{publisher}:{event_id}`:
//! ingest's `accepted` `at` is when its request arrived; each writer's
//! `delivered` `at` is when it recorded the event as written, just before the
//! ack), so polling adds no error: the bench only watches the writers'
//! `handoff_writer_events_total` to know when to read. Every process runs on
//! this host and stamps the same system clock, as does the bench when a 202
//! arrives ([`load::LoadResult::accepted_at`]).
//!
//! 1. Warm-up: [`WARMUP_EVENTS`] events through the whole pipeline (connections,
//!    caches, the sandbox's first records), not measured.
//! 2. **Peak**, closed loop: `--pipeline-events` at `--concurrency`. Ingest
//!    takes them far faster than the rest can carry them, so they queue in the
//!    broker and the figure is what the pipeline drains: events/s = events done
//!    over the window from the first 202 to the last event done; beside it the
//!    relay ceiling [4/10].
//! 3. **Half the peak**, open loop: 50% of the peak's events/s for
//!    `--pipeline-seconds`, each request sent when due whether earlier ones
//!    were answered or not ([`load::open_loop`]): the latency a publisher sees at
//!    a rate the pipeline keeps up with.
//!
//! Latencies per event: 202 → done (the issue's figure; the 202 on the
//! bench's clock, done on the writers'), accepted → done (both on the
//! services' clocks: ingest's arrival of the request to the later writer's
//! `delivered`), and request → 202 at the client. CPU of every process over
//! each window, peak RSS of each service at the end.
//!
//! Checks (a failure exits non-zero): every event's ledger says ingest
//! `accepted`, normalizer `normalized`, crm-writer `delivered` and
//! email-writer `delivered`; the sandbox created each contact and each
//! Mailchimp member exactly once and no record of any kind twice; after the
//! services stopped (SIGTERM, so anything unacked is back in its queue) every
//! stage queue and delay queue is empty and nothing is dead-lettered.
//!
//! `--no-email-writer` runs without it (to see the email-writer's share of
//! the cost, or without its binary): done is then the crm-writer's delivery
//! alone, which the report says, and the email-writer's queue is left out of
//! the checks.
//!
//! The namespace, its Redis keys and every process are removed afterwards,
//! whatever happens.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use handoff_bus::{
    Bus, BusConfig, CRM_WRITER, EMAIL_SUBSCRIBER_SYNCED, EMAIL_WRITER, NORMALIZER, Topology,
};
use handoff_idempotency::{Ledger, RedisConfig, Store};
use lapin::Connection;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;

use crate::ceiling::{self, Leftovers};
use crate::delivery::{self, MAILCHIMP_KEY, MAILCHIMP_LIST, Pacing, SandboxApi, SandboxQuota};
use crate::ingest::Ingest;
use crate::load::{self, Endpoint, Job, LoadResult, Plan};
use crate::measure::{Failures, Latencies, Measured};
use crate::options::Options;
use crate::payload;
use crate::procs::{self, Watched};
use crate::prometheus::{label, outcomes, sum_where};
use crate::queues::Counter;
use crate::report::thousands;
use crate::service::{Service, free_port};

/// Events sent through the whole pipeline before anything is measured.
pub const WARMUP_EVENTS: usize = 200;
/// The share of the relay ceiling the pipeline should reach: three hops, Redis and two HTTP
/// destinations on the cores one relay hop has to itself.
pub const TARGET_SHARE: f64 = 0.20;
/// p99 of 202 → done the pipeline should stay under at half its peak rate.
pub const P99_AIM: Duration = Duration::from_millis(250);
/// Peak RSS every service should stay under.
pub const RSS_AIM_KIB: u64 = 64 * 1024;
/// The share of the peak's events/s the open-loop phase offers.
pub const HALF: f64 = 0.5;

/// How long a service may take to answer `/readyz`.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// How long the events of a phase may take to be done once the last was accepted, before the
/// run is judged broken.
const DONE_WITHIN: Duration = Duration::from_secs(180);
/// The pipeline is judged stuck when the writers' counts stay put this long.
const STALLED_AFTER: Duration = Duration::from_secs(30);
/// How long the write-backs may trail the last event done.
const SETTLE_WITHIN: Duration = Duration::from_secs(60);
/// How often the writers' counters are read while waiting. Only when to read the ledger
/// depends on it, not a figure; each read renders both writers' `/metrics`, so not too often.
const POLL_EVERY: Duration = Duration::from_millis(100);
/// SIGTERM to exit: a service's drain (`[shutdown] grace`, 5 s in its config) plus closing.
const STOP_WITHIN: Duration = Duration::from_secs(15);
/// Ledger reads in flight at once: pipelined on the store's one multiplexed connection.
const LEDGER_READS_IN_FLIGHT: usize = 64;

/// What the pipeline part found.
pub struct Pipeline {
    /// Whether the email-writer ran; without it "done" is the crm-writer's delivery alone.
    pub email_writer: bool,
    /// Closed loop at `--concurrency`.
    pub peak: Phase,
    /// Open loop at half the peak's events/s; `None` when the peak measured nothing.
    pub half: Option<Phase>,
    /// Peak resident memory (`VmHWM`) of each process at the end of the run.
    pub rss: Vec<(&'static str, Option<u64>)>,
    /// Per writer: its name, outcomes, requests by outcome, and requests per event.
    pub writers: Vec<WriterFigures>,
    /// The ledger check line.
    pub ledger_check: String,
    /// The sandbox check line.
    pub sandbox_check: String,
    /// The queue check line.
    pub queue_check: String,
    pub problems: Vec<String>,
}

/// One phase's figures.
pub struct Phase {
    /// Events done (both writers' `delivered`), 202 → done latencies, and the CPU of every
    /// process; `cpu.wall` is the window from the first 202 to the last event done.
    pub measured: Measured,
    /// Events answered 202.
    pub accepted: u64,
    /// Ingest's `accepted` → the later `delivered`, all on the services' clocks.
    pub from_accepted: Latencies,
    /// Request → 202 at the client (open loop: from when the request was due).
    pub requests: Latencies,
    /// The events/s an open-loop phase offered; `None` for the closed loop.
    pub offered: Option<f64>,
    /// How long the phase sent for.
    pub sending: Duration,
}

impl Phase {
    /// Whether its p99 of 202 → done is under [`P99_AIM`].
    pub fn p99_met(&self) -> bool {
        self.measured.events > 0 && self.measured.latencies.percentile(99.0) < P99_AIM
    }
}

/// One writer's counters at the end of the run.
pub struct WriterFigures {
    pub name: &'static str,
    /// `handoff_writer_events_total` by outcome.
    pub outcomes: String,
    /// `handoff_delivery_requests_total` by outcome.
    pub requests: String,
    /// Destination requests per event written (write-backs included for the crm-writer).
    pub requests_per_event: f64,
}

/// The processes of the run; whichever is still running when it ends early is stopped by
/// [`Stack::stop`].
#[derive(Default)]
struct Stack {
    sandbox: Option<Service>,
    ingest: Option<Ingest>,
    normalizer: Option<Service>,
    crm_writer: Option<Service>,
    email_writer: Option<Service>,
}

impl Stack {
    /// Fails with the last log lines of any service that has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(ingest) = &mut self.ingest {
            ingest.check_alive()?;
        }
        for service in [
            &mut self.sandbox,
            &mut self.normalizer,
            &mut self.crm_writer,
            &mut self.email_writer,
        ]
        .into_iter()
        .flatten()
        {
            service.check_alive()?;
        }
        Ok(())
    }

    /// What each service says about itself, for an error message: its outcome counters and
    /// its last log lines.
    async fn diagnosis(&self) -> String {
        let mut out = String::new();
        for (name, service, counter) in [
            (
                "normalizer",
                &self.normalizer,
                "handoff_normalizer_events_total",
            ),
            (
                "crm-writer",
                &self.crm_writer,
                "handoff_writer_events_total",
            ),
            (
                "email-writer",
                &self.email_writer,
                "handoff_writer_events_total",
            ),
        ] {
            let Some(service) = service else { continue };
            let counts = match service.metrics().await {
                Ok(text) => outcomes(&text, counter),
                Err(err) => format!("unknown ({err:#})"),
            };
            out.push_str(&format!(
                "  {name}: {counts}; its last log lines:\n{}",
                service.log_tail(5)
            ));
        }
        out
    }

    /// Stops whatever is still running, input first, recording unclean exits in `problems`.
    async fn stop(&mut self, problems: &mut Vec<String>) {
        if let Some(ingest) = self.ingest.take() {
            match ingest.stop(STOP_WITHIN).await {
                Ok(status) if status.success() => {}
                Ok(status) => problems.push(format!("ingest exited with {status} after SIGTERM")),
                Err(err) => problems.push(format!("stopping ingest: {err:#}")),
            }
        }
        for (name, service) in [
            ("the normalizer", self.normalizer.take()),
            ("the crm-writer", self.crm_writer.take()),
            ("the email-writer", self.email_writer.take()),
        ] {
            if let Some(service) = service {
                delivery::stopped(name, service, problems).await;
            }
        }
    }
}

impl Leftovers for Stack {
    /// Only after an error: the scenario stops everything itself before its checks.
    async fn stop_all(&mut self) {
        self.stop(&mut Vec::new()).await;
        if let Some(sandbox) = self.sandbox.take() {
            let _ = sandbox.stop(STOP_WITHIN).await;
        }
    }
}

/// Runs the part in a namespace of its own; the processes are stopped and the namespace and
/// its Redis keys removed afterwards whatever happens.
pub async fn run(
    opts: &Options,
    run_id: &str,
    watched: &mut Watched,
    interrupted: &CancellationToken,
) -> anyhow::Result<Pipeline> {
    let result = ceiling::in_namespace(
        &format!("bench-{run_id}-pipeline"),
        async |bus, stack: &mut Stack| {
            scenario(opts, run_id, watched, bus, stack, interrupted).await
        },
    )
    .await;
    watched.ingest = None;
    watched.normalizer = None;
    watched.crm_writer = None;
    watched.email_writer = None;
    watched.sandbox = None;
    result
}

async fn scenario(
    opts: &Options,
    run_id: &str,
    watched: &mut Watched,
    bus: &Bus,
    stack: &mut Stack,
    interrupted: &CancellationToken,
) -> anyhow::Result<Pipeline> {
    let connection = ceiling::connect(bus, "pipeline").await?;
    let result = pipeline(
        opts,
        run_id,
        watched,
        bus.topology(),
        &connection,
        stack,
        interrupted,
    )
    .await;
    let _ = connection.close(200, "bench done".into()).await;
    result
}

async fn pipeline(
    opts: &Options,
    run_id: &str,
    watched: &mut Watched,
    topology: &Topology,
    connection: &Connection,
    stack: &mut Stack,
    interrupted: &CancellationToken,
) -> anyhow::Result<Pipeline> {
    let namespace = topology.namespace();
    let with_email = !opts.no_email_writer;
    let counter = Counter::open(connection).await?;

    // The sandbox, then the services from the destinations back to ingest, so nothing waits.
    let (sandbox, base) =
        delivery::spawn_sandbox(&opts.sandbox_bin, namespace, SandboxQuota::Unlimited)?;
    let sandbox = stack.sandbox.insert(sandbox);
    watched.sandbox = Some(sandbox.pid());
    sandbox.wait_ready(READY_WITHIN).await?;
    let api = SandboxApi::new(&base)?;

    let crm = stack.crm_writer.insert(delivery::spawn_writer(
        &opts.crm_writer_bin,
        namespace,
        &base,
        Pacing::Unlimited,
    )?);
    watched.crm_writer = Some(crm.pid());
    if with_email {
        let email = stack.email_writer.insert(spawn_email_writer(
            &opts.email_writer_bin,
            namespace,
            &base,
        )?);
        watched.email_writer = Some(email.pid());
    }
    let normalizer = stack
        .normalizer
        .insert(crate::normalizer::spawn(&opts.normalizer_bin, namespace)?);
    watched.normalizer = Some(normalizer.pid());
    let ingest = stack
        .ingest
        .insert(Ingest::spawn(&opts.ingest_bin, namespace)?);
    watched.ingest = Some(ingest.pid());
    ingest.wait_ready(READY_WITHIN).await?;
    for service in [
        &mut stack.normalizer,
        &mut stack.crm_writer,
        &mut stack.email_writer,
    ]
    .into_iter()
    .flatten()
    {
        service.wait_ready(READY_WITHIN).await?;
    }
    let (base_url, key) = match &stack.ingest {
        Some(ingest) => (ingest.base.clone(), ingest.key.clone()),
        None => bail!("ingest is not running"),
    };
    println!(
        "      sandbox, ingest, normalizer, crm-writer{} ready (namespace {namespace}); \
         warming up with {WARMUP_EVENTS} events through the whole pipeline…",
        if with_email { ", email-writer" } else { "" },
    );

    let store = Store::new(
        &RedisConfig {
            url: handoff_test_support::redis_url(),
            ..RedisConfig::default()
        },
        namespace,
    )
    .context("opening the ledger store")?;
    let mut problems = Vec::new();
    let urls = EventUrls::new(&base_url);
    let clients = load::clients(opts.concurrency)?;
    let plan = || Plan {
        url: &urls.fallback,
        key: &key,
        endpoint: Endpoint::Single,
        // Each phase ends when its jobs are sent; only Ctrl-C cuts one short.
        within: Duration::from_secs(3600),
        stop: interrupted,
    };
    let mut driver = Driver {
        stack,
        store,
        with_email,
        interrupted,
        sent: 0,
        ledger: LedgerTally::default(),
    };

    // 1. Warm-up, through the whole pipeline.
    let warm = driver
        .send(
            watched,
            Sending::Closed(&clients),
            plan(),
            mix_jobs(run_id, 'u', WARMUP_EVENTS, &urls),
        )
        .await?;
    if let Some(err) = warm.answered.failures.messages.first() {
        bail!("ingest refused warm-up requests: {err}");
    }

    // 2. Peak: closed loop.
    println!(
        "      peak: {} events, closed loop, {} keep-alive clients → POST \
         {base_url}/v1/events/{{type}}…",
        thousands(opts.pipeline_events as u64),
        opts.concurrency,
    );
    let sent = driver
        .send(
            watched,
            Sending::Closed(&clients),
            plan(),
            mix_jobs(run_id, 'P', opts.pipeline_events, &urls),
        )
        .await?;
    let peak = phase(
        "pipeline peak",
        opts.concurrency,
        &sent,
        with_email,
        None,
        &mut problems,
    );
    println!(
        "      {} events done at {} events/s ({:.1} s from the first 202 to the last done); \
         202 → done p50 {} ms, p99 {} ms",
        thousands(peak.measured.events),
        thousands(peak.measured.events_per_second().round() as u64),
        peak.measured.cpu.wall.as_secs_f64(),
        millis(peak.measured.latencies.percentile(50.0)),
        millis(peak.measured.latencies.percentile(99.0)),
    );

    // 3. Half the peak: open loop.
    let rate = HALF * peak.measured.events_per_second();
    let half = if rate >= 1.0 {
        let count = (rate * opts.pipeline_duration.as_secs_f64()).ceil() as usize;
        println!(
            "      half the peak: {rate:.0} events/s, open loop, for {} s ({} events)…",
            opts.pipeline_duration.as_secs(),
            thousands(count as u64),
        );
        let open = load::open_client(load::OPEN_LOOP_MAX_IN_FLIGHT)?;
        let sent = driver
            .send(
                watched,
                Sending::Open(&open, rate),
                plan(),
                mix_jobs(run_id, 'H', count, &urls),
            )
            .await?;
        let half = phase(
            "pipeline half",
            sent.answered.max_in_flight,
            &sent,
            with_email,
            Some(rate),
            &mut problems,
        );
        println!(
            "      {} events done; 202 → done p50 {} ms, p99 {} ms (aim < {} ms)",
            thousands(half.measured.events),
            millis(half.measured.latencies.percentile(50.0)),
            millis(half.measured.latencies.percentile(99.0)),
            P99_AIM.as_millis(),
        );
        Some(half)
    } else {
        problems.push(format!(
            "pipeline: the peak measured {:.2} events/s, too few to run half of it",
            peak.measured.events_per_second()
        ));
        None
    };
    let Driver {
        stack,
        sent,
        ledger,
        ..
    } = driver;

    // The figures the services hold, before they stop.
    let mut writers = Vec::new();
    let mut writer_metrics = vec![("crm-writer", stack.crm_writer.as_ref())];
    if with_email {
        writer_metrics.push(("email-writer", stack.email_writer.as_ref()));
    }
    for (name, service) in writer_metrics {
        let Some(service) = service else { continue };
        match service.metrics().await {
            Ok(text) => writers.push(WriterFigures::of(name, &text)),
            Err(err) => problems.push(format!("reading the {name}'s metrics: {err:#}")),
        }
    }
    let mut rss = Vec::new();
    rss.push((
        "ingest",
        stack
            .ingest
            .as_ref()
            .and_then(|s| procs::peak_rss_kib(s.pid())),
    ));
    for (name, service) in [
        ("normalizer", &stack.normalizer),
        ("crm-writer", &stack.crm_writer),
        ("email-writer", &stack.email_writer),
        ("sandbox", &stack.sandbox),
    ] {
        if let Some(service) = service {
            rss.push((name, procs::peak_rss_kib(service.pid())));
        }
    }

    // Stop the services: anything they still held unacked goes back to its queue.
    stack.stop(&mut problems).await;
    watched.ingest = None;
    watched.normalizer = None;
    watched.crm_writer = None;
    watched.email_writer = None;
    let queues = QueueCounts::read(&counter, topology, with_email).await?;
    let stats = api.stats().await?;
    if let Some(sandbox) = stack.sandbox.take() {
        delivery::stopped("the sandbox", sandbox, &mut problems).await;
    }
    watched.sandbox = None;

    let (ledger_check, problem) = ledger.check(sent, with_email);
    problems.extend(problem);
    let (sandbox_check, problem) = SandboxCounts::of(&stats).check(sent, with_email);
    problems.extend(problem);
    let (queue_check, problem) = queues.check();
    problems.extend(problem);
    Ok(Pipeline {
        email_writer: with_email,
        peak,
        half,
        rss,
        writers,
        ledger_check,
        sandbox_check,
        queue_check,
        problems,
    })
}

fn stop_if_interrupted(interrupted: &CancellationToken) -> anyhow::Result<()> {
    if interrupted.is_cancelled() {
        bail!("interrupted");
    }
    Ok(())
}

/// `POST /v1/events/{type}` for each type of the mix.
struct EventUrls {
    by_type: Vec<(handoff_events::EventType, Arc<str>)>,
    /// The plan's URL, which every job overrides.
    fallback: String,
}

impl EventUrls {
    fn new(base: &str) -> EventUrls {
        let by_type = payload::PIPELINE_EVENT_TYPES
            .iter()
            .map(|t| (*t, Arc::from(format!("{base}/v1/events/{}", t.as_str()))))
            .collect();
        EventUrls {
            by_type,
            fallback: format!(
                "{base}/v1/events/{}",
                payload::PIPELINE_EVENT_TYPES[0].as_str()
            ),
        }
    }

    fn of(&self, event_type: handoff_events::EventType) -> Option<Arc<str>> {
        self.by_type
            .iter()
            .find(|(t, _)| *t == event_type)
            .map(|(_, url)| url.clone())
    }
}

/// `count` events of the mix (ids marked `tag`), as jobs, with their ids in job order.
fn mix_jobs(run_id: &str, tag: char, count: usize, urls: &EventUrls) -> (Vec<Job>, Vec<String>) {
    (0..count)
        .map(|i| {
            let (event_type, id, body) = payload::pipeline_event(run_id, tag, i);
            let job = Job {
                body,
                events: 1,
                url: urls.of(event_type),
            };
            (job, id)
        })
        .unzip()
}

/// How a phase sends its requests.
enum Sending<'a> {
    /// One worker per client, each sending its next request once the last is answered.
    Closed(&'a [reqwest::Client]),
    /// Each request when it is due, at this many per second, through one pooled client.
    Open(&'a reqwest::Client, f64),
}

/// What one batch of events left behind.
struct Sent {
    /// The load generator's answers.
    answered: LoadResult,
    /// Each event's ledger, in job order.
    ledgers: Vec<Result<Option<Ledger>, String>>,
    /// CPU of every process from the first request to when the bench saw the last event done.
    cpu: procs::CpuUse,
    /// How long sending took.
    sending: Duration,
}

/// What the phases share: the services, the ledger store and the running totals.
struct Driver<'a> {
    stack: &'a mut Stack,
    store: Store,
    with_email: bool,
    interrupted: &'a CancellationToken,
    /// Events accepted so far, warm-up included: the writers' counters are cumulative.
    sent: u64,
    ledger: LedgerTally,
}

impl Driver<'_> {
    /// Sends `jobs` (with their event ids), waits until every event accepted is done at both
    /// destinations (the CPU reading ends there) and their write-backs too (not measured, so
    /// the next phase starts on a quiet pipeline), then reads their ledgers.
    async fn send(
        &mut self,
        watched: &Watched,
        sending: Sending<'_>,
        plan: Plan<'_>,
        (jobs, ids): (Vec<Job>, Vec<String>),
    ) -> anyhow::Result<Sent> {
        let before = watched.sample();
        let started = Instant::now();
        let answered = match sending {
            Sending::Closed(clients) => load::run(clients, plan, jobs).await?,
            Sending::Open(client, rate) => load::open_loop(client, plan, jobs, rate).await?,
        };
        let sending = started.elapsed();
        stop_if_interrupted(self.interrupted)?;
        self.sent += answered.accepted_events;
        let (with_email, interrupted) = (self.with_email, self.interrupted);
        wait_done(self.stack, with_email, self.sent, DONE_WITHIN, interrupted).await?;
        let cpu = before.until(&watched.sample());
        settle(self.stack, with_email, self.sent, interrupted).await?;
        let ledgers = read_ledgers(&self.store, &ids).await;
        self.ledger.add(&ledgers, with_email);
        Ok(Sent {
            answered,
            ledgers,
            cpu,
            sending,
        })
    }
}

/// What the writers have counted so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Progress {
    /// Canonical events the crm-writer delivered.
    crm: u64,
    /// Canonical events the email-writer delivered.
    email: u64,
    /// `email.subscriber.synced` reports the crm-writer wrote back.
    write_backs: u64,
}

impl Progress {
    /// Reads both writers' `handoff_writer_events_total`.
    async fn read(stack: &Stack) -> anyhow::Result<Progress> {
        let delivered = |text: &str, reports: bool| {
            sum_where(text, "handoff_writer_events_total", |labels| {
                label(labels, "outcome") == Some("delivered")
                    && (label(labels, "event_type") == Some(EMAIL_SUBSCRIBER_SYNCED)) == reports
            })
            .round() as u64
        };
        let mut progress = Progress::default();
        if let Some(crm) = &stack.crm_writer {
            let text = crm.metrics().await?;
            progress.crm = delivered(&text, false);
            progress.write_backs = delivered(&text, true);
        }
        if let Some(email) = &stack.email_writer {
            progress.email = delivered(&email.metrics().await?, false);
        }
        Ok(progress)
    }

    /// Whether `n` events are done at both destinations (the crm-writer's alone without the
    /// email-writer).
    fn done(&self, n: u64, with_email: bool) -> bool {
        self.crm >= n && (!with_email || self.email >= n)
    }
}

/// Waits until the writers have delivered `n` events in all, failing if a service exits, if
/// nothing moves for [`STALLED_AFTER`] or if `within` runs out.
async fn wait_done(
    stack: &mut Stack,
    with_email: bool,
    n: u64,
    within: Duration,
    interrupted: &CancellationToken,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    let mut last = Progress::default();
    let mut moved = Instant::now();
    loop {
        stack.check_alive().context("while the pipeline drains")?;
        let progress = Progress::read(stack).await?;
        if progress.done(n, with_email) {
            return Ok(());
        }
        if progress != last {
            (last, moved) = (progress, Instant::now());
        }
        let stalled = moved.elapsed() >= STALLED_AFTER;
        if stalled || Instant::now() >= deadline {
            bail!(
                "the pipeline did not finish {n} events ({}): the crm-writer delivered {}, the \
                 email-writer {}\n{}",
                if stalled {
                    format!("nothing moved for {STALLED_AFTER:?}")
                } else {
                    format!("not within {within:?} of the last 202")
                },
                progress.crm,
                if with_email {
                    progress.email.to_string()
                } else {
                    "(not running)".to_owned()
                },
                stack.diagnosis().await,
            );
        }
        stop_if_interrupted(interrupted)?;
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Waits (unmeasured) for the write-backs of `n` events, so a phase starts on a quiet
/// pipeline; a shortfall is left for the queue check to find.
async fn settle(
    stack: &mut Stack,
    with_email: bool,
    n: u64,
    interrupted: &CancellationToken,
) -> anyhow::Result<()> {
    if !with_email {
        return Ok(());
    }
    let deadline = Instant::now() + SETTLE_WITHIN;
    while Instant::now() < deadline {
        stack
            .check_alive()
            .context("while the write-backs finish")?;
        if Progress::read(stack).await?.write_backs >= n {
            return Ok(());
        }
        stop_if_interrupted(interrupted)?;
        tokio::time::sleep(POLL_EVERY).await;
    }
    Ok(())
}

/// The ledger of each of `ids`, read with [`LEDGER_READS_IN_FLIGHT`] reads pipelined on the
/// store's connection; `Err` where Redis could not be read.
async fn read_ledgers(store: &Store, ids: &[String]) -> Vec<Result<Option<Ledger>, String>> {
    futures::stream::iter(ids)
        .map(|id| {
            let store = store.clone();
            async move {
                store
                    .ledger_get(payload::PUBLISHER_ID, id)
                    .await
                    .map_err(|err| err.to_string())
            }
        })
        .buffered(LEDGER_READS_IN_FLIGHT)
        .collect()
        .await
}

/// One event's times, from its ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EventTimes {
    /// Ingest's `accepted`: when the request arrived.
    accepted: OffsetDateTime,
    /// The later of the writers' `delivered`.
    done: OffsetDateTime,
}

impl EventTimes {
    /// `None` unless the ledger has ingest's `accepted` and a `delivered` from each writer.
    fn of(ledger: &Ledger, with_email: bool) -> Option<EventTimes> {
        let at = |stage: &str, status: &str| {
            let entry = ledger.stages.get(stage)?;
            (entry.status == status)
                .then(|| OffsetDateTime::parse(&entry.at, &Rfc3339).ok())
                .flatten()
        };
        let accepted = at("ingest", "accepted")?;
        let crm = at(CRM_WRITER, "delivered")?;
        let done = if with_email {
            crm.max(at(EMAIL_WRITER, "delivered")?)
        } else {
            crm
        };
        Some(EventTimes { accepted, done })
    }
}

/// The figures of one phase from what it `sent`.
fn phase(
    name: &str,
    concurrency: usize,
    sent: &Sent,
    with_email: bool,
    offered: Option<f64>,
    problems: &mut Vec<String>,
) -> Phase {
    let Sent {
        answered,
        ledgers,
        cpu,
        sending,
    } = sent;
    let mut cpu = *cpu;
    if answered.failures.events > 0 {
        problems.push(format!(
            "{name}: {} events were not accepted; first errors: {}",
            answered.failures.events,
            answered.failures.messages.join(" | ")
        ));
    }
    let mut from_202 = Vec::with_capacity(answered.accepted_at.len());
    let mut from_accepted = Vec::with_capacity(answered.accepted_at.len());
    let mut first_202: Option<OffsetDateTime> = None;
    let mut last_done: Option<OffsetDateTime> = None;
    let mut failures = Failures::default();
    for &(job, at_202) in &answered.accepted_at {
        let at_202 = OffsetDateTime::from(at_202);
        let times = match ledgers.get(job) {
            Some(Ok(Some(ledger))) => EventTimes::of(ledger, with_email),
            _ => None,
        };
        let Some(times) = times else {
            failures.add(1, || format!("event #{job} is not done in its ledger"));
            continue;
        };
        first_202 = Some(first_202.map_or(at_202, |t| t.min(at_202)));
        last_done = Some(last_done.map_or(times.done, |t| t.max(times.done)));
        from_202.push(non_negative(times.done - at_202));
        from_accepted.push(non_negative(times.done - times.accepted));
    }
    // The window: first 202 → last event done, on the one clock every process here shares.
    cpu.wall = first_202
        .zip(last_done)
        .map_or(Duration::ZERO, |(first, last)| non_negative(last - first));
    Phase {
        measured: Measured {
            concurrency,
            events: from_202.len() as u64,
            failed_events: failures.events,
            errors: failures.messages,
            latencies: Latencies::merge([from_202]),
            cpu,
        },
        accepted: answered.accepted_events,
        from_accepted: Latencies::merge([from_accepted]),
        requests: answered.latencies.clone(),
        offered,
        sending: *sending,
    }
}

fn non_negative(d: time::Duration) -> Duration {
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}

fn millis(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// What every event's ledger said, over the whole run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct LedgerTally {
    /// Ledgers read (one per event answered 202 or not).
    read: u64,
    /// Reads Redis failed.
    unreadable: u64,
    /// No ledger at all.
    missing: u64,
    accepted: u64,
    normalized: u64,
    crm_delivered: u64,
    email_delivered: u64,
    /// `crm-writer.write-back` delivered: the email-writer's report written onto the contact.
    write_backs: u64,
    /// Any stage that says `dead_lettered`.
    dead_lettered: u64,
}

impl LedgerTally {
    fn add(&mut self, ledgers: &[Result<Option<Ledger>, String>], with_email: bool) {
        for ledger in ledgers {
            self.read += 1;
            let ledger = match ledger {
                Err(_) => {
                    self.unreadable += 1;
                    continue;
                }
                Ok(None) => {
                    self.missing += 1;
                    continue;
                }
                Ok(Some(ledger)) => ledger,
            };
            let status = |stage: &str| ledger.stages.get(stage).map(|s| s.status.as_str());
            self.accepted += u64::from(status("ingest") == Some("accepted"));
            self.normalized += u64::from(status(NORMALIZER) == Some("normalized"));
            self.crm_delivered += u64::from(status(CRM_WRITER) == Some("delivered"));
            if with_email {
                self.email_delivered += u64::from(status(EMAIL_WRITER) == Some("delivered"));
            }
            let write_back = format!("{CRM_WRITER}.write-back");
            self.write_backs += u64::from(status(&write_back) == Some("delivered"));
            self.dead_lettered +=
                u64::from(ledger.stages.values().any(|s| s.status == "dead_lettered"));
        }
    }

    /// One line and, unless each of the `n` events accepted went through every stage, the
    /// problem that makes the run invalid.
    fn check(&self, n: u64, with_email: bool) -> (String, Option<String>) {
        let ok = self.read == n
            && self.unreadable == 0
            && self.missing == 0
            && self.accepted == n
            && self.normalized == n
            && self.crm_delivered == n
            && (!with_email || self.email_delivered == n)
            && self.dead_lettered == 0;
        let line = format!(
            "{} ledgers of {} events accepted: ingest accepted {}, normalizer normalized {}, \
             crm-writer delivered {}, email-writer delivered {}, write-backs delivered {}, \
             dead-lettered {}, missing {}, unreadable {}: {}",
            thousands(self.read),
            thousands(n),
            thousands(self.accepted),
            thousands(self.normalized),
            thousands(self.crm_delivered),
            if with_email {
                thousands(self.email_delivered)
            } else {
                "- (not running)".to_owned()
            },
            thousands(self.write_backs),
            thousands(self.dead_lettered),
            thousands(self.missing),
            thousands(self.unreadable),
            if ok { "✓" } else { "MISMATCH ✗" }
        );
        let problem = (!ok).then(|| format!("pipeline: ledger check failed: {line}"));
        (line, problem)
    }
}

/// The sandbox's side of the check, from `/_sandbox/stats`.
#[derive(Debug, Default, PartialEq, Eq)]
struct SandboxCounts {
    /// Distinct HubSpot contacts created.
    contacts: u64,
    /// Distinct Mailchimp members created.
    members: u64,
    /// Distinct records created per other type (companies, deals, member events, …).
    others: Vec<(String, u64)>,
    /// `type:key` of every record created more than once (the first few), and how many.
    created_twice: Vec<String>,
    twice: u64,
    /// Members moved back to `subscribed` (never expected).
    resubscribed: u64,
}

impl SandboxCounts {
    fn of(stats: &Value) -> SandboxCounts {
        let mut counts = SandboxCounts {
            resubscribed: delivery::u64_at(stats, "/resubscribed"),
            ..SandboxCounts::default()
        };
        let Some(types) = stats.pointer("/creates").and_then(Value::as_object) else {
            return counts;
        };
        for (ty, keys) in types {
            let Some(keys) = keys.as_object() else {
                continue;
            };
            let distinct = keys.len() as u64;
            match ty.as_str() {
                "contacts" => counts.contacts = distinct,
                "members" => counts.members = distinct,
                _ => counts.others.push((ty.clone(), distinct)),
            }
            for (key, n) in keys {
                if n.as_u64().unwrap_or(0) > 1 {
                    counts.twice += 1;
                    if counts.created_twice.len() < 3 {
                        counts.created_twice.push(format!("{ty}:{key}"));
                    }
                }
            }
        }
        counts
    }

    /// One line and, unless every one of the `n` events made exactly one contact and one
    /// member and nothing was created twice, the problem that makes the run invalid.
    fn check(&self, n: u64, with_email: bool) -> (String, Option<String>) {
        let ok = self.contacts == n
            && (!with_email || self.members == n)
            && self.twice == 0
            && self.resubscribed == 0;
        let others = self
            .others
            .iter()
            .map(|(ty, k)| format!("{ty} {}", thousands(*k)))
            .collect::<Vec<_>>()
            .join(", ");
        let line = format!(
            "sandbox created {} HubSpot contacts and {} Mailchimp members for {} events \
             (other records: {}); records created more than once: {}{}; resubscribed {}: {}",
            thousands(self.contacts),
            thousands(self.members),
            thousands(n),
            if others.is_empty() { "none" } else { &others },
            thousands(self.twice),
            if self.created_twice.is_empty() {
                String::new()
            } else {
                format!(" (e.g. {})", self.created_twice.join(", "))
            },
            thousands(self.resubscribed),
            if ok { "✓" } else { "MISMATCH ✗" }
        );
        let problem = (!ok).then(|| format!("pipeline: sandbox check failed: {line}"));
        (line, problem)
    }
}

/// The queues once every service stopped.
#[derive(Debug, Default)]
struct QueueCounts {
    /// `(stage, ready messages)` of each stage queue that should be empty.
    stages: Vec<(&'static str, u32)>,
    /// Messages in every stage's delay queues together.
    delayed: u64,
    dead: u32,
    /// The email-writer's queue when it did not run (everything waits there; not checked).
    unconsumed: Option<u32>,
}

impl QueueCounts {
    async fn read(
        counter: &Counter,
        topology: &Topology,
        with_email: bool,
    ) -> anyhow::Result<QueueCounts> {
        let mut counts = QueueCounts::default();
        for stage in [NORMALIZER, CRM_WRITER, EMAIL_WRITER] {
            let ready = counter.count(&topology.stage_queue(stage)).await?;
            if stage == EMAIL_WRITER && !with_email {
                counts.unconsumed = Some(ready);
            } else {
                counts.stages.push((stage, ready));
            }
            for tier in BusConfig::default().retry_delays {
                counts.delayed +=
                    u64::from(counter.count(&topology.delay_queue(stage, tier)).await?);
            }
        }
        counts.dead = counter.count(&topology.dead_letter_queue()).await?;
        Ok(counts)
    }

    fn check(&self) -> (String, Option<String>) {
        let ok = self.stages.iter().all(|(_, n)| *n == 0) && self.delayed == 0 && self.dead == 0;
        let stages = self
            .stages
            .iter()
            .map(|(stage, n)| format!("{stage} {}", thousands(u64::from(*n))))
            .collect::<Vec<_>>()
            .join(", ");
        let line = format!(
            "after the services stopped: {stages}, delay queues {}, dead letters {}{}: {}",
            thousands(self.delayed),
            thousands(u64::from(self.dead)),
            self.unconsumed.map_or(String::new(), |n| format!(
                " (email-writer queue, not running: {})",
                thousands(u64::from(n))
            )),
            if ok { "✓" } else { "MISMATCH ✗" }
        );
        let problem = (!ok).then(|| format!("pipeline: queue check failed: {line}"));
        (line, problem)
    }
}

impl WriterFigures {
    fn of(name: &'static str, text: &str) -> WriterFigures {
        let delivered = sum_where(text, "handoff_writer_events_total", |labels| {
            label(labels, "outcome") == Some("delivered")
        });
        let requests = sum_where(text, "handoff_delivery_requests_total", |_| true);
        WriterFigures {
            name,
            outcomes: outcomes(text, "handoff_writer_events_total"),
            requests: outcomes(text, "handoff_delivery_requests_total"),
            requests_per_event: if delivered > 0.0 {
                requests / delivered
            } else {
                0.0
            },
        }
    }
}

/// The peak RSS aim's verdict over every service (the sandbox is not one).
pub fn rss_verdict(rss: &[(&'static str, Option<u64>)]) -> String {
    let over: Vec<&str> = rss
        .iter()
        .filter(|(name, _)| *name != "sandbox")
        .filter(|(_, kib)| kib.is_some_and(|kib| kib >= RSS_AIM_KIB))
        .map(|(name, _)| *name)
        .collect();
    if over.is_empty() {
        "met".to_owned()
    } else {
        format!("NOT met by {}", over.join(", "))
    }
}

/// Starts the email-writer against the sandbox at `base`, its API key in `MAILCHIMP_API_KEY`.
fn spawn_email_writer(bin: &Path, namespace: &str, base: &str) -> anyhow::Result<Service> {
    let admin = free_port().context("finding a free port for the admin server")?;
    Service::spawn_with_env(
        "the email-writer",
        bin,
        namespace,
        &email_writer_config(namespace, admin, base),
        admin,
        &[("MAILCHIMP_API_KEY", MAILCHIMP_KEY)],
    )
}

/// The email-writer's configuration file: everything the bench depends on is spelled out,
/// the rest is its defaults (the production settings: prefetch, `max_in_flight` = Mailchimp's
/// 10 connections, retry policy, dedupe, routes, consent, ownership).
fn email_writer_config(namespace: &str, admin: u16, base: &str) -> String {
    let amqp = handoff_test_support::amqp_url();
    let redis = handoff_test_support::redis_url();
    format!(
        r#"# Written by handoff-bench; removed when the run ends.
namespace = "{namespace}"

[admin]
listen = "127.0.0.1:{admin}"

[bus]
url = "{amqp}"

[redis]
url = "{redis}"

[mailchimp]
# This run's sandbox and its audience.
base_url = "{base}"
list_id = "{MAILCHIMP_LIST}"

[mailchimp.auth]
kind = "basic"
password = {{ env = "MAILCHIMP_API_KEY" }}

[mailchimp.pacing]
# Mailchimp has no request-rate quota, only its connection limit, which the writer's
# max_in_flight (10, its default) keeps to; the pacer's default ceiling is set out of the way
# as the crm-writer's is, with a burst so no request waits microseconds for its slot.
limit = 1000000
per = "1s"
burst = 10000

[shutdown]
# Nothing is in flight by the time the bench stops the writer; keep the wait short.
grace = "5s"

[telemetry]
# Production's format; nothing is logged per event at warn.
log_format = "json"
log_filter = "warn"
"#
    )
}

/// A ledger with `(stage, status, at)` entries, for tests.
#[cfg(test)]
fn ledger_with(stages: &[(&str, &str, &str)]) -> Ledger {
    let stages = stages
        .iter()
        .map(|(stage, status, at)| {
            (
                (*stage).to_owned(),
                handoff_idempotency::StageStatus {
                    status: (*status).to_owned(),
                    at: (*at).to_owned(),
                    detail: serde_json::Map::new(),
                },
            )
        })
        .collect();
    Ledger {
        event_id: "e".to_owned(),
        publisher_id: payload::PUBLISHER_ID.to_owned(),
        event_type: None,
        trace_id: None,
        email: None,
        first_seen_at: None,
        stages,
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    const T0: &str = "2026-11-28T10:00:00.100Z";
    const T1: &str = "2026-11-28T10:00:00.130Z";
    const T2: &str = "2026-11-28T10:00:00.175Z";

    fn full() -> Ledger {
        ledger_with(&[
            ("ingest", "accepted", T0),
            ("normalizer", "normalized", T1),
            ("crm-writer", "delivered", T2),
            ("email-writer", "delivered", T1),
            ("crm-writer.write-back", "delivered", T2),
        ])
    }

    #[test]
    fn done_is_the_later_writer() {
        let times = EventTimes::of(&full(), true).expect("done");
        assert_eq!(
            non_negative(times.done - times.accepted),
            Duration::from_millis(75)
        );
        let crm_only = ledger_with(&[("ingest", "accepted", T0), ("crm-writer", "delivered", T1)]);
        assert_eq!(
            EventTimes::of(&crm_only, true),
            None,
            "the email-writer is missing"
        );
        let times = EventTimes::of(&crm_only, false).expect("done without the email-writer");
        assert_eq!(
            non_negative(times.done - times.accepted),
            Duration::from_millis(30)
        );
        let retrying = ledger_with(&[
            ("ingest", "accepted", T0),
            ("crm-writer", "retrying", T1),
            ("email-writer", "delivered", T1),
        ]);
        assert_eq!(EventTimes::of(&retrying, true), None);
    }

    #[test]
    fn a_phase_measures_from_the_202_and_from_acceptance() {
        let at_202 = OffsetDateTime::parse("2026-11-28T10:00:00.110Z", &Rfc3339).expect("time");
        let answered = LoadResult {
            latencies: Latencies::merge([vec![Duration::from_millis(10)]]),
            accepted_events: 2,
            failures: Failures::default(),
            wall: Duration::from_secs(1),
            accepted_at: vec![(0, SystemTime::from(at_202)), (1, SystemTime::from(at_202))],
            max_in_flight: 1,
        };
        let sent = Sent {
            answered,
            ledgers: vec![Ok(Some(full())), Ok(None)],
            cpu: Watched::default()
                .sample()
                .until(&Watched::default().sample()),
            sending: Duration::ZERO,
        };
        let mut problems = Vec::new();
        let phase = phase("t", 1, &sent, true, None, &mut problems);
        assert_eq!(phase.measured.events, 1);
        assert_eq!(phase.measured.failed_events, 1, "the second has no ledger");
        assert_eq!(
            phase.measured.latencies.percentile(50.0),
            Duration::from_millis(65)
        );
        assert_eq!(
            phase.from_accepted.percentile(50.0),
            Duration::from_millis(75)
        );
        assert_eq!(phase.measured.cpu.wall, Duration::from_millis(65));
        assert!(problems.is_empty(), "every request was accepted");
    }

    #[test]
    fn the_ledger_tally_needs_every_stage() {
        let mut tally = LedgerTally::default();
        tally.add(&[Ok(Some(full())), Ok(Some(full()))], true);
        assert!(
            tally.check(2, true).1.is_none(),
            "{}",
            tally.check(2, true).0
        );
        assert_eq!(tally.write_backs, 2);
        tally.add(&[Ok(None), Err("down".to_owned())], true);
        let (line, problem) = tally.check(4, true);
        assert!(problem.is_some(), "{line}");
        assert!(line.contains("missing 1, unreadable 1"), "{line}");
        let mut without = LedgerTally::default();
        let crm_only = ledger_with(&[
            ("ingest", "accepted", T0),
            ("normalizer", "normalized", T1),
            ("crm-writer", "delivered", T2),
        ]);
        without.add(&[Ok(Some(crm_only.clone()))], false);
        assert!(without.check(1, false).1.is_none());
        let mut with = LedgerTally::default();
        with.add(&[Ok(Some(crm_only))], true);
        assert!(
            with.check(1, true).1.is_some(),
            "the email-writer did not deliver"
        );
    }

    #[test]
    fn sandbox_counts_find_duplicates() {
        let stats = serde_json::json!({
            "requests": 9,
            "creates": {
                "contacts": { "a@x.com": 1, "b@x.com": 1 },
                "members": { "a@x.com": 1, "b@x.com": 2 },
                "deals": { "D-1": 1 }
            },
            "updates": { "contacts": { "a@x.com": 1 } },
            "resubscribed": 0
        });
        let counts = SandboxCounts::of(&stats);
        assert_eq!((counts.contacts, counts.members, counts.twice), (2, 2, 1));
        assert_eq!(counts.others, vec![("deals".to_owned(), 1)]);
        let (line, problem) = counts.check(2, true);
        assert!(problem.is_some());
        assert!(line.contains("members:b@x.com"), "{line}");
        let clean = serde_json::json!({
            "creates": { "contacts": { "a@x.com": 1 }, "members": { "a@x.com": 1 } }
        });
        assert!(SandboxCounts::of(&clean).check(1, true).1.is_none());
        assert!(SandboxCounts::of(&clean).check(2, true).1.is_some());
    }

    #[test]
    fn progress_counts_canonical_events_apart_from_write_backs() {
        let text = "\
handoff_writer_events_total{stage=\"crm-writer\",event_type=\"lead.created\",outcome=\"delivered\"} 3
handoff_writer_events_total{stage=\"crm-writer\",event_type=\"customer.converted\",outcome=\"delivered\"} 4
handoff_writer_events_total{stage=\"crm-writer\",event_type=\"email.subscriber.synced\",outcome=\"delivered\"} 5
handoff_writer_events_total{stage=\"crm-writer\",event_type=\"lead.created\",outcome=\"retry\"} 1
handoff_delivery_requests_total{destination=\"hubspot\",operation=\"upsert\",outcome=\"success\"} 24
";
        let figures = WriterFigures::of("crm-writer", text);
        assert!((figures.requests_per_event - 2.0).abs() < 1e-9);
        assert_eq!(figures.requests, "success 24");
        let progress = Progress {
            crm: 7,
            email: 6,
            write_backs: 5,
        };
        assert!(progress.done(7, false));
        assert!(!progress.done(7, true));
        assert!(progress.done(6, true));
    }

    #[test]
    fn the_email_writer_config_spells_out_what_the_bench_depends_on() {
        let config = email_writer_config("ns", 1, "http://127.0.0.1:2");
        assert!(config.contains("list_id = \"sandbox-list\""));
        assert!(config.contains("base_url = \"http://127.0.0.1:2\""));
        assert!(config.contains("env = \"MAILCHIMP_API_KEY\""));
        assert!(config.contains("limit = 1000000"));
        let parsed: toml::Value = toml::from_str(&config).expect("valid TOML");
        assert_eq!(parsed["mailchimp"]["auth"]["kind"].as_str(), Some("basic"));
    }

    #[test]
    fn the_rss_aim_leaves_out_the_sandbox() {
        let rss = [
            ("ingest", Some(40_000)),
            ("sandbox", Some(500_000)),
            ("email-writer", None),
        ];
        assert_eq!(rss_verdict(&rss), "met");
        assert_eq!(
            rss_verdict(&[("crm-writer", Some(70 * 1024))]),
            "NOT met by crm-writer"
        );
    }
}
