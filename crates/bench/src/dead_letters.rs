//! The dead-letter handler under test ([9/10]): its real release binary
//! (`handoff-dlq serve`) in a child process ([`Service`]) with a throw-away
//! configuration, in a namespace of its own, over `--dead-letters` (50,000)
//! dead letters parked the way the stages park them.
//!
//! 1. **Parking.** The records are made before the handler starts (not
//!    measured): `handoff.v1.DeadLetter` records in a realistic mix
//!    ([`CAUSES`]): the normalizer's validation failures with their field
//!    errors (each made by `handoff_normalize` itself from a broken example
//!    body, so messages and paths are the real ones) and an unsupported schema
//!    version; the crm-writer's permanent HubSpot refusals (400, 403, 409,
//!    destination `hubspot`) and exhausted retries; the email-writer's
//!    exhausted retries with every attempt and a Mailchimp 400; a few the broker
//!    dead-lettered (delivery limit). Each carries the original `Envelope` byte
//!    for byte (raw JSON for the normalizer's, canonical for the writers'), its
//!    headers, trace context and origin queue. They are about [`PEOPLE`] people
//!    (some far more often than others), from ten publishers, dead-lettered over
//!    the last seven days, a few causes in incidents of some hours. The bench
//!    publishes them to `{ns}.dead-letter` with confirms,
//!    [`PUBLISH_CONCURRENCY`] in flight, and polls the API's list total: the
//!    parking rate runs from the first publish until the total reaches the
//!    count, and the CPU readings bracket the same window.
//! 2. **Queries.** Through the HTTP API with an operator token, one at a time,
//!    each once to warm up and then [`REPEATS`] times: lists (newest 50; one
//!    filter; three filters; one email; a one-day window), groups (all; one
//!    filter) and stats, p50 and max beside the aim of < 1 s ([`LATENCY_AIM`]).
//!    Each answer's total is checked against what was published.
//! 3. **Replay rate.** Two groups replayed as-is to their origin queues (which
//!    nothing consumes; `max_backlog` is set out of the way) at 200/s and
//!    50/s ([`REPLAYS`]): dead letters sent over the job's own created →
//!    finished time, against the rate asked. The replay budgets are set high
//!    enough that the rate asked is the rate the job runs at.
//!
//! The shared Redis runs without AOF, so the handler runs with
//! `store.require_durable = false`: no park here waits for an fsync, which
//! production's `appendfsync always` adds. The report says so.
//!
//! Afterwards the handler is stopped with SIGTERM and the namespace's queues
//! and `{ns}:*` keys are removed. Checks: everything parked once (list total =
//! count), the dead-letter queue empty, every query's total as published, each
//! replay job done with everything sent and its origin queue holding as many.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use futures::StreamExt as _;
use handoff_bus::consumer::DEAD_LETTER_MESSAGE_TYPE;
use handoff_bus::{
    Bus, CRM_WRITER, EMAIL_WRITER, HEADER_ATTEMPT, HEADER_ATTEMPTS, HEADER_FIRST_FAILED_AT,
    HEADER_ORIGIN_EXCHANGE, HEADER_ORIGIN_ROUTING_KEY, NORMALIZER, OutgoingMessage,
};
use handoff_events::v1::{self, ErrorClass, envelope::Payload};
use handoff_events::{
    CURRENT_SCHEMA_VERSION, EventType, Message as _, PROTOBUF_CONTENT_TYPE, Timestamp,
};
use handoff_normalize::{NormalizeConfig, Normalizer};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;

use crate::ceiling;
use crate::measure::Latencies;
use crate::options::Options;
use crate::procs::{self, CpuUse, Watched};
use crate::report::thousands;
use crate::service::{Service, free_port};

/// Each query's aim over the parked dead letters (the issue's acceptance).
pub const LATENCY_AIM: Duration = Duration::from_secs(1);
/// Timed calls per query, after one untimed warm-up call.
pub const REPEATS: usize = 20;
/// Publishes awaiting their confirm at any time while parking.
const PUBLISH_CONCURRENCY: usize = 64;
/// How long the handler may take to park everything before the part gives up.
const PARK_WITHIN: Duration = Duration::from_secs(300);
/// How often the list total is read while parking.
const PARK_POLL: Duration = Duration::from_millis(100);
/// How often a replay job is read while it runs.
const JOB_POLL: Duration = Duration::from_millis(50);
/// The operator token the handler's config names (by its SHA-256).
const TOKEN: &str = "handoff-bench-operator-token";
/// The operator's name, as the audit log shows it.
const OPERATOR: &str = "handoff-bench";
/// How many people the dead letters are about.
const PEOPLE: usize = 3_000;
/// How far back the dead letters go.
const WEEK_SECONDS: i64 = 7 * 24 * 3600;
/// The HubSpot portal in the refusals' bodies.
const PORTAL_ID: u64 = 24_681_357;
/// Seed of the mix: the same causes, people and times in every run.
const SEED: u64 = 0x5eed_d1a7_1e77_e125;

/// The publishers the events came from, with their share of the dead letters (percent).
const PUBLISHERS: [(&str, u32); 10] = [
    ("web-forms", 22),
    ("billing", 16),
    ("crm-sync", 14),
    ("product-app", 12),
    ("mobile-app", 9),
    ("partner-portal", 8),
    ("support-desk", 7),
    ("webinar-tool", 5),
    ("events-import", 4),
    ("ads-sync", 3),
];

/// Why a dead letter failed: one cause each, most of them one group in the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// `lead.email` is not an email (`jordan.lee(at)example.org`).
    LeadEmail,
    /// `lead.lifecycle_stage` is not in the lifecycle map.
    LeadLifecycle,
    /// `lead.country` is no country.
    LeadCountry,
    /// `meeting.starts_at` is not RFC 3339.
    MeetingStart,
    /// `payment.currency` is no currency code and the amount is negative.
    PaymentMoney,
    /// `subscription.status` is not in the subscription-status map.
    SubscriptionStatus,
    /// `customer.lifecycle_stage` is not in the lifecycle map.
    CustomerLifecycle,
    /// `contact.updated` with nothing but the email.
    ContactEmpty,
    /// `lead.created` at schema version 3, which has no decoder.
    LeadSchema,
    /// HubSpot: the lead's custom properties do not exist in the portal (400).
    CrmUnknownProperty,
    /// HubSpot: `plan` "pro" is not one of the portal's options (400).
    CrmPlanOption,
    /// HubSpot: the deal stage is not in the portal's pipeline (400).
    CrmDealStage,
    /// HubSpot: the email is refused as invalid (400).
    CrmInvalidEmail,
    /// HubSpot: the private app lacks a scope after a token rotation (403).
    CrmMissingScopes,
    /// HubSpot: another contact holds the email (409).
    CrmConflict,
    /// HubSpot answered 502 for every one of 30 attempts.
    CrmBadGateway,
    /// Mailchimp answered 503 for every one of 30 attempts (an outage).
    MailchimpUnavailable,
    /// Mailchimp timed out until a day had passed since the first failure.
    MailchimpTimeout,
    /// Mailchimp: the member is in compliance state and cannot be subscribed (400).
    MailchimpCompliance,
    /// Mailchimp's tags endpoint answered 500 for every one of 30 attempts.
    MailchimpTags,
    /// The connection to Mailchimp was reset on every one of 30 attempts.
    MailchimpReset,
    /// The broker gave up on a crm-writer delivery (delivery limit: a poison message).
    BrokerCrm,
    /// The broker gave up on a normalizer delivery.
    BrokerNormalizer,
}

/// When a cause's dead letters happened.
#[derive(Debug, Clone, Copy)]
enum When {
    /// Anywhere in the last seven days.
    Week,
    /// In an incident that started `ago_hours` ago and lasted `hours`.
    Incident { ago_hours: i64, hours: i64 },
}

/// One cause of the mix.
#[derive(Debug, Clone, Copy)]
struct Spec {
    cause: Cause,
    stage: &'static str,
    event_type: EventType,
    /// Dead letters of this cause per 10,000.
    per_10k: u32,
    when: When,
}

const fn spec(
    cause: Cause,
    stage: &'static str,
    event_type: EventType,
    per_10k: u32,
    when: When,
) -> Spec {
    Spec {
        cause,
        stage,
        event_type,
        per_10k,
        when,
    }
}

/// The mix: 38% the normalizer's, 32% the crm-writer's, 28% the email-writer's, 2% the
/// broker's.
const CAUSES: [Spec; 23] = {
    use Cause::*;
    use EventType::*;
    use When::*;
    [
        spec(LeadEmail, NORMALIZER, LeadCreated, 900, Week),
        spec(LeadLifecycle, NORMALIZER, LeadCreated, 700, Week),
        spec(LeadCountry, NORMALIZER, LeadCreated, 400, Week),
        spec(MeetingStart, NORMALIZER, MeetingBooked, 300, Week),
        spec(PaymentMoney, NORMALIZER, PaymentFailed, 300, Week),
        spec(SubscriptionStatus, NORMALIZER, PaymentFailed, 300, Week),
        spec(CustomerLifecycle, NORMALIZER, CustomerConverted, 500, Week),
        spec(ContactEmpty, NORMALIZER, ContactUpdated, 250, Week),
        spec(LeadSchema, NORMALIZER, LeadCreated, 150, Week),
        spec(CrmUnknownProperty, CRM_WRITER, LeadCreated, 1_100, Week),
        spec(CrmPlanOption, CRM_WRITER, CustomerConverted, 600, Week),
        spec(CrmDealStage, CRM_WRITER, CustomerConverted, 400, Week),
        spec(CrmInvalidEmail, CRM_WRITER, ContactUpdated, 350, Week),
        spec(
            CrmMissingScopes,
            CRM_WRITER,
            LeadCreated,
            100,
            Incident {
                ago_hours: 20,
                hours: 20,
            },
        ),
        spec(CrmConflict, CRM_WRITER, ContactUpdated, 250, Week),
        spec(
            CrmBadGateway,
            CRM_WRITER,
            CustomerConverted,
            400,
            Incident {
                ago_hours: 122,
                hours: 2,
            },
        ),
        spec(
            MailchimpUnavailable,
            EMAIL_WRITER,
            LeadCreated,
            900,
            Incident {
                ago_hours: 50,
                hours: 3,
            },
        ),
        spec(MailchimpTimeout, EMAIL_WRITER, CustomerConverted, 500, Week),
        spec(MailchimpCompliance, EMAIL_WRITER, LeadCreated, 400, Week),
        spec(MailchimpTags, EMAIL_WRITER, LeadCreated, 500, Week),
        spec(MailchimpReset, EMAIL_WRITER, ContactUpdated, 500, Week),
        spec(BrokerCrm, CRM_WRITER, CustomerConverted, 120, Week),
        spec(BrokerNormalizer, NORMALIZER, LeadCreated, 80, Week),
    ]
};

/// A replay the part runs: one group, found by a filter only it matches.
struct ReplaySpec {
    /// The group's filter, as a query string.
    selector: &'static str,
    /// The cause whose dead letters the group holds.
    cause: Cause,
    /// Messages per second asked for.
    rate: f64,
}

/// Mailchimp's compliance refusals (4%: 2,000 of 50,000) at 200/s, then the missing-scope
/// refusals (1%: 500) at 50/s: ten seconds each.
const REPLAYS: [ReplaySpec; 2] = [
    ReplaySpec {
        selector: "stage=email-writer&error_class=permanent",
        cause: Cause::MailchimpCompliance,
        rate: 200.0,
    },
    ReplaySpec {
        selector: "stage=crm-writer&code=403",
        cause: Cause::CrmMissingScopes,
        rate: 50.0,
    },
];

/// What the dead-letter part measured.
pub struct DeadLettersRun {
    pub namespace: String,
    /// Records published and parked.
    pub count: u64,
    /// Causes in the mix, distinct people, and encoded bytes of all records.
    pub causes: usize,
    pub people: usize,
    pub record_bytes: u64,
    /// Making the records (not measured).
    pub prepare: Duration,
    /// From the first publish to the last confirm.
    pub published_in: Duration,
    /// From the first publish until the API's list total reached the count.
    pub parked_in: Duration,
    /// CPU over the parking window (`wall` = `parked_in`).
    pub cpu: CpuUse,
    pub cores: usize,
    /// The handler's `VmHWM` after parking and at the end.
    pub rss_after_parking_kib: Option<u64>,
    pub peak_rss_kib: Option<u64>,
    /// Groups the handler made of the mix.
    pub groups: Option<u64>,
    pub queries: Vec<QueryRun>,
    pub replays: Vec<ReplayRun>,
    /// One line per check.
    pub checks: Vec<String>,
    pub problems: Vec<String>,
}

/// One query's timings.
pub struct QueryRun {
    pub label: &'static str,
    pub path: String,
    /// The answer's total (dead letters matched).
    pub matched: u64,
    pub latencies: Latencies,
}

/// One replay job's figures.
pub struct ReplayRun {
    pub group: String,
    pub cause: String,
    pub queue: String,
    pub asked: f64,
    /// The rate the job runs at, and the handler's reason for it.
    pub rate: f64,
    pub rate_reason: String,
    pub total: u64,
    pub sent: u64,
    pub state: String,
    /// The job's created_at → finished_at, the handler's own clock.
    pub job_elapsed: Option<Duration>,
    /// From the bench's POST to the bench seeing it done.
    pub seen_elapsed: Duration,
    /// Sent per second between the bench's first poll that saw a send and the one that saw
    /// the job done: the pace once sending, without the job's start.
    pub sending_rate: Option<f64>,
    pub queued: Option<u32>,
}

impl ReplayRun {
    /// Dead letters sent per second over the job's own time.
    pub fn achieved(&self) -> Option<f64> {
        self.job_elapsed
            .filter(|d| !d.is_zero())
            .map(|d| self.sent as f64 / d.as_secs_f64())
    }
}

/// Runs the part in a namespace of its own; the handler is stopped and the namespace and
/// its Redis keys removed afterwards whatever happens.
pub async fn run(
    opts: &Options,
    run_id: &str,
    watched: &mut Watched,
    interrupted: &CancellationToken,
) -> anyhow::Result<DeadLettersRun> {
    let result = ceiling::in_namespace(
        &format!("bench-{run_id}-dlq"),
        async |bus, service: &mut Option<Service>| {
            scenario(opts, run_id, watched, bus, service, interrupted).await
        },
    )
    .await;
    watched.dead_letters = None;
    result
}

async fn scenario(
    opts: &Options,
    run_id: &str,
    watched: &mut Watched,
    bus: &Bus,
    service: &mut Option<Service>,
    interrupted: &CancellationToken,
) -> anyhow::Result<DeadLettersRun> {
    bus.wait_ready(Duration::from_secs(30))
        .await
        .context("declaring the dead-letter part's topology on RabbitMQ")?;
    let namespace = bus.topology().namespace().to_owned();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let made = Instant::now();
    let now = OffsetDateTime::now_utc().replace_nanosecond(0)?;
    let mix = Mix::make(&namespace, run_id, opts.dead_letters, now)?;
    let prepare = made.elapsed();
    let count = mix.messages.len() as u64;
    println!(
        "      made {} DeadLetter records ({:.1} MiB, {} causes, {} people, {} publishers, \
         over the last 7 days) in {:.1} s (not measured); starting {}…",
        thousands(count),
        mix.bytes as f64 / (1024.0 * 1024.0),
        CAUSES.len(),
        thousands(mix.people as u64),
        PUBLISHERS.len(),
        prepare.as_secs_f64(),
        opts.dlq_bin.display(),
    );

    let http_port = free_port().context("finding a free port for the API")?;
    let admin_port = free_port().context("finding a free port for the admin server")?;
    let running = service.insert(Service::spawn_with_args(
        "the dead-letter handler",
        &opts.dlq_bin,
        &["serve"],
        &namespace,
        &config(&namespace, http_port, admin_port, ReplaySettings::Unbounded),
        admin_port,
    )?);
    watched.dead_letters = Some(running.pid());
    running.wait_ready(Duration::from_secs(30)).await?;
    let api = Api::new(format!("http://127.0.0.1:{http_port}"))?;
    let empty = api.total("/v1/dead-letters?limit=1").await?;
    if empty != 0 {
        bail!("the fresh namespace {namespace} already holds {empty} dead letters");
    }

    // Parking.
    println!(
        "      ready; publishing {} records to {} ({PUBLISH_CONCURRENCY} in flight) and polling \
         the API's list total until all are parked…",
        thousands(count),
        bus.topology().dead_letter_exchange(),
    );
    let mut problems = Vec::new();
    let mut checks = Vec::new();
    let Mix {
        messages,
        facts,
        bytes: record_bytes,
        people,
    } = mix;
    let before = watched.sample();
    let started = Instant::now();
    let mut publishing = Some(tokio::spawn(publish_all(
        bus.clone(),
        messages,
        interrupted.clone(),
    )));
    let mut published_in = None;
    let mut total = 0;
    let mut poll_errors = 0_u64;
    let parking = async {
        loop {
            tokio::time::sleep(PARK_POLL).await;
            if interrupted.is_cancelled() {
                bail!("interrupted");
            }
            running.check_alive().context("while parking")?;
            if publishing.as_ref().is_some_and(|task| task.is_finished())
                && let Some(task) = publishing.take()
            {
                published_in = Some(task.await.context("the publisher task panicked")??);
            }
            match api.total("/v1/dead-letters?limit=1").await {
                Ok(now_total) => total = now_total,
                Err(_) => poll_errors += 1,
            }
            if total >= count {
                return Ok(started.elapsed());
            }
            if started.elapsed() >= PARK_WITHIN {
                bail!(
                    "the handler parked {} of {} dead letters within {PARK_WITHIN:?}; its \
                     output:\n{}",
                    thousands(total),
                    thousands(count),
                    running.log_tail(20)
                );
            }
        }
    }
    .await;
    if parking.is_err()
        && let Some(task) = publishing.take()
    {
        // Not into a namespace about to be torn down.
        task.abort();
    }
    let parked_in = parking?;
    let after = watched.sample();
    let published_in = match (published_in, publishing.take()) {
        (Some(took), _) => took,
        (None, Some(task)) => task.await.context("the publisher task panicked")??,
        (None, None) => started.elapsed(),
    };
    let mut cpu = before.until(&after);
    cpu.wall = parked_in;
    let rss_after_parking_kib = procs::peak_rss_kib(running.pid());
    println!(
        "      all {} parked {:.1} s after the first publish ({} dead letters/s; the last \
         publish confirmed after {:.1} s){}",
        thousands(count),
        parked_in.as_secs_f64(),
        thousands((count as f64 / parked_in.as_secs_f64()).round() as u64),
        published_in.as_secs_f64(),
        if poll_errors > 0 {
            format!("; {poll_errors} polls of the list failed")
        } else {
            String::new()
        },
    );
    // Give a doubled park a moment to show, then check the total and the queue.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = api.total("/v1/dead-letters?limit=1").await?;
    let left = bus
        .message_count(&bus.topology().dead_letter_queue())
        .await
        .context("counting the dead-letter queue")?;
    let parked_ok = settled == count && left == 0;
    checks.push(format!(
        "parked: the list total is {} of {} published, {} left on {}: {}",
        thousands(settled),
        thousands(count),
        thousands(u64::from(left)),
        bus.topology().dead_letter_queue(),
        if parked_ok { "✓" } else { "MISMATCH ✗" }
    ));
    if !parked_ok {
        problems.push(format!(
            "dead letters: {settled} parked and {left} left on the queue after publishing \
             {count}"
        ));
    }

    // Queries.
    println!(
        "      queries through the API, one at a time: 1 warm-up + {REPEATS} timed calls each…"
    );
    let specs = queries(&facts, now);
    let mut query_runs = Vec::with_capacity(specs.len());
    let mut groups = None;
    for spec in specs {
        if interrupted.is_cancelled() {
            bail!("interrupted");
        }
        let (run, answer) = time_query(&api, spec.label, &spec.path).await?;
        if spec.label == "groups, no filter" {
            groups = answer["groups"].as_array().map(|g| g.len() as u64);
        }
        if run.matched != spec.expected {
            problems.push(format!(
                "dead letters: {} ({}) matched {} but {} were published that match",
                spec.label, spec.path, run.matched, spec.expected
            ));
        }
        checks.push(format!(
            "{}: {} matched, {} published: {}",
            spec.label,
            thousands(run.matched),
            thousands(spec.expected),
            if run.matched == spec.expected {
                "✓"
            } else {
                "MISMATCH ✗"
            }
        ));
        query_runs.push(run);
    }

    // Replays.
    let mut replays = Vec::new();
    for spec in &REPLAYS {
        if interrupted.is_cancelled() {
            bail!("interrupted");
        }
        let expected = facts.iter().filter(|f| f.cause == spec.cause).count() as u64;
        let replay = replay(&api, bus, spec, interrupted).await?;
        println!(
            "      replayed {} of {} at {}/s asked: {}",
            thousands(replay.sent),
            thousands(replay.total),
            spec.rate,
            replay
                .achieved()
                .map_or("no rate (the job did not finish)".to_owned(), |r| {
                    format!("{r:.1}/s = {:.1}% of it", 100.0 * r / spec.rate)
                }),
        );
        let ok = replay.state == "done"
            && replay.total == expected
            && replay.sent == expected
            && replay.queued.map(u64::from) == Some(expected);
        checks.push(format!(
            "replay of {}: {} taken and {} sent of {} in the group, job {}, {} holds {}: {}",
            replay.group,
            thousands(replay.total),
            thousands(replay.sent),
            thousands(expected),
            replay.state,
            replay.queue,
            replay
                .queued
                .map_or("?".to_owned(), |q| thousands(u64::from(q))),
            if ok { "✓" } else { "MISMATCH ✗" }
        ));
        if !ok {
            problems.push(format!(
                "dead letters: the replay of {} ended {} with {} of {} sent and {:?} in {}",
                replay.group, replay.state, replay.sent, expected, replay.queued, replay.queue
            ));
        }
        replays.push(replay);
    }

    let peak_rss_kib = procs::peak_rss_kib(running.pid());
    if let Some(running) = service.take() {
        match running.stop(Duration::from_secs(15)).await {
            Ok(status) if status.success() => {}
            Ok(status) => problems.push(format!(
                "the dead-letter handler exited with {status} after SIGTERM"
            )),
            Err(err) => problems.push(format!("stopping the dead-letter handler: {err:#}")),
        }
    }
    watched.dead_letters = None;

    Ok(DeadLettersRun {
        namespace,
        count,
        causes: CAUSES.len(),
        people,
        record_bytes,
        prepare,
        published_in,
        parked_in,
        cpu,
        cores,
        rss_after_parking_kib,
        peak_rss_kib,
        groups,
        queries: query_runs,
        replays,
        checks,
        problems,
    })
}

/// Publishes every record to the dead-letter exchange, confirmed, [`PUBLISH_CONCURRENCY`] in
/// flight; returns how long that took. Fails on the first refused publish: the part cannot
/// go on with fewer parked than it counts.
pub(crate) async fn publish_all(
    bus: Bus,
    messages: Vec<OutgoingMessage>,
    stop: CancellationToken,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let exchange = bus.topology().dead_letter_exchange();
    let mut results = futures::stream::iter(messages)
        .map(|message| {
            let (bus, exchange, stop) = (bus.clone(), exchange.clone(), stop.clone());
            async move {
                if stop.is_cancelled() {
                    return Ok(());
                }
                let id = message.message_id.clone().unwrap_or_default();
                bus.publish_to(&exchange, message)
                    .await
                    .with_context(|| format!("publishing the dead letter of {id}"))
            }
        })
        .buffer_unordered(PUBLISH_CONCURRENCY);
    while let Some(result) = results.next().await {
        result?;
    }
    Ok(started.elapsed())
}

/// One query to time, and the total it must answer.
struct QuerySpec {
    label: &'static str,
    path: String,
    expected: u64,
}

/// The queries an operator runs in an incident, with their expected totals from `facts`.
fn queries(facts: &[Fact], now: OffsetDateTime) -> Vec<QuerySpec> {
    let count = |keep: &dyn Fn(&Fact) -> bool| facts.iter().filter(|f| keep(f)).count() as u64;
    let mut per_email: HashMap<&str, u64> = HashMap::new();
    for fact in facts {
        *per_email.entry(fact.email.as_str()).or_default() += 1;
    }
    // The email with the most dead letters: the longest index of its kind.
    let (email, _) = per_email
        .iter()
        .max_by_key(|(email, n)| (**n, std::cmp::Reverse(**email)))
        .map_or(("", 0), |(email, n)| (*email, *n));
    let since = now - time::Duration::days(3);
    let until = now - time::Duration::days(2);
    let (since_s, until_s) = (since.unix_timestamp(), until.unix_timestamp());
    let rfc = |t: OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
    vec![
        QuerySpec {
            label: "list newest 50, no filter",
            path: "/v1/dead-letters?limit=50".to_owned(),
            expected: facts.len() as u64,
        },
        QuerySpec {
            label: "list, 1 filter (stage)",
            path: "/v1/dead-letters?limit=50&stage=crm-writer".to_owned(),
            expected: count(&|f| f.stage == CRM_WRITER),
        },
        QuerySpec {
            label: "list, 3 filters (stage+class+publisher)",
            path:
                "/v1/dead-letters?limit=50&stage=crm-writer&error_class=permanent&publisher=billing"
                    .to_owned(),
            expected: count(&|f| {
                f.stage == CRM_WRITER
                    && f.class == ErrorClass::Permanent
                    && f.publisher == "billing"
            }),
        },
        QuerySpec {
            label: "list by email",
            path: format!("/v1/dead-letters?limit=50&email={email}"),
            expected: count(&|f| f.email == email),
        },
        QuerySpec {
            label: "list, 1-day window",
            path: format!(
                "/v1/dead-letters?limit=50&since={}&until={}",
                rfc(since),
                rfc(until)
            ),
            expected: count(&|f| (since_s..=until_s).contains(&f.at)),
        },
        QuerySpec {
            label: "groups, no filter",
            path: "/v1/dead-letters/groups".to_owned(),
            expected: facts.len() as u64,
        },
        QuerySpec {
            label: "groups, 1 filter (stage)",
            path: "/v1/dead-letters/groups?stage=email-writer".to_owned(),
            expected: count(&|f| f.stage == EMAIL_WRITER),
        },
        QuerySpec {
            label: "stats, no filter",
            path: "/v1/dead-letters/stats".to_owned(),
            expected: facts.len() as u64,
        },
    ]
}

/// One warm-up call, then [`REPEATS`] timed ones; the last answer is returned.
async fn time_query(
    api: &Api,
    label: &'static str,
    path: &str,
) -> anyhow::Result<(QueryRun, Value)> {
    let (_, mut answer) = api.timed_get(path).await?;
    let mut samples = Vec::with_capacity(REPEATS);
    for _ in 0..REPEATS {
        let (took, body) = api.timed_get(path).await?;
        samples.push(took);
        answer = body;
    }
    let matched = answer["total"].as_u64().unwrap_or_default();
    Ok((
        QueryRun {
            label,
            path: path.to_owned(),
            matched,
            latencies: Latencies::merge([samples]),
        },
        answer,
    ))
}

/// Finds the spec's group, replays it as-is at the spec's rate and follows the job to its end.
async fn replay(
    api: &Api,
    bus: &Bus,
    spec: &ReplaySpec,
    interrupted: &CancellationToken,
) -> anyhow::Result<ReplayRun> {
    let found = api
        .get(&format!("/v1/dead-letters/groups?{}", spec.selector))
        .await?;
    let groups = found["groups"].as_array().cloned().unwrap_or_default();
    let [group] = groups.as_slice() else {
        bail!(
            "the replay's filter {} should match one group, not {}: {found}",
            spec.selector,
            groups.len()
        );
    };
    let fingerprint = group["group"]["fingerprint"]
        .as_str()
        .context("a group without a fingerprint")?
        .to_owned();
    let cause = group["group"]["cause"].as_str().unwrap_or("").to_owned();
    let request = |dry_run: bool| {
        json!({
            "group": fingerprint,
            "mode": "as_is",
            "rate": spec.rate,
            "dry_run": dry_run,
            "reason": "handoff-bench: replay rate",
        })
    };
    let (status, plan) = api.post("/v1/replays", &request(true)).await?;
    if status != 200 {
        bail!("the replay's dry run answered {status}: {plan}");
    }
    let rate_reason = plan["rate_reason"].as_str().unwrap_or("").to_owned();
    let queue = plan["targets"]
        .as_object()
        .and_then(|targets| targets.keys().next().cloned())
        .unwrap_or_default();
    println!(
        "      replay: group {fingerprint} ({} dead letters, \"{}\") as-is to {queue} at {}/s \
         ({rate_reason}), estimated {:.1} s…",
        thousands(plan["count"].as_u64().unwrap_or_default()),
        cause,
        spec.rate,
        plan["estimated_seconds"].as_f64().unwrap_or_default(),
    );
    let posted = Instant::now();
    let (status, job) = api.post("/v1/replays", &request(false)).await?;
    if status != 201 {
        bail!("starting the replay answered {status}: {job}");
    }
    let id = job["id"]
        .as_str()
        .context("a job without an id")?
        .to_owned();
    let rate = job["rate"].as_f64().unwrap_or_default();
    let total = job["total"].as_u64().unwrap_or_default();
    let within =
        Duration::from_secs_f64(3.0 * total as f64 / rate.max(1.0)) + Duration::from_secs(30);
    // (when the bench first saw a send, how many had been sent then)
    let mut first_seen: Option<(Instant, u64)> = None;
    let mut sending_rate = None;
    let (job, seen_elapsed) = loop {
        let job = api.get(&format!("/v1/replays/{id}")).await?;
        let seen = Instant::now();
        let sent = job["sent"].as_u64().unwrap_or_default();
        if first_seen.is_none() && sent > 0 {
            first_seen = Some((seen, sent));
        }
        let state = job["state"].as_str().unwrap_or("");
        if state == "done" || state == "cancelled" {
            sending_rate = first_seen
                .filter(|(at, first)| sent > *first && seen > *at)
                .map(|(at, first)| (sent - first) as f64 / (seen - at).as_secs_f64());
            break (job, posted.elapsed());
        }
        if interrupted.is_cancelled() || posted.elapsed() >= within {
            // Stop it rather than leave it sending into a namespace about to go.
            let _ = api
                .post(&format!("/v1/replays/{id}/cancel"), &json!({}))
                .await;
            let job = api.get(&format!("/v1/replays/{id}")).await?;
            break (job, posted.elapsed());
        }
        tokio::time::sleep(JOB_POLL).await;
    };
    let time_of = |field: &str| {
        job[field]
            .as_str()
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
    };
    let job_elapsed = time_of("created_at")
        .zip(time_of("finished_at"))
        .and_then(|(from, to)| Duration::try_from(to - from).ok());
    let queued = if queue.is_empty() {
        None
    } else {
        bus.message_count(&queue).await.ok()
    };
    Ok(ReplayRun {
        group: fingerprint,
        cause,
        queue,
        asked: spec.rate,
        rate,
        rate_reason,
        total,
        sent: job["sent"].as_u64().unwrap_or_default(),
        state: job["state"].as_str().unwrap_or("unknown").to_owned(),
        job_elapsed,
        seen_elapsed,
        sending_rate,
        queued,
    })
}

/// The operator API, with the bench's token.
pub(crate) struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    pub(crate) fn new(base: String) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .context("building the API client")?;
        Ok(Api { base, http })
    }

    /// `GET path`, timed from the request to the last byte of the answer, which must be 200.
    async fn timed_get(&self, path: &str) -> anyhow::Result<(Duration, Value)> {
        let url = format!("{}{path}", self.base);
        let started = Instant::now();
        let response = self
            .http
            .get(&url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .with_context(|| format!("reading GET {url}"))?;
        let took = started.elapsed();
        if status != reqwest::StatusCode::OK {
            bail!(
                "GET {url} answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let json = serde_json::from_slice(&body).with_context(|| format!("GET {url}: not JSON"))?;
        Ok((took, json))
    }

    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self.timed_get(path).await?.1)
    }

    /// The `total` of a list, groups or stats answer.
    pub(crate) async fn total(&self, path: &str) -> anyhow::Result<u64> {
        self.get(path)
            .await?
            .get("total")
            .and_then(Value::as_u64)
            .ok_or_else(|| anyhow!("GET {path}: no total"))
    }

    pub(crate) async fn post(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        let response = self
            .http
            .post(&url)
            .bearer_auth(TOKEN)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .with_context(|| format!("reading POST {url}"))?;
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }
}

/// The `[replay]` settings a handler runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplaySettings {
    /// The rate asked for is the rate a job runs at ([9/10]'s replay rate).
    Unbounded,
    /// The handler's own defaults, production's budgets and backlog bound ([10/10]).
    Defaults,
}

/// The handler's configuration: everything a part depends on is spelled out, the rest
/// is the handler's defaults (prefetch, Redis timeout, request timeout).
pub(crate) fn config(namespace: &str, http: u16, admin: u16, replay: ReplaySettings) -> String {
    let amqp = handoff_test_support::amqp_url();
    let redis = handoff_test_support::redis_url();
    let token_sha256 = hex::encode(Sha256::digest(TOKEN.as_bytes()));
    let replay = match replay {
        ReplaySettings::Unbounded => {
            "[replay]
# The rate the bench asks for must be the rate the job runs at: a cap above it, budgets
# far above it for both destinations (share x budget = 5,000/s), and a backlog bound out
# of the way (nothing consumes the origin queues).
max_rate = 1000.0
budgets = { hubspot = 10000.0, mailchimp = 10000.0 }
max_backlog = 1000000
max_selection = 100000
"
        }
        ReplaySettings::Defaults => {
            "# [replay]: the handler's defaults (production's budgets, share and backlog bound).
"
        }
    };
    format!(
        r#"# Written by handoff-bench; removed when the run ends.
namespace = "{namespace}"

[http]
listen = "127.0.0.1:{http}"

[admin]
listen = "127.0.0.1:{admin}"

[bus]
url = "{amqp}"

[redis]
url = "{redis}"

[store]
# The shared Redis runs without AOF. Production keeps the default (true) with a Redis
# on appendfsync always, which adds an fsync to every park.
require_durable = false

{replay}
[shutdown]
grace = "5s"

[telemetry]
# Production's format; nothing is logged per dead letter at warn.
log_format = "json"
log_filter = "warn"

[[operators]]
name = "{OPERATOR}"
token_sha256 = "{token_sha256}"
role = "operator"
"#
    )
}

/// What a published dead letter is filed under, to check the answers' totals.
struct Fact {
    cause: Cause,
    stage: &'static str,
    class: ErrorClass,
    publisher: &'static str,
    /// The email the handler indexes it under (lower case already).
    email: String,
    /// Dead-lettered at, Unix seconds.
    at: i64,
}

/// The records, ready to publish, and what they are filed under.
struct Mix {
    messages: Vec<OutgoingMessage>,
    facts: Vec<Fact>,
    /// Encoded bytes of all records.
    bytes: u64,
    /// Distinct people the dead letters are about.
    people: usize,
}

impl Mix {
    /// `count` records in the mix's proportions, in random order, for `namespace`.
    fn make(
        namespace: &str,
        run_id: &str,
        count: usize,
        now: OffsetDateTime,
    ) -> anyhow::Result<Mix> {
        let normalizer = Normalizer::new(&NormalizeConfig::default())
            .map_err(|err| anyhow!("compiling the default normalize config: {err}"))?;
        let mut maker = Maker {
            namespace,
            run_id,
            now,
            normalizer,
            rng: Rng(SEED),
        };
        let mut order: Vec<usize> = counts(count)
            .into_iter()
            .enumerate()
            .flat_map(|(cause, n)| std::iter::repeat_n(cause, n))
            .collect();
        maker.rng.shuffle(&mut order);
        let mut messages = Vec::with_capacity(count);
        let mut facts = Vec::with_capacity(count);
        let mut bytes = 0;
        let mut people = std::collections::HashSet::new();
        for (i, cause) in order.into_iter().enumerate() {
            let (message, fact, person) = maker.dead_letter(&CAUSES[cause], i)?;
            bytes += message.body.len() as u64;
            people.insert(person);
            messages.push(message);
            facts.push(fact);
        }
        Ok(Mix {
            messages,
            facts,
            bytes,
            people: people.len(),
        })
    }
}

/// Records per cause for `count` in all: the mix's shares, rounded down, the rest to the
/// first cause.
fn counts(count: usize) -> Vec<usize> {
    let mut counts: Vec<usize> = CAUSES
        .iter()
        .map(|spec| count * spec.per_10k as usize / 10_000)
        .collect();
    let rest = count - counts.iter().sum::<usize>();
    counts[0] += rest;
    counts
}

/// One person the events are about.
struct Person {
    index: usize,
    first: &'static str,
    last: &'static str,
    email: String,
}

const FIRST_NAMES: [&str; 16] = [
    "Jordan", "Alex", "Sam", "Taylor", "Morgan", "Riley", "Casey", "Jamie", "Avery", "Quinn",
    "Dana", "Robin", "Kim", "Lee", "Noor", "Ines",
];
const LAST_NAMES: [&str; 16] = [
    "Lee", "Kim", "Garcia", "Nguyen", "Patel", "Smith", "Müller", "Rossi", "Silva", "Cohen",
    "Okafor", "Tanaka", "Novak", "Dubois", "Larsen", "Haddad",
];
const DOMAINS: [&str; 6] = [
    "example.com",
    "example.org",
    "acme-analytics.example",
    "globex.example",
    "initech.example",
    "mail.example.net",
];

fn person(index: usize) -> Person {
    let first = FIRST_NAMES[index % FIRST_NAMES.len()];
    let last = LAST_NAMES[(index / FIRST_NAMES.len()) % LAST_NAMES.len()];
    let ascii_last: String = last
        .chars()
        .map(|c| if c == 'ü' { 'u' } else { c })
        .collect();
    Person {
        index,
        first,
        last,
        email: format!(
            "{}.{}{index}@{}",
            first.to_lowercase(),
            ascii_last.to_lowercase(),
            DOMAINS[index % DOMAINS.len()]
        ),
    }
}

/// Makes the records of the mix.
struct Maker<'a> {
    namespace: &'a str,
    run_id: &'a str,
    now: OffsetDateTime,
    normalizer: Normalizer,
    rng: Rng,
}

/// How a writer gave up.
struct WriterFailure {
    class: ErrorClass,
    /// The record's message (for exhausted retries: the reason, then the last error).
    message: String,
    /// Each attempt's error.
    error: String,
    code: &'static str,
    destination: &'static str,
    attempts: u32,
    /// From the first failure to the last.
    span: Duration,
}

impl Maker<'_> {
    /// The record of dead letter `i` of `spec`, as the stage would publish it, with what
    /// it is filed under and the person it is about.
    fn dead_letter(
        &mut self,
        spec: &Spec,
        i: usize,
    ) -> anyhow::Result<(OutgoingMessage, Fact, usize)> {
        // Dead-lettered at: whole seconds, so a time window is counted exactly.
        let at_secs = match spec.when {
            When::Week => self.now.unix_timestamp() - self.rng.below(WEEK_SECONDS as usize) as i64,
            When::Incident { ago_hours, hours } => {
                self.now.unix_timestamp() - ago_hours * 3600
                    + self.rng.below((hours * 3600) as usize) as i64
            }
        };
        let at = OffsetDateTime::from_unix_timestamp(at_secs)?;
        // A few people account for many dead letters (the same bad record, again and again).
        let who = person(((self.rng.unit().powi(2)) * PEOPLE as f64) as usize % PEOPLE);
        let publisher = self.rng.weighted(&PUBLISHERS);
        let event_id = format!(
            "evt_{}_{}_{i:06}",
            spec.event_type.as_str().replace('.', "_"),
            self.run_id
        );
        let trace_id = self.rng.hex(16);
        let traceparent = format!("00-{trace_id}-{}-01", self.rng.hex(8));
        let record = match spec.stage {
            _ if matches!(spec.cause, Cause::BrokerCrm | Cause::BrokerNormalizer) => self.broker(
                spec,
                &who,
                publisher,
                &event_id,
                at,
                &traceparent,
                &trace_id,
            )?,
            NORMALIZER => self.normalizer(
                spec,
                &who,
                publisher,
                &event_id,
                at,
                &traceparent,
                &trace_id,
            )?,
            _ => self.writer(
                spec,
                &who,
                publisher,
                &event_id,
                at,
                &traceparent,
                &trace_id,
            )?,
        };
        let class = ErrorClass::try_from(record.error_class).unwrap_or(ErrorClass::Unspecified);
        let email = if spec.cause == Cause::LeadEmail {
            broken_email(&who.email)
        } else {
            who.email.clone()
        };
        let routing_key = if class == ErrorClass::Broker {
            record.origin_routing_key.clone()
        } else {
            format!("{}.{}", spec.stage, class.label())
        };
        let message = OutgoingMessage {
            routing_key,
            body: record.encode_to_vec(),
            content_type: Some(PROTOBUF_CONTENT_TYPE.to_owned()),
            message_id: Some(event_id),
            message_type: Some(DEAD_LETTER_MESSAGE_TYPE.to_owned()),
            headers: [("traceparent".to_owned(), traceparent)].into(),
        };
        let fact = Fact {
            cause: spec.cause,
            stage: spec.stage,
            class,
            publisher,
            email,
            at: at_secs,
        };
        Ok((message, fact, who.index))
    }

    /// The example body of the spec's event type for `who`, with its own id and time.
    fn raw_body(
        &self,
        event_type: EventType,
        who: &Person,
        event_id: &str,
        occurred: OffsetDateTime,
    ) -> Value {
        let mut body = handoff_ingest::contract::example(event_type);
        body["event_id"] = json!(event_id);
        body["occurred_at"] = json!(occurred.format(&Rfc3339).unwrap_or_default());
        let key = match event_type {
            EventType::LeadCreated => "lead",
            EventType::CustomerConverted | EventType::PaymentFailed => "customer",
            _ => "contact",
        };
        let subject = &mut body[key];
        subject["email"] = json!(who.email);
        if subject.get("first_name").is_some() {
            subject["first_name"] = json!(who.first);
        }
        if subject.get("last_name").is_some() {
            subject["last_name"] = json!(who.last);
        }
        body
    }

    /// The envelope ingest (raw) or the normalizer (canonical) published.
    #[allow(clippy::too_many_arguments)] // The envelope's fields, each its own.
    fn envelope(
        &self,
        event_type: EventType,
        publisher: &str,
        event_id: &str,
        schema_version: u32,
        occurred: OffsetDateTime,
        raw: &[u8],
        payload: Payload,
    ) -> Vec<u8> {
        let source = if publisher == "billing" {
            "billing"
        } else {
            "crm"
        };
        v1::Envelope {
            event_id: event_id.to_owned(),
            event_type: event_type.as_str().to_owned(),
            schema_version,
            occurred_at: Some(timestamp(occurred)),
            received_at: Some(timestamp(occurred + Duration::from_millis(350))),
            source: source.to_owned(),
            publisher_id: publisher.to_owned(),
            content_sha256: Sha256::digest(raw).to_vec(),
            attributes: [(
                "request_id".to_owned(),
                format!("req_{}", &event_id[event_id.len().saturating_sub(12)..]),
            )]
            .into(),
            payload: Some(payload),
        }
        .encode_to_vec()
    }

    /// A normalizer rejection: the broken body run through `handoff_normalize`.
    #[allow(clippy::too_many_arguments)] // The record's facts, each its own.
    fn normalizer(
        &mut self,
        spec: &Spec,
        who: &Person,
        publisher: &str,
        event_id: &str,
        at: OffsetDateTime,
        traceparent: &str,
        trace_id: &str,
    ) -> anyhow::Result<v1::DeadLetter> {
        let occurred = at - Duration::from_secs(1 + self.rng.below(600) as u64);
        let mut body = self.raw_body(spec.event_type, who, event_id, occurred);
        let version = self.break_body(spec.cause, &mut body, who);
        let raw = body.to_string().into_bytes();
        let rejection = match self.normalizer.normalize(spec.event_type, version, &raw) {
            Ok(_) => bail!(
                "{:?}: the normalizer accepted the broken body {body}",
                spec.cause
            ),
            Err(rejection) => rejection,
        };
        let message = rejection.to_string();
        let original = self.envelope(
            spec.event_type,
            publisher,
            event_id,
            version,
            occurred,
            &raw,
            Payload::Raw(v1::RawPayload {
                content_type: "application/json".to_owned(),
                body: raw.clone(),
            }),
        );
        let ns = self.namespace;
        Ok(v1::DeadLetter {
            event_id: event_id.to_owned(),
            event_type: spec.event_type.as_str().to_owned(),
            publisher_id: publisher.to_owned(),
            stage: NORMALIZER.to_owned(),
            error_class: rejection.error_class() as i32,
            error_message: message.clone(),
            error_code: String::new(),
            destination: String::new(),
            field_errors: rejection
                .field_errors()
                .iter()
                .map(|e| v1::FieldError {
                    path: e.path.clone(),
                    message: e.message.clone(),
                })
                .collect(),
            attempts: vec![attempt(1, at, &message, "permanent")],
            first_failed_at: Some(timestamp(at)),
            last_failed_at: Some(timestamp(at)),
            origin_exchange: format!("{ns}.events"),
            origin_routing_key: spec.event_type.raw_routing_key(),
            origin_queue: format!("{ns}.{NORMALIZER}"),
            original_body: original,
            original_headers: [("traceparent".to_owned(), traceparent.to_owned())].into(),
            original_content_type: PROTOBUF_CONTENT_TYPE.to_owned(),
            original_message_id: event_id.to_owned(),
            traceparent: traceparent.to_owned(),
            tracestate: String::new(),
            trace_id: trace_id.to_owned(),
            dead_lettered_at: Some(timestamp(at)),
        })
    }

    /// Breaks the example body the way the cause's publishers do; returns the schema version.
    fn break_body(&mut self, cause: Cause, body: &mut Value, who: &Person) -> u32 {
        match cause {
            Cause::LeadEmail => body["lead"]["email"] = json!(broken_email(&who.email)),
            Cause::LeadLifecycle => {
                body["lead"]["lifecycle_stage"] =
                    json!(
                        self.rng
                            .pick(&["Hot Lead", "warm", "Nurture", "Event attendee"])
                    );
            }
            Cause::LeadCountry => {
                body["lead"]["country"] =
                    json!(self.rng.pick(&["Atlantis", "Europe", "Earth", "Gondor"]));
            }
            Cause::MeetingStart => {
                body["meeting"]["starts_at"] =
                    json!(
                        self.rng
                            .pick(&["next Tuesday 3pm", "24/03/2026 15:00", "tomorrow"])
                    );
            }
            Cause::PaymentMoney => {
                body["payment"]["currency"] = json!(self.rng.pick(&["US Dollars", "dollars", "€"]));
                body["payment"]["amount"] = json!(-99.5);
            }
            Cause::SubscriptionStatus => {
                body["subscription"]["status"] =
                    json!(
                        self.rng
                            .pick(&["on hold", "frozen", "dunning", "suspended"])
                    );
            }
            Cause::CustomerLifecycle => {
                body["customer"]["lifecycle_stage"] =
                    json!(
                        self.rng
                            .pick(&["Closed Won", "won", "Paying", "Active customer"])
                    );
            }
            Cause::ContactEmpty => body["contact"] = json!({"email": who.email}),
            Cause::LeadSchema => return 3,
            _ => {}
        }
        CURRENT_SCHEMA_VERSION
    }

    /// The canonical envelope the normalizer published for the example event about `who`.
    fn canonical(
        &self,
        event_type: EventType,
        who: &Person,
        publisher: &str,
        event_id: &str,
        occurred: OffsetDateTime,
    ) -> anyhow::Result<Vec<u8>> {
        let raw = self
            .raw_body(event_type, who, event_id, occurred)
            .to_string()
            .into_bytes();
        let normalized = self
            .normalizer
            .normalize(event_type, CURRENT_SCHEMA_VERSION, &raw)
            .map_err(|rejection| {
                anyhow!(
                    "the {} example was rejected: {rejection}",
                    event_type.as_str()
                )
            })?;
        Ok(self.envelope(
            event_type,
            publisher,
            event_id,
            CURRENT_SCHEMA_VERSION,
            occurred,
            &raw,
            Payload::Canonical(normalized.payload),
        ))
    }

    /// A writer's dead letter: a permanent refusal or retries run out.
    #[allow(clippy::too_many_arguments)] // The record's facts, each its own.
    fn writer(
        &mut self,
        spec: &Spec,
        who: &Person,
        publisher: &str,
        event_id: &str,
        at: OffsetDateTime,
        traceparent: &str,
        trace_id: &str,
    ) -> anyhow::Result<v1::DeadLetter> {
        let failure = self.writer_failure(spec.cause, who);
        let first = at - failure.span;
        let occurred = first - Duration::from_secs(1 + self.rng.below(120) as u64);
        let original = self.canonical(spec.event_type, who, publisher, event_id, occurred)?;
        let ns = self.namespace;
        let queue = format!("{ns}.{}", spec.stage);
        let routing_key = spec.event_type.canonical_routing_key();
        let n = failure.attempts;
        let attempts: Vec<v1::Attempt> = (1..=n)
            .map(|k| {
                let share = if n > 1 {
                    f64::from(k - 1) / f64::from(n - 1)
                } else {
                    1.0
                };
                let when = first + failure.span.mul_f64(share * share);
                let outcome = if k == n && failure.class == ErrorClass::Permanent {
                    "permanent"
                } else {
                    "transient"
                };
                attempt(k, when, &failure.error, outcome)
            })
            .collect();
        let mut headers: std::collections::HashMap<String, String> =
            [("traceparent".to_owned(), traceparent.to_owned())].into();
        // A retried delivery comes back through a delay queue and the default exchange; its
        // route and history ride in headers.
        let (origin_exchange, origin_routing_key) = if n > 1 {
            let history: Vec<Value> = attempts[..attempts.len() - 1]
                .iter()
                .map(|a| {
                    json!({
                        "n": a.number,
                        "at": a.at.as_ref().map(rfc3339_of).unwrap_or_default(),
                        "error": a.error,
                    })
                })
                .collect();
            headers.insert(HEADER_ATTEMPT.to_owned(), n.to_string());
            headers.insert(
                HEADER_FIRST_FAILED_AT.to_owned(),
                first.format(&Rfc3339).unwrap_or_default(),
            );
            headers.insert(
                HEADER_ATTEMPTS.to_owned(),
                Value::Array(history).to_string(),
            );
            headers.insert(HEADER_ORIGIN_EXCHANGE.to_owned(), format!("{ns}.events"));
            headers.insert(HEADER_ORIGIN_ROUTING_KEY.to_owned(), routing_key.clone());
            (String::new(), queue.clone())
        } else {
            (format!("{ns}.events"), routing_key)
        };
        Ok(v1::DeadLetter {
            event_id: event_id.to_owned(),
            event_type: spec.event_type.as_str().to_owned(),
            publisher_id: publisher.to_owned(),
            stage: spec.stage.to_owned(),
            error_class: failure.class as i32,
            error_message: failure.message,
            error_code: failure.code.to_owned(),
            field_errors: Vec::new(),
            destination: failure.destination.to_owned(),
            attempts,
            first_failed_at: Some(timestamp(first)),
            last_failed_at: Some(timestamp(at)),
            origin_exchange,
            origin_routing_key,
            origin_queue: queue,
            original_body: original,
            original_headers: headers,
            original_content_type: PROTOBUF_CONTENT_TYPE.to_owned(),
            original_message_id: event_id.to_owned(),
            traceparent: traceparent.to_owned(),
            tracestate: String::new(),
            trace_id: trace_id.to_owned(),
            dead_lettered_at: Some(timestamp(at)),
        })
    }

    /// How the cause's writer gave up, in the words its delivery engine uses.
    fn writer_failure(&mut self, cause: Cause, who: &Person) -> WriterFailure {
        let hubspot_400 = |operation: &str, details: Value| WriterFailure {
            class: ErrorClass::Permanent,
            message: format!(
                "{operation}: HTTP 400 VALIDATION_ERROR: {}",
                truncate(&format!("Property values were not valid: {details}"), 500)
            ),
            error: String::new(),
            code: "400",
            destination: "hubspot",
            attempts: 1,
            span: Duration::ZERO,
        };
        let detail = |name: &str, code: &str, message: String| {
            json!({
                "isValid": false,
                "message": message,
                "error": code,
                "name": name,
                "localizedErrorMessage": message,
                "portalId": PORTAL_ID,
            })
        };
        let exhausted =
            |attempts: u32, span: Duration, error: String, destination, reason: String| {
                WriterFailure {
                    class: ErrorClass::RetriesExhausted,
                    message: format!("{reason}: {error}"),
                    error,
                    code: "",
                    destination,
                    attempts,
                    span,
                }
            };
        let hours = |h: u64| Duration::from_secs(h * 3600);
        let mut failure = match cause {
            Cause::CrmUnknownProperty => hubspot_400(
                "contact.upsert",
                json!([
                    detail(
                        "team_size",
                        "PROPERTY_DOESNT_EXIST",
                        "Property \"team_size\" does not exist".to_owned()
                    ),
                    detail(
                        "trial_requested",
                        "PROPERTY_DOESNT_EXIST",
                        "Property \"trial_requested\" does not exist".to_owned()
                    ),
                ]),
            ),
            Cause::CrmPlanOption => hubspot_400(
                "contact.upsert",
                json!([detail(
                    "plan",
                    "INVALID_OPTION",
                    "pro was not one of the allowed options: [free, starter, business, enterprise]"
                        .to_owned()
                )]),
            ),
            Cause::CrmDealStage => hubspot_400(
                "deal.upsert",
                json!([detail(
                    "dealstage",
                    "INVALID_OPTION",
                    "closedwon was not one of the allowed options: [qualification, proposal, \
                     negotiation, won, lost]"
                        .to_owned()
                )]),
            ),
            Cause::CrmInvalidEmail => hubspot_400(
                "contact.upsert",
                json!([detail(
                    "email",
                    "INVALID_EMAIL",
                    format!("Email address {} is invalid", who.email)
                )]),
            ),
            Cause::CrmMissingScopes => WriterFailure {
                class: ErrorClass::Permanent,
                message: "company.upsert: HTTP 403 MISSING_SCOPES: This app hasn't been granted \
                          all required scopes to make this call. Read more about required scopes \
                          here: https://developers.hubspot.com/scopes."
                    .to_owned(),
                error: String::new(),
                code: "403",
                destination: "hubspot",
                attempts: 1,
                span: Duration::ZERO,
            },
            Cause::CrmConflict => WriterFailure {
                class: ErrorClass::Permanent,
                message: format!(
                    "contact.upsert: HTTP 409 CONFLICT: Contact already exists. Existing ID: {}",
                    100_000 + self.rng.below(900_000)
                ),
                error: String::new(),
                code: "409",
                destination: "hubspot",
                attempts: 1,
                span: Duration::ZERO,
            },
            Cause::CrmBadGateway => exhausted(
                30,
                hours(2),
                "contact.upsert: HTTP 502: Bad Gateway".to_owned(),
                "hubspot",
                "gave up after 30 attempts".to_owned(),
            ),
            Cause::MailchimpUnavailable => exhausted(
                30,
                hours(3),
                "member.upsert: HTTP 503 Service Unavailable: The server is temporarily unable \
                 to service your request. Please try again later."
                    .to_owned(),
                "mailchimp",
                "gave up after 30 attempts".to_owned(),
            ),
            Cause::MailchimpTimeout => exhausted(
                24,
                hours(24),
                "member.upsert: the request timed out after 10s".to_owned(),
                "mailchimp",
                "gave up 86400s after the first failure".to_owned(),
            ),
            Cause::MailchimpCompliance => WriterFailure {
                class: ErrorClass::Permanent,
                message: format!(
                    "member.upsert: HTTP 400 Member In Compliance State: {} is already a list \
                     member in compliance state due to unsubscribe, bounce, or compliance review \
                     and cannot be subscribed.",
                    who.email
                ),
                error: String::new(),
                code: "400",
                destination: "mailchimp",
                attempts: 1,
                span: Duration::ZERO,
            },
            Cause::MailchimpTags => exhausted(
                30,
                hours(6),
                "member.tags: HTTP 500 Internal Server Error: An unexpected internal error has \
                 occurred. Please contact Support for more information."
                    .to_owned(),
                "mailchimp",
                "gave up after 30 attempts".to_owned(),
            ),
            Cause::MailchimpReset => exhausted(
                30,
                hours(6),
                "member.upsert: error sending request: connection reset by peer".to_owned(),
                "mailchimp",
                "gave up after 30 attempts".to_owned(),
            ),
            _ => WriterFailure {
                class: ErrorClass::Unspecified,
                message: String::new(),
                error: String::new(),
                code: "",
                destination: "",
                attempts: 1,
                span: Duration::ZERO,
            },
        };
        if failure.error.is_empty() {
            failure.error = failure.message.clone();
        }
        failure
    }

    /// What the parker makes of a message the broker dead-lettered (delivery limit): the
    /// envelope as it was, the broker's headers, no verdict of a handler.
    #[allow(clippy::too_many_arguments)] // The record's facts, each its own.
    fn broker(
        &mut self,
        spec: &Spec,
        who: &Person,
        publisher: &str,
        event_id: &str,
        at: OffsetDateTime,
        traceparent: &str,
        trace_id: &str,
    ) -> anyhow::Result<v1::DeadLetter> {
        let ns = self.namespace;
        let occurred = at - Duration::from_secs(30 + self.rng.below(600) as u64);
        let (original, routing_key) = if spec.stage == NORMALIZER {
            let raw = self
                .raw_body(spec.event_type, who, event_id, occurred)
                .to_string()
                .into_bytes();
            let envelope = self.envelope(
                spec.event_type,
                publisher,
                event_id,
                CURRENT_SCHEMA_VERSION,
                occurred,
                &raw,
                Payload::Raw(v1::RawPayload {
                    content_type: "application/json".to_owned(),
                    body: raw.clone(),
                }),
            );
            (envelope, spec.event_type.raw_routing_key())
        } else {
            (
                self.canonical(spec.event_type, who, publisher, event_id, occurred)?,
                spec.event_type.canonical_routing_key(),
            )
        };
        let queue = format!("{ns}.{}", spec.stage);
        let x_death = json!([{
            "count": 1,
            "reason": "delivery_limit",
            "queue": queue,
            "time": at.unix_timestamp(),
            "exchange": format!("{ns}.events"),
            "routing-keys": [routing_key],
        }]);
        let headers = [
            ("traceparent", traceparent.to_owned()),
            ("x-death", x_death.to_string()),
            ("x-first-death-exchange", format!("{ns}.events")),
            ("x-first-death-queue", queue.clone()),
            ("x-first-death-reason", "delivery_limit".to_owned()),
            ("x-last-death-exchange", format!("{ns}.events")),
            ("x-last-death-queue", queue.clone()),
            ("x-last-death-reason", "delivery_limit".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        Ok(v1::DeadLetter {
            event_id: event_id.to_owned(),
            stage: spec.stage.to_owned(),
            error_class: ErrorClass::Broker as i32,
            error_message: "dead-lettered by the broker: delivery_limit".to_owned(),
            error_code: "delivery_limit".to_owned(),
            first_failed_at: Some(timestamp(at)),
            last_failed_at: Some(timestamp(at)),
            origin_exchange: format!("{ns}.events"),
            origin_routing_key: routing_key,
            origin_queue: queue,
            original_body: original,
            original_headers: headers,
            original_content_type: PROTOBUF_CONTENT_TYPE.to_owned(),
            original_message_id: event_id.to_owned(),
            traceparent: traceparent.to_owned(),
            trace_id: trace_id.to_owned(),
            dead_lettered_at: Some(timestamp(at)),
            ..v1::DeadLetter::default()
        })
    }
}

/// `jordan.lee0@example.org` as a form that lost its `@` writes it.
fn broken_email(email: &str) -> String {
    email.replacen('@', "(at)", 1)
}

fn attempt(number: u32, at: OffsetDateTime, error: &str, outcome: &str) -> v1::Attempt {
    v1::Attempt {
        number,
        at: Some(timestamp(at)),
        error: error.to_owned(),
        outcome: outcome.to_owned(),
    }
}

fn timestamp(t: OffsetDateTime) -> Timestamp {
    Timestamp {
        seconds: t.unix_timestamp(),
        nanos: i32::try_from(t.nanosecond()).unwrap_or_default(),
    }
}

fn rfc3339_of(ts: &Timestamp) -> String {
    handoff_events::to_offset_date_time(ts)
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// At most `max` characters, as the delivery engine keeps of a vendor's message.
fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// A small deterministic generator (SplitMix64): the same mix in every run, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1_u64 << 53) as f64
    }

    /// Uniform in [0, n).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// One of `items`, each as likely as its weight.
    fn weighted<T: Copy>(&mut self, items: &[(T, u32)]) -> T {
        let total: u32 = items.iter().map(|(_, w)| w).sum();
        let mut roll = self.below(total as usize) as u32;
        for (item, weight) in items {
            if roll < *weight {
                return *item;
            }
            roll -= weight;
        }
        items[items.len() - 1].0
    }

    fn hex(&mut self, bytes: usize) -> String {
        let raw: Vec<u8> = (0..bytes).map(|_| self.next() as u8).collect();
        hex::encode(raw)
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// The part's figures, printed after the other parts' tables.
pub fn report(run: &DeadLettersRun) -> String {
    let mut out = String::new();
    let mib = |kib: Option<u64>| {
        kib.map_or("unknown".to_owned(), |kib| {
            format!("{:.1} MiB", kib as f64 / 1024.0)
        })
    };
    let secs = |s: Option<f64>| s.map_or("-".to_owned(), |s| format!("{s:.1} s"));
    let _ = writeln!(
        out,
        "\ndead-letter handler (handoff-dlq serve, release binary; namespace {}). Redis here runs \
         WITHOUT AOF, so the handler ran with store.require_durable = false: no park waited for \
         an fsync, which production's appendfsync always adds to every one.",
        run.namespace
    );
    let _ = writeln!(
        out,
        "  mix: {} DeadLetter records ({:.1} KiB each on average, original envelope included), \
         {} causes → {} groups in the handler, {} people, {} publishers, over the last 7 days; \
         made in {:.1} s (not measured)",
        thousands(run.count),
        run.record_bytes as f64 / run.count.max(1) as f64 / 1024.0,
        run.causes,
        run.groups.map_or("?".to_owned(), thousands),
        thousands(run.people as u64),
        PUBLISHERS.len(),
        run.prepare.as_secs_f64(),
    );
    let wall = run.parked_in.as_secs_f64();
    let per_1k = |s: Option<f64>| {
        s.map_or("-".to_owned(), |s| {
            format!("{:.2}", s / (run.count as f64 / 1000.0))
        })
    };
    let _ = writeln!(
        out,
        "  parking: all {} parked {:.1} s after the first publish (the API's list total, polled \
         every {} ms) = {} dead letters/s; the last of the publishes ({} in flight, confirmed) \
         after {:.1} s",
        thousands(run.count),
        wall,
        PARK_POLL.as_millis(),
        thousands((run.count as f64 / wall.max(1e-9)).round() as u64),
        PUBLISH_CONCURRENCY,
        run.published_in.as_secs_f64(),
    );
    let cpu = &run.cpu;
    let capacity = wall * run.cores as f64;
    let _ = writeln!(
        out,
        "  CPU while parking: handler {} ({} CPU-s per 1k parked), Redis {}, RabbitMQ {}, bench \
         (publisher) {}, other {}; box busy {} of {} cores",
        secs(cpu.dead_letters),
        per_1k(cpu.dead_letters),
        secs(cpu.redis),
        secs(cpu.broker),
        secs(cpu.bench),
        secs(cpu.other()),
        cpu.machine
            .filter(|_| capacity > 0.0)
            .map_or("-".to_owned(), |b| format!("{:.0}%", 100.0 * b / capacity)),
        run.cores,
    );
    // As the CPU table does: other work above a tenth of the box makes the rate low.
    if let Some(other) = cpu.other().filter(|o| *o > 0.1 * capacity) {
        let _ = writeln!(
            out,
            "  WARNING: other work used {:.0}% of the machine while parking; the parking rate is \
             low. Re-run on a quiet box for a figure to compare.",
            100.0 * other / capacity
        );
    }
    let _ = writeln!(
        out,
        "  handler peak RSS (VmHWM): {} after parking, {} at the end",
        mib(run.rss_after_parking_kib),
        mib(run.peak_rss_kib),
    );
    let _ = writeln!(
        out,
        "  queries through the API (operator token, keep-alive, one at a time, the whole answer \
         read; 1 warm-up + {REPEATS} timed calls each) over {} parked:",
        thousands(run.count),
    );
    let width = run
        .queries
        .iter()
        .map(|q| q.label.chars().count())
        .max()
        .unwrap_or(5);
    let _ = writeln!(
        out,
        "    {:<width$}  {:>8}  {:>8}  {:>8}  aim < {} s",
        "query",
        "matched",
        "p50 ms",
        "max ms",
        LATENCY_AIM.as_secs(),
    );
    for query in &run.queries {
        let p50 = query.latencies.percentile(50.0);
        let max = query.latencies.percentile(100.0);
        let verdict = if max < LATENCY_AIM {
            "met"
        } else if p50 < LATENCY_AIM {
            "met at p50, NOT at max"
        } else {
            "NOT met"
        };
        let _ = writeln!(
            out,
            "    {:<width$}  {:>8}  {:>8.1}  {:>8.1}  {verdict}",
            query.label,
            thousands(query.matched),
            p50.as_secs_f64() * 1000.0,
            max.as_secs_f64() * 1000.0,
        );
    }
    let _ = writeln!(
        out,
        "    (paths: {})",
        run.queries
            .iter()
            .map(|q| q.path.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(
        out,
        "  replay rate, as-is to the origin queue (which nothing consumes), one group at a time:"
    );
    for replay in &run.replays {
        let achieved = replay.achieved();
        let _ = writeln!(
            out,
            "    {} \"{}\": {} of {} sent to {} at {}/s asked (job rate {}/s: {}): {} in {} = {} = \
             {} of the configured rate; {:.1} s from the bench's POST to it seeing the job {} \
             (polled every {} ms); once sending, by those polls: {}",
            replay.group,
            truncate(&replay.cause, 60),
            thousands(replay.sent),
            thousands(replay.total),
            replay.queue,
            replay.asked,
            replay.rate,
            replay.rate_reason,
            replay.state,
            replay
                .job_elapsed
                .map_or("?".to_owned(), |d| format!("{:.2} s", d.as_secs_f64())),
            achieved.map_or("?".to_owned(), |r| format!("{r:.1}/s")),
            achieved.map_or("?".to_owned(), |r| format!(
                "{:.1}%",
                100.0 * r / replay.asked
            )),
            replay.seen_elapsed.as_secs_f64(),
            replay.state,
            JOB_POLL.as_millis(),
            replay.sending_rate.map_or("?".to_owned(), |r| format!(
                "{r:.1}/s = {:.1}%",
                100.0 * r / replay.asked
            )),
        );
    }
    let _ = writeln!(
        out,
        "    (the job's own clock: created_at, before it takes its dead letters, to \
         finished_at; n sends at rate r need (n - 1)/r at best, as the first goes at once)"
    );
    for check in &run.checks {
        let _ = writeln!(out, "  check: {check}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_adds_up_and_its_replay_groups_have_round_sizes() {
        assert_eq!(CAUSES.iter().map(|s| s.per_10k).sum::<u32>(), 10_000);
        assert_eq!(PUBLISHERS.iter().map(|(_, w)| w).sum::<u32>(), 100);
        let counts = counts(50_000);
        assert_eq!(counts.iter().sum::<usize>(), 50_000);
        let of = |cause| {
            CAUSES
                .iter()
                .zip(&counts)
                .find(|(spec, _)| spec.cause == cause)
                .map(|(_, n)| *n)
        };
        assert_eq!(of(Cause::MailchimpCompliance), Some(2_000));
        assert_eq!(of(Cause::CrmMissingScopes), Some(500));
        assert_eq!(super::counts(1_003).iter().sum::<usize>(), 1_003);
    }

    #[test]
    fn each_replay_selector_matches_its_own_cause_only() {
        let mut maker = test_maker();
        for spec in CAUSES.iter() {
            let (message, _, _) = maker.dead_letter(spec, 0).expect("a record");
            let record = v1::DeadLetter::decode(message.body.as_slice()).expect("a DeadLetter");
            let class = ErrorClass::try_from(record.error_class).expect("a class");
            for replay in &REPLAYS {
                let matches = replay.selector.split('&').all(|pair| {
                    match pair.split_once('=').expect("name=value") {
                        ("stage", v) => record.stage == v,
                        ("error_class", v) => class.label() == v,
                        ("code", v) => record.error_code == v,
                        (other, _) => panic!("a selector on {other}"),
                    }
                });
                assert_eq!(
                    matches,
                    spec.cause == replay.cause,
                    "{:?} and {}",
                    spec.cause,
                    replay.selector
                );
            }
        }
    }

    fn test_maker() -> Maker<'static> {
        Maker {
            namespace: "bench-test-dlq",
            run_id: "0123456789ab",
            now: OffsetDateTime::from_unix_timestamp(1_790_000_000).expect("a time"),
            normalizer: Normalizer::new(&NormalizeConfig::default()).expect("default config"),
            rng: Rng(SEED),
        }
    }

    #[test]
    fn every_cause_makes_a_record_the_handler_can_file_and_replay() {
        let mut maker = test_maker();
        // Several of each, so every broken value a cause picks is tried.
        for (i, spec) in CAUSES.iter().cycle().take(40 * CAUSES.len()).enumerate() {
            let (message, fact, _) = maker.dead_letter(spec, i).expect("a record");
            let record = v1::DeadLetter::decode(message.body.as_slice()).expect("a DeadLetter");
            let envelope =
                v1::Envelope::decode(record.original_body.as_slice()).expect("an envelope");
            let cause = spec.cause;
            assert_eq!(record.stage, spec.stage, "{cause:?}");
            assert_eq!(
                record.origin_queue,
                format!("bench-test-dlq.{}", spec.stage),
                "{cause:?}"
            );
            assert_eq!(envelope.event_type, spec.event_type.as_str(), "{cause:?}");
            assert_eq!(
                message.message_type.as_deref(),
                Some(DEAD_LETTER_MESSAGE_TYPE)
            );
            match (spec.stage, &envelope.payload) {
                (NORMALIZER, Some(Payload::Raw(_))) => {}
                (_, Some(Payload::Canonical(canonical))) => {
                    assert_eq!(
                        handoff_events::primary_email(canonical),
                        Some(fact.email.as_str()),
                        "{cause:?}"
                    );
                }
                other => panic!("{cause:?}: unexpected payload {other:?}"),
            }
            match fact.class {
                ErrorClass::Validation => {
                    assert!(!record.field_errors.is_empty(), "{cause:?}: {record:?}")
                }
                ErrorClass::UnsupportedSchema => assert_eq!(cause, Cause::LeadSchema),
                ErrorClass::Permanent => {
                    assert!(!record.error_code.is_empty() && !record.destination.is_empty())
                }
                ErrorClass::RetriesExhausted => {
                    assert!(record.attempts.len() > 1, "{cause:?}");
                    assert!(record.error_message.starts_with("gave up"), "{cause:?}");
                }
                ErrorClass::Broker => assert_eq!(record.error_code, "delivery_limit"),
                other => panic!("{cause:?}: unexpected class {other:?}"),
            }
        }
    }

    #[test]
    fn the_config_spells_out_what_the_part_depends_on() {
        let text = config("bench-x-dlq", 18095, 19094, ReplaySettings::Unbounded);
        let cfg: toml::Value = toml::from_str(&text).expect("TOML");
        assert_eq!(cfg["namespace"].as_str(), Some("bench-x-dlq"));
        assert_eq!(cfg["http"]["listen"].as_str(), Some("127.0.0.1:18095"));
        assert_eq!(cfg["store"]["require_durable"].as_bool(), Some(false));
        let replay = &cfg["replay"];
        let fastest = REPLAYS.iter().map(|r| r.rate).fold(0.0, f64::max);
        assert!(replay["max_rate"].as_float().expect("max_rate") >= fastest);
        for destination in ["hubspot", "mailchimp"] {
            // The handler's default share is a half.
            let budget = replay["budgets"][destination].as_float().expect("a budget");
            assert!(budget * 0.5 >= fastest, "{destination}");
        }
        assert!(replay["max_backlog"].as_integer().expect("max_backlog") >= 100_000);
        let operator = &cfg["operators"][0];
        assert_eq!(
            operator["token_sha256"].as_str(),
            Some(hex::encode(Sha256::digest(TOKEN.as_bytes())).as_str())
        );
        assert_eq!(operator["role"].as_str(), Some("operator"));

        // [10/10] runs on the handler's own replay defaults.
        let text = config("bench-x-pacing", 18095, 19094, ReplaySettings::Defaults);
        let cfg: toml::Value = toml::from_str(&text).expect("TOML");
        assert!(cfg.get("replay").is_none(), "{text}");
        assert_eq!(cfg["store"]["require_durable"].as_bool(), Some(false));
    }

    #[test]
    fn the_rng_is_deterministic_and_in_range() {
        let (mut a, mut b) = (Rng(1), Rng(1));
        assert_eq!(a.next(), b.next());
        for _ in 0..1_000 {
            let u = a.unit();
            assert!((0.0..1.0).contains(&u));
            assert!(a.below(7) < 7);
        }
        let mut items: Vec<u32> = (0..100).collect();
        a.shuffle(&mut items);
        items.sort_unstable();
        assert_eq!(items, (0..100).collect::<Vec<_>>());
    }
}
