//! A replay beside live traffic under HubSpot's quota ([10/10]): the issue's
//! "replaying 5,000 events against a 100/10 s quota never exceeds the quota
//! together with live traffic", run to the end rather than for the slice CI
//! can afford (`crates/e2e/tests/dead_letters.rs` replays 25 s of it).
//!
//! Release binaries in child processes ([`Service`]), on a namespace of their
//! own, each with its production settings where the scenario is about them:
//! - `handoff-sandbox` enforcing HubSpot's private-app quota, 100 requests per
//!   rolling 10 s per token, 429s taking a place in the window;
//! - `handoff-crm-writer` with its default pacing (HubSpot's quota);
//! - `handoff-dlq serve` with its default replay settings: HubSpot's budget
//!   of 10/s, a replay's share of it 0.5, at most 50 messages waiting in the
//!   target queue, 200/s at most.
//!
//! 1. **Parking** (not measured): `--pacing-dead-letters` (5,000) dead letters
//!    of the crm-writer, each a canonical `contact.updated` for a person of its
//!    own ([`payload::contact_updated`], one HubSpot request each) given up on
//!    after three 503s, published to the dead-letter exchange as the writer
//!    publishes them and parked by the handler.
//! 2. **Live traffic**: canonical `contact.updated` events published to
//!    `canonical.contact.updated` as the normalizer would, one every
//!    1/`--pacing-live-rate` s (4/s by default), from [`LIVE_LEAD`] before the
//!    replay starts until it is done.
//! 3. **The replay** of every parked dead letter, as-is, asked for at
//!    [`ASKED_RATE`]: the handler plans it at its share of HubSpot's budget,
//!    so replay and live traffic together stay under what the crm-writer may
//!    send.
//!
//! Figures: the replay's rate over its own created → finished time against
//! the rate it was planned at; the HubSpot requests in the busiest rolling
//! 10 s over the whole run, from the sandbox's request log (each entry's
//! arrival on the sandbox's clock) and from the sandbox's own limiter, beside
//! the quota; the 429s; live events' latency from the bench's publish to the
//! crm-writer's `delivered` in the ledger; the CPU every process used over the
//! replay; the handler's and the writer's peak RSS.
//!
//! Checks (a failure exits non-zero; none is on a time): the busiest 10 s
//! within the quota and no 429; the job done with every dead letter sent; the
//! handler listing every one `replayed` with outcome `sent` and nothing parked
//! since; the ledger saying `delivered` for every replayed and live event;
//! the sandbox creating each of their contacts exactly once, and nothing else;
//! the crm-writer's queue empty.
//!
//! The processes, the namespace and its Redis keys are removed afterwards,
//! whatever happens.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use handoff_bus::consumer::DEAD_LETTER_MESSAGE_TYPE;
use handoff_bus::{Bus, CRM_WRITER, OutgoingMessage};
use handoff_events::v1::{self, ErrorClass};
use handoff_events::{Message as _, PROTOBUF_CONTENT_TYPE, Timestamp};
use handoff_idempotency::{RedisConfig, Store};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;

use crate::ceiling::{self, Leftovers};
use crate::dead_letters::{self, Api, ReplaySettings};
use crate::delivery::{
    self, CrmCounts, Pacing, QUOTA_REQUESTS, QUOTA_WINDOW, SandboxApi, SandboxQuota,
};
use crate::measure::Latencies;
use crate::options::Options;
use crate::payload;
use crate::procs::{self, CpuUse, Watched};
use crate::report::thousands;
use crate::service::{Service, free_port};

/// The rate the replay asks for: far above what HubSpot can take, so the handler's cap is what
/// paces it, as when an operator asks for "as fast as possible".
pub const ASKED_RATE: f64 = 200.0;
/// How long live traffic runs alone before the replay starts, so the first windows hold both.
const LIVE_LEAD: Duration = Duration::from_secs(10);
/// How long the handler may take to park every dead letter.
const PARK_WITHIN: Duration = Duration::from_secs(120);
/// How long after the replay is done the last live and replayed events may take to be
/// delivered before the check gives up on them.
const SETTLE_WITHIN: Duration = Duration::from_secs(120);
/// How often the job is polled, and how often its progress is printed.
const POLL_EVERY: Duration = Duration::from_secs(1);
const PRINT_EVERY: Duration = Duration::from_secs(60);
/// The error each of the parked dead letters' three attempts met.
const OUTAGE_ERROR: &str = "contact.upsert: HTTP 503 SERVICE_UNAVAILABLE: Service Unavailable";

/// What the part measured.
pub struct PacingRun {
    pub namespace: String,
    /// Dead letters parked and replayed.
    pub parked: u64,
    pub parked_in: Duration,
    /// Live events asked for per second, and how many were published.
    pub live_rate: f64,
    pub live_sent: u64,
    /// The rate the handler planned the replay at, and why.
    pub planned_rate: f64,
    pub rate_reason: String,
    pub job_state: String,
    pub job_sent: u64,
    /// The job's created → finished time on the handler's clock.
    pub job_elapsed: Option<Duration>,
    /// Every HubSpot request of the run, the most in any rolling 10 s (request log; all
    /// statuses, as the quota counts them), the sandbox limiter's own most admitted, and
    /// the 429s.
    pub requests: u64,
    pub busiest_window: u64,
    pub limiter_max_in_window: u64,
    pub rejected: u64,
    /// Live events: publish → the crm-writer's `delivered`.
    pub live_latency: Latencies,
    /// CPU over the replay (`wall` = its length as the bench saw it).
    pub cpu: CpuUse,
    pub cores: usize,
    pub dlq_rss_kib: Option<u64>,
    pub writer_rss_kib: Option<u64>,
    pub checks: Vec<String>,
    pub problems: Vec<String>,
}

impl PacingRun {
    /// Dead letters sent per second over the job's own time.
    pub fn achieved(&self) -> Option<f64> {
        self.job_elapsed
            .filter(|d| !d.is_zero())
            .map(|d| self.job_sent as f64 / d.as_secs_f64())
    }
}

/// The part's processes, stopped at the end or on any error.
#[derive(Default)]
struct Processes {
    sandbox: Option<Service>,
    writer: Option<Service>,
    handler: Option<Service>,
}

impl Leftovers for Processes {
    async fn stop_all(&mut self) {
        self.stop(&mut Vec::new()).await;
    }
}

impl Processes {
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for service in [&mut self.sandbox, &mut self.writer, &mut self.handler]
            .into_iter()
            .flatten()
        {
            service.check_alive()?;
        }
        Ok(())
    }

    /// Stops each with SIGTERM, the handler and the writer before the sandbox they talk to.
    async fn stop(&mut self, problems: &mut Vec<String>) {
        if let Some(handler) = self.handler.take() {
            delivery::stopped("the dead-letter handler", handler, problems).await;
        }
        if let Some(writer) = self.writer.take() {
            delivery::stopped("the crm-writer", writer, problems).await;
        }
        if let Some(sandbox) = self.sandbox.take() {
            delivery::stopped("the sandbox", sandbox, problems).await;
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
) -> anyhow::Result<PacingRun> {
    let result = ceiling::in_namespace(
        &format!("bench-{run_id}-pacing"),
        async |bus, processes: &mut Processes| {
            scenario(opts, run_id, watched, bus, processes, interrupted).await
        },
    )
    .await;
    watched.dead_letters = None;
    watched.crm_writer = None;
    watched.sandbox = None;
    result
}

async fn scenario(
    opts: &Options,
    run_id: &str,
    watched: &mut Watched,
    bus: &Bus,
    processes: &mut Processes,
    interrupted: &CancellationToken,
) -> anyhow::Result<PacingRun> {
    bus.wait_ready(Duration::from_secs(30))
        .await
        .context("declaring the replay-pacing part's topology on RabbitMQ")?;
    let namespace = bus.topology().namespace().to_owned();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let count = opts.pacing_dead_letters;

    // The sandbox, the writer and the handler, each ready before the next starts.
    let (sandbox, crm) =
        delivery::spawn_sandbox(&opts.sandbox_bin, &namespace, SandboxQuota::HubSpot)?;
    let sandbox = processes.sandbox.insert(sandbox);
    watched.sandbox = Some(sandbox.pid());
    sandbox.wait_ready(Duration::from_secs(30)).await?;
    let sandbox_api = SandboxApi::new(&crm)?;
    let writer = processes.writer.insert(delivery::spawn_writer(
        &opts.crm_writer_bin,
        &namespace,
        &crm,
        Pacing::Default,
    )?);
    watched.crm_writer = Some(writer.pid());
    writer.wait_ready(Duration::from_secs(30)).await?;
    let http_port = free_port().context("finding a free port for the handler's API")?;
    let admin_port = free_port().context("finding a free port for the handler's admin server")?;
    let handler = processes.handler.insert(Service::spawn_with_args(
        "the dead-letter handler",
        &opts.dlq_bin,
        &["serve"],
        &namespace,
        &dead_letters::config(&namespace, http_port, admin_port, ReplaySettings::Defaults),
        admin_port,
    )?);
    watched.dead_letters = Some(handler.pid());
    handler.wait_ready(Duration::from_secs(30)).await?;
    let api = Api::new(format!("http://127.0.0.1:{http_port}"))?;

    // Parking.
    let messages: Vec<OutgoingMessage> = (0..count)
        .map(|i| outage_dead_letter(&namespace, run_id, i))
        .collect();
    let parking = Instant::now();
    dead_letters::publish_all(bus.clone(), messages, interrupted.clone()).await?;
    loop {
        if interrupted.is_cancelled() {
            bail!("interrupted");
        }
        processes.check_alive().context("while parking")?;
        let parked = api.total("/v1/dead-letters?limit=1").await?;
        if parked >= count as u64 {
            break;
        }
        if parking.elapsed() >= PARK_WITHIN {
            bail!("the handler parked {parked} of {count} dead letters within {PARK_WITHIN:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let parked_in = parking.elapsed();
    println!(
        "      sandbox at HubSpot's {QUOTA_REQUESTS} requests per {} s, crm-writer and dead-letter \
         handler at their default pacing; {} crm-writer dead letters (contact.updated, three \
         503s each) parked in {:.1} s (not measured)",
        QUOTA_WINDOW.as_secs(),
        thousands(count as u64),
        parked_in.as_secs_f64(),
    );

    // Live traffic, then the replay beside it.
    let stop_live = CancellationToken::new();
    let live = tokio::spawn(live_traffic(
        bus.clone(),
        run_id.to_owned(),
        opts.pacing_live_rate,
        stop_live.clone(),
    ));
    let outcome = replay_beside(&api, processes, watched, opts, count, interrupted).await;
    stop_live.cancel();
    let live = live.await.context("the live traffic task panicked")?;
    let (job, cpu) = outcome?;
    let live = live?;

    // Everything delivered, on the writer's side of things.
    let store = Store::new(
        &RedisConfig {
            url: handoff_test_support::redis_url(),
            ..RedisConfig::default()
        },
        &namespace,
    )
    .context("opening the ledger")?;
    let replayed_ids: Vec<String> = (0..count)
        .map(|i| payload::event_id(run_id, REPLAY_TAG, i))
        .collect();
    let live_ids: Vec<String> = live.iter().map(|(id, _)| id.clone()).collect();
    let settling = Instant::now();
    let (replayed_delivered, live_delivered) = loop {
        let replayed = delivered_at(&store, &replayed_ids).await?;
        let live_done = delivered_at(&store, &live_ids).await?;
        let all = replayed.iter().chain(&live_done).all(Option::is_some);
        if all || settling.elapsed() >= SETTLE_WITHIN || interrupted.is_cancelled() {
            break (replayed, live_done);
        }
        processes
            .check_alive()
            .context("while the last events are delivered")?;
        tokio::time::sleep(POLL_EVERY).await;
    };
    let live_latency = Latencies::merge([live
        .iter()
        .zip(&live_delivered)
        .filter_map(|((_, published), done)| {
            done.and_then(|done| Duration::try_from(done - *published).ok())
        })
        .collect()]);

    let replayed_page = api.get("/v1/dead-letters?status=replayed&limit=1").await?;
    let all_parked = api.total("/v1/dead-letters?limit=1").await?;
    let still_parked = api.total("/v1/dead-letters?status=parked&limit=1").await?;
    let log = sandbox_api.requests().await?;
    let stats = sandbox_api.stats().await?;
    let dlq_rss_kib = processes
        .handler
        .as_ref()
        .and_then(|s| procs::peak_rss_kib(s.pid()));
    let writer_rss_kib = processes
        .writer
        .as_ref()
        .and_then(|s| procs::peak_rss_kib(s.pid()));
    let mut problems = Vec::new();
    processes.stop(&mut problems).await;
    watched.dead_letters = None;
    watched.crm_writer = None;
    watched.sandbox = None;
    let writer_queue = bus
        .message_count(&bus.topology().stage_queue(CRM_WRITER))
        .await
        .context("counting the crm-writer's queue")?;

    // The quota: every request the sandbox saw, whatever its answer.
    let arrivals = delivery::arrivals(&log)?;
    let mut times: Vec<OffsetDateTime> = arrivals.iter().map(|(at, _)| *at).collect();
    times.sort();
    let busiest_window = handoff_test_support::busiest_window(&times, QUOTA_WINDOW) as u64;
    let rejected = arrivals.iter().filter(|(_, s)| *s == Some(429)).count() as u64;
    let limiter_max_in_window = stats
        .pointer("/max_in_window")
        .and_then(Value::as_object)
        .and_then(|keys| keys.values().filter_map(Value::as_u64).max())
        .unwrap_or(0);

    let mut checks = Vec::new();
    let mut check = |ok: bool, line: String| {
        if !ok {
            problems.push(format!("replay pacing: {line}"));
        }
        checks.push(format!("{line}: {}", if ok { "✓" } else { "✗" }));
    };
    check(
        busiest_window <= QUOTA_REQUESTS && limiter_max_in_window <= QUOTA_REQUESTS,
        format!(
            "HubSpot's quota: at most {busiest_window} requests in any {} s (the sandbox's \
             limiter: {limiter_max_in_window} admitted), quota {QUOTA_REQUESTS}",
            QUOTA_WINDOW.as_secs()
        ),
    );
    check(
        rejected == 0,
        format!(
            "{} of {} HubSpot requests answered 429",
            thousands(rejected),
            thousands(arrivals.len() as u64)
        ),
    );
    let count = count as u64;
    check(
        job.state == "done" && job.sent == count && job.total == count,
        format!(
            "replay job {}: {} taken, {} sent of {} parked",
            job.state,
            thousands(job.total),
            thousands(job.sent),
            thousands(count)
        ),
    );
    let replayed_listed = replayed_page["total"].as_u64().unwrap_or_default();
    check(
        replayed_listed == count && all_parked == count && still_parked == 0,
        format!(
            "the handler lists {} replayed, {} parked, {} in all (nothing failed again)",
            thousands(replayed_listed),
            thousands(still_parked),
            thousands(all_parked)
        ),
    );
    let delivered = |all: &[Option<OffsetDateTime>]| all.iter().filter(|d| d.is_some()).count();
    let (replayed_done, live_done) = (
        delivered(&replayed_delivered) as u64,
        delivered(&live_delivered) as u64,
    );
    let live_sent = live.len() as u64;
    check(
        replayed_done == count && live_done == live_sent,
        format!(
            "ledger: crm-writer delivered {} of {} replayed and {} of {} live events",
            thousands(replayed_done),
            thousands(count),
            thousands(live_done),
            thousands(live_sent)
        ),
    );
    let crm = CrmCounts::of(&stats);
    check(
        crm.contacts == count + live_sent
            && crm.created_twice == 0
            && crm.updates == 0
            && crm.other_creates == 0
            && writer_queue == 0,
        format!(
            "sandbox created {} of {} contacts, {} more than once, {} updates, {} other \
             records; crm-writer queue {}",
            thousands(crm.contacts),
            thousands(count + live_sent),
            thousands(crm.created_twice),
            thousands(crm.updates),
            thousands(crm.other_creates),
            thousands(u64::from(writer_queue))
        ),
    );

    Ok(PacingRun {
        namespace,
        parked: count,
        parked_in,
        live_rate: opts.pacing_live_rate,
        live_sent,
        planned_rate: job.rate,
        rate_reason: job.rate_reason,
        job_state: job.state,
        job_sent: job.sent,
        job_elapsed: job.elapsed,
        requests: arrivals.len() as u64,
        busiest_window,
        limiter_max_in_window,
        rejected,
        live_latency,
        cpu,
        cores,
        dlq_rss_kib,
        writer_rss_kib,
        checks,
        problems,
    })
}

/// The tag of the parked (and replayed) events' ids; live ones carry [`LIVE_TAG`].
const REPLAY_TAG: char = 'R';
const LIVE_TAG: char = 'L';

/// What the replay job ended as.
struct JobEnd {
    state: String,
    total: u64,
    sent: u64,
    rate: f64,
    rate_reason: String,
    elapsed: Option<Duration>,
}

/// Waits [`LIVE_LEAD`] with live traffic alone, then replays every parked dead letter and
/// follows the job to its end, printing its progress; returns how it ended and the CPU over it.
async fn replay_beside(
    api: &Api,
    processes: &mut Processes,
    watched: &Watched,
    opts: &Options,
    count: usize,
    interrupted: &CancellationToken,
) -> anyhow::Result<(JobEnd, CpuUse)> {
    let lead_until = Instant::now() + LIVE_LEAD;
    while Instant::now() < lead_until {
        if interrupted.is_cancelled() {
            bail!("interrupted");
        }
        processes.check_alive().context("with live traffic alone")?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let request = |dry_run: bool| {
        json!({
            "filter": {"stage": CRM_WRITER, "error_class": "retries_exhausted"},
            "mode": "as_is",
            "rate": ASKED_RATE,
            "dry_run": dry_run,
            "reason": "handoff-bench: replay pacing beside live traffic",
        })
    };
    let (status, plan) = api.post("/v1/replays", &request(true)).await?;
    if status != 200 {
        bail!("the replay's dry run answered {status}: {plan}");
    }
    let planned = plan["rate"].as_f64().unwrap_or_default();
    let rate_reason = plan["rate_reason"].as_str().unwrap_or("").to_owned();
    println!(
        "      live traffic at {}/s since {} s ago; replaying {} dead letters as-is, {ASKED_RATE}/s \
         asked, planned at {planned}/s ({rate_reason}), estimated {:.0} s…",
        opts.pacing_live_rate,
        LIVE_LEAD.as_secs(),
        thousands(plan["count"].as_u64().unwrap_or_default()),
        plan["estimated_seconds"].as_f64().unwrap_or_default(),
    );
    let before = watched.sample();
    let posted = Instant::now();
    let (status, job) = api.post("/v1/replays", &request(false)).await?;
    if status != 201 {
        bail!("starting the replay answered {status}: {job}");
    }
    let id = job["id"]
        .as_str()
        .context("a job without an id")?
        .to_owned();
    let within =
        Duration::from_secs_f64(2.0 * count as f64 / planned.max(0.1)) + Duration::from_secs(120);
    let mut printed = Instant::now();
    let job = loop {
        tokio::time::sleep(POLL_EVERY).await;
        let job = api.get(&format!("/v1/replays/{id}")).await?;
        let state = job["state"].as_str().unwrap_or("");
        if state == "done" || state == "cancelled" {
            break job;
        }
        if printed.elapsed() >= PRINT_EVERY {
            printed = Instant::now();
            let sent = job["sent"].as_u64().unwrap_or_default();
            println!(
                "      {:>5.0} s: replay sent {} of {} ({:.2}/s)",
                posted.elapsed().as_secs_f64(),
                thousands(sent),
                thousands(count as u64),
                sent as f64 / posted.elapsed().as_secs_f64()
            );
        }
        let alive = processes.check_alive().context("while replaying");
        if interrupted.is_cancelled() || posted.elapsed() >= within || alive.is_err() {
            // Stop it rather than leave it sending into a namespace about to go.
            let _ = api
                .post(&format!("/v1/replays/{id}/cancel"), &json!({}))
                .await;
            alive?;
            bail!(
                "the replay did not finish within {within:?} (or was interrupted): {}",
                api.get(&format!("/v1/replays/{id}")).await?
            );
        }
    };
    let mut cpu = before.until(&watched.sample());
    cpu.wall = posted.elapsed();
    let time_of = |field: &str| {
        job[field]
            .as_str()
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
    };
    let elapsed = time_of("created_at")
        .zip(time_of("finished_at"))
        .and_then(|(from, to)| Duration::try_from(to - from).ok());
    Ok((
        JobEnd {
            state: job["state"].as_str().unwrap_or("unknown").to_owned(),
            total: job["total"].as_u64().unwrap_or_default(),
            sent: job["sent"].as_u64().unwrap_or_default(),
            rate: job["rate"].as_f64().unwrap_or(planned),
            rate_reason,
            elapsed,
        },
        cpu,
    ))
}

/// Publishes one canonical `contact.updated` every 1/`rate` s until `stop`, as the normalizer
/// would; returns each event's id and when its publish started.
async fn live_traffic(
    bus: Bus,
    run_id: String,
    rate: f64,
    stop: CancellationToken,
) -> anyhow::Result<Vec<(String, OffsetDateTime)>> {
    let mut sent = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(sent),
            _ = tick.tick() => {}
        }
        let (id, body) = payload::contact_updated(&run_id, LIVE_TAG, sent.len());
        let at = OffsetDateTime::now_utc();
        bus.publish(OutgoingMessage {
            routing_key: payload::WRITER_EVENT_TYPE.canonical_routing_key(),
            body,
            content_type: Some(PROTOBUF_CONTENT_TYPE.to_owned()),
            message_id: Some(id.clone()),
            message_type: Some("handoff.v1.Envelope".to_owned()),
            headers: Default::default(),
        })
        .await
        .with_context(|| format!("publishing live event {id}"))?;
        sent.push((id, at));
    }
}

/// The crm-writer's `delivered` time of each event in its ledger, `None` where not yet.
async fn delivered_at(
    store: &Store,
    ids: &[String],
) -> anyhow::Result<Vec<Option<OffsetDateTime>>> {
    futures::stream::iter(ids)
        .map(|id| async move {
            let ledger = store
                .ledger_get(payload::PUBLISHER_ID, id)
                .await
                .with_context(|| format!("reading the ledger of {id}"))?;
            Ok(ledger.and_then(|ledger| {
                let stage = ledger.stages.get(CRM_WRITER)?;
                (stage.status == "delivered")
                    .then(|| OffsetDateTime::parse(&stage.at, &Rfc3339).ok())
                    .flatten()
            }))
        })
        // Enough in flight that thousands of reads take a moment, few enough not to queue.
        .buffered(32)
        .collect::<Vec<anyhow::Result<_>>>()
        .await
        .into_iter()
        .collect()
}

/// Dead letter `i` of the run: the crm-writer gave up on a canonical `contact.updated` after
/// three 503s, in the record it publishes to the dead-letter exchange.
fn outage_dead_letter(namespace: &str, run_id: &str, i: usize) -> OutgoingMessage {
    let (event_id, original) = payload::contact_updated(run_id, REPLAY_TAG, i);
    let now = std::time::SystemTime::now();
    let record = v1::DeadLetter {
        event_id: event_id.clone(),
        event_type: payload::WRITER_EVENT_TYPE.as_str().to_owned(),
        publisher_id: payload::PUBLISHER_ID.to_owned(),
        stage: CRM_WRITER.to_owned(),
        error_class: ErrorClass::RetriesExhausted as i32,
        error_message: format!("gave up after 3 attempts: {OUTAGE_ERROR}"),
        error_code: "503".to_owned(),
        destination: "hubspot".to_owned(),
        attempts: (1..=3)
            .map(|number| v1::Attempt {
                number,
                at: Some(Timestamp::from(now)),
                error: OUTAGE_ERROR.to_owned(),
                outcome: "transient".to_owned(),
            })
            .collect(),
        first_failed_at: Some(Timestamp::from(now - Duration::from_secs(2))),
        last_failed_at: Some(Timestamp::from(now)),
        origin_exchange: format!("{namespace}.events"),
        origin_routing_key: payload::WRITER_EVENT_TYPE.canonical_routing_key(),
        origin_queue: format!("{namespace}.{CRM_WRITER}"),
        original_body: original,
        original_content_type: PROTOBUF_CONTENT_TYPE.to_owned(),
        original_message_id: event_id.clone(),
        dead_lettered_at: Some(Timestamp::from(now)),
        ..v1::DeadLetter::default()
    };
    OutgoingMessage {
        routing_key: format!("{CRM_WRITER}.{}", ErrorClass::RetriesExhausted.label()),
        body: record.encode_to_vec(),
        content_type: Some(PROTOBUF_CONTENT_TYPE.to_owned()),
        message_id: Some(event_id),
        message_type: Some(DEAD_LETTER_MESSAGE_TYPE.to_owned()),
        headers: Default::default(),
    }
}

/// The part's section of the report.
pub fn report(run: &PacingRun) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nreplay pacing beside live traffic [10/10] (namespace {}; HubSpot's quota {} requests \
         per {} s; crm-writer and dead-letter handler at their default pacing):",
        run.namespace,
        QUOTA_REQUESTS,
        QUOTA_WINDOW.as_secs()
    );
    let achieved = run.achieved().map_or("-".to_owned(), |r| {
        format!(
            "{r:.2}/s = {:.1}% of the {:.1}/s planned",
            100.0 * r / run.planned_rate.max(f64::MIN_POSITIVE),
            run.planned_rate
        )
    });
    let _ = writeln!(
        out,
        "  replay: {} of {} dead letters (parked in {:.1} s) sent ({}), {ASKED_RATE}/s asked, planned at {}/s ({}); \
         over {}: {achieved}",
        thousands(run.job_sent),
        thousands(run.parked),
        run.parked_in.as_secs_f64(),
        run.job_state,
        run.planned_rate,
        run.rate_reason,
        run.job_elapsed
            .map_or("-".to_owned(), |d| format!("{:.0} s", d.as_secs_f64())),
    );
    let _ = writeln!(
        out,
        "  live traffic: {} events at {}/s; publish → crm-writer delivered p50 {:.0} ms, p99 \
         {:.0} ms, max {:.0} ms",
        thousands(run.live_sent),
        run.live_rate,
        millis(run.live_latency.percentile(50.0)),
        millis(run.live_latency.percentile(99.0)),
        millis(run.live_latency.percentile(100.0)),
    );
    let _ = writeln!(
        out,
        "  HubSpot: {} requests; the busiest {} s held {} (the sandbox's limiter: {} admitted) of \
         the quota's {}: {}; {} answered 429",
        thousands(run.requests),
        QUOTA_WINDOW.as_secs(),
        run.busiest_window,
        run.limiter_max_in_window,
        QUOTA_REQUESTS,
        if run.busiest_window <= QUOTA_REQUESTS && run.limiter_max_in_window <= QUOTA_REQUESTS {
            "never exceeded"
        } else {
            "EXCEEDED"
        },
        thousands(run.rejected),
    );
    let cpu = |v: Option<f64>| v.map_or("-".to_owned(), |s| format!("{s:.1} s"));
    let _ = writeln!(
        out,
        "  CPU over the replay's {:.0} s on {} cores: handler {}, crm-writer {}, sandbox {}, \
         RabbitMQ {}, Redis {}",
        run.cpu.wall.as_secs_f64(),
        run.cores,
        cpu(run.cpu.dead_letters),
        cpu(run.cpu.crm_writer),
        cpu(run.cpu.sandbox),
        cpu(run.cpu.broker),
        cpu(run.cpu.redis),
    );
    let mib =
        |kib: Option<u64>| kib.map_or("-".to_owned(), |k| format!("{:.0} MiB", k as f64 / 1024.0));
    let _ = writeln!(
        out,
        "  peak RSS: handler {}, crm-writer {}",
        mib(run.dlq_rss_kib),
        mib(run.writer_rss_kib)
    );
    for line in &run.checks {
        let _ = writeln!(out, "  check: {line}");
    }
    out
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parked_record_names_its_origin_and_carries_the_event() {
        let message = outage_dead_letter("bench-x-pacing", "x", 7);
        let record = v1::DeadLetter::decode(message.body.as_slice()).expect("a DeadLetter");
        assert_eq!(record.origin_queue, "bench-x-pacing.crm-writer");
        assert_eq!(record.stage, CRM_WRITER);
        assert_eq!(record.destination, "hubspot");
        assert_eq!(record.attempts.len(), 3);
        let original = v1::Envelope::decode(record.original_body.as_slice()).expect("an Envelope");
        assert_eq!(original.event_id, payload::event_id("x", REPLAY_TAG, 7));
        assert_eq!(record.event_id, original.event_id);
        assert_eq!(message.routing_key, "crm-writer.retries_exhausted");
        assert_eq!(
            message.message_type.as_deref(),
            Some(DEAD_LETTER_MESSAGE_TYPE)
        );
    }
}
