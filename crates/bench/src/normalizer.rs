//! The normalizer service under test ([5/10]): its real release binary in a
//! child process ([`Service`]) with a throw-away configuration (a namespace
//! of its own, a free admin port, JSON logs at `warn`, everything else its
//! production defaults), draining a backlog.
//!
//! N raw envelopes of the seed event (each with its own `event_id`,
//! `content_sha256` = SHA-256 of the body, publisher `bench`) are put into
//! `{ns}.normalizer` *before* the service starts (timed separately, not
//! measured); then the service starts and the bench polls the crm-writer
//! queue, as seldom as [`PollPace`] allows. The measured window runs from the
//! first canonical message there to the N-th (or `--max-seconds`), so
//! start-up is left out: msg/s is the messages that arrived in the window
//! over its length, and the CPU table brackets the same window.
//!
//! The bench cannot time one message through the service from outside (the
//! backlog was there before it started), so the latency column is the
//! service's own `handoff_bus_publish_seconds` histogram from `/metrics`:
//! canonical publish → confirm, the part of each message's handling that
//! waits on the broker, its p50/p99 interpolated within the buckets the way
//! Prometheus' `histogram_quantile` does (so "≈"). The mean time inside
//! `handoff_normalize` (`handoff_normalizer_normalize_seconds`) and the
//! outcome counters are read from the same scrape.
//!
//! Afterwards the service is stopped with SIGTERM and the queues are checked:
//! both writer queues hold exactly N, the input queue and the dead letters 0.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use handoff_bus::{Bus, BusConfig, CRM_WRITER, NORMALIZER};
use lapin::Connection;
use tokio_util::sync::CancellationToken;

use crate::ceiling;
use crate::measure::{Latencies, Measured};
use crate::options::Options;
use crate::procs::{self, Watched};
use crate::prometheus::{histogram, outcomes, quantile, sample};
use crate::queues::{Counter, PollPace};
use crate::report::thousands;
use crate::service::{Service, free_port};

/// How long the service may take from its start to its first canonical message.
const FIRST_OUTPUT_WITHIN: Duration = Duration::from_secs(30);
/// How long the rest of a backlog may take after the measured window ran out, before the
/// queue check (which needs the whole backlog through) is given up.
const FINISH_WITHIN: Duration = Duration::from_secs(120);

/// What the normalizer scenario found.
pub struct NormalizerRun {
    pub measured: Measured,
    /// Messages preloaded, and how long that took (not measured).
    pub expected: u64,
    pub preload: Duration,
    /// Encoded size of one input envelope.
    pub input_bytes: usize,
    /// Whether the whole backlog went through within the measured window.
    pub drained_in_window: bool,
    /// p50 and p99 of canonical publish → confirm, from the service's histogram.
    pub publish_latency: Option<(Duration, Duration)>,
    /// Mean time inside `handoff_normalize` per message, from the service's histogram.
    pub normalize_mean: Option<Duration>,
    /// `handoff_normalizer_events_total` by outcome, e.g. "normalized 20,000".
    pub outcomes: String,
    /// Peak resident memory of the service (`VmHWM`).
    pub peak_rss_kib: Option<u64>,
    /// The queue check line, and what makes the run invalid.
    pub queue_check: String,
    pub problems: Vec<String>,
}

/// Runs the scenario in a namespace of its own; the service is stopped and the namespace
/// and its Redis keys removed afterwards whatever happens.
pub async fn run(
    opts: &Options,
    run_id: &str,
    watched: &mut Watched,
    interrupted: &CancellationToken,
) -> anyhow::Result<NormalizerRun> {
    let result = ceiling::in_namespace(
        &format!("bench-{run_id}-normalizer"),
        async |bus, service: &mut Option<Service>| {
            scenario(opts, run_id, watched, bus, service, interrupted).await
        },
    )
    .await;
    watched.normalizer = None;
    result
}

async fn scenario(
    opts: &Options,
    run_id: &str,
    watched: &mut Watched,
    bus: &Bus,
    service: &mut Option<Service>,
    interrupted: &CancellationToken,
) -> anyhow::Result<NormalizerRun> {
    let connection = ceiling::connect(bus, "normalizer").await?;
    let result = drain(
        opts,
        run_id,
        watched,
        bus,
        &connection,
        service,
        interrupted,
    )
    .await;
    let _ = connection.close(200, "bench done".into()).await;
    result
}

async fn drain(
    opts: &Options,
    run_id: &str,
    watched: &mut Watched,
    bus: &Bus,
    connection: &Connection,
    service: &mut Option<Service>,
    interrupted: &CancellationToken,
) -> anyhow::Result<NormalizerRun> {
    let topology = bus.topology();
    let namespace = topology.namespace().to_owned();
    let input_queue = topology.stage_queue(NORMALIZER);
    let crm_queue = topology.stage_queue(CRM_WRITER);
    let counter = Counter::open(connection).await?;
    let channels = ceiling::confirm_channels(connection).await?;

    let ceiling::Backlog {
        expected,
        input_bytes,
        took: preload,
    } = ceiling::preload_backlog(
        &channels,
        &counter,
        topology,
        &input_queue,
        run_id,
        'N',
        opts,
        interrupted,
    )
    .await?;
    println!(
        "      preloaded {} raw envelopes into {input_queue} in {:.1} s (not measured); \
         starting {}…",
        thousands(expected),
        preload.as_secs_f64(),
        opts.normalizer_bin.display()
    );

    let started = Instant::now();
    let running = service.insert(spawn(&opts.normalizer_bin, &namespace)?);
    watched.normalizer = Some(running.pid());

    // Start-up is not measured: the window opens at the first canonical message.
    let first = loop {
        running
            .check_alive()
            .context("waiting for its first canonical message")?;
        if interrupted.is_cancelled() {
            bail!("interrupted");
        }
        let count = counter.count(&crm_queue).await?;
        if count > 0 {
            break count;
        }
        if started.elapsed() >= FIRST_OUTPUT_WITHIN {
            bail!(
                "the normalizer published nothing within {FIRST_OUTPUT_WITHIN:?} of its start; \
                 its output:\n{}",
                running.log_tail(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let window_start = Instant::now();
    let before = watched.sample();
    println!(
        "      first canonical message {:.2} s after the start; draining…",
        started.elapsed().as_secs_f64()
    );
    let window_end = window_start + opts.max_duration;
    let mut last = first;
    let pace = PollPace::new(u64::from(first));
    while u64::from(last) < expected && Instant::now() < window_end {
        tokio::time::sleep(pace.next(u64::from(last), expected)).await;
        if interrupted.is_cancelled() {
            bail!("interrupted");
        }
        running.check_alive().context("while draining")?;
        last = counter.count(&crm_queue).await?;
    }
    let after = watched.sample();
    let wall = window_start.elapsed();
    let drained_in_window = u64::from(last) >= expected;

    // The queue check needs the whole backlog through, measured or not.
    let finish_by = Instant::now() + FINISH_WITHIN;
    let mut total = last;
    while u64::from(total) < expected && Instant::now() < finish_by {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if interrupted.is_cancelled() {
            bail!("interrupted");
        }
        running
            .check_alive()
            .context("while finishing the backlog")?;
        total = counter.count(&crm_queue).await?;
    }

    let metrics = running.metrics().await;
    let peak_rss_kib = procs::peak_rss_kib(running.pid());
    let mut problems = Vec::new();
    if let Some(running) = service.take() {
        match running.stop(Duration::from_secs(15)).await {
            Ok(status) if status.success() => {}
            Ok(status) => {
                problems.push(format!("the normalizer exited with {status} after SIGTERM"))
            }
            Err(err) => problems.push(format!("stopping the normalizer: {err:#}")),
        }
    }
    watched.normalizer = None;
    // After the stop: anything the service still held unacked is back in its input queue.
    let counts = counter.stages(topology).await?;
    let (queue_check, problem) = counts.check("normalizer service", expected);
    problems.extend(problem);

    let (publish_latency, normalize_mean, outcomes) = match metrics {
        Ok(text) => {
            let buckets = histogram(&text, "handoff_bus_publish_seconds");
            let quantile = |q| quantile(&buckets, q).map(Duration::from_secs_f64);
            let latency = quantile(0.5).zip(quantile(0.99));
            let sum = sample(&text, "handoff_normalizer_normalize_seconds_sum");
            let count = sample(&text, "handoff_normalizer_normalize_seconds_count");
            let mean = sum
                .zip(count)
                .filter(|(_, count)| *count > 0.0)
                .map(|(sum, count)| Duration::from_secs_f64(sum / count));
            (
                latency,
                mean,
                outcomes(&text, "handoff_normalizer_events_total"),
            )
        }
        Err(err) => (None, None, format!("unknown ({err:#})")),
    };
    let mut cpu = before.until(&after);
    cpu.wall = wall;
    Ok(NormalizerRun {
        measured: Measured {
            concurrency: usize::from(BusConfig::default().prefetch),
            events: u64::from(last.saturating_sub(first)),
            failed_events: 0,
            errors: Vec::new(),
            latencies: Latencies::default(),
            cpu,
        },
        expected,
        preload,
        input_bytes,
        drained_in_window,
        publish_latency,
        normalize_mean,
        outcomes,
        peak_rss_kib,
        queue_check,
        problems,
    })
}

/// Starts `bin` with a config for `namespace`.
pub(crate) fn spawn(bin: &Path, namespace: &str) -> anyhow::Result<Service> {
    let admin = free_port().context("finding a free port for the admin server")?;
    Service::spawn(
        "the normalizer",
        bin,
        namespace,
        &config(namespace, admin),
        admin,
    )
}

/// The configuration file: everything the bench depends on is spelled out, the rest is
/// the normalizer's defaults (the production settings: prefetch, publish channels,
/// dedupe lease and retention, the `[normalize]` maps).
fn config(namespace: &str, admin: u16) -> String {
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

[shutdown]
# Nothing is in flight by the time the bench stops the normalizer; keep the wait short.
grace = "5s"

[telemetry]
# Production's format; nothing is logged per event at warn.
log_format = "json"
log_filter = "warn"
"#
    )
}
