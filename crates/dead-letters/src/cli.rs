//! `handoff-dlq`: the operator CLI, a client of the dead-letter API ([`crate::api`]), and
//! `serve`, which runs the handler itself.
//!
//! The parts, in file order: the arguments (clap derive; [`FilterArgs`] is shared by
//! every command that selects dead letters) → [`Client`] (one reqwest client with the base
//! URL and the operator token; API errors become [`CliError`]) → one function per command
//! → [`render`], pure functions from the API's types to the text a command prints, tested
//! without a server → `out`, the only place that writes to the terminal.
//!
//! It reuses the service's own types (`store::Page`, `replay::Plan`, `api::PurgeRequest`,
//! …), so the CLI and the API cannot drift apart.
//!
//! Exit codes: 0 done; 1 the API refused or could not be reached; 2 the command line was
//! refused before anything was sent (clap's own usage errors are 2 as well); 130 Ctrl-C
//! while watching a replay job (the job keeps running on the server).

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::api::{self, Detail, PurgeRequest};
use crate::config::Config;
use crate::record::Status;
use crate::replay::{Job, Mode, Plan, ReplayRequest};
use crate::store::{AuditEntry, Facets, Filter, GroupCount, Page};

/// Where the API is when nothing says otherwise: a local port-forward to its default port.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8095";
/// The CLI's own environment variables. They share the `HANDOFF_` prefix with the
/// service's configuration keys, so `serve` leaves them out of its configuration.
pub const URL_ENV: &str = "HANDOFF_DLQ_URL";
pub const TOKEN_ENV: &str = "HANDOFF_DLQ_TOKEN";

/// Longer than the API's own request timeout (30 s by default), so its 503 arrives first.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);
/// A port-forward that is not there refuses at once; one that hangs should not hang us.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often `watch` asks for the job.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// How often `watch` prints a progress line when stdout is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);
/// Polls in a row that may fail (a port-forward hiccup, a 503) before `watch` gives up.
const WATCH_FAILURES: u32 = 20;
/// The exit code of a process stopped by Ctrl-C, by convention.
const INTERRUPTED: u8 = 130;

// ---------------------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------------------

/// Look at, group, replay and purge the pipeline's dead letters.
#[derive(Debug, Parser)]
#[command(
    name = "handoff-dlq",
    version,
    about = "Look at, group, replay and purge the pipeline's dead letters (and `serve` the handler).",
    after_help = "The API is usually reached through a port-forward, e.g.\n  kubectl port-forward svc/handoff-dead-letters 8095\n  export HANDOFF_DLQ_TOKEN=…\n  handoff-dlq groups --since 1d"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes, before or after its name.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// The dead-letter API (from a laptop: a port-forward to it).
    #[arg(long, global = true, env = URL_ENV, default_value = DEFAULT_URL)]
    pub url: String,
    /// Operator token, sent as `Authorization: Bearer <token>`.
    #[arg(long, global = true, env = TOKEN_ENV, hide_env_values = true)]
    pub token: Option<String>,
    /// Print the API's JSON answer as it is (pretty) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the dead-letter handler (the service itself).
    Serve(ServeArgs),
    /// List dead letters, newest first.
    List(ListArgs),
    /// Dead letters grouped by cause, biggest group first.
    Groups(FilterArgs),
    /// Parked dead letters per stage and class with the oldest; counts per status.
    Stats(FilterArgs),
    /// One dead letter in full: cause, attempts, headers and the original event.
    Show {
        /// The dead letter's id (`dl-…`).
        id: String,
    },
    /// Send parked dead letters back into the pipeline, paced (try --dry-run first).
    Replay(ReplayArgs),
    /// Replay jobs, newest first.
    Jobs,
    /// Follow a replay job until it is done or cancelled (Ctrl-C stops watching only).
    Watch {
        /// The job's id (`job-…`).
        job: String,
    },
    /// Pause a replay job.
    Pause {
        /// The job's id (`job-…`).
        job: String,
    },
    /// Resume a paused replay job.
    Resume {
        /// The job's id (`job-…`).
        job: String,
    },
    /// Cancel a replay job: what it has not sent goes back to parked.
    Cancel {
        /// The job's id (`job-…`).
        job: String,
    },
    /// Delete dead letters for good (needs --yes and --reason).
    Purge(PurgeArgs),
    /// Who replayed, paused, cancelled or purged what, newest first.
    Audit(AuditArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Configuration file (TOML); `HANDOFF_CONFIG` when not given.
    #[arg(long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// The filter flags of list, groups, stats, replay and purge.
#[derive(Debug, Clone, Default, Args)]
pub struct FilterArgs {
    /// The stage that gave up: normalizer, crm-writer, email-writer, …
    #[arg(long)]
    pub stage: Option<String>,
    /// e.g. lead.created
    #[arg(long)]
    pub event_type: Option<String>,
    /// validation, permanent, retries_exhausted, broker, undecodable, unsupported_schema
    #[arg(long)]
    pub error_class: Option<String>,
    /// hubspot, mailchimp
    #[arg(long)]
    pub destination: Option<String>,
    /// Vendor code or HTTP status, or the broker's reason.
    #[arg(long)]
    pub code: Option<String>,
    #[arg(long)]
    pub publisher: Option<String>,
    /// The contact email the event is about.
    #[arg(long)]
    pub email: Option<String>,
    /// A group's fingerprint (`fp-…`, from `groups`).
    #[arg(long, value_name = "FINGERPRINT")]
    pub group: Option<String>,
    #[arg(long)]
    pub event_id: Option<String>,
    #[arg(long, value_enum)]
    pub status: Option<StatusArg>,
    /// Dead-lettered at or after: RFC 3339, or a duration ago (2h, 3d).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Dead-lettered at or before: RFC 3339, or a duration ago (2h, 3d).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusArg {
    Parked,
    Replaying,
    Replayed,
    Purged,
    All,
}

impl StatusArg {
    fn label(self) -> &'static str {
        match self {
            StatusArg::Parked => "parked",
            StatusArg::Replaying => "replaying",
            StatusArg::Replayed => "replayed",
            StatusArg::Purged => "purged",
            StatusArg::All => "all",
        }
    }

    /// `None` for `all`.
    fn status(self) -> Option<Status> {
        Status::parse(self.label())
    }
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Rows per page (the API returns at most 1000).
    #[arg(long, default_value_t = 50)]
    pub limit: u64,
    /// Rows to skip (for the next page).
    #[arg(long, default_value_t = 0)]
    pub offset: u64,
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Dead letters to replay, by id; or use --group, or filter flags.
    #[arg(value_name = "ID")]
    pub ids: Vec<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// as-is: the original bytes to the queue they failed in; renormalize: the raw event
    /// through the normalizer again, with its current rules.
    #[arg(long, value_enum, default_value_t = ModeArg::AsIs)]
    pub mode: ModeArg,
    /// Messages per second (capped by the service to protect live traffic).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Show what would be replayed, at what rate and for how long; send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Why, for the audit log.
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Start the job and return without watching it.
    #[arg(long)]
    pub detach: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    AsIs,
    Renormalize,
}

impl From<ModeArg> for Mode {
    fn from(mode: ModeArg) -> Mode {
        match mode {
            ModeArg::AsIs => Mode::AsIs,
            ModeArg::Renormalize => Mode::Renormalize,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct PurgeArgs {
    /// Dead letters to purge, by id; or use --group, or filter flags.
    #[arg(value_name = "ID")]
    pub ids: Vec<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Why, for the audit log (required).
    #[arg(long)]
    pub reason: Option<String>,
    /// Yes, delete them for good (required).
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// Newest entries to show.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

/// A flag's value, unless it is missing or blank (`--stage ""` narrows nothing, so it
/// must not count as a filter: an empty filter selects everything).
fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

impl FilterArgs {
    /// The query string of list, groups and stats: every flag given, times as typed (the
    /// API reads durations itself).
    pub fn query(&self) -> Vec<(&'static str, String)> {
        let mut query = Vec::new();
        for (key, value) in [
            ("stage", &self.stage),
            ("event_type", &self.event_type),
            ("error_class", &self.error_class),
            ("destination", &self.destination),
            ("code", &self.code),
            ("publisher", &self.publisher),
            ("email", &self.email),
            ("fingerprint", &self.group),
            ("event_id", &self.event_id),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if let Some(value) = given(value) {
                query.push((key, value.to_owned()));
            }
        }
        if let Some(status) = self.status {
            query.push(("status", status.label().to_owned()));
        }
        query
    }

    /// Whether any flag other than `--group` is given.
    fn narrows(&self) -> bool {
        [
            &self.stage,
            &self.event_type,
            &self.error_class,
            &self.destination,
            &self.code,
            &self.publisher,
            &self.email,
            &self.event_id,
            &self.since,
            &self.until,
        ]
        .into_iter()
        .any(|v| given(v).is_some())
            || self.status.is_some()
    }

    /// The store filter a replay or purge body carries; durations become RFC 3339 times
    /// here, since `store::Filter` takes only those.
    pub fn to_filter(&self) -> Result<Filter, CliError> {
        let owned = |v: &Option<String>| given(v).map(str::to_owned);
        let time = |flag: &str, v: &Option<String>| {
            given(v)
                .map(|text| {
                    api::absolute_time(text)
                        .map_err(|err| CliError::Usage(format!("--{flag}: {err}")))
                })
                .transpose()
        };
        Ok(Filter {
            stage: owned(&self.stage),
            event_type: owned(&self.event_type),
            error_class: owned(&self.error_class),
            destination: owned(&self.destination),
            code: owned(&self.code),
            publisher: owned(&self.publisher),
            email: owned(&self.email),
            fingerprint: owned(&self.group),
            event_id: owned(&self.event_id),
            status: self.status.and_then(StatusArg::status),
            since: time("since", &self.since)?,
            until: time("until", &self.until)?,
        })
    }
}

/// What a replay or purge acts on: exactly one kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    Ids(Vec<String>),
    Group(String),
    /// Boxed: a filter is ten times the size of the others.
    Filter(Box<Filter>),
}

/// The selection a replay or purge names. `--group` alone is a group; with other filter
/// flags it narrows a filter (`--group fp-… --since 2h`); ids go alone.
pub fn selection(verb: &str, ids: &[String], filter: &FilterArgs) -> Result<Selection, CliError> {
    let ids: Vec<String> = ids
        .iter()
        .map(|id| id.trim())
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .collect();
    let group = given(&filter.group);
    match (ids.is_empty(), group, filter.narrows()) {
        (false, None, false) => Ok(Selection::Ids(ids)),
        (false, _, _) => Err(CliError::Usage(format!(
            "{verb} takes dead letter ids, or --group, or filter flags: not ids together with the others"
        ))),
        (true, Some(group), false) => Ok(Selection::Group(group.to_owned())),
        (true, _, true) => Ok(Selection::Filter(Box::new(filter.to_filter()?))),
        (true, None, false) => Err(CliError::Usage(format!(
            "name what to {verb}: dead letter ids, --group FINGERPRINT, or filter flags \
             (--stage, --error-class, --since, …)"
        ))),
    }
}

/// The body of `POST /v1/replays`, refused here when it could not be right.
pub fn replay_request(args: &ReplayArgs) -> Result<ReplayRequest, CliError> {
    if let Some(rate) = args.rate
        && !(rate > 0.0 && rate.is_finite())
    {
        return Err(CliError::Usage(format!(
            "--rate {rate} is not a positive number of messages per second"
        )));
    }
    let mut request = ReplayRequest {
        mode: args.mode.into(),
        rate: args.rate,
        dry_run: args.dry_run,
        reason: args.reason.trim().to_owned(),
        ..ReplayRequest::default()
    };
    match selection("replay", &args.ids, &args.filter)? {
        Selection::Ids(ids) => request.ids = ids,
        Selection::Group(group) => request.group = Some(group),
        Selection::Filter(filter) => request.filter = Some(*filter),
    }
    Ok(request)
}

/// The body of `POST /v1/purges`; without `--yes` and a reason nothing is sent.
pub fn purge_request(args: &PurgeArgs) -> Result<PurgeRequest, CliError> {
    if !args.yes {
        return Err(CliError::Usage(
            "purge deletes dead letters for good; add --yes (and --reason)".into(),
        ));
    }
    let Some(reason) = given(&args.reason) else {
        return Err(CliError::Usage(
            "purge deletes dead letters for good; add --reason TEXT (why, for the audit log)"
                .into(),
        ));
    };
    let mut request = PurgeRequest {
        reason: reason.to_owned(),
        confirm: true,
        ..PurgeRequest::default()
    };
    match selection("purge", &args.ids, &args.filter)? {
        Selection::Ids(ids) => request.ids = ids,
        Selection::Group(group) => request.group = Some(group),
        Selection::Filter(filter) => request.filter = Some(*filter),
    }
    Ok(request)
}

// ---------------------------------------------------------------------------------------
// Errors and the API client
// ---------------------------------------------------------------------------------------

/// Why a command failed; printed as `error: <this>`.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Refused before anything was sent (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The API answered with an error (exit 1).
    #[error("{message} (HTTP {status})")]
    Api { status: u16, message: String },
    /// No answer at all (exit 1).
    #[error("cannot reach the dead-letter API at {url}: {reason} (is a port-forward running?)")]
    Unreachable { url: String, reason: String },
    /// Anything else (exit 1).
    #[error("{0}")]
    Other(String),
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Usage(_) => ExitCode::from(2),
            _ => ExitCode::FAILURE,
        }
    }

    /// Worth asking again while watching: the API was away or unavailable for a moment.
    fn is_transient(&self) -> bool {
        match self {
            CliError::Unreachable { .. } => true,
            CliError::Api { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// The error an API answer carries: `{"error":{"message":…}}`, else the body's text, else
/// the status' name (a proxy in between may answer with anything).
pub fn api_error(status: u16, body: &[u8]) -> CliError {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            let text = render::truncate(text.trim(), 200);
            if text.is_empty() {
                reqwest::StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("no message")
                    .to_owned()
            } else {
                text
            }
        });
    CliError::Api { status, message }
}

/// The innermost cause, which says what happened ("Connection refused (os error 111)").
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// The dead-letter API, as one operator.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: reqwest::Url,
    token: Option<String>,
}

impl Client {
    /// A client of the API at `url`; a blank token is no token (the API then says what
    /// it needs).
    pub fn new(url: &str, token: Option<&str>) -> Result<Client, CliError> {
        let base = reqwest::Url::parse(url.trim())
            .map_err(|err| CliError::Usage(format!("--url {url:?} is not a URL: {err}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(CliError::Usage(format!(
                "--url {url:?} must be an http:// or https:// URL"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("handoff-dlq/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| CliError::Other(format!("cannot set up the HTTP client: {err}")))?;
        Ok(Client {
            http,
            base,
            token: token
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
        })
    }

    /// The base URL as the operator gave it, for messages.
    fn shown_url(&self) -> String {
        self.base.as_str().trim_end_matches('/').to_owned()
    }

    /// `segments` appended to the base URL's path, each percent-encoded (an id typed with
    /// a `/` or `?` stays one segment), and `query`.
    pub fn url(&self, segments: &[&str], query: &[(&str, String)]) -> reqwest::Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (key, value) in query {
                pairs.append_pair(key, value);
            }
        }
        url
    }

    pub async fn get_json<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<T, CliError> {
        self.send(self.http.get(self.url(segments, query))).await
    }

    pub async fn post_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: &B,
    ) -> Result<T, CliError> {
        self.send(self.http.post(self.url(segments, &[])).json(body))
            .await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        mut request: reqwest::RequestBuilder,
    ) -> Result<T, CliError> {
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(&e))?;
        if !status.is_success() {
            return Err(api_error(status.as_u16(), &body));
        }
        serde_json::from_slice(&body).map_err(|err| {
            CliError::Other(format!(
                "the API at {} answered something this CLI does not understand: {err}",
                self.shown_url()
            ))
        })
    }

    fn transport_error(&self, err: &reqwest::Error) -> CliError {
        if err.is_timeout() && !err.is_connect() {
            return CliError::Other(format!(
                "the dead-letter API at {} did not answer within {} s",
                self.shown_url(),
                REQUEST_TIMEOUT.as_secs()
            ));
        }
        CliError::Unreachable {
            url: self.shown_url(),
            reason: root_cause(err),
        }
    }
}

/// An API answer as the type the CLI renders.
fn decode<T: DeserializeOwned>(value: Value) -> Result<T, CliError> {
    serde_json::from_value(value).map_err(|err| {
        CliError::Other(format!(
            "the API answered something this CLI does not understand: {err}"
        ))
    })
}

/// `GET /v1/dead-letters/groups` (its own small shape: facets without the rest).
#[derive(Debug, Deserialize)]
struct GroupsAnswer {
    total: u64,
    groups: Vec<GroupCount>,
}

// ---------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------

/// Runs one command line to its exit code.
pub fn main(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            out::error(&format!("cannot start the async runtime: {err}"));
            return ExitCode::FAILURE;
        }
    };
    let Cli { global, command } = cli;
    let code = runtime.block_on(async move {
        match command {
            Command::Serve(args) => serve(&args).await,
            command => match client_command(&global, command).await {
                Ok(code) => code,
                Err(err) => {
                    out::error(&err.to_string());
                    err.exit_code()
                }
            },
        }
    });
    // A DNS lookup still running on a blocking thread must not hold the exit up.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

/// `serve`: the handler until SIGTERM or SIGINT. anyhow lives here only, at the edge.
async fn serve(args: &ServeArgs) -> ExitCode {
    let cfg = match load_config(args.config.as_deref()) {
        Ok(cfg) => cfg,
        Err(err) => {
            out::stderr(&format!("handoff-dlq: invalid configuration: {err}"));
            return ExitCode::from(2);
        }
    };
    match serve_with(cfg).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            out::stderr(&format!("handoff-dlq: {err:#}"));
            ExitCode::FAILURE
        }
    }
}

/// `handoff_kit::config::load`: `HANDOFF_DLQ_*`, this CLI's own variables, are never
/// configuration keys, so `serve` starts on a machine where an operator exported them.
fn load_config(path: Option<&Path>) -> Result<Config, handoff_kit::config::ConfigError> {
    handoff_kit::config::load(path)
}

async fn serve_with(cfg: Config) -> anyhow::Result<()> {
    let _telemetry = handoff_kit::telemetry::init("handoff-dlq", &cfg.telemetry)
        .context("starting telemetry")?;
    let http = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .with_context(|| format!("binding the API listener on {}", cfg.http.listen))?;
    let admin = tokio::net::TcpListener::bind(cfg.admin.listen)
        .await
        .with_context(|| format!("binding the admin listener on {}", cfg.admin.listen))?;
    let shutdown = CancellationToken::new();
    handoff_kit::shutdown::cancel_on_signal(shutdown.clone());
    crate::run(cfg, http, admin, shutdown).await
}

/// Prints `value` as JSON with `--json`, else rendered as `T`.
fn print_as<T: DeserializeOwned>(
    json: bool,
    value: Value,
    render: impl FnOnce(&T) -> String,
) -> Result<(), CliError> {
    if json {
        out::json(&value);
    } else {
        out::text(&render(&decode::<T>(value)?));
    }
    Ok(())
}

async fn client_command(global: &Global, command: Command) -> Result<ExitCode, CliError> {
    let client = Client::new(&global.url, global.token.as_deref())?;
    let json = global.json;
    let now = OffsetDateTime::now_utc();
    match command {
        Command::Serve(args) => return Ok(serve(&args).await),
        Command::List(args) => {
            let mut query = args.filter.query();
            query.push(("limit", args.limit.to_string()));
            if args.offset > 0 {
                query.push(("offset", args.offset.to_string()));
            }
            let value = client.get_json(&["v1", "dead-letters"], &query).await?;
            print_as(json, value, |page: &Page| render::page(page, now))?;
        }
        Command::Groups(filter) => {
            let value = client
                .get_json(&["v1", "dead-letters", "groups"], &filter.query())
                .await?;
            print_as(json, value, |g: &GroupsAnswer| {
                render::groups(g.total, &g.groups, now)
            })?;
        }
        Command::Stats(filter) => {
            let value = client
                .get_json(&["v1", "dead-letters", "stats"], &filter.query())
                .await?;
            print_as(json, value, |facets: &Facets| render::stats(facets, now))?;
        }
        Command::Show { id } => {
            let value = client
                .get_json(&["v1", "dead-letters", id.trim()], &[])
                .await?;
            print_as(json, value, |detail: &Detail| render::detail(detail, now))?;
        }
        Command::Replay(args) => return replay(&client, &args, json, now).await,
        Command::Jobs => {
            let value = client.get_json(&["v1", "replays"], &[]).await?;
            print_as(json, value, |jobs: &Vec<Job>| render::jobs(jobs, now))?;
        }
        Command::Watch { job } => return watch(&client, job.trim(), json).await,
        Command::Pause { job } => control(&client, job.trim(), "pause", json).await?,
        Command::Resume { job } => control(&client, job.trim(), "resume", json).await?,
        Command::Cancel { job } => control(&client, job.trim(), "cancel", json).await?,
        Command::Purge(args) => {
            let request = purge_request(&args)?;
            let value = client.post_json(&["v1", "purges"], &request).await?;
            print_as(json, value, render::purged)?;
        }
        Command::Audit(args) => {
            let value = client
                .get_json(&["v1", "audit"], &[("limit", args.limit.to_string())])
                .await?;
            print_as(json, value, |entries: &Vec<AuditEntry>| {
                render::audit(entries, now)
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn replay(
    client: &Client,
    args: &ReplayArgs,
    json: bool,
    now: OffsetDateTime,
) -> Result<ExitCode, CliError> {
    let request = replay_request(args)?;
    let value: Value = client.post_json(&["v1", "replays"], &request).await?;
    if args.dry_run {
        print_as(json, value, |plan: &Plan| render::plan(plan, now))?;
        return Ok(ExitCode::SUCCESS);
    }
    if json {
        // Machine output: the job as created; `watch --json` prints it when it ends.
        out::json(&value);
        return Ok(ExitCode::SUCCESS);
    }
    let job: Job = decode(value)?;
    out::text(&render::started(&job));
    if args.detach || job.state.is_finished() {
        if !job.state.is_finished() {
            out::text(&format!("watch it: handoff-dlq watch {}", job.id));
        }
        return Ok(ExitCode::SUCCESS);
    }
    watch(client, &job.id, false).await
}

async fn control(client: &Client, id: &str, action: &str, json: bool) -> Result<(), CliError> {
    let value = client
        .post_json(&["v1", "replays", id, action], &serde_json::json!({}))
        .await?;
    print_as(json, value, render::job_state)
}

/// Completes on Ctrl-C; never, where the signal cannot be listened for.
async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Follows a job until it is finished: a progress bar on a terminal, a line every few
/// seconds otherwise, and always the summary at the end. Ctrl-C stops watching only.
async fn watch(client: &Client, id: &str, json: bool) -> Result<ExitCode, CliError> {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

    let interactive = !json && std::io::stdout().is_terminal();
    let bar = if interactive {
        ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stdout())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>9} [{wide_bar}] {pos}/{len} ({per_sec}, about {eta} left)",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let interrupted = ctrl_c();
    tokio::pin!(interrupted);
    let mut ticker = tokio::time::interval(POLL_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_line: Option<Instant> = None;
    let mut failures = 0;
    loop {
        let polled = tokio::select! {
            () = &mut interrupted => {
                bar.abandon();
                out::text(&render::stopped_watching(id));
                return Ok(ExitCode::from(INTERRUPTED));
            }
            polled = async {
                ticker.tick().await;
                client.get_json::<Value>(&["v1", "replays", id], &[]).await
            } => polled,
        };
        let value = match polled {
            Ok(value) => {
                failures = 0;
                value
            }
            Err(err) if err.is_transient() && failures < WATCH_FAILURES => {
                failures += 1;
                bar.set_message("no answer");
                if !interactive && failures == 1 {
                    out::stderr(&format!("still watching; the API did not answer: {err}"));
                }
                continue;
            }
            Err(err) => {
                bar.abandon();
                return Err(err);
            }
        };
        let job: Job = decode(value.clone())?;
        bar.set_length(job.total);
        bar.set_position(job.sent + job.skipped);
        bar.set_message(job.state.label());
        if job.state.is_finished() {
            bar.finish_and_clear();
            if json {
                out::json(&value);
            } else {
                out::text(&render::job_summary(&job));
            }
            return Ok(ExitCode::SUCCESS);
        }
        if !interactive && !json && last_line.is_none_or(|at| at.elapsed() >= PLAIN_EVERY) {
            out::text(&render::job_progress(&job));
            last_line = Some(Instant::now());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Rendering: the API's types to text, without I/O
// ---------------------------------------------------------------------------------------

/// What each command prints, as pure functions of the API's answers (and of "now", for
/// ages), so they are tested without a server.
pub mod render {
    use std::collections::BTreeMap;
    use std::fmt::Write as _;
    use std::time::Duration;

    use comfy_table::{ContentArrangement, Table, presets};
    use serde_json::Value;
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    use crate::api::{Detail, PurgeResult};
    use crate::record::{Status, Summary};
    use crate::replay::{Job, JobState, Plan};
    use crate::store::{AuditEntry, Facets, Filter, GroupCount, Page, State};

    /// Characters of a cause a table shows.
    const CAUSE_WIDTH: usize = 60;
    /// Refusals a dry run lists before "and N more".
    const REFUSED_SHOWN: usize = 20;
    /// Width of the labels in `show`.
    const LABEL_WIDTH: usize = 15;

    /// A table without borders (columns apart by spaces, like kubectl's), never wrapped:
    /// long values are cut before they get here.
    fn table(header: &[&str]) -> Table {
        let mut table = Table::new();
        table
            .load_preset(presets::NOTHING)
            .set_content_arrangement(ContentArrangement::Disabled)
            .set_header(header.to_vec());
        table
    }

    /// `-` for nothing, so columns stay readable.
    fn cell(value: &str) -> String {
        if value.trim().is_empty() {
            "-".to_owned()
        } else {
            value.to_owned()
        }
    }

    /// One line of at most `max` characters, `…` where it was cut.
    pub fn truncate(text: &str, max: usize) -> String {
        let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if one_line.chars().count() <= max {
            return one_line;
        }
        let mut cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }

    fn plural(n: u64, one: &str, many: &str) -> String {
        format!("{n} {}", if n == 1 { one } else { many })
    }

    /// `5/s`, `0.5/s`, `2.25/s`.
    pub fn rate(per_second: f64) -> String {
        let text = format!("{per_second:.2}");
        let text = text.trim_end_matches('0').trim_end_matches('.');
        format!("{text}/s")
    }

    pub fn parse_time(text: &str) -> Option<OffsetDateTime> {
        OffsetDateTime::parse(text, &Rfc3339).ok()
    }

    /// `2026-11-28 10:02:11Z`, in UTC.
    pub fn short_time(at: OffsetDateTime) -> String {
        let at = at.to_offset(time::UtcOffset::UTC);
        let (y, mo, d) = (at.year(), u8::from(at.month()), at.day());
        let (h, mi, s) = (at.hour(), at.minute(), at.second());
        format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}Z")
    }

    /// The two largest units: `42s`, `12m5s`, `3h12m`, `2d4h`.
    pub fn compact(duration: Duration) -> String {
        let s = duration.as_secs();
        let (days, hours, minutes, seconds) = (s / 86_400, s / 3_600 % 24, s / 60 % 60, s % 60);
        let two = |a: u64, ua: &str, b: u64, ub: &str| {
            if b == 0 {
                format!("{a}{ua}")
            } else {
                format!("{a}{ua}{b}{ub}")
            }
        };
        if days > 0 {
            two(days, "d", hours, "h")
        } else if hours > 0 {
            two(hours, "h", minutes, "m")
        } else if minutes > 0 {
            two(minutes, "m", seconds, "s")
        } else {
            format!("{seconds}s")
        }
    }

    /// `3h12m ago` (or `in 5m` for a clock ahead of ours).
    pub fn ago(at: OffsetDateTime, now: OffsetDateTime) -> String {
        let delta = now - at;
        let magnitude = Duration::try_from(delta.abs()).unwrap_or_default();
        if magnitude < Duration::from_secs(1) {
            "just now".to_owned()
        } else if delta.is_negative() {
            format!("in {}", compact(magnitude))
        } else {
            format!("{} ago", compact(magnitude))
        }
    }

    /// `2026-11-28 10:02:11Z (3h12m ago)`; the text as it is if it is not a time.
    pub fn at_with_age(text: &str, now: OffsetDateTime) -> String {
        match parse_time(text) {
            Some(at) => format!("{} ({})", short_time(at), ago(at, now)),
            None => cell(text),
        }
    }

    /// `3h12m ago`; the text as it is if it is not a time.
    pub fn age(text: &str, now: OffsetDateTime) -> String {
        parse_time(text).map_or_else(|| cell(text), |at| ago(at, now))
    }

    /// `2026-11-28 10:02:11Z`; the text as it is if it is not a time.
    fn short(text: &str) -> String {
        parse_time(text).map_or_else(|| cell(text), short_time)
    }

    fn status_label(status: Option<Status>) -> String {
        status.map_or("-", Status::label).to_owned()
    }

    /// What a table shows as a dead letter's cause: the masked cause, else the message.
    fn cause_of(summary: &Summary) -> String {
        let cause = if summary.cause.trim().is_empty() {
            &summary.error_message
        } else {
            &summary.cause
        };
        truncate(&cell(cause), CAUSE_WIDTH)
    }

    /// `list`: the page and where it is in the whole.
    pub fn page(page: &Page, now: OffsetDateTime) -> String {
        if page.rows.is_empty() {
            return if page.total == 0 {
                "no dead letters match\n".to_owned()
            } else {
                format!(
                    "no dead letters at offset {} ({} match)\n",
                    page.offset, page.total
                )
            };
        }
        let mut table = table(&[
            "ID",
            "DEAD-LETTERED",
            "STAGE",
            "EVENT TYPE",
            "CLASS",
            "DEST",
            "CODE",
            "STATUS",
            "CAUSE",
        ]);
        for row in &page.rows {
            let s = &row.summary;
            table.add_row(vec![
                s.id.clone(),
                at_with_age(&s.dead_lettered_at, now),
                cell(&s.stage),
                cell(&s.event_type),
                cell(&s.error_class),
                cell(&s.destination),
                cell(&s.error_code),
                status_label(row.state.status),
                cause_of(s),
            ]);
        }
        let last = page.offset + page.rows.len() as u64;
        let mut out = format!(
            "{}\nshowing {}–{last} of {}",
            table.trim_fmt(),
            page.offset + 1,
            page.total
        );
        if last < page.total {
            let _ = write!(out, " (next page: --offset {last})");
        }
        out.push('\n');
        out
    }

    /// `groups`: one line per cause, and how to replay one.
    pub fn groups(total: u64, groups: &[GroupCount], now: OffsetDateTime) -> String {
        if groups.is_empty() {
            return "no dead letters match\n".to_owned();
        }
        let mut table = table(&[
            "GROUP",
            "COUNT",
            "PARKED",
            "STAGE",
            "CLASS",
            "DEST",
            "CODE",
            "FIRST SEEN",
            "LAST SEEN",
            "CAUSE",
        ]);
        for g in groups {
            table.add_row(vec![
                g.group.fingerprint.clone(),
                g.count.to_string(),
                g.parked.to_string(),
                cell(&g.group.stage),
                cell(&g.group.error_class),
                cell(&g.group.destination),
                cell(&g.group.code),
                age(&g.first_seen, now),
                age(&g.last_seen, now),
                truncate(&cell(&g.group.cause), CAUSE_WIDTH),
            ]);
        }
        format!(
            "{}\n{} of {}\nreplay a group: handoff-dlq replay --group <fp> --dry-run\n",
            table.trim_fmt(),
            plural(groups.len() as u64, "group", "groups"),
            plural(total, "dead letter", "dead letters"),
        )
    }

    /// `stats`: what waits, since when, and the counts per status.
    pub fn stats(facets: &Facets, now: OffsetDateTime) -> String {
        let mut out = String::new();
        if facets.parked.is_empty() {
            out.push_str("nothing parked\n");
        } else {
            let mut table = table(&["STAGE", "CLASS", "PARKED", "OLDEST"]);
            for p in &facets.parked {
                table.add_row(vec![
                    cell(&p.stage),
                    cell(&p.error_class),
                    p.count.to_string(),
                    at_with_age(&p.oldest, now),
                ]);
            }
            let _ = writeln!(out, "{}", table.trim_fmt());
        }
        // Every status in its life order, then anything newer the API knows about.
        let mut counts: Vec<String> = Status::ALL
            .iter()
            .map(|s| {
                format!(
                    "{} {}",
                    s.label(),
                    facets.by_status.get(s.label()).unwrap_or(&0)
                )
            })
            .collect();
        counts.extend(
            facets
                .by_status
                .iter()
                .filter(|(k, _)| Status::parse(k).is_none())
                .map(|(k, n)| format!("{k} {n}")),
        );
        let _ = writeln!(out, "\nby status: {}", counts.join(", "));
        let _ = writeln!(out, "total: {}", facets.total);
        out
    }

    /// A label and its value; later lines of a value line up under the first.
    fn field(out: &mut String, label: &str, value: &str) {
        let value = if value.trim().is_empty() { "-" } else { value };
        let indent = " ".repeat(LABEL_WIDTH);
        for (i, line) in value.lines().enumerate() {
            if i == 0 {
                let _ = writeln!(out, "{label:<LABEL_WIDTH$}{line}");
            } else {
                let _ = writeln!(out, "{indent}{line}");
            }
        }
    }

    /// A field of the record's protobuf JSON, under its proto name or its camelCase one.
    fn json_field<'a>(record: &'a Value, snake: &str, camel: &str) -> Option<&'a Value> {
        record.get(snake).or_else(|| record.get(camel))
    }

    fn json_str(value: &Value, snake: &str, camel: &str) -> String {
        match json_field(value, snake, camel) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        }
    }

    fn state_line(state: &State) -> String {
        let mut line = status_label(state.status);
        if let Some(replay) = &state.replay {
            let _ = write!(line, " by replay {} ({})", replay.job, replay.mode);
            if let Some(outcome) = &replay.outcome {
                let _ = write!(line, ", {outcome}");
            }
        }
        line
    }

    /// `show`: everything about one dead letter.
    pub fn detail(detail: &Detail, now: OffsetDateTime) -> String {
        let s = &detail.summary;
        let state = &detail.state;
        let mut out = String::new();
        field(&mut out, "id", &s.id);
        field(&mut out, "status", &state_line(state));
        if let Some(replay) = &state.replay {
            let mut line = format!(
                "job {}, mode {}, at {}",
                replay.job,
                replay.mode,
                short(&replay.at)
            );
            if let Some(outcome) = &replay.outcome {
                let _ = write!(line, ", {outcome}");
            }
            if let Some(again) = &replay.failed_again_as {
                let _ = write!(line, "\nfailed again as {again}");
                if let Some(at) = &replay.failed_again_at {
                    let _ = write!(line, " at {}", short(at));
                }
            }
            field(&mut out, "replay", &line);
        }
        if let Some(purge) = &state.purge {
            field(
                &mut out,
                "purged",
                &format!("by {} at {}: {}", purge.by, short(&purge.at), purge.reason),
            );
        }
        if !state.history.is_empty() {
            let history: Vec<String> = state
                .history
                .iter()
                .map(|h| {
                    format!(
                        "{:<10} {}",
                        h.status,
                        h.at.as_deref().map_or_else(|| "-".into(), short)
                    )
                })
                .collect();
            field(&mut out, "history", &history.join("\n"));
        }
        field(
            &mut out,
            "event",
            &format!("{} ({})", cell(&s.event_id), cell(&s.event_type)),
        );
        field(&mut out, "publisher", &s.publisher_id);
        field(&mut out, "email", &s.email);
        field(&mut out, "stage", &s.stage);
        field(&mut out, "class", &s.error_class);
        field(&mut out, "destination", &s.destination);
        field(&mut out, "code", &s.error_code);
        field(&mut out, "message", &s.error_message);
        field(
            &mut out,
            "group",
            &format!(
                "{} ({})",
                cell(&s.fingerprint),
                truncate(&cell(&s.cause), 80)
            ),
        );

        let record = detail.record.as_ref();
        if let Some(Value::Array(errors)) =
            record.and_then(|r| json_field(r, "field_errors", "fieldErrors"))
        {
            let lines: Vec<String> = errors
                .iter()
                .map(|e| {
                    format!(
                        "{}: {}",
                        cell(&json_str(e, "path", "path")),
                        json_str(e, "message", "message")
                    )
                })
                .collect();
            if !lines.is_empty() {
                field(&mut out, "field errors", &lines.join("\n"));
            }
        }
        match record.and_then(|r| json_field(r, "attempts", "attempts")) {
            Some(Value::Array(attempts)) if !attempts.is_empty() => {
                let mut table = table(&["#", "AT", "OUTCOME", "ERROR"]);
                for a in attempts {
                    table.add_row(vec![
                        cell(&json_str(a, "number", "number")),
                        short(&json_str(a, "at", "at")),
                        cell(&json_str(a, "outcome", "outcome")),
                        truncate(&cell(&json_str(a, "error", "error")), 100),
                    ]);
                }
                field(&mut out, "attempts", &table.trim_fmt());
            }
            _ => field(&mut out, "attempts", &s.attempts.to_string()),
        }
        field(
            &mut out,
            "first failed",
            &at_with_age(&s.first_failed_at, now),
        );
        field(
            &mut out,
            "dead-lettered",
            &at_with_age(&s.dead_lettered_at, now),
        );
        field(&mut out, "trace id", &s.trace_id);
        field(
            &mut out,
            "origin",
            &format!(
                "queue {}, exchange {}, routing key {}",
                cell(&s.origin_queue),
                cell(&s.origin_exchange),
                cell(&s.origin_routing_key)
            ),
        );
        if let Some(record) = record {
            let content_type = json_str(record, "original_content_type", "originalContentType");
            if !content_type.is_empty() {
                field(&mut out, "content type", &content_type);
            }
            let message_id = json_str(record, "original_message_id", "originalMessageId");
            if !message_id.is_empty() {
                field(&mut out, "message id", &message_id);
            }
            if let Some(Value::Object(headers)) =
                json_field(record, "original_headers", "originalHeaders")
            {
                let sorted: BTreeMap<&String, &Value> = headers.iter().collect();
                let lines: Vec<String> = sorted
                    .into_iter()
                    .map(|(k, v)| {
                        format!(
                            "{k}: {}",
                            v.as_str().map_or_else(|| v.to_string(), str::to_owned)
                        )
                    })
                    .collect();
                if !lines.is_empty() {
                    field(&mut out, "headers", &lines.join("\n"));
                }
            }
        }
        out.push('\n');
        match (&detail.original, &detail.original_base64) {
            (Some(original), _) => {
                out.push_str("original event:\n");
                out.push_str(&serde_json::to_string_pretty(original).unwrap_or_default());
                out.push('\n');
            }
            (None, Some(base64)) => {
                out.push_str("original message (not an envelope; base64):\n");
                out.push_str(base64);
                out.push('\n');
            }
            (None, None) if detail.record.is_none() => {
                out.push_str("the original message is gone (purged)\n");
            }
            (None, None) => out.push_str("no original message was kept\n"),
        }
        out
    }

    /// The rows a dry run shows as its sample.
    fn summaries(summaries: &[Summary], now: OffsetDateTime) -> String {
        let mut table = table(&[
            "ID",
            "DEAD-LETTERED",
            "STAGE",
            "EVENT TYPE",
            "CLASS",
            "DEST",
            "CODE",
            "CAUSE",
        ]);
        for s in summaries {
            table.add_row(vec![
                s.id.clone(),
                at_with_age(&s.dead_lettered_at, now),
                cell(&s.stage),
                cell(&s.event_type),
                cell(&s.error_class),
                cell(&s.destination),
                cell(&s.error_code),
                cause_of(s),
            ]);
        }
        table.trim_fmt()
    }

    /// How long a plan or the rest of a job takes.
    fn estimate(seconds: f64) -> String {
        if seconds.is_finite() && seconds >= 0.0 {
            compact(Duration::from_secs_f64(seconds.ceil()))
        } else {
            "unknown".to_owned()
        }
    }

    /// `replay --dry-run`: what would go where, how fast, how long, and what would not.
    pub fn plan(plan: &Plan, now: OffsetDateTime) -> String {
        let mut out = format!(
            "dry run: would replay {} (mode {})\n",
            plural(plan.count, "dead letter", "dead letters"),
            plan.mode.label()
        );
        for (queue, n) in &plan.targets {
            let _ = writeln!(out, "  {n:>7} to {queue}");
        }
        if plan.count > 0 {
            let _ = writeln!(out, "rate: {} ({})", rate(plan.rate), plan.rate_reason);
            let _ = writeln!(out, "estimated time: {}", estimate(plan.estimated_seconds));
        }
        if !plan.refused.is_empty() {
            let _ = writeln!(out, "refused {}:", plan.refused.len());
            for (id, why) in plan.refused.iter().take(REFUSED_SHOWN) {
                let _ = writeln!(out, "  {id}: {why}");
            }
            if plan.refused.len() > REFUSED_SHOWN {
                let _ = writeln!(out, "  and {} more", plan.refused.len() - REFUSED_SHOWN);
            }
        }
        if !plan.sample.is_empty() {
            let _ = writeln!(out, "sample:\n{}", summaries(&plan.sample, now));
        }
        out.push_str(if plan.count > 0 {
            "nothing was sent; run it again without --dry-run to start the job\n"
        } else {
            "nothing to send\n"
        });
        out
    }

    /// `jobs`: one line per replay job.
    pub fn jobs(jobs: &[Job], now: OffsetDateTime) -> String {
        if jobs.is_empty() {
            return "no replay jobs\n".to_owned();
        }
        let mut table = table(&[
            "JOB",
            "STATE",
            "MODE",
            "SENT/TOTAL",
            "SKIPPED",
            "RATE",
            "OPERATOR",
            "CREATED",
            "SELECTION",
        ]);
        for j in jobs {
            table.add_row(vec![
                j.id.clone(),
                j.state.label().to_owned(),
                j.mode.label().to_owned(),
                format!("{}/{}", j.sent, j.total),
                j.skipped.to_string(),
                rate(j.rate),
                cell(&j.operator),
                age(&j.created_at, now),
                truncate(&cell(&j.selection), CAUSE_WIDTH),
            ]);
        }
        let mut out = table.trim_fmt();
        out.push('\n');
        out
    }

    /// After a job was started.
    pub fn started(job: &Job) -> String {
        let mut out = if job.total == 0 {
            format!("replay {}: nothing to send", job.id)
        } else {
            format!(
                "started replay {}: {} at {}, mode {}",
                job.id,
                plural(job.total, "dead letter", "dead letters"),
                rate(job.rate),
                job.mode.label()
            )
        };
        if job.refused > 0 {
            let _ = write!(out, " ({} refused; see --dry-run)", job.refused);
        }
        out
    }

    /// A line while a job runs (when stdout is not a terminal).
    pub fn job_progress(job: &Job) -> String {
        let done = job.sent + job.skipped;
        let mut out = format!(
            "replay {} {}: {done}/{} ({} sent, {} skipped)",
            job.id,
            job.state.label(),
            job.total,
            job.sent,
            job.skipped
        );
        if job.state == JobState::Running && job.rate > 0.0 {
            let left = job.total.saturating_sub(done) as f64 / job.rate;
            let _ = write!(out, ", {}, about {} left", rate(job.rate), estimate(left));
        }
        out
    }

    /// The line a finished (or stopped) watch ends with.
    pub fn job_summary(job: &Job) -> String {
        let took = match (parse_time(&job.created_at), parse_time(&job.finished_at)) {
            (Some(start), Some(end)) if end >= start => {
                format!(
                    " in {}",
                    compact(Duration::try_from(end - start).unwrap_or_default())
                )
            }
            _ => String::new(),
        };
        let mut out = match job.state {
            JobState::Done => {
                let mut line = format!(
                    "replay {} done{took}: sent {} of {}",
                    job.id, job.sent, job.total
                );
                if job.skipped > 0 {
                    let _ = write!(line, ", {} skipped", job.skipped);
                }
                if job.refused > 0 {
                    let _ = write!(line, ", {} refused", job.refused);
                }
                line
            }
            JobState::Cancelled => format!(
                "replay {} cancelled{took}: sent {} of {}; the {} not sent are parked again",
                job.id,
                job.sent,
                job.total,
                job.total.saturating_sub(job.sent + job.skipped)
            ),
            state => format!(
                "replay {} is {}: sent {} of {}",
                job.id,
                state.label(),
                job.sent,
                job.total
            ),
        };
        if !job.last_error.is_empty() {
            let _ = write!(out, "; last error: {}", job.last_error);
        }
        out
    }

    /// After pause, resume or cancel.
    pub fn job_state(job: &Job) -> String {
        let mut out = format!(
            "replay {} is {} (sent {} of {})",
            job.id,
            job.state.label(),
            job.sent,
            job.total
        );
        match job.state {
            JobState::Paused => {
                let _ = write!(out, "; resume it: handoff-dlq resume {}", job.id);
            }
            JobState::Cancelling | JobState::Cancelled => {
                out.push_str("; what it has not sent goes back to parked");
            }
            JobState::Running | JobState::Done => {}
        }
        out
    }

    /// What `watch` says when Ctrl-C stops it.
    pub fn stopped_watching(id: &str) -> String {
        format!(
            "stopped watching; replay {id} keeps running on the server.\n  \
             pause it:    handoff-dlq pause {id}\n  \
             cancel it:   handoff-dlq cancel {id}\n  \
             watch again: handoff-dlq watch {id}"
        )
    }

    pub fn purged(result: &PurgeResult) -> String {
        format!(
            "purged {} ({} left alone: not parked or replayed)",
            result.purged, result.left
        )
    }

    /// A filter as compact JSON with only the fields that are set.
    pub fn compact_filter(filter: &Filter) -> String {
        match serde_json::to_value(filter) {
            Ok(Value::Object(mut map)) => {
                map.retain(|_, v| !v.is_null());
                Value::Object(map).to_string()
            }
            _ => String::new(),
        }
    }

    /// `audit`: who did what.
    pub fn audit(entries: &[AuditEntry], _now: OffsetDateTime) -> String {
        if entries.is_empty() {
            return "no audit entries\n".to_owned();
        }
        let mut table = table(&[
            "AT", "OPERATOR", "ACTION", "COUNT", "JOB", "REASON", "DETAIL",
        ]);
        for e in entries {
            let mut detail: Vec<String> = Vec::new();
            if !e.detail.is_empty() {
                detail.push(e.detail.clone());
            }
            if let Some(filter) = &e.filter {
                detail.push(compact_filter(filter));
            }
            if !e.ids.is_empty() {
                let shown: Vec<&str> = e.ids.iter().take(3).map(String::as_str).collect();
                let more = e.ids.len().saturating_sub(shown.len());
                let mut ids = format!("ids {}", shown.join(" "));
                if more > 0 {
                    let _ = write!(ids, " +{more}");
                }
                detail.push(ids);
            }
            table.add_row(vec![
                short(&e.at),
                cell(&e.operator),
                cell(&e.action),
                e.count.to_string(),
                cell(&e.job),
                truncate(&cell(&e.reason), 40),
                truncate(&cell(&detail.join("; ")), 100),
            ]);
        }
        let mut out = table.trim_fmt();
        out.push('\n');
        out
    }
}

// ---------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------

/// The only place that writes to the terminal: printing is this binary's job, and keeping
/// it here keeps it out of the library (clippy's `print_stdout` guards that). It writes
/// with `writeln!` on a locked handle rather than `println!`: `handoff-dlq list | head`
/// closes the pipe early, where `println!` would panic; here the output just ends.
mod out {
    use std::io::Write as _;

    /// `text` on stdout, ending with one newline.
    pub fn text(text: &str) {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(text.as_bytes());
        if !text.ends_with('\n') {
            let _ = stdout.write_all(b"\n");
        }
        let _ = stdout.flush();
    }

    /// An API answer as pretty JSON on stdout.
    pub fn json(value: &serde_json::Value) {
        text(&serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string()));
    }

    /// `error: <message>` on stderr.
    pub fn error(message: &str) {
        stderr(&format!("error: {message}"));
    }

    /// One line on stderr.
    pub fn stderr(line: &str) {
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use clap::CommandFactory as _;

    use super::*;
    use crate::api::PurgeResult;
    use crate::record::Summary;
    use crate::replay::JobState;
    use crate::store::{Group, HistoryEntry, ParkedCount, ReplayState, Row, State};

    fn now() -> OffsetDateTime {
        render::parse_time("2026-11-28T13:14:11Z").expect("a time")
    }

    fn summary(id: &str) -> Summary {
        Summary {
            id: id.into(),
            event_id: format!("evt-{id}"),
            event_type: "lead.created".into(),
            publisher_id: "acme".into(),
            stage: "crm-writer".into(),
            error_class: "permanent".into(),
            error_message: "Property values were not valid: lifecyclestage evt-1".into(),
            error_code: "400".into(),
            destination: "hubspot".into(),
            email: "alex@example.com".into(),
            fingerprint: "fp-0123456789ab".into(),
            cause: "property values were not valid: lifecyclestage <id>".into(),
            attempts: 1,
            first_failed_at: "2026-11-28T10:02:10Z".into(),
            dead_lettered_at: "2026-11-28T10:02:11Z".into(),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            origin_queue: "handoff.crm-writer".into(),
            origin_exchange: "handoff.events".into(),
            origin_routing_key: "canonical.lead.created".into(),
        }
    }

    fn parked() -> State {
        State {
            status: Some(Status::Parked),
            parked_at: "2026-11-28T10:02:11Z".into(),
            history: vec![HistoryEntry {
                status: "parked".into(),
                at: Some("2026-11-28T10:02:11Z".into()),
            }],
            ..State::default()
        }
    }

    fn parse(args: &[&str]) -> Cli {
        let mut argv = vec!["handoff-dlq"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).expect("the arguments parse")
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_go_before_or_after_the_command() {
        let cli = parse(&[
            "list",
            "--json",
            "--url",
            "http://dlq:1",
            "--token",
            "t",
            "--stage",
            "normalizer",
        ]);
        assert!(cli.global.json);
        assert_eq!(cli.global.url, "http://dlq:1");
        assert_eq!(cli.global.token.as_deref(), Some("t"));
        let Command::List(list) = cli.command else {
            panic!("list")
        };
        assert_eq!(list.limit, 50);
        assert_eq!(list.filter.stage.as_deref(), Some("normalizer"));

        let cli = parse(&["--json", "stats"]);
        assert!(cli.global.json);
    }

    #[test]
    fn replay_takes_ids_and_modes() {
        let Command::Replay(args) = parse(&[
            "replay",
            "dl-1",
            "dl-2",
            "--mode",
            "renormalize",
            "--rate",
            "2.5",
        ])
        .command
        else {
            panic!("replay")
        };
        let request = replay_request(&args).expect("a request");
        assert_eq!(request.ids, vec!["dl-1", "dl-2"]);
        assert_eq!(request.mode, Mode::Renormalize);
        assert_eq!(request.rate, Some(2.5));
        assert!(request.filter.is_none() && request.group.is_none());
    }

    #[test]
    fn filter_flags_become_the_query_string_as_typed() {
        let filter = FilterArgs {
            stage: Some("crm-writer".into()),
            error_class: Some("permanent".into()),
            group: Some("fp-1".into()),
            email: Some("  ".into()),
            status: Some(StatusArg::All),
            since: Some("2h".into()),
            until: Some("2026-11-28T10:00:00Z".into()),
            ..FilterArgs::default()
        };
        assert_eq!(
            filter.query(),
            vec![
                ("stage", "crm-writer".to_owned()),
                ("error_class", "permanent".to_owned()),
                ("fingerprint", "fp-1".to_owned()),
                ("since", "2h".to_owned()),
                ("until", "2026-11-28T10:00:00Z".to_owned()),
                ("status", "all".to_owned()),
            ]
        );
        let client = Client::new("http://127.0.0.1:8095/", None).expect("client");
        let url = client.url(&["v1", "dead-letters"], &filter.query());
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8095/v1/dead-letters?stage=crm-writer&error_class=permanent&fingerprint=fp-1\
             &since=2h&until=2026-11-28T10%3A00%3A00Z&status=all"
        );
    }

    #[test]
    fn ids_in_paths_stay_one_segment_and_a_base_path_is_kept() {
        let client = Client::new("https://ops.example.com/dlq", None).expect("client");
        assert_eq!(
            client
                .url(&["v1", "dead-letters", "dl-1/../x?y"], &[])
                .as_str(),
            "https://ops.example.com/dlq/v1/dead-letters/dl-1%2F..%2Fx%3Fy"
        );
        assert!(matches!(
            Client::new("ftp://x", None),
            Err(CliError::Usage(_))
        ));
        assert!(matches!(
            Client::new("not a url", None),
            Err(CliError::Usage(_))
        ));
    }

    #[test]
    fn a_replay_or_purge_filter_gets_absolute_times() {
        let filter = FilterArgs {
            destination: Some("hubspot".into()),
            status: Some(StatusArg::Parked),
            since: Some("2h".into()),
            until: Some("2026-11-28T10:00:00Z".into()),
            ..FilterArgs::default()
        };
        let before = OffsetDateTime::now_utc();
        let f = filter.to_filter().expect("a filter");
        assert_eq!(f.destination.as_deref(), Some("hubspot"));
        assert_eq!(f.status, Some(Status::Parked));
        assert_eq!(f.until.as_deref(), Some("2026-11-28T10:00:00Z"));
        let since = render::parse_time(f.since.as_deref().expect("since")).expect("RFC 3339");
        let two_hours = time::Duration::hours(2);
        assert!(since <= before - two_hours + time::Duration::seconds(1));
        assert!(since >= before - two_hours - time::Duration::seconds(60));
        assert!(f.window().is_ok(), "the store can read it");

        let all = FilterArgs {
            status: Some(StatusArg::All),
            ..FilterArgs::default()
        };
        assert_eq!(all.to_filter().expect("a filter").status, None);

        let bad = FilterArgs {
            since: Some("yesterday-ish".into()),
            ..FilterArgs::default()
        };
        let err = bad.to_filter().expect_err("not a time").to_string();
        assert!(
            err.starts_with("--since: ") && err.contains("yesterday-ish"),
            "{err}"
        );
    }

    #[test]
    fn a_selection_is_exactly_one_kind() {
        let none = FilterArgs::default();
        let group = FilterArgs {
            group: Some("fp-x".into()),
            ..FilterArgs::default()
        };
        let group_since = FilterArgs {
            group: Some("fp-x".into()),
            since: Some("2026-11-28T10:00:00Z".into()),
            ..FilterArgs::default()
        };
        let ids = vec!["dl-1".to_owned()];

        assert_eq!(
            selection("replay", &ids, &none).expect("ids"),
            Selection::Ids(ids.clone())
        );
        assert_eq!(
            selection("replay", &[], &group).expect("group"),
            Selection::Group("fp-x".into())
        );
        let Selection::Filter(f) = selection("replay", &[], &group_since).expect("filter") else {
            panic!("a filter")
        };
        assert_eq!(f.fingerprint.as_deref(), Some("fp-x"));
        assert_eq!(f.since.as_deref(), Some("2026-11-28T10:00:00Z"));

        let err = selection("replay", &ids, &group).expect_err("two kinds");
        assert!(matches!(err, CliError::Usage(_)));
        let err = selection("purge", &[], &none).expect_err("nothing");
        assert!(err.to_string().starts_with("name what to purge"), "{err}");
        // Blank values select nothing, so they cannot make an empty filter.
        let blank = FilterArgs {
            stage: Some(" ".into()),
            ..FilterArgs::default()
        };
        assert!(selection("purge", &[], &blank).is_err());
        assert!(selection("purge", &[" ".to_owned()], &none).is_err());
    }

    #[test]
    fn purge_needs_yes_and_a_reason_before_anything_is_sent() {
        let args = |yes: bool, reason: Option<&str>| PurgeArgs {
            ids: Vec::new(),
            filter: FilterArgs {
                group: Some("fp-x".into()),
                ..FilterArgs::default()
            },
            reason: reason.map(str::to_owned),
            yes,
        };
        let err = purge_request(&args(false, Some("r"))).expect_err("no --yes");
        assert_eq!(
            err.to_string(),
            "purge deletes dead letters for good; add --yes (and --reason)"
        );
        assert_eq!(u8_of(err.exit_code()), u8_of(ExitCode::from(2)));
        assert!(matches!(
            purge_request(&args(true, None)),
            Err(CliError::Usage(_))
        ));
        assert!(matches!(
            purge_request(&args(true, Some("  "))),
            Err(CliError::Usage(_))
        ));
        let request = purge_request(&args(true, Some(" duplicate test data "))).expect("a request");
        assert!(request.confirm);
        assert_eq!(request.reason, "duplicate test data");
        assert_eq!(request.group.as_deref(), Some("fp-x"));
    }

    /// `ExitCode` has no `PartialEq`; its `Debug` tells them apart.
    fn u8_of(code: ExitCode) -> String {
        format!("{code:?}")
    }

    #[test]
    fn a_rate_must_be_positive() {
        let Command::Replay(args) = parse(&["replay", "dl-1", "--rate", "0"]).command else {
            panic!("replay")
        };
        assert!(matches!(replay_request(&args), Err(CliError::Usage(_))));
    }

    #[test]
    fn api_errors_carry_the_apis_message() {
        let err = api_error(
            401,
            br#"{"error":{"code":"unauthorized","message":"the operator token is not valid"}}"#,
        );
        assert_eq!(
            err.to_string(),
            "the operator token is not valid (HTTP 401)"
        );
        assert_eq!(
            api_error(502, b"<html>Bad gateway</html>\n").to_string(),
            "<html>Bad gateway</html> (HTTP 502)"
        );
        assert_eq!(api_error(404, b"").to_string(), "Not Found (HTTP 404)");
        assert!(api_error(503, b"").is_transient());
        assert!(!api_error(404, b"").is_transient());
    }

    #[test]
    fn the_clis_variables_are_reserved_from_configuration() {
        assert!(URL_ENV.starts_with(handoff_kit::config::CLI_ENV_PREFIX));
        assert!(TOKEN_ENV.starts_with(handoff_kit::config::CLI_ENV_PREFIX));
        let vars = [
            (TOKEN_ENV, "secret"),
            (URL_ENV, "http://x"),
            ("HANDOFF_NAMESPACE", "ns1"),
        ];
        let cfg: Config = handoff_kit::config::load_with_env(None, &vars).expect("config");
        assert_eq!(cfg.namespace, "ns1");
    }

    #[test]
    fn durations_and_ages_are_compact() {
        use render::{ago, compact};
        assert_eq!(compact(Duration::from_secs(42)), "42s");
        assert_eq!(compact(Duration::from_secs(12 * 60 + 5)), "12m5s");
        assert_eq!(
            compact(Duration::from_secs(3 * 3600 + 12 * 60 + 7)),
            "3h12m"
        );
        assert_eq!(compact(Duration::from_secs(3600)), "1h");
        assert_eq!(compact(Duration::from_secs(2 * 86_400 + 4 * 3600)), "2d4h");
        let at = render::parse_time("2026-11-28T10:02:11Z").expect("time");
        assert_eq!(ago(at, now()), "3h12m ago");
        assert_eq!(ago(now(), at), "in 3h12m");
        assert_eq!(ago(now(), now()), "just now");
        assert_eq!(render::rate(5.0), "5/s");
        assert_eq!(render::rate(0.5), "0.5/s");
        assert_eq!(render::truncate("a\nb  c", 10), "a b c");
        assert_eq!(render::truncate("abcdef", 4), "abc…");
    }

    #[test]
    fn a_page_renders_its_rows_and_where_it_is() {
        let page = Page {
            total: 2,
            offset: 0,
            rows: vec![
                Row {
                    summary: summary("dl-000000000000000000000001"),
                    state: parked(),
                },
                Row {
                    summary: Summary {
                        cause: "x".repeat(200),
                        ..summary("dl-000000000000000000000002")
                    },
                    state: parked(),
                },
            ],
        };
        let text = render::page(&page, now());
        assert!(text.contains("dl-000000000000000000000001"), "{text}");
        assert!(text.contains("dl-000000000000000000000002"), "{text}");
        assert!(text.contains("2026-11-28 10:02:11Z (3h12m ago)"), "{text}");
        assert!(
            text.contains("DEAD-LETTERED") && text.contains("CAUSE"),
            "{text}"
        );
        assert!(
            text.contains(&format!("{}…", "x".repeat(59))),
            "cut at 60: {text}"
        );
        assert!(!text.contains(&"x".repeat(61)), "{text}");
        assert!(text.trim_end().ends_with("showing 1–2 of 2"), "{text}");

        let more = Page {
            total: 1234,
            offset: 50,
            ..page.clone()
        };
        assert!(
            render::page(&more, now()).contains("showing 51–52 of 1234 (next page: --offset 52)")
        );
        let empty = Page {
            total: 0,
            offset: 0,
            rows: Vec::new(),
        };
        assert_eq!(render::page(&empty, now()), "no dead letters match\n");
    }

    #[test]
    fn groups_render_with_the_replay_hint() {
        let groups = vec![GroupCount {
            group: Group {
                fingerprint: "fp-0123456789ab".into(),
                stage: "normalizer".into(),
                error_class: "validation".into(),
                cause: "deal.stage: unmapped value <s>".into(),
                example: "dl-1".into(),
                ..Group::default()
            },
            count: 12,
            parked: 10,
            first_seen: "2026-11-27T13:14:11Z".into(),
            last_seen: "2026-11-28T13:04:11Z".into(),
        }];
        let text = render::groups(12, &groups, now());
        assert!(text.contains("fp-0123456789ab"), "{text}");
        assert!(
            text.contains("1d ago") && text.contains("10m ago"),
            "{text}"
        );
        assert!(text.contains("1 group of 12 dead letters"), "{text}");
        assert!(
            text.contains("replay a group: handoff-dlq replay --group <fp> --dry-run"),
            "{text}"
        );
    }

    #[test]
    fn stats_render_parked_with_the_oldest_and_every_status() {
        let facets = Facets {
            total: 7,
            groups: Vec::new(),
            parked: vec![ParkedCount {
                stage: "crm-writer".into(),
                error_class: "permanent".into(),
                count: 5,
                oldest: "2026-11-28T10:02:11Z".into(),
            }],
            by_status: BTreeMap::from([("parked".into(), 5), ("replayed".into(), 2)]),
        };
        let text = render::stats(&facets, now());
        assert!(
            text.contains("OLDEST") && text.contains("(3h12m ago)"),
            "{text}"
        );
        assert!(
            text.contains("by status: parked 5, replaying 0, replayed 2, purged 0"),
            "{text}"
        );
        assert!(text.contains("total: 7"), "{text}");
    }

    #[test]
    fn a_plan_renders_targets_rate_estimate_and_refusals() {
        let refused: BTreeMap<String, String> = (0..25)
            .map(|i| {
                (
                    format!("dl-{i:02}"),
                    "it is replaying, not parked".to_owned(),
                )
            })
            .collect();
        let plan = Plan {
            mode: Mode::AsIs,
            count: 120,
            targets: BTreeMap::from([
                ("handoff.crm-writer".into(), 100),
                ("handoff.normalizer".into(), 20),
            ]),
            rate: 5.0,
            rate_reason: "capped at 50% of hubspot's 10/s budget, so live traffic keeps the rest"
                .into(),
            estimated_seconds: 24.0,
            refused,
            sample: vec![summary("dl-000000000000000000000001")],
        };
        let text = render::plan(&plan, now());
        assert!(
            text.contains("would replay 120 dead letters (mode as_is)"),
            "{text}"
        );
        assert!(text.contains("100 to handoff.crm-writer"), "{text}");
        assert!(
            text.contains("rate: 5/s (capped at 50% of hubspot's"),
            "{text}"
        );
        assert!(text.contains("estimated time: 24s"), "{text}");
        assert!(text.contains("refused 25:"), "{text}");
        assert!(
            text.contains("dl-00: it is replaying, not parked"),
            "{text}"
        );
        assert!(
            text.contains("dl-19:") && !text.contains("dl-20:"),
            "first 20 only: {text}"
        );
        assert!(text.contains("and 5 more"), "{text}");
        assert!(
            text.contains("dl-000000000000000000000001"),
            "the sample: {text}"
        );
    }

    fn job(state: JobState) -> Job {
        Job {
            id: "job-abc".into(),
            operator: "sam".into(),
            created_at: "2026-11-28T13:00:00Z".into(),
            rate: 5.0,
            selection: "group fp-x".into(),
            total: 120,
            refused: 3,
            state,
            sent: 40,
            skipped: 0,
            ..Job::default()
        }
    }

    #[test]
    fn jobs_render_progress_and_their_end() {
        let text = render::jobs(&[job(JobState::Running)], now());
        assert!(
            text.contains("job-abc") && text.contains("40/120") && text.contains("14m11s ago"),
            "{text}"
        );
        assert_eq!(
            render::job_progress(&job(JobState::Running)),
            "replay job-abc running: 40/120 (40 sent, 0 skipped), 5/s, about 16s left"
        );
        let done = Job {
            sent: 120,
            finished_at: "2026-11-28T13:00:24Z".into(),
            ..job(JobState::Done)
        };
        assert_eq!(
            render::job_summary(&done),
            "replay job-abc done in 24s: sent 120 of 120, 3 refused"
        );
        let cancelled = job(JobState::Cancelled);
        assert!(render::job_summary(&cancelled).contains("the 80 not sent are parked again"));
        assert!(render::job_state(&job(JobState::Paused)).contains("handoff-dlq resume job-abc"));
        assert!(render::job_state(&job(JobState::Cancelling)).ends_with("goes back to parked"));
        assert!(render::stopped_watching("job-abc").contains("handoff-dlq pause job-abc"));
    }

    #[test]
    fn a_dead_letter_shows_its_cause_attempts_headers_and_original() {
        let detail = Detail {
            summary: summary("dl-1"),
            state: State {
                status: Some(Status::Replayed),
                replay: Some(ReplayState {
                    job: "job-abc".into(),
                    mode: "as_is".into(),
                    at: "2026-11-28T12:00:00Z".into(),
                    outcome: Some("failed_again".into()),
                    failed_again_as: Some("dl-2".into()),
                    failed_again_at: Some("2026-11-28T12:00:05Z".into()),
                }),
                ..parked()
            },
            record: Some(serde_json::json!({
                "field_errors": [{"path": "deal.stage", "message": "unmapped value \"won\""}],
                "attempts": [{"number": 1, "at": "2026-11-28T10:02:10Z", "error": "HTTP 400", "outcome": "permanent"}],
                "originalHeaders": {"x-handoff-attempt": "1"},
            })),
            original: Some(
                serde_json::json!({"event_id": "evt-dl-1", "raw": {"body": {"email": "alex@example.com"}}}),
            ),
            original_base64: None,
        };
        let text = render::detail(&detail, now());
        for expected in [
            "dl-1",
            "replayed by replay job-abc (as_is), failed_again",
            "failed again as dl-2",
            "evt-dl-1 (lead.created)",
            "deal.stage: unmapped value \"won\"",
            "HTTP 400",
            "x-handoff-attempt: 1",
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "queue handoff.crm-writer, exchange handoff.events, routing key canonical.lead.created",
            "original event:",
            "\"email\": \"alex@example.com\"",
        ] {
            assert!(
                text.contains(expected),
                "{expected:?} missing from:\n{text}"
            );
        }
    }

    #[test]
    fn the_audit_shows_filters_compactly() {
        let entries = vec![AuditEntry {
            id: "1-0".into(),
            at: "2026-11-28T12:00:00Z".into(),
            operator: "sam".into(),
            action: "purge".into(),
            filter: Some(Filter {
                fingerprint: Some("fp-x".into()),
                ..Filter::default()
            }),
            count: 3,
            reason: "test data".into(),
            detail: "3 selected, 3 purged".into(),
            ..AuditEntry::default()
        }];
        let text = render::audit(&entries, now());
        assert!(
            text.contains("3 selected, 3 purged; {\"fingerprint\":\"fp-x\"}"),
            "{text}"
        );
        assert!(
            text.contains("2026-11-28 12:00:00Z") && text.contains("test data"),
            "{text}"
        );
        assert_eq!(render::audit(&[], now()), "no audit entries\n");
        assert_eq!(
            render::purged(&PurgeResult {
                purged: 3,
                left: 1,
                ids: Vec::new()
            }),
            "purged 3 (1 left alone: not parked or replayed)"
        );
    }
}
