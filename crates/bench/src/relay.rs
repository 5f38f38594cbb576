//! The relay ceiling ([4/10]): what RabbitMQ alone allows a consume → publish
//! with confirm → ack stage on this machine, as the yardstick for the
//! normalizer.
//!
//! Plain lapin, no Handoff code in the hot path, and fair on every axis that
//! costs the broker work: a namespace of its own with the topology `Bus::start`
//! declares for `Topology::v1` (the same quorum input queue and arguments, the
//! same two writer queues behind `canonical.#`); the input is N raw envelopes
//! of the normalizer's input size, preloaded before the drain (not measured);
//! one connection with a consumer channel at the normalizer's default prefetch
//! (`BusConfig::default().prefetch`) and as many confirm channels as its bus
//! opens; every delivery is handled on a task of its own, as the service's
//! consumer loop does, so up to a prefetch's worth are in flight: publish the
//! canonical envelope the normalizer would make of the seed (same size,
//! computed once beforehand) persistent and mandatory to `canonical.<type>`,
//! wait for its confirm, then ack the input. What is left out is exactly what
//! the normalizer adds: decoding, normalizing, encoding, the Redis claim and
//! completion, tracing and metrics.
//!
//! Figures: msg/s from the first delivery to the last ack, p50/p99 of each
//! message's delivery → ack.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use handoff_bus::{Bus, BusConfig, NORMALIZER, Topology};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::ceiling;
use crate::measure::{Failures, Latencies, Measured};
use crate::options::Options;
use crate::payload;
use crate::procs::Watched;
use crate::queues::{Counter, StageCounts};

/// What the relay ceiling found.
#[derive(Debug)]
pub struct Relay {
    pub measured: Measured,
    /// Encoded sizes of one input (raw) and one output (canonical) envelope.
    pub input_bytes: usize,
    pub output_bytes: usize,
    /// How long putting the input into the queue took (not measured).
    pub preload: Duration,
    /// The queues once the drain ended.
    pub counts: StageCounts,
    /// Messages the run set out to relay.
    pub expected: u64,
}

/// Runs the relay in a namespace of its own, removed afterwards whatever happens.
pub async fn run(
    opts: &Options,
    run_id: &str,
    watched: &Watched,
    interrupted: &CancellationToken,
) -> anyhow::Result<Relay> {
    ceiling::in_namespace(&format!("bench-{run_id}-relay"), async |bus, _: &mut ()| {
        measure(opts, run_id, watched, bus, interrupted).await
    })
    .await
}

async fn measure(
    opts: &Options,
    run_id: &str,
    watched: &Watched,
    bus: &Bus,
    interrupted: &CancellationToken,
) -> anyhow::Result<Relay> {
    let connection = ceiling::connect(bus, "relay").await?;
    let topology = bus.topology().clone();
    let result = drain(opts, run_id, watched, &topology, &connection, interrupted).await;
    let _ = connection.close(200, "bench done".into()).await;
    result
}

async fn drain(
    opts: &Options,
    run_id: &str,
    watched: &Watched,
    topology: &Topology,
    connection: &Connection,
    interrupted: &CancellationToken,
) -> anyhow::Result<Relay> {
    let input_queue = topology.stage_queue(NORMALIZER);
    let channels = ceiling::confirm_channels(connection).await?;
    let counter = Counter::open(connection).await?;

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
        'R',
        opts,
        interrupted,
    )
    .await?;

    // One output body for every message: same size as the normalizer's, built before the
    // clock starts so no Handoff code runs while it does.
    let output: Arc<[u8]> = payload::canonical_envelope(&payload::event_id(run_id, 'R', 0))?.into();
    let output_bytes = output.len();
    let out = Arc::new(Out {
        channels,
        exchange: topology.events_exchange().as_str().into(),
        routing_key: payload::EVENT_TYPE.canonical_routing_key().as_str().into(),
        body: output,
    });

    let prefetch = BusConfig::default().prefetch;
    let consumer_channel = connection
        .create_channel()
        .await
        .context("opening the consumer channel")?;
    // Per-consumer limit, as the bus sets it: at most `prefetch` unacked deliveries.
    consumer_channel
        .basic_qos(prefetch, BasicQosOptions { global: false })
        .await
        .context("setting the prefetch")?;
    let tag = format!("handoff-bench-relay-{run_id}");
    let before = watched.sample();
    let mut consumer = consumer_channel
        .basic_consume(
            input_queue.as_str().into(),
            tag.as_str().into(),
            // Manual acks, like the service: a message is gone only once its output is confirmed.
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("subscribing to the relay's input")?;

    let deadline = tokio::time::Instant::now() + opts.max_duration;
    let mut tasks: JoinSet<anyhow::Result<Duration>> = JoinSet::new();
    let mut latencies = Vec::with_capacity(expected as usize);
    let mut failures = Failures::default();
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let mut seq = 0usize;
    let mut done = 0u64;
    while done < expected {
        tokio::select! {
            biased;
            () = interrupted.cancelled() => break,
            () = tokio::time::sleep_until(deadline) => break,
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                done += 1;
                last = Instant::now();
                match joined.context("a relay task panicked")? {
                    Ok(latency) => latencies.push(latency),
                    Err(err) => failures.add(1, || format!("{err:#}")),
                }
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let received = Instant::now();
                    first.get_or_insert(received);
                    seq += 1;
                    tasks.spawn(relay_one(out.clone(), delivery, seq, received));
                }
                Some(Err(err)) => bail!("the relay's consumer failed: {err}"),
                None => bail!("the broker ended the relay's subscription"),
            },
        }
    }
    let after = watched.sample();
    let _ = consumer_channel
        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
        .await;
    // Deliveries still in flight (interrupted or out of time) go back to the queue.
    tasks.shutdown().await;
    let _ = consumer_channel.close(200, "relay done".into()).await;
    if interrupted.is_cancelled() {
        bail!("interrupted");
    }
    let mut cpu = before.until(&after);
    cpu.wall = first.map_or(Duration::ZERO, |first| last.duration_since(first));
    let counts = counter.stages(topology).await?;
    Ok(Relay {
        measured: Measured {
            concurrency: usize::from(prefetch),
            events: latencies.len() as u64,
            failed_events: failures.events,
            errors: failures.messages,
            latencies: Latencies::merge([latencies]),
            cpu,
        },
        input_bytes,
        output_bytes,
        preload,
        counts,
        expected,
    })
}

/// Where each relayed message goes, shared by every task.
struct Out {
    channels: Vec<Channel>,
    exchange: ShortString,
    routing_key: ShortString,
    body: Arc<[u8]>,
}

/// Publishes the output of one delivery, waits for its confirm, then acks the delivery;
/// answers delivery → ack.
async fn relay_one(
    out: Arc<Out>,
    delivery: Delivery,
    seq: usize,
    received: Instant,
) -> anyhow::Result<Duration> {
    let event_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map_or(String::new(), ToString::to_string);
    let channel = &out.channels[seq % out.channels.len()];
    ceiling::publish(
        channel,
        &out.exchange,
        &out.routing_key,
        seq,
        &event_id,
        &out.body,
    )
    .await
    .with_context(|| format!("relaying {event_id}"))?;
    delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .with_context(|| format!("acking {event_id}"))?;
    Ok(received.elapsed())
}
