//! `handoff-bench` (`make bench`): how much of the broker's capacity each
//! Handoff service, and the whole pipeline, turns into work on this machine.
//!
//! Ten scenarios in seven parts, each service beside a bare-broker ceiling
//! that does the same broker work with plain lapin (the dead-letter handler
//! beside its aims instead), each counted against what it should have left in
//! RabbitMQ (and, for the writers, in the sandbox; for the handler, in its
//! store):
//!
//! Part `ingest` (`--only ingest`):
//!
//! 1. **bare broker** ([`ceiling`]): a plain lapin publisher with confirms,
//!    persistent envelopes of ingest's size, into the same v1 topology — the
//!    ceiling no service in front of RabbitMQ can beat.
//! 2. **ingest single** ([`load`], [`ingest`]): the real release binary,
//!    `POST /v1/events/customer.converted` from keep-alive HTTP/1.1 clients.
//! 3. **ingest batch**: `POST /v1/events:batch` with `--batch-size` events each.
//!
//! Part `normalizer` (`--only normalizer`):
//!
//! - [4/10] **relay ceiling** ([`relay`]): a plain lapin consumer at the
//!   normalizer's prefetch draining a preloaded backlog of raw envelopes,
//!   publishing one canonical-sized message per delivery with a confirm and
//!   acking after it.
//! - [5/10] **normalizer service** ([`normalizer`]): the real release binary
//!   draining the same backlog, preloaded before it starts.
//!
//! The two run in turn `--rounds` times (default 3); the tables show the round
//! whose normalizer/relay share is the median, and the notes list every round.
//!
//! Part `normalize` (`--only normalize`):
//!
//! - [6/10] **pure normalization cost** ([`cost`]): `handoff_normalize`
//!   in-process on the seed body and a messy variant, µs per event.
//!
//! Part `delivery` (`--only delivery`):
//!
//! - [7/10] **crm-writer delivery** ([`delivery`]): the real release binary
//!   writing a preloaded backlog of canonical `contact.updated` events into
//!   the sandbox CRM (its release binary too), (a) with no quota in the way,
//!   beside the relay ceiling [4/10] (run for it when the normalizer part is
//!   not), then (b) under HubSpot's quota of 100 requests per 10 s with the
//!   writer's default pacing: the share of the quota it uses and of its
//!   requests answered 429.
//!
//! Part `pipeline` (`--only pipeline`):
//!
//! - [8/10] **flow ceiling** ([`flow`]): plain lapin stand-ins for the
//!   normalizer and both writers doing only the pipeline's broker work, four
//!   confirmed publishes and five deliveries per event (raw, canonical to both
//!   writers, the two `*.synced` reports), as the yardstick of what the broker
//!   alone allows the pipeline's message flow here.
//! - [8/10] **the whole pipeline** ([`pipeline`]): ingest, the normalizer, the
//!   crm-writer and the email-writer, release binaries on one namespace,
//!   writing to the sandbox (HubSpot without a quota, Mailchimp at its 10
//!   connections per key); `lead.created` and `customer.converted` events
//!   posted one per request. (a) Its peak, closed loop: events/s from the
//!   first 202 to the last event done at both destinations, beside the relay
//!   ceiling [4/10] (run for it when no other part did; aim ≥ 20%) and the flow
//!   ceiling; (b) half
//!   that rate, open loop for `--pipeline-seconds`: p50/p99 from the 202 to
//!   both destinations done, read from each event's ledger (aim p99 < 250
//!   ms); peak RSS of every service (aim < 64 MiB).
//!
//! Part `dead-letters` (`--only dead-letters`):
//!
//! - [9/10] **the dead-letter handler** ([`dead_letters`]): the release
//!   `handoff-dlq serve` parking `--dead-letters` (50,000) realistic
//!   `DeadLetter` records published to its dead-letter exchange (dead letters
//!   parked per second, its CPU and peak RSS); list, filter, group and stats
//!   latency over them through its API (p50 and max, aim < 1 s each); and the
//!   replay rate it achieves against the configured one (200/s and 50/s).
//!
//! Part `replay-pacing` (`--only replay-pacing`):
//!
//! - [10/10] **a replay beside live traffic** ([`replay_pacing`]):
//!   `--pacing-dead-letters` (5,000) crm-writer dead letters replayed to the
//!   end by the handler at its default pacing, beside live events at
//!   `--pacing-live-rate` (4/s), into the sandbox enforcing HubSpot's 100
//!   requests per 10 s through the crm-writer at its default pacing: the
//!   busiest rolling 10 s against the quota, the 429s, the replay's rate
//!   against its plan and the live events' latency (about 17 minutes: the
//!   replay runs at half of HubSpot's budget, 5/s).
//!
//! It prints events/s, p50/p99 latency and each service's ratio to its
//! ceiling with the target beside it, then the CPU every process burned
//! ([`procs`]), the services' peak memory, the queue checks, the
//! normalization cost, the crm-writer's use of the quota, the dead-letter
//! handler's figures and the paced replay's. It never fails on
//! a figure; it exits non-zero when something is actually wrong: a service
//! does not start, a request or publish is refused, or a queue does not hold
//! exactly what was acknowledged (ingest's stage queue; both writer queues
//! after the normalizer, with nothing dead-lettered; after the crm-writer, an
//! empty queue, one CRM record and one `delivered` ledger entry per event;
//! after the pipeline, every event `accepted`, `normalized` and `delivered` by
//! both writers in its ledger, one contact and one Mailchimp member per event
//! and nothing created twice, every queue empty, nothing dead-lettered; for the
//! dead-letter handler, every record parked once, every query's total as
//! published, every replay job done with all of its group sent; for the
//! paced replay, HubSpot's quota never exceeded and nothing answered 429,
//! every replayed and live event delivered and each contact created once).
//!
//! Run it with `make bench`, or after `cargo build --release --bins`:
//! `cargo run --release -p handoff-bench -- --events 5000 --concurrency 32`,
//! or only one part while iterating on it: `… -- --only normalizer,normalize`
//! or `… -- --only pipeline` or `… -- --only dead-letters` or `… -- --only replay-pacing`
//! (`--help` lists the flags and their `HANDOFF_BENCH_*` variables). It needs
//! the local RabbitMQ and Redis (`HANDOFF_TEST_AMQP_URL` / `HANDOFF_TEST_REDIS_URL`
//! point elsewhere) and leaves nothing behind in either, Ctrl-C included.

#![allow(clippy::print_stdout)] // Printing the report is this binary's job.

mod ceiling;
mod cost;
mod dead_letters;
mod delivery;
mod flow;
mod ingest;
mod load;
mod measure;
mod normalizer;
mod options;
mod payload;
mod pipeline;
mod procs;
mod prometheus;
mod queues;
mod relay;
mod replay_pacing;
mod report;
mod service;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use handoff_bus::{Bus, BusConfig, Topology};
use tokio_util::sync::CancellationToken;

use crate::ceiling::Ceiling;
use crate::cost::Cost;
use crate::delivery::{Quota, Throughput};
use crate::ingest::Ingest;
use crate::load::{Endpoint, Job, Plan};
use crate::measure::Measured;
use crate::normalizer::NormalizerRun;
use crate::options::{Options, USAGE};
use crate::pipeline::Pipeline;
use crate::procs::Watched;
use crate::relay::Relay;
use crate::report::{Row, thousands};

/// The share of the ceiling the single endpoint should reach.
const SINGLE_TARGET: f64 = 0.25;
/// The share of the ceiling the batch endpoint should reach.
const BATCH_TARGET: f64 = 0.60;
/// The share of the relay ceiling the normalizer should reach.
const NORMALIZER_TARGET: f64 = 0.60;
/// The pure normalization cost per event should stay below this many µs.
const NORMALIZE_TARGET_US: f64 = 20.0;

#[tokio::main]
async fn main() -> ExitCode {
    let opts = match Options::parse(std::env::args().skip(1)) {
        Ok(Some(opts)) => opts,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("handoff-bench: {err:#}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Ctrl-C stops handing out work; the run then ends early and still cleans up.
    let interrupted = CancellationToken::new();
    let on_signal = interrupted.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nhandoff-bench: interrupted; stopping the services and cleaning up…");
            on_signal.cancel();
        }
    });
    match run(&opts, &interrupted).await {
        Ok(problems) if problems.is_empty() => ExitCode::SUCCESS,
        Ok(problems) => {
            for problem in problems {
                eprintln!("handoff-bench: {problem}");
            }
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("handoff-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the chosen scenarios and prints the report; returns the problems that make the run
/// invalid.
async fn run(opts: &Options, interrupted: &CancellationToken) -> anyhow::Result<Vec<String>> {
    let started = Instant::now();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Twelve random hex digits: names this run's namespaces and event ids.
    let run_id = handoff_test_support::namespace()[1..].to_owned();
    let mut watched = Watched::local_servers();
    let mut problems = Vec::new();

    let parts = opts.only;
    if parts.ingest || parts.normalizer || parts.delivery || parts.pipeline {
        println!(
            "handoff-bench: {} events per scenario (at most {} s each), concurrency {}, \
             batches of {} at concurrency {}, {} warm-up requests",
            thousands(opts.events as u64),
            opts.max_duration.as_secs(),
            opts.concurrency,
            opts.batch_size,
            opts.batch_concurrency,
            thousands(opts.warmup as u64),
        );
        if parts.pipeline {
            println!(
                "pipeline: {} events at its peak, then {} s at half of it",
                thousands(opts.pipeline_events as u64),
                opts.pipeline_duration.as_secs(),
            );
        }
        println!(
            "machine: {cores} cores, shared by the services under test, RabbitMQ, Redis, the \
             sandbox and this bench process; RabbitMQ {} and Redis {} watched for CPU",
            found(&watched.broker),
            found(&watched.redis),
        );
    } else {
        println!("handoff-bench: machine with {cores} cores");
    }

    let ingest = if parts.ingest {
        Some(ingest_part(opts, &run_id, &mut watched, interrupted, &mut problems).await?)
    } else {
        None
    };
    let normalizer = if parts.normalizer {
        Some(normalizer_part(opts, &run_id, &mut watched, interrupted, &mut problems).await?)
    } else {
        None
    };
    let costs = if parts.normalize {
        println!(
            "\n[6/10] pure normalization cost: handoff_normalize in-process, {} calls per body \
             after warm-up…",
            thousands(opts.iterations as u64)
        );
        Some(cost::run(opts.iterations, interrupted).await?)
    } else {
        None
    };
    let delivery = if parts.delivery {
        let relay = normalizer.as_ref().map(NormalizerPart::relay);
        Some(
            delivery_part(
                opts,
                &run_id,
                relay,
                &mut watched,
                interrupted,
                &mut problems,
            )
            .await?,
        )
    } else {
        None
    };

    let pipeline = if parts.pipeline {
        // The relay ceiling of this invocation, if another part measured one.
        let relay = normalizer
            .as_ref()
            .map(NormalizerPart::relay)
            .or(delivery.as_ref().and_then(|part| part.own_relay.as_ref()));
        Some(
            pipeline_part(
                opts,
                &run_id,
                relay,
                &mut watched,
                interrupted,
                &mut problems,
            )
            .await?,
        )
    } else {
        None
    };

    let dead_letters = if parts.dead_letters {
        println!(
            "\n[9/10] the dead-letter handler: {} DeadLetter records parked through its queue, \
             then queries and replays through its API…",
            thousands(opts.dead_letters as u64)
        );
        let run = dead_letters::run(opts, &run_id, &mut watched, interrupted).await?;
        problems.extend(run.problems.iter().cloned());
        Some(run)
    } else {
        None
    };

    let pacing = if parts.replay_pacing {
        println!(
            "\n[10/10] a replay of {} dead letters beside live traffic at {}/s, under HubSpot's \
             quota, run to the end…",
            thousands(opts.pacing_dead_letters as u64),
            opts.pacing_live_rate,
        );
        let run = replay_pacing::run(opts, &run_id, &mut watched, interrupted).await?;
        problems.extend(run.problems.iter().cloned());
        Some(run)
    } else {
        None
    };

    print_report(
        opts,
        cores,
        ingest.as_ref(),
        normalizer.as_ref(),
        costs.as_deref(),
        delivery.as_ref(),
        pipeline.as_ref(),
    );
    if let Some(run) = &dead_letters {
        print!("{}", dead_letters::report(run));
    }
    if let Some(run) = &pacing {
        print!("{}", replay_pacing::report(run));
    }
    println!(
        "cleanup: services stopped with SIGTERM, namespaces \
         bench-{run_id}[-broker|-relay|-normalizer|-delivery|-quota|-pipeline|-dlq|-pacing] torn down, \
         their Redis keys deleted; whole run {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(problems)
}

/// What the ingest part measured.
struct IngestPart {
    ceiling: Ceiling,
    runs: IngestRuns,
}

/// [1/10]–[3/10]: the bare-broker ceiling, then ingest's single and batch endpoints.
async fn ingest_part(
    opts: &Options,
    run_id: &str,
    watched: &mut Watched,
    interrupted: &CancellationToken,
    problems: &mut Vec<String>,
) -> anyhow::Result<IngestPart> {
    println!("\n[1/10] bare broker: lapin publisher with confirms, no ingest…");
    let ceiling = ceiling::run(opts, run_id, watched, interrupted).await?;
    println!(
        "      {} msg/s over {} confirm channels; envelope {} bytes; queue holds {} of {} \
         confirmed publishes",
        thousands(ceiling.measured.events_per_second().round() as u64),
        ceiling.channels,
        ceiling.envelope_bytes,
        thousands(u64::from(ceiling.queued)),
        thousands(ceiling.confirmed),
    );
    check_failures("bare broker", &ceiling.measured, problems);
    if u64::from(ceiling.queued) != ceiling.confirmed {
        problems.push(format!(
            "bare broker: the queue holds {} messages but {} publishes were confirmed",
            ceiling.queued, ceiling.confirmed
        ));
    }

    let namespace = format!("bench-{run_id}");
    println!(
        "\n[2/10] starting {} (namespace {namespace})…",
        opts.ingest_bin.display()
    );
    let mut ingest = Ingest::spawn(&opts.ingest_bin, &namespace)?;
    watched.ingest = Some(ingest.pid());
    let bus_stop = CancellationToken::new();
    let bus = Bus::start(
        BusConfig {
            url: handoff_test_support::amqp_url(),
            ..BusConfig::default()
        },
        Topology::v1(&namespace),
        bus_stop.clone(),
    );
    let outcome = ingest_scenarios(opts, run_id, &mut ingest, &bus, watched, interrupted).await;

    // Clean up whatever happened above.
    let stopped = ingest.stop(Duration::from_secs(15)).await;
    watched.ingest = None;
    if let Err(err) = bus.teardown().await {
        eprintln!("handoff-bench: could not remove namespace {namespace}: {err}");
    }
    bus.close().await;
    bus_stop.cancel();
    handoff_test_support::cleanup_redis(&namespace).await;
    let runs = outcome?;
    match stopped {
        Ok(status) if status.success() => {}
        Ok(status) => problems.push(format!("ingest exited with {status} after SIGTERM")),
        Err(err) => problems.push(format!("stopping ingest: {err:#}")),
    }
    problems.extend(runs.problems.iter().cloned());
    Ok(IngestPart { ceiling, runs })
}

/// What the normalizer part measured: rounds of relay ceiling then normalizer service.
struct NormalizerPart {
    rounds: Vec<(Relay, NormalizerRun)>,
    /// The round whose share of its own relay ceiling is the median: what the tables show.
    shown: usize,
}

impl NormalizerPart {
    fn relay(&self) -> &Relay {
        &self.rounds[self.shown].0
    }

    fn service(&self) -> &NormalizerRun {
        &self.rounds[self.shown].1
    }
}

/// What a drain's rate line adds when its measured window closed before the backlog was through.
fn window_note(drained_in_window: bool, opts: &Options) -> String {
    if drained_in_window {
        String::new()
    } else {
        format!(
            " (the window closed after {} s before the backlog was through)",
            opts.max_duration.as_secs()
        )
    }
}

/// The normalizer's events/s over its round's relay ceiling's.
fn relay_share(relay: &Relay, service: &NormalizerRun) -> f64 {
    share(
        service.measured.events_per_second(),
        relay.measured.events_per_second(),
    )
}

/// The index of the round with the median share (the lower middle one of an even count).
fn median_round(shares: &[f64]) -> usize {
    let mut order: Vec<usize> = (0..shares.len()).collect();
    order.sort_by(|a, b| shares[*a].total_cmp(&shares[*b]));
    order
        .get(shares.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(0)
}

/// [4/10] and [5/10]: the relay ceiling, then the normalizer service on the same backlog,
/// `opts.rounds` times in turn. The box's speed drifts by tens of percent within minutes (other
/// work, CPU boost, RabbitMQ's own housekeeping), so one relay and one normalizer run measure
/// the drift as much as the normalizer; alternating them and taking the median round does not.
async fn normalizer_part(
    opts: &Options,
    run_id: &str,
    watched: &mut Watched,
    interrupted: &CancellationToken,
    problems: &mut Vec<String>,
) -> anyhow::Result<NormalizerPart> {
    let mut rounds = Vec::with_capacity(opts.rounds);
    for round in 1..=opts.rounds {
        if opts.rounds > 1 {
            println!("\n[4-5/10] round {round} of {}", opts.rounds);
        }
        let relay = relay_part(opts, run_id, watched, interrupted, problems).await?;

        println!(
            "\n[5/10] normalizer service: {} raw envelopes preloaded into its queue, then the \
             release binary drains them…",
            thousands(opts.events as u64)
        );
        let service = normalizer::run(opts, run_id, watched, interrupted).await?;
        println!(
            "      {} msg/s{}; outcomes: {}; {:.0}% of this round's relay ceiling",
            thousands(service.measured.events_per_second().round() as u64),
            window_note(service.drained_in_window, opts),
            service.outcomes,
            100.0 * relay_share(&relay, &service),
        );
        problems.extend(service.problems.iter().cloned());
        rounds.push((relay, service));
    }
    let shares: Vec<f64> = rounds.iter().map(|(r, s)| relay_share(r, s)).collect();
    let shown = median_round(&shares);
    Ok(NormalizerPart { rounds, shown })
}

/// [4/10]: the relay ceiling, the yardstick of the normalizer and the crm-writer.
async fn relay_part(
    opts: &Options,
    run_id: &str,
    watched: &Watched,
    interrupted: &CancellationToken,
    problems: &mut Vec<String>,
) -> anyhow::Result<Relay> {
    let prefetch = BusConfig::default().prefetch;
    println!(
        "\n[4/10] relay ceiling: lapin consumer (prefetch {prefetch}) → publish with confirm → ack, \
         no normalizer; draining {} preloaded raw envelopes…",
        thousands(opts.events as u64)
    );
    let relay = relay::run(opts, run_id, watched, interrupted).await?;
    println!(
        "      {} msg/s; raw envelope {} bytes in, canonical {} bytes out; preload took {:.1} s \
         (not measured)",
        thousands(relay.measured.events_per_second().round() as u64),
        relay.input_bytes,
        relay.output_bytes,
        relay.preload.as_secs_f64(),
    );
    check_failures("relay ceiling", &relay.measured, problems);
    let (relay_check, problem) = relay.counts.check("relay ceiling", relay.expected);
    println!("      queues: {relay_check}");
    problems.extend(problem);
    Ok(relay)
}

/// What the delivery part measured.
struct DeliveryPart {
    /// The relay ceiling of this invocation, when the normalizer part did not measure one.
    own_relay: Option<Relay>,
    /// Events/s of the relay ceiling the writer is compared to.
    ceiling: f64,
    throughput: Throughput,
    quota: Quota,
}

/// [7/10]: the crm-writer without a quota beside the relay ceiling (measured here unless
/// `relay` is the one [4/10] measured in this invocation), then under HubSpot's quota.
async fn delivery_part(
    opts: &Options,
    run_id: &str,
    relay: Option<&Relay>,
    watched: &mut Watched,
    interrupted: &CancellationToken,
    problems: &mut Vec<String>,
) -> anyhow::Result<DeliveryPart> {
    let own_relay = match relay {
        Some(_) => None,
        None => {
            println!(
                "\n[7/10] crm-writer delivery is compared to the relay ceiling, which has not run \
                 in this invocation; running it first…"
            );
            Some(relay_part(opts, run_id, watched, interrupted, problems).await?)
        }
    };
    let ceiling = relay
        .or(own_relay.as_ref())
        .map_or(0.0, |relay| relay.measured.events_per_second());

    println!(
        "\n[7/10] (a) crm-writer delivery without a quota: {} canonical events preloaded into its \
         queue, then the release binary writes them to the sandbox CRM…",
        thousands(opts.events as u64)
    );
    let throughput = delivery::throughput(opts, run_id, watched, interrupted).await?;
    println!(
        "      {} events/s, {} requests/s{}; outcomes: {}",
        thousands(throughput.measured.events_per_second().round() as u64),
        thousands(throughput.requests_per_second().round() as u64),
        window_note(throughput.drained_in_window, opts),
        throughput.outcomes,
    );
    println!("      check: {}", throughput.delivery_check);
    problems.extend(throughput.problems.iter().cloned());

    println!(
        "\n[7/10] (b) crm-writer under HubSpot's quota ({} requests per {} s), pacing {}…",
        delivery::QUOTA_REQUESTS,
        delivery::QUOTA_WINDOW.as_secs(),
        delivery::pacing_label(opts.pacing_limit),
    );
    let quota = delivery::quota(opts, run_id, interrupted).await?;
    println!("      {}", quota_summary(&quota));
    problems.extend(quota.problems.iter().cloned());
    Ok(DeliveryPart {
        own_relay,
        ceiling,
        throughput,
        quota,
    })
}

/// What the pipeline part measured.
struct PipelinePart {
    /// The relay ceiling of this invocation, when no other part measured one.
    own_relay: Option<Relay>,
    /// Events/s of the relay ceiling the pipeline is compared to.
    ceiling: f64,
    /// What the broker alone allows the pipeline's message flow.
    flow: flow::Flow,
    run: Pipeline,
}

/// [8/10]: the whole pipeline end to end, beside the relay ceiling (measured here unless
/// `relay` is one another part measured in this invocation).
async fn pipeline_part(
    opts: &Options,
    run_id: &str,
    relay: Option<&Relay>,
    watched: &mut Watched,
    interrupted: &CancellationToken,
    problems: &mut Vec<String>,
) -> anyhow::Result<PipelinePart> {
    let own_relay = match relay {
        Some(_) => None,
        None => {
            println!(
                "\n[8/10] the pipeline is compared to the relay ceiling, which has not run in this \
                 invocation; running it first…"
            );
            Some(relay_part(opts, run_id, watched, interrupted, problems).await?)
        }
    };
    let ceiling = relay
        .or(own_relay.as_ref())
        .map_or(0.0, |relay| relay.measured.events_per_second());
    println!(
        "\n[8/10] flow ceiling: the pipeline's broker work alone, plain lapin: {} events, each \
         {} confirmed publishes and {} deliveries (raw, canonical ×2, crm.contact.synced, \
         email.subscriber.synced)…",
        thousands(opts.pipeline_events as u64),
        flow::PUBLISHES_PER_EVENT,
        flow::DELIVERIES_PER_EVENT,
    );
    let flow = flow::run(opts, run_id, watched, interrupted).await?;
    let (flow_check, problem) = flow.check();
    println!(
        "      {} events/s = {:.0}% of the relay ceiling; {flow_check}",
        thousands(flow.measured.events_per_second().round() as u64),
        100.0 * share(flow.measured.events_per_second(), ceiling),
    );
    check_failures("flow ceiling", &flow.measured, problems);
    problems.extend(problem);
    println!(
        "\n[8/10] the whole pipeline: ingest → normalizer → crm-writer{} → sandbox, release \
         binaries; lead.created and customer.converted in turn, each for a person of its own…",
        if opts.no_email_writer {
            " (WITHOUT the email-writer: --no-email-writer)"
        } else {
            " + email-writer"
        },
    );
    let run = pipeline::run(opts, run_id, watched, interrupted).await?;
    println!("      ledger: {}", run.ledger_check);
    println!("      sandbox: {}", run.sandbox_check);
    println!("      queues: {}", run.queue_check);
    problems.extend(run.problems.iter().cloned());
    Ok(PipelinePart {
        own_relay,
        ceiling,
        flow,
        run,
    })
}

/// One line of the quota figures.
fn quota_summary(quota: &Quota) -> String {
    let figures = &quota.figures;
    format!(
        "{} requests answered 2xx in {} s (per {} s: {}) = {:.2}/s = {:.1}% of the quota's {:.0}/s; \
         {} of {} requests answered 429 ({:.1}%); most admitted in any {} s window: {} (quota {})",
        thousands(figures.admitted),
        quota.window.as_secs(),
        delivery::QUOTA_WINDOW.as_secs(),
        figures
            .admitted_per_period
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" "),
        quota.achieved_per_second(),
        100.0 * quota.share_of_quota(),
        Quota::quota_per_second(),
        thousands(figures.rejected),
        thousands(figures.requests),
        100.0 * figures.rejected_share(),
        delivery::QUOTA_WINDOW.as_secs(),
        quota.max_in_window,
        delivery::QUOTA_REQUESTS,
    )
}

/// Prints the tables and notes of every part that ran.
fn print_report(
    opts: &Options,
    cores: usize,
    ingest: Option<&IngestPart>,
    normalizer: Option<&NormalizerPart>,
    costs: Option<&[Cost]>,
    delivery: Option<&DeliveryPart>,
    pipeline: Option<&PipelinePart>,
) {
    println!("\n{}", "=".repeat(100));
    let mut rows = Vec::new();
    if let Some(part) = ingest {
        let ceiling = Some(part.ceiling.measured.events_per_second());
        rows.push(Row {
            scenario: "bare broker (lapin)".to_owned(),
            measured: &part.ceiling.measured,
            ceiling,
            target: None,
            latency_of: "publish→confirm",
            estimated: None,
        });
        rows.push(Row {
            scenario: "ingest single".to_owned(),
            measured: &part.runs.single,
            ceiling,
            target: Some(SINGLE_TARGET),
            latency_of: "request",
            estimated: None,
        });
        rows.push(Row {
            scenario: format!("ingest batch ×{}", opts.batch_size),
            measured: &part.runs.batch,
            ceiling,
            target: Some(BATCH_TARGET),
            latency_of: "batch request",
            estimated: None,
        });
    }
    if let Some(part) = normalizer {
        let ceiling = Some(part.relay().measured.events_per_second());
        rows.push(Row {
            scenario: "relay (lapin)".to_owned(),
            measured: &part.relay().measured,
            ceiling,
            target: None,
            latency_of: "delivery→ack",
            estimated: None,
        });
        rows.push(Row {
            scenario: "normalizer service".to_owned(),
            measured: &part.service().measured,
            ceiling,
            target: Some(NORMALIZER_TARGET),
            latency_of: "publish→confirm (hist)",
            estimated: part.service().publish_latency,
        });
    }
    if let Some(part) = delivery {
        let ceiling = Some(part.ceiling);
        if let Some(relay) = &part.own_relay {
            rows.push(Row {
                scenario: "relay (lapin)".to_owned(),
                measured: &relay.measured,
                ceiling,
                target: None,
                latency_of: "delivery→ack",
                estimated: None,
            });
        }
        rows.push(Row {
            scenario: "crm-writer (no quota)".to_owned(),
            measured: &part.throughput.measured,
            ceiling,
            target: None,
            latency_of: "CRM request (hist)",
            estimated: part.throughput.request_latency,
        });
    }
    if let Some(part) = pipeline {
        let ceiling = Some(part.ceiling);
        if let Some(relay) = &part.own_relay {
            rows.push(Row {
                scenario: "relay (lapin)".to_owned(),
                measured: &relay.measured,
                ceiling,
                target: None,
                latency_of: "delivery→ack",
                estimated: None,
            });
        }
        rows.push(Row {
            scenario: "flow ceiling (lapin, the pipeline's messages)".to_owned(),
            measured: &part.flow.measured,
            ceiling,
            target: None,
            latency_of: "delivery→ack",
            estimated: None,
        });
        let without = if part.run.email_writer {
            ""
        } else {
            ", NO email-writer"
        };
        rows.push(Row {
            scenario: format!("pipeline peak (closed loop{without})"),
            measured: &part.run.peak.measured,
            ceiling,
            target: Some(pipeline::TARGET_SHARE),
            latency_of: "202→both done",
            estimated: None,
        });
        if let Some(half) = &part.run.half {
            rows.push(Row {
                scenario: format!("pipeline at half (open loop{without})"),
                measured: &half.measured,
                ceiling,
                target: None,
                latency_of: "202→both done",
                estimated: None,
            });
        }
    }
    if !rows.is_empty() {
        print!("{}", report::tables(&rows, cores));
    }
    let rss = |kib: Option<u64>| {
        kib.map_or("unknown".to_owned(), |kib| {
            format!("{:.1} MiB", kib as f64 / 1024.0)
        })
    };
    if let Some(part) = ingest {
        println!("\ningest peak RSS (VmHWM): {}", rss(part.runs.peak_rss_kib));
        println!("ingest queue check: {}", part.runs.queue_check);
        println!(
            "ingest envelope: {} bytes on the wire for both the ceiling and ingest; ceiling \
             latency is publish→confirm, ingest latency is request→response (including the \
             confirm)",
            part.ceiling.envelope_bytes
        );
    }
    if let Some(part) = normalizer {
        let relay = part.relay();
        let (relay_check, _) = relay.counts.check("relay ceiling", relay.expected);
        let service = part.service();
        if part.rounds.len() > 1 {
            let listed: Vec<String> = part
                .rounds
                .iter()
                .enumerate()
                .map(|(i, (relay, service))| {
                    let cpu_per_event = service
                        .measured
                        .service_cpu_per_1k()
                        .map_or("?".to_owned(), |ms| format!("{ms:.3}"));
                    format!(
                        "{}: relay {} → normalizer {} msg/s = {:.0}% ({cpu_per_event} ms of \
                         normalizer CPU per event)",
                        i + 1,
                        thousands(relay.measured.events_per_second().round() as u64),
                        thousands(service.measured.events_per_second().round() as u64),
                        100.0 * relay_share(relay, service)
                    )
                })
                .collect();
            println!(
                "\nnormalizer rounds (relay then normalizer, in turn): {}; the tables show round \
                 {}, the median share",
                listed.join("; "),
                part.shown + 1
            );
        }
        println!(
            "\nnormalizer peak RSS (VmHWM): {}",
            rss(service.peak_rss_kib)
        );
        println!("relay queue check: {relay_check}");
        println!("normalizer queue check: {}", service.queue_check);
        println!(
            "normalizer envelopes: {} bytes raw in for both; canonical out {} bytes (the relay \
             publishes the canonical envelope the normalizer makes of the seed); both drain a \
             backlog of {} preloaded before they start (preload {:.1} s and {:.1} s, not \
             measured)",
            service.input_bytes,
            relay.output_bytes,
            thousands(service.expected),
            relay.preload.as_secs_f64(),
            service.preload.as_secs_f64(),
        );
        println!(
            "normalizer latency: relay = each delivery→ack; service ≈ p50/p99 of its canonical \
             publish→confirm from its handoff_bus_publish_seconds histogram (interpolated within \
             buckets); time in handoff_normalize per message in the service: {}",
            service
                .normalize_mean
                .map_or("unknown".to_owned(), |d| format!(
                    "{:.1} µs mean",
                    d.as_secs_f64() * 1e6
                ))
        );
    }
    if let Some(costs) = costs {
        println!(
            "\npure normalization cost (handoff_normalize, default config, customer.converted v1, \
             one core):"
        );
        print!("{}", report::cost_table(costs, NORMALIZE_TARGET_US));
    }
    if let Some(part) = delivery {
        let run = &part.throughput;
        println!(
            "\ncrm-writer without a quota: {} events/s and {} CRM requests/s ({} requests for {} \
             events delivered in the window) = {:.0}% of the relay ceiling's {} msg/s; first CRM \
             request {:.2} s after its start (not measured); preload {:.1} s (not measured); \
             envelope {} bytes",
            thousands(run.measured.events_per_second().round() as u64),
            thousands(run.requests_per_second().round() as u64),
            thousands(run.requests),
            thousands(run.measured.events),
            if part.ceiling > 0.0 {
                100.0 * run.measured.events_per_second() / part.ceiling
            } else {
                0.0
            },
            thousands(part.ceiling.round() as u64),
            run.first_request_after.as_secs_f64(),
            run.preload.as_secs_f64(),
            run.input_bytes,
        );
        println!("crm-writer peak RSS (VmHWM): {}", rss(run.peak_rss_kib));
        println!("crm-writer delivery check: {}", run.delivery_check);
        println!(
            "crm-writer latency ≈ p50/p99 of one CRM request → answer from its \
             handoff_delivery_request_seconds histogram (interpolated within buckets); the window \
             runs from the sandbox's first request to the {}-th crm.contact.synced report",
            thousands(run.expected),
        );
        let quota = &part.quota;
        println!(
            "\ncrm-writer under HubSpot's quota ({} requests per rolling {} s per token, 429s \
             counted as the sandbox does by default; writer pacing {}; {} events preloaded; \
             {} s from the sandbox's first request, by its own request log):",
            delivery::QUOTA_REQUESTS,
            delivery::QUOTA_WINDOW.as_secs(),
            delivery::pacing_label(quota.pacing_limit),
            thousands(quota.backlog),
            quota.window.as_secs(),
        );
        println!("  {}", quota_summary(quota));
        println!(
            "  aim ≥ {:.0}% of quota with < {:.0}% of requests answered 429: {}; writer outcomes \
             when the window closed: {}",
            100.0 * delivery::QUOTA_AIM_SHARE,
            100.0 * delivery::QUOTA_AIM_REJECTED,
            if quota.aim_met() { "met" } else { "NOT met" },
            quota.outcomes,
        );
    }
    if let Some(part) = pipeline {
        print_pipeline(part);
    }
}

/// The pipeline's notes: each phase's figures beside its aim, the latencies on both clocks,
/// memory, the writers' counters and the checks.
fn print_pipeline(part: &PipelinePart) {
    let run = &part.run;
    let peak = &run.peak;
    let rate = peak.measured.events_per_second();
    println!(
        "\npipeline end to end (ingest → normalizer → crm-writer{} → sandbox: HubSpot without a \
         quota, Mailchimp at its 10 connections per key; lead.created and customer.converted in \
         turn, each for a person of its own; {} events warmed the pipeline first):",
        if run.email_writer {
            " + email-writer"
        } else {
            " (NO email-writer: done = the crm-writer's delivery alone, not the pipeline's figure)"
        },
        pipeline::WARMUP_EVENTS,
    );
    println!(
        "  peak, closed loop at {} clients: {} events accepted in {:.1} s, the last done {:.1} s \
         after the first 202: {} events/s = {:.0}% of the relay ceiling's {} msg/s (aim ≥ {:.0}%: {})",
        peak.measured.concurrency,
        thousands(peak.accepted),
        peak.sending.as_secs_f64(),
        peak.measured.cpu.wall.as_secs_f64(),
        thousands(rate.round() as u64),
        100.0 * share(rate, part.ceiling),
        thousands(part.ceiling.round() as u64),
        100.0 * pipeline::TARGET_SHARE,
        if share(rate, part.ceiling) >= pipeline::TARGET_SHARE {
            "met"
        } else {
            "NOT met"
        },
    );
    let flow_rate = part.flow.measured.events_per_second();
    println!(
        "  beside the flow ceiling (the same {} publishes and {} deliveries per event, plain lapin, \
         nothing else): {} events/s = {:.0}% of the relay ceiling; the pipeline reaches {:.0}% of it",
        flow::PUBLISHES_PER_EVENT,
        flow::DELIVERIES_PER_EVENT,
        thousands(flow_rate.round() as u64),
        100.0 * share(flow_rate, part.ceiling),
        100.0 * share(rate, flow_rate),
    );
    if let Some(half) = &run.half {
        println!(
            "  half the peak, open loop: {:.0} events/s offered for {:.1} s ({} accepted, at most \
             {} requests on their way at once), {} events/s done; p99 202 → done {} ms (aim < {} \
             ms: {})",
            half.offered.unwrap_or(0.0),
            half.sending.as_secs_f64(),
            thousands(half.accepted),
            half.measured.concurrency,
            thousands(half.measured.events_per_second().round() as u64),
            ms(half.measured.latencies.percentile(99.0)),
            pipeline::P99_AIM.as_millis(),
            if half.p99_met() { "met" } else { "NOT met" },
        );
    }
    println!("  latency, p50 / p99 ms:      peak                 half the peak");
    let both = |f: &dyn Fn(&pipeline::Phase) -> &measure::Latencies| {
        let cell = |phase: &pipeline::Phase| {
            let l = f(phase);
            format!(
                "{:>8} / {:<8}",
                ms(l.percentile(50.0)),
                ms(l.percentile(99.0))
            )
        };
        format!(
            "{}  {}",
            cell(peak),
            run.half.as_ref().map_or("-".to_owned(), cell)
        )
    };
    println!(
        "    202 → both done         {}",
        both(&|p| &p.measured.latencies)
    );
    println!(
        "    accepted → both done    {}",
        both(&|p| &p.from_accepted)
    );
    println!("    request → 202           {}", both(&|p| &p.requests));
    println!(
        "  clocks: \"202\" is when the bench received ingest's answer, \"accepted\" ingest's ledger \
         time (the request's arrival), \"done\" the later of the crm-writer's and the \
         email-writer's ledger `delivered` (written just before each acks); every process runs on \
         this host and reads the same system clock. \"request → 202\" is timed by the bench \
         (open loop: from when the request was due). At the peak the events queue in the broker, \
         so its latencies are mostly waiting; the window (and events/s) runs from the first 202 \
         to the last event done. The CPU table's readings bracket each phase from its first \
         request to when the bench saw the last event done (polled every 0.1 s), a little longer \
         than that window, so \"box busy\" can read slightly over 100%."
    );
    let rss = run
        .rss
        .iter()
        .map(|(name, kib)| {
            format!(
                "{name} {}",
                kib.map_or("unknown".to_owned(), |kib| format!(
                    "{:.1} MiB",
                    kib as f64 / 1024.0
                ))
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "  peak RSS (VmHWM) at the end: {rss}; aim < {} MiB for each service (the sandbox is not \
         one): {}",
        pipeline::RSS_AIM_KIB / 1024,
        pipeline::rss_verdict(&run.rss),
    );
    for writer in &run.writers {
        println!(
            "  {}: events {}; requests {} ({:.2} per event written{})",
            writer.name,
            writer.outcomes,
            writer.requests,
            writer.requests_per_event,
            if writer.name == "crm-writer" {
                ", write-backs included"
            } else {
                ""
            },
        );
    }
    println!("  ledger check: {}", run.ledger_check);
    println!("  sandbox check: {}", run.sandbox_check);
    println!("  queue check: {}", run.queue_check);
}

/// Milliseconds with one decimal.
fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// What the ingest scenarios produced.
struct IngestRuns {
    single: Measured,
    batch: Measured,
    peak_rss_kib: Option<u64>,
    queue_check: String,
    problems: Vec<String>,
}

async fn ingest_scenarios(
    opts: &Options,
    run_id: &str,
    ingest: &mut Ingest,
    bus: &Bus,
    watched: &Watched,
    interrupted: &CancellationToken,
) -> anyhow::Result<IngestRuns> {
    ingest.wait_ready(Duration::from_secs(30)).await?;
    bus.wait_ready(Duration::from_secs(30))
        .await
        .context("connecting the bench's own bus to RabbitMQ")?;
    let queue = bus.topology().stage_queue("normalizer");
    let single_url = format!("{}/v1/events/{}", ingest.base, payload::EVENT_TYPE.as_str());
    let batch_url = format!("{}/v1/events:batch", ingest.base);
    let clients = load::clients(opts.concurrency.max(opts.batch_concurrency))?;
    let mut problems = Vec::new();
    let single_plan = |within| Plan {
        url: &single_url,
        key: &ingest.key,
        endpoint: Endpoint::Single,
        within,
        stop: interrupted,
    };
    let batch_plan = |within| Plan {
        url: &batch_url,
        key: &ingest.key,
        endpoint: Endpoint::Batch,
        within,
        stop: interrupted,
    };
    let far = Duration::from_secs(3600);
    let stop_if_interrupted = || {
        if interrupted.is_cancelled() {
            anyhow::bail!("interrupted");
        }
        Ok(())
    };

    // Warm-up: opens every connection and warms ingest, Redis and the queue.
    let warm = load::run(
        &clients[..opts.concurrency],
        single_plan(far),
        single_jobs(run_id, 'w', opts.warmup),
    )
    .await?;
    let warm_batches = batch_jobs(
        run_id,
        'v',
        opts.batch_size * opts.batch_concurrency * 2,
        opts.batch_size,
    );
    let warm_batch = load::run(
        &clients[..opts.batch_concurrency],
        batch_plan(far),
        warm_batches,
    )
    .await?;
    stop_if_interrupted()?;
    if let Some(err) = warm
        .failures
        .messages
        .first()
        .or(warm_batch.failures.messages.first())
    {
        anyhow::bail!(
            "ingest refused warm-up requests: {err}\ningest's output:\n{}",
            ingest.log_tail(20)
        );
    }
    let warm_events = warm.accepted_events + warm_batch.accepted_events;

    println!(
        "      ready; warmed up with {} events; {} concurrent clients → POST {single_url}…",
        thousands(warm_events),
        opts.concurrency
    );
    let jobs = single_jobs(run_id, 's', opts.events);
    let before = watched.sample();
    let single = load::run(
        &clients[..opts.concurrency],
        single_plan(opts.max_duration),
        jobs,
    )
    .await?;
    stop_if_interrupted()?;
    let single = measured(opts.concurrency, single, before.until(&watched.sample()));
    check_failures("ingest single", &single, &mut problems);
    let after_single = warm_events + single.events;
    let queued_single = settled_count(bus, &queue, after_single).await?;
    println!(
        "      {} events/s; the queue holds {} = {} warm-up + {} answered 202",
        thousands(single.events_per_second().round() as u64),
        thousands(u64::from(queued_single)),
        thousands(warm_events),
        thousands(single.events),
    );
    if u64::from(queued_single) != after_single {
        problems.push(format!(
            "ingest single: {queue} holds {queued_single} messages, expected {after_single} \
             ({warm_events} warm-up + {} answered 202)",
            single.events
        ));
    }

    println!(
        "\n[3/10] {} concurrent batch requests of {} events → POST {batch_url}…",
        opts.batch_concurrency, opts.batch_size
    );
    let jobs = batch_jobs(run_id, 'b', opts.events, opts.batch_size);
    let before = watched.sample();
    let batch = load::run(
        &clients[..opts.batch_concurrency],
        batch_plan(opts.max_duration),
        jobs,
    )
    .await?;
    stop_if_interrupted()?;
    let batch = measured(
        opts.batch_concurrency,
        batch,
        before.until(&watched.sample()),
    );
    check_failures("ingest batch", &batch, &mut problems);
    let expected = after_single + batch.events;
    let queued = settled_count(bus, &queue, expected).await?;
    println!(
        "      {} events/s; the queue holds {}",
        thousands(batch.events_per_second().round() as u64),
        thousands(u64::from(queued)),
    );
    let verdict = if u64::from(queued) == expected {
        "exactly as many as were acknowledged ✓"
    } else {
        problems.push(format!(
            "ingest batch: {queue} holds {queued} messages, expected {expected}"
        ));
        "MISMATCH ✗"
    };
    let queue_check = format!(
        "{queue} holds {} messages = {} warm-up + {} single 202s + {} batch items accepted: {verdict}",
        thousands(u64::from(queued)),
        thousands(warm_events),
        thousands(single.events),
        thousands(batch.events),
    );

    Ok(IngestRuns {
        single,
        batch,
        peak_rss_kib: procs::peak_rss_kib(ingest.pid()),
        queue_check,
        problems,
    })
}

fn measured(concurrency: usize, run: load::LoadResult, mut cpu: procs::CpuUse) -> Measured {
    // The load run's own clock starts at the first send; the CPU window brackets it closely.
    cpu.wall = run.wall;
    Measured {
        concurrency,
        events: run.accepted_events,
        failed_events: run.failures.events,
        errors: run.failures.messages,
        latencies: run.latencies,
        cpu,
    }
}

fn single_jobs(run_id: &str, tag: char, count: usize) -> Vec<Job> {
    (0..count)
        .map(|i| Job {
            body: payload::single_body(&payload::event_id(run_id, tag, i)),
            events: 1,
            url: None,
        })
        .collect()
}

fn batch_jobs(run_id: &str, tag: char, events: usize, batch_size: usize) -> Vec<Job> {
    let ids: Vec<String> = (0..events)
        .map(|i| payload::event_id(run_id, tag, i))
        .collect();
    ids.chunks(batch_size)
        .map(|chunk| Job {
            body: payload::batch_body(chunk.iter().map(String::as_str)),
            events: chunk.len(),
            url: None,
        })
        .collect()
}

/// The queue's message count once it reaches `expected`, or whatever it is after a few
/// seconds. Confirmed messages are already in the queue; the wait only covers a count that
/// trails the confirms by a moment.
async fn settled_count(bus: &Bus, queue: &str, expected: u64) -> anyhow::Result<u32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let count = bus
            .message_count(queue)
            .await
            .with_context(|| format!("counting the messages in {queue}"))?;
        if u64::from(count) == expected || Instant::now() >= deadline {
            return Ok(count);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `part` as a fraction of `whole`, 0 when there is no whole to compare with.
fn share(part: f64, whole: f64) -> f64 {
    if whole > 0.0 { part / whole } else { 0.0 }
}

fn check_failures(scenario: &str, measured: &Measured, problems: &mut Vec<String>) {
    if measured.failed_events > 0 {
        problems.push(format!(
            "{scenario}: {} events were not accepted; first errors: {}",
            measured.failed_events,
            measured.errors.join(" | ")
        ));
    }
}

fn found(pids: &[u32]) -> &'static str {
    if pids.is_empty() {
        "(not found locally)"
    } else {
        "(local)"
    }
}

#[cfg(test)]
mod tests {
    use super::median_round;

    #[test]
    fn the_median_round_is_the_middle_share() {
        assert_eq!(median_round(&[0.52, 0.61, 0.58]), 2);
        assert_eq!(median_round(&[0.70]), 0);
        // An even count shows the lower of the two middle rounds, never flattering the service.
        assert_eq!(median_round(&[0.62, 0.50, 0.58, 0.66]), 2);
        assert_eq!(median_round(&[]), 0);
    }
}
