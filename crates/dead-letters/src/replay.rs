//! Replay jobs: send parked dead letters back, paced, watchable, pausable, cancellable,
//! and resumed after a restart.
//!
//! A job takes its dead letters first (`parked` → `replaying`, atomically per dead
//! letter, so a second replay of the same selection finds them taken and sends
//! nothing), then sends them one by one at its rate, each in a new trace linked to the
//! original, keeping the original event id so the stage's idempotency record stops a
//! second delivery. After the broker's confirm the dead letter becomes `replayed`.
//! A crash between the confirm and that mark sends one message again when the job
//! resumes; the stage's dedupe acks it without a second side effect.
//!
//! Pacing: the rate is the operator's (or `replay.default_rate`), at most
//! `replay.max_rate` and at most `replay.share` of the budget of the destination the
//! dead letters failed at, and the job waits while its target queue holds more than
//! `replay.max_backlog` ready messages. The writers still pace every call through the
//! shared `delivery::Pacer`, so the quota holds whatever a job does; the share and the
//! backlog bound are what keep live traffic moving beside a replay.
//!
//! Jobs live in Redis (`{ns}:dlq:job:{id}`: the plan, its state, a cursor and counts;
//! `…:ids`: the dead letters it took, in order; `{ns}:dlq:jobs`: every job by creation
//! time). A job runs in whichever process holds its lease (`…:lock`), so a restarted or
//! second handler resumes it without a second runner.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use handoff_bus::{
    Bus, HEADER_ATTEMPT, HEADER_ATTEMPTS, HEADER_FIRST_FAILED_AT, HEADER_NOT_BEFORE,
    HEADER_ORIGIN_EXCHANGE, HEADER_ORIGIN_ROUTING_KEY, NORMALIZER, OutgoingMessage, trace,
};
use handoff_events::v1;
use handoff_idempotency::StoreError;
use opentelemetry::trace::TraceContextExt as _;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::config::ReplayConfig;
use crate::record::{self, Status, Summary};
use crate::store::{DeadLetterStore, Filter, QueryError, Selection};

/// Header naming the dead letter a replayed message came from.
pub const HEADER_REPLAY_OF: &str = "x-handoff-replay-of";
/// Header naming the replay job.
pub const HEADER_REPLAY_JOB: &str = "x-handoff-replay-job";
/// Header naming the replay mode (`as_is`, `renormalize`).
pub const HEADER_REPLAY_MODE: &str = "x-handoff-replay-mode";

/// How long a runner's lease on a job lasts without renewal.
const LEASE: Duration = Duration::from_secs(15);
/// How often a paused job looks at its state again, and a held one at its backlog.
const POLL: Duration = Duration::from_millis(250);

/// Headers of the failed delivery that must not travel with the replay: its retry
/// history (a replay starts with a fresh budget), the broker's dead-lettering facts,
/// and its trace context (a replay is a new trace, linked to the old one).
const DROPPED_HEADERS: &[&str] = &[
    HEADER_ATTEMPT,
    HEADER_ATTEMPTS,
    HEADER_FIRST_FAILED_AT,
    HEADER_NOT_BEFORE,
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-delivery-count",
    "x-handoff-publish-seq",
    trace::TRACEPARENT,
    trace::TRACESTATE,
    HEADER_REPLAY_OF,
    HEADER_REPLAY_JOB,
    HEADER_REPLAY_MODE,
];

/// How a dead letter is sent back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The original bytes to the queue it failed in.
    #[default]
    AsIs,
    /// The raw event through the normalizer again, with its current rules.
    Renormalize,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::AsIs => "as_is",
            Mode::Renormalize => "renormalize",
        }
    }
}

/// What an operator asks to replay: ids, or a filter, or a group (a filter on its
/// fingerprint). Only parked dead letters are taken.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplayRequest {
    pub ids: Vec<String>,
    pub filter: Option<Filter>,
    pub group: Option<String>,
    pub mode: Mode,
    /// Messages per second; `replay.default_rate` when absent.
    pub rate: Option<f64>,
    pub dry_run: bool,
    /// Why, for the audit log.
    pub reason: String,
}

impl ReplayRequest {
    /// What it picks (exactly one of ids, a filter, a group).
    pub fn selection(&self) -> Result<Selection, String> {
        Selection::of(&self.ids, self.filter.as_ref(), self.group.as_deref())
    }
}

/// What a replay would do (the answer to a dry run, and the plan of a job).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub mode: Mode,
    /// Parked dead letters selected that can be sent.
    pub count: u64,
    /// Per target queue, how many.
    pub targets: BTreeMap<String, u64>,
    /// The rate the job will send at and why it is not the one asked for.
    pub rate: f64,
    pub rate_reason: String,
    pub estimated_seconds: f64,
    /// Selected but not sendable: id → why (not parked, nowhere to send it,
    /// renormalize without a raw event).
    pub refused: BTreeMap<String, String>,
    /// The first few that would be sent.
    pub sample: Vec<Summary>,
}

/// A replay job as the API shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Job {
    pub id: String,
    pub operator: String,
    pub created_at: String,
    pub mode: Mode,
    pub rate: f64,
    pub reason: String,
    /// What was asked (ids, filter or group), for the audit and the list.
    pub selection: String,
    pub total: u64,
    /// Refused at planning time (not sendable); not part of `total`.
    pub refused: u64,
    pub state: JobState,
    pub sent: u64,
    /// Taken but not sent: purged or released meanwhile, or refused when read.
    pub skipped: u64,
    pub updated_at: String,
    pub finished_at: String,
    pub last_error: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    #[default]
    Running,
    Paused,
    /// Asked to stop; the runner parks what it has not sent, then says `cancelled`.
    Cancelling,
    Cancelled,
    Done,
}

impl JobState {
    pub fn label(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Paused => "paused",
            JobState::Cancelling => "cancelling",
            JobState::Cancelled => "cancelled",
            JobState::Done => "done",
        }
    }

    fn parse(label: &str) -> JobState {
        match label {
            "paused" => JobState::Paused,
            "cancelling" => JobState::Cancelling,
            "cancelled" => JobState::Cancelled,
            "done" => JobState::Done,
            _ => JobState::Running,
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, JobState::Cancelled | JobState::Done)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no replay job {0}")]
    NoSuchJob(String),
    #[error("replay job {0} is {1}; it cannot be changed any more")]
    Finished(String, &'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<QueryError> for ReplayError {
    fn from(err: QueryError) -> Self {
        match err {
            QueryError::BadFilter(reason) => ReplayError::BadRequest(reason),
            QueryError::Store(err) => ReplayError::Store(err),
        }
    }
}

/// Plans, starts, runs and controls replay jobs.
#[derive(Clone)]
pub struct Replayer {
    inner: Arc<Inner>,
}

struct Inner {
    store: DeadLetterStore,
    bus: Bus,
    cfg: ReplayConfig,
    shutdown: CancellationToken,
    /// Jobs this process runs now.
    running: std::sync::Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
}

impl Replayer {
    pub fn new(
        store: DeadLetterStore,
        bus: Bus,
        cfg: ReplayConfig,
        shutdown: CancellationToken,
    ) -> Replayer {
        Replayer {
            inner: Arc::new(Inner {
                store,
                bus,
                cfg,
                shutdown,
                running: std::sync::Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The dead letters a request selects (ids as given, or newest first).
    async fn select(&self, request: &ReplayRequest) -> Result<Vec<String>, ReplayError> {
        let mut selection = request.selection().map_err(ReplayError::BadRequest)?;
        if let Selection::Filter(filter) = &mut selection {
            match filter.status {
                None => filter.status = Some(Status::Parked),
                Some(Status::Parked) => {}
                Some(other) => {
                    return Err(ReplayError::BadRequest(format!(
                        "only parked dead letters can be replayed, not {}",
                        other.label()
                    )));
                }
            }
        }
        Ok(self
            .inner
            .store
            .select(&selection, self.inner.cfg.max_selection)
            .await?)
    }

    /// What `request` would do: counts, targets, rate, time, refusals.
    pub async fn plan(&self, request: &ReplayRequest) -> Result<(Plan, Vec<String>), ReplayError> {
        let ids = self.select(request).await?;
        let mut plan = Plan {
            mode: request.mode,
            ..Plan::default()
        };
        let mut sendable = Vec::with_capacity(ids.len());
        let mut destinations = std::collections::BTreeSet::new();
        for id in ids {
            let Some(parked) = self.inner.store.get(&id).await? else {
                plan.refused.insert(id, "no such dead letter".into());
                continue;
            };
            if parked.state.status != Some(Status::Parked) {
                let status = parked.state.status.map_or("unknown", Status::label);
                plan.refused
                    .insert(id, format!("it is {status}, not parked"));
                continue;
            }
            match target(&parked.summary, request.mode, &self.inner.bus) {
                Ok(queue) => {
                    if parked.summary.destination.is_empty() && parked.summary.stage == NORMALIZER {
                        // A raw event goes on to every writer: every destination's budget holds.
                        destinations.extend(self.inner.cfg.budgets.keys().cloned());
                    } else if !parked.summary.destination.is_empty() {
                        destinations.insert(parked.summary.destination.clone());
                    }
                    *plan.targets.entry(queue).or_default() += 1;
                    if plan.sample.len() < 10 {
                        plan.sample.push(parked.summary);
                    }
                    sendable.push(id);
                }
                Err(why) => {
                    plan.refused.insert(id, why);
                }
            }
        }
        plan.count = sendable.len() as u64;
        let (rate, reason) = self.rate_for(request.rate, &destinations)?;
        plan.rate = rate;
        plan.rate_reason = reason;
        plan.estimated_seconds = plan.count as f64 / rate;
        Ok((plan, sendable))
    }

    /// The rate a job sends at: asked (or default), capped by `max_rate` and by the
    /// share of each destination's budget.
    fn rate_for(
        &self,
        asked: Option<f64>,
        destinations: &std::collections::BTreeSet<String>,
    ) -> Result<(f64, String), ReplayError> {
        let cfg = &self.inner.cfg;
        let asked = asked.unwrap_or(cfg.default_rate);
        if !(asked > 0.0 && asked.is_finite()) {
            return Err(ReplayError::BadRequest(format!(
                "rate {asked} is not a positive number of messages per second"
            )));
        }
        let mut rate = asked;
        let mut reason = format!("{asked}/s as asked");
        if rate > cfg.max_rate {
            rate = cfg.max_rate;
            reason = format!("capped at replay.max_rate {}/s", cfg.max_rate);
        }
        for destination in destinations {
            if let Some(budget) = cfg.budgets.get(destination) {
                let allowed = budget * cfg.share;
                if allowed < rate {
                    rate = allowed;
                    reason = format!(
                        "capped at {:.0}% of {destination}'s {budget}/s budget, so live traffic keeps the rest",
                        cfg.share * 100.0
                    );
                }
            }
        }
        Ok((rate, reason))
    }

    /// Starts a job for `request` as `operator`; the dead letters it takes are no longer
    /// `parked`. A second start of the same selection takes (and sends) nothing.
    pub async fn start(&self, request: &ReplayRequest, operator: &str) -> Result<Job, ReplayError> {
        let (plan, sendable) = self.plan(request).await?;
        let id = format!("job-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let now = record::rfc3339(OffsetDateTime::now_utc());
        let mut patch = serde_json::Map::new();
        patch.insert(
            "replay".into(),
            serde_json::json!({"job": id, "mode": request.mode.label(), "at": now}),
        );
        let taken = self
            .inner
            .store
            .transition(
                &sendable,
                &[Status::Parked],
                Status::Replaying,
                patch,
                false,
                None,
            )
            .await?;
        let job = Job {
            id: id.clone(),
            operator: operator.to_owned(),
            created_at: now.clone(),
            mode: request.mode,
            rate: plan.rate,
            reason: request.reason.clone(),
            selection: describe(request),
            total: taken.len() as u64,
            refused: plan.refused.len() as u64 + (sendable.len() - taken.len()) as u64,
            state: if taken.is_empty() {
                JobState::Done
            } else {
                JobState::Running
            },
            updated_at: now.clone(),
            finished_at: if taken.is_empty() { now } else { String::new() },
            ..Job::default()
        };
        self.save_new(&job, &taken).await?;
        info!(job = %job.id, total = job.total, rate = job.rate, mode = job.mode.label(), "Replay job created.");
        if !taken.is_empty() {
            self.spawn_runner(job.id.clone());
        }
        Ok(job)
    }

    fn job_key(&self, id: &str) -> String {
        self.inner.store.key(&format!("job:{id}"))
    }

    async fn save_new(&self, job: &Job, ids: &[String]) -> Result<(), StoreError> {
        let key = self.job_key(&job.id);
        let ids_key = format!("{key}:ids");
        let jobs_key = self.inner.store.key("jobs");
        let plan = serde_json::to_string(job).unwrap_or_default();
        let ids = ids.to_vec();
        let score = OffsetDateTime::now_utc().unix_timestamp();
        let (id, state, updated, finished) = (
            job.id.clone(),
            job.state.label(),
            job.updated_at.clone(),
            job.finished_at.clone(),
        );
        self.inner
            .store
            .redis()
            .run(|mut conn| async move {
                let mut pipe = redis::pipe();
                pipe.atomic();
                for chunk in ids.chunks(1000) {
                    pipe.rpush(&ids_key, chunk).ignore();
                }
                pipe.hset_multiple(
                    &key,
                    &[
                        ("plan", plan.as_str()),
                        ("state", state),
                        ("cursor", "0"),
                        ("sent", "0"),
                        ("skipped", "0"),
                        ("updated_at", updated.as_str()),
                        ("finished_at", finished.as_str()),
                        ("last_error", ""),
                    ],
                )
                .ignore();
                pipe.zadd(&jobs_key, &id, score).ignore();
                pipe.query_async::<()>(&mut conn).await
            })
            .await
    }

    /// A job as it stands now.
    pub async fn job(&self, id: &str) -> Result<Job, ReplayError> {
        let key = self.job_key(id);
        let fields: HashMap<String, String> = self
            .inner
            .store
            .redis()
            .run(|mut conn| async move { conn.hgetall(key).await })
            .await?;
        let Some(plan) = fields.get("plan") else {
            return Err(ReplayError::NoSuchJob(id.to_owned()));
        };
        let mut job: Job = serde_json::from_str(plan)
            .map_err(|e| StoreError::Corrupt(format!("replay job {id}: {e}")))?;
        let get = |name: &str| fields.get(name).cloned().unwrap_or_default();
        let number = |name: &str| get(name).parse::<u64>().unwrap_or_default();
        job.state = JobState::parse(&get("state"));
        job.sent = number("sent");
        job.skipped = number("skipped");
        job.updated_at = get("updated_at");
        job.finished_at = get("finished_at");
        job.last_error = get("last_error");
        Ok(job)
    }

    /// The newest `limit` jobs, newest first.
    pub async fn jobs(&self, limit: usize) -> Result<Vec<Job>, ReplayError> {
        let key = self.inner.store.key("jobs");
        let ids: Vec<String> = self
            .inner
            .store
            .redis()
            .run(|mut conn| async move {
                conn.zrevrange(key, 0, limit.saturating_sub(1) as isize)
                    .await
            })
            .await?;
        let mut jobs = Vec::with_capacity(ids.len());
        for id in ids {
            match self.job(&id).await {
                Ok(job) => jobs.push(job),
                Err(ReplayError::NoSuchJob(_)) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(jobs)
    }

    /// Pauses, resumes or cancels a job. A cancelled job gives the dead letters it has
    /// not sent back to `parked`.
    pub async fn control(&self, id: &str, to: JobState) -> Result<Job, ReplayError> {
        let job = self.job(id).await?;
        if job.state.is_finished() || job.state == JobState::Cancelling {
            return Err(ReplayError::Finished(id.to_owned(), job.state.label()));
        }
        let to = if to == JobState::Cancelled {
            JobState::Cancelling
        } else {
            to
        };
        self.set_state(id, to, "").await?;
        // Whoever runs the job sees the change before its next send. If no process runs
        // it (the one that did is gone), run it here: to resume it, or to park what a
        // cancelled job had not sent.
        self.spawn_runner(id.to_owned());
        self.job(id).await
    }

    async fn set_state(&self, id: &str, state: JobState, error: &str) -> Result<(), StoreError> {
        let key = self.job_key(id);
        let now = record::rfc3339(OffsetDateTime::now_utc());
        let finished = if state.is_finished() {
            now.clone()
        } else {
            String::new()
        };
        let error = error.to_owned();
        self.inner
            .store
            .redis()
            .run(|mut conn| async move {
                let mut pipe = redis::pipe();
                pipe.hset(&key, "state", state.label()).ignore();
                pipe.hset(&key, "updated_at", &now).ignore();
                if !finished.is_empty() {
                    pipe.hset(&key, "finished_at", &finished).ignore();
                }
                if !error.is_empty() {
                    pipe.hset(&key, "last_error", &error).ignore();
                }
                pipe.query_async::<()>(&mut conn).await
            })
            .await
    }

    fn is_running_here(&self, id: &str) -> bool {
        self.inner
            .running
            .lock()
            .map(|running| running.get(id).is_some_and(|task| !task.is_finished()))
            .unwrap_or(false)
    }

    /// Resumes every unfinished job nobody runs (at start-up, after a crash).
    pub async fn resume_all(&self) -> Result<usize, ReplayError> {
        let jobs = self.jobs(1_000).await?;
        let mut resumed = 0;
        for job in jobs.into_iter().filter(|j| !j.state.is_finished()) {
            self.spawn_runner(job.id);
            resumed += 1;
        }
        Ok(resumed)
    }

    fn spawn_runner(&self, id: String) {
        if self.is_running_here(&id) {
            return;
        }
        let this = self.clone();
        let task_id = id.clone();
        let task = tokio::spawn(async move {
            if let Err(err) = this.run_job(&task_id).await {
                warn!(job = %task_id, error = %err, "Replay job stopped on an error; it resumes when the handler next starts or the job is resumed.");
            }
        });
        if let Ok(mut running) = self.inner.running.lock() {
            running.retain(|_, task| !task.is_finished());
            running.insert(id, task);
        }
    }

    /// Takes the job's lease, or `None` if another runner holds it.
    async fn take_lease(&self, id: &str, token: &str) -> Result<bool, StoreError> {
        let key = format!("{}:lock", self.job_key(id));
        let token = token.to_owned();
        let set: Option<String> = self
            .inner
            .store
            .redis()
            .run(|mut conn| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(LEASE.as_millis() as u64)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(set.is_some())
    }

    /// Renews the lease if it is still ours; `false` if it was lost.
    async fn renew_lease(&self, id: &str, token: &str) -> Result<bool, StoreError> {
        let key = format!("{}:lock", self.job_key(id));
        let token = token.to_owned();
        let script = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then \
               return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end",
        );
        let renewed: i64 = self
            .inner
            .store
            .redis()
            .run(|mut conn| async move {
                script
                    .key(key)
                    .arg(token)
                    .arg(LEASE.as_millis() as u64)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(renewed == 1)
    }

    async fn release_lease(&self, id: &str, token: &str) {
        let key = format!("{}:lock", self.job_key(id));
        let token = token.to_owned();
        let script = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
        );
        let _ = self
            .inner
            .store
            .redis()
            .run(|mut conn| async move {
                script
                    .key(key)
                    .arg(token)
                    .invoke_async::<i64>(&mut conn)
                    .await
            })
            .await;
    }

    /// Runs a job while this process holds its lease. Redis or the broker going away
    /// pauses the job here (it tries again each second), it does not end it; a job
    /// whose lease another runner holds is left to that runner.
    async fn run_job(&self, id: &str) -> Result<(), ReplayError> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut held = false;
        loop {
            if self.inner.shutdown.is_cancelled() {
                break;
            }
            let ours = if held {
                self.renew_lease(id, &token).await
            } else {
                self.take_lease(id, &token).await
            };
            match ours {
                Ok(true) => held = true,
                Ok(false) => return Ok(()),
                Err(err) if err.is_transient() => {
                    debug!(job = %id, error = %err, "Waiting for Redis to run the replay job.");
                    tokio::select! {
                        () = self.inner.shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
                Err(err) => return Err(err.into()),
            }
            match self.run_leased(id, &token).await {
                Ok(()) => break,
                Err(ReplayError::Store(err)) if err.is_transient() => {
                    warn!(job = %id, error = %err, "The replay job waits for Redis.");
                    tokio::select! {
                        () = self.inner.shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                Err(err) => {
                    self.release_lease(id, &token).await;
                    return Err(err);
                }
            }
        }
        self.release_lease(id, &token).await;
        Ok(())
    }

    /// Every `LEASE`, picks up unfinished jobs no live runner holds (their runner's
    /// process died holding the lease, or it could not be resumed at start-up).
    pub async fn supervise(&self) {
        loop {
            tokio::select! {
                () = self.inner.shutdown.cancelled() => return,
                () = tokio::time::sleep(LEASE) => {}
            }
            if let Err(err) = self.resume_all().await {
                debug!(error = %err, "Could not look for replay jobs to resume.");
            }
        }
    }

    async fn run_leased(&self, id: &str, token: &str) -> Result<(), ReplayError> {
        let job = self.job(id).await?;
        let key = self.job_key(id);
        let ids_key = format!("{key}:ids");
        let pace = pacer(job.rate);
        let mut renewed_at = tokio::time::Instant::now();
        let backlog = Arc::new(Backlog::default());
        let _counting = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
            self.clone().count_backlog_every(backlog.clone(), POLL),
        ));
        info!(job = %id, rate = job.rate, "Replay job running.");
        loop {
            if self.inner.shutdown.is_cancelled() {
                return Ok(());
            }
            if renewed_at.elapsed() > LEASE / 3 {
                if !self.renew_lease(id, token).await? {
                    warn!(job = %id, "Lost the replay job's lease; another runner has it.");
                    return Ok(());
                }
                renewed_at = tokio::time::Instant::now();
            }
            let (state, cursor): (Option<String>, Option<u64>) = {
                let key = key.clone();
                self.inner
                    .store
                    .redis()
                    .run(|mut conn| async move {
                        redis::cmd("HMGET")
                            .arg(key)
                            .arg("state")
                            .arg("cursor")
                            .query_async(&mut conn)
                            .await
                    })
                    .await?
            };
            let state = JobState::parse(state.as_deref().unwrap_or("running"));
            let cursor = cursor.unwrap_or_default();
            match state {
                JobState::Done => return Ok(()),
                JobState::Cancelled => return Ok(()),
                JobState::Cancelling => {
                    self.release_unsent(id, &ids_key, cursor).await?;
                    self.set_state(id, JobState::Cancelled, "").await?;
                    info!(job = %id, "Replay job cancelled; what it had not sent is parked again.");
                    return Ok(());
                }
                JobState::Paused => {
                    tokio::select! {
                        () = self.inner.shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(POLL) => continue,
                    }
                }
                _ => {}
            }
            let next: Option<String> = {
                let ids_key = ids_key.clone();
                self.inner
                    .store
                    .redis()
                    .run(|mut conn| async move { conn.lindex(ids_key, cursor as isize).await })
                    .await?
            };
            let Some(dead_letter) = next else {
                self.set_state(id, JobState::Done, "").await?;
                info!(job = %id, "Replay job done.");
                return Ok(());
            };
            let Some(parked) = self.inner.store.get(&dead_letter).await? else {
                self.advance(&key, "skipped").await?;
                continue;
            };
            let taken_by_us = parked.state.replay.as_ref().is_some_and(|r| r.job == id);
            if taken_by_us && parked.state.status == Some(Status::Replayed) {
                // Sent and marked before Redis or this process went away, but the cursor
                // did not move: count it, do not send it again.
                self.advance(&key, "sent").await?;
                continue;
            }
            let ours = taken_by_us && parked.state.status == Some(Status::Replaying);
            let message = match (&parked.record, ours) {
                (Some(record), true) => {
                    build_message(record, &parked.summary, job.mode, id, &self.inner.bus)
                }
                _ => Err("no longer taken by this job".to_owned()),
            };
            let (queue, message) = match message {
                Ok(pair) => pair,
                Err(why) => {
                    if ours {
                        self.give_back(id, &dead_letter, &why).await?;
                    }
                    self.advance(&key, "skipped").await?;
                    continue;
                }
            };
            // Backlog: hold while the target queue has more ready than allowed (counted
            // off this path, plus what this job sent since the count).
            let room = match backlog.room(&queue, self.inner.cfg.max_backlog) {
                Some(room) => room,
                None => {
                    let ready = self.ready_behind(&queue).await;
                    backlog.counted(&queue, ready);
                    continue;
                }
            };
            if room <= 0 {
                tokio::select! {
                    () = self.inner.shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(POLL) => continue,
                }
            }
            tokio::select! {
                () = self.inner.shutdown.cancelled() => return Ok(()),
                () = pace.until_ready() => {}
            }
            // A pause or cancel that came while waiting for the slot takes effect now,
            // not after one more send.
            let now_state: Option<String> = {
                let key = key.clone();
                self.inner
                    .store
                    .redis()
                    .run(|mut conn| async move { conn.hget(key, "state").await })
                    .await?
            };
            if JobState::parse(now_state.as_deref().unwrap_or("running")) != JobState::Running {
                continue;
            }
            let span = replay_span(&queue, &dead_letter, id, &parked.record);
            let sent = self
                .inner
                .bus
                .publish_to("", message)
                .instrument(span)
                .await;
            if let Err(err) = sent {
                warn!(job = %id, dead_letter = %dead_letter, error = %err, "Could not send a replayed message; trying again.");
                self.note_error(&key, &err.to_string()).await?;
                tokio::select! {
                    () = self.inner.shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
            let mut patch = serde_json::Map::new();
            let mut replay = serde_json::to_value(parked.state.replay.clone().unwrap_or_default())
                .unwrap_or_default();
            replay["outcome"] = "sent".into();
            replay["at"] = record::rfc3339(OffsetDateTime::now_utc()).into();
            patch.insert("replay".into(), replay);
            self.inner
                .store
                .transition(
                    std::slice::from_ref(&dead_letter),
                    &[Status::Replaying],
                    Status::Replayed,
                    patch,
                    false,
                    Some(id),
                )
                .await?;
            backlog.sent(&queue);
            metrics::counter!("handoff_dlq_replayed_total", "mode" => job.mode.label())
                .increment(1);
            self.advance(&key, "sent").await?;
        }
    }

    /// The most ready messages in any queue a replay to `queue` watches; a queue that
    /// cannot be counted counts as full.
    async fn ready_behind(&self, queue: &str) -> u32 {
        let mut ready = 0_u32;
        for watched in self.watched_queues(queue) {
            let count = self
                .inner
                .bus
                .message_count(&watched)
                .await
                .unwrap_or(u32::MAX);
            ready = ready.max(count);
        }
        ready
    }

    /// Recounts every queue in `backlog` each `every`, off the send path: a count
    /// opens a channel, tens of milliseconds a replay's pace should not wait for.
    async fn count_backlog_every(self, backlog: Arc<Backlog>, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            for queue in backlog.queues() {
                let ready = self.ready_behind(&queue).await;
                backlog.counted(&queue, ready);
            }
        }
    }

    /// The queues whose backlog holds a replay to `queue`: that queue, and for the
    /// normalizer's also the writers' it feeds, where a renormalized event goes next.
    fn watched_queues(&self, queue: &str) -> Vec<String> {
        let topology = self.inner.bus.topology();
        let mut queues = vec![queue.to_owned()];
        if queue == topology.stage_queue(NORMALIZER) {
            queues.extend(
                topology
                    .stages()
                    .filter(|stage| *stage != NORMALIZER)
                    .map(|stage| topology.stage_queue(stage)),
            );
        }
        queues
    }

    /// Says on the job why it is not moving (the API shows it as `last_error`).
    async fn note_error(&self, key: &str, error: &str) -> Result<(), StoreError> {
        let (key, error) = (key.to_owned(), error.to_owned());
        self.inner
            .store
            .redis()
            .run(|mut conn| async move { conn.hset::<_, _, _, ()>(key, "last_error", error).await })
            .await
    }

    /// Moves the cursor on and counts the item as `sent` or `skipped`.
    async fn advance(&self, key: &str, counter: &'static str) -> Result<(), StoreError> {
        let key = key.to_owned();
        let now = record::rfc3339(OffsetDateTime::now_utc());
        self.inner
            .store
            .redis()
            .run(|mut conn| async move {
                redis::pipe()
                    .atomic()
                    .hincr(&key, "cursor", 1)
                    .ignore()
                    .hincr(&key, counter, 1)
                    .ignore()
                    .hset(&key, "updated_at", now)
                    .ignore()
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await
    }

    /// A dead letter the job took but cannot send goes back to `parked`, saying why.
    async fn give_back(&self, job: &str, id: &str, why: &str) -> Result<(), StoreError> {
        let mut patch = serde_json::Map::new();
        patch.insert(
            "replay".into(),
            serde_json::json!({"job": job, "outcome": format!("refused: {why}")}),
        );
        self.inner
            .store
            .transition(
                &[id.to_owned()],
                &[Status::Replaying],
                Status::Parked,
                patch,
                false,
                Some(job),
            )
            .await?;
        Ok(())
    }

    /// A cancelled job's unsent dead letters go back to `parked`.
    async fn release_unsent(
        &self,
        job: &str,
        ids_key: &str,
        cursor: u64,
    ) -> Result<(), StoreError> {
        let ids_key = ids_key.to_owned();
        let rest: Vec<String> = self
            .inner
            .store
            .redis()
            .run(|mut conn| async move { conn.lrange(ids_key, cursor as isize, -1).await })
            .await?;
        let mut patch = serde_json::Map::new();
        patch.insert(
            "replay".into(),
            serde_json::json!({"job": job, "outcome": "cancelled"}),
        );
        self.inner
            .store
            .transition(
                &rest,
                &[Status::Replaying],
                Status::Parked,
                patch,
                false,
                Some(job),
            )
            .await?;
        Ok(())
    }
}

/// Per target queue: ready messages at the last count, and what the job sent since.
#[derive(Default)]
struct Backlog {
    by_queue: std::sync::Mutex<HashMap<String, (u32, u32)>>,
}

impl Backlog {
    /// How many more may go before the queue holds `max`; `None` before its first count.
    fn room(&self, queue: &str, max: u32) -> Option<i64> {
        let by_queue = self.by_queue.lock().ok()?;
        let (ready, sent) = by_queue.get(queue)?;
        Some(i64::from(max) - i64::from(*ready) - i64::from(*sent))
    }

    fn counted(&self, queue: &str, ready: u32) {
        if let Ok(mut by_queue) = self.by_queue.lock() {
            by_queue.insert(queue.to_owned(), (ready, 0));
        }
    }

    fn sent(&self, queue: &str) {
        if let Ok(mut by_queue) = self.by_queue.lock()
            && let Some((_, sent)) = by_queue.get_mut(queue)
        {
            *sent += 1;
        }
    }

    fn queues(&self) -> Vec<String> {
        self.by_queue
            .lock()
            .map(|by_queue| by_queue.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// The job's rate as a GCRA (`governor`): slots on a schedule, so a slow send does not
/// push every later one back, with a burst of a twentieth of a second's worth (at least
/// one) to absorb that jitter without letting a pause turn into a flood.
fn pacer(rate: f64) -> governor::DefaultDirectRateLimiter {
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let burst = NonZeroU32::new((rate / 20.0).floor() as u32).unwrap_or(NonZeroU32::MIN);
    let quota = governor::Quota::with_period(period)
        .unwrap_or_else(|| governor::Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst);
    governor::RateLimiter::direct(quota)
}

/// The queue a dead letter goes back to in `mode`, or why it cannot.
pub fn target(summary: &Summary, mode: Mode, bus: &Bus) -> Result<String, String> {
    match mode {
        Mode::AsIs if !summary.origin_queue.is_empty() => Ok(summary.origin_queue.clone()),
        Mode::AsIs => Err("the dead letter does not say which queue it failed in".into()),
        Mode::Renormalize if summary.stage == NORMALIZER => {
            Ok(bus.topology().stage_queue(NORMALIZER))
        }
        Mode::Renormalize => Err(format!(
            "renormalize needs the raw event, and a {} dead letter holds the canonical one; replay it as-is",
            if summary.stage.is_empty() {
                "stage-less"
            } else {
                &summary.stage
            }
        )),
    }
}

/// The replayed message: the original bytes and properties, its retry history and trace
/// context dropped, the original route kept for the consumer, the replay named.
fn build_message(
    record: &v1::DeadLetter,
    summary: &Summary,
    mode: Mode,
    job: &str,
    bus: &Bus,
) -> Result<(String, OutgoingMessage), String> {
    let queue = target(summary, mode, bus)?;
    if record.original_body.is_empty() {
        return Err("the dead letter holds no message".into());
    }
    let mut headers: handoff_bus::Headers = record
        .original_headers
        .iter()
        .filter(|(k, _)| !DROPPED_HEADERS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !record.origin_exchange.is_empty() {
        headers.insert(
            HEADER_ORIGIN_EXCHANGE.into(),
            record.origin_exchange.clone(),
        );
    }
    if !record.origin_routing_key.is_empty() {
        headers.insert(
            HEADER_ORIGIN_ROUTING_KEY.into(),
            record.origin_routing_key.clone(),
        );
    }
    headers.insert(HEADER_REPLAY_OF.into(), summary.id.clone());
    headers.insert(HEADER_REPLAY_JOB.into(), job.to_owned());
    headers.insert(HEADER_REPLAY_MODE.into(), mode.label().into());
    let decodes = record::envelope_of(record).is_some();
    Ok((
        queue.clone(),
        OutgoingMessage {
            routing_key: queue,
            body: record.original_body.clone(),
            content_type: Some(if record.original_content_type.is_empty() {
                handoff_events::PROTOBUF_CONTENT_TYPE.to_owned()
            } else {
                record.original_content_type.clone()
            }),
            message_id: Some(if record.original_message_id.is_empty() {
                record.event_id.clone()
            } else {
                record.original_message_id.clone()
            })
            .filter(|id| !id.is_empty()),
            message_type: decodes.then(|| "handoff.v1.Envelope".to_owned()),
            headers,
        },
    ))
}

/// A new root span per replayed message, linked to the failed message's trace.
fn replay_span(
    queue: &str,
    dead_letter: &str,
    job: &str,
    record: &Option<v1::DeadLetter>,
) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "replay",
        otel.name = %format!("replay {queue}"),
        otel.kind = "producer",
        handoff.dead_letter = %dead_letter,
        handoff.replay_job = %job,
    );
    if let Some(record) = record
        && !record.traceparent.is_empty()
    {
        let mut headers = handoff_bus::Headers::new();
        headers.insert(trace::TRACEPARENT.into(), record.traceparent.clone());
        let original = trace::extract(&headers);
        let context = original.span().span_context().clone();
        if context.is_valid() {
            span.add_link(context);
        }
    }
    span
}

/// One line saying what a replay request selected.
fn describe(request: &ReplayRequest) -> String {
    if !request.ids.is_empty() {
        return format!("ids: {}", request.ids.join(", "));
    }
    if let Some(group) = &request.group {
        return format!("group {group}");
    }
    request
        .filter
        .as_ref()
        .map(|f| format!("filter {}", serde_json::to_string(f).unwrap_or_default()))
        .unwrap_or_default()
}
