//! The bare-broker ceiling: what RabbitMQ alone takes on this machine with a
//! plain lapin publisher, as a yardstick for ingest.
//!
//! The comparison is kept fair on every axis that costs the broker work:
//! the topology is the one `Bus::start` declares for `Topology::v1` (same
//! exchange, bindings and quorum-queue arguments as ingest's), messages are
//! encoded [`Envelope`](handoff_events::v1::Envelope)s of the seed event with
//! the properties ingest sets, persistent, mandatory, each awaited for its
//! publisher confirm, with the same number in flight as the HTTP clients,
//! spread over as many confirm channels as ingest's bus opens by default.
//! What is left out is exactly what ingest adds: HTTP, JSON checks, Redis.
//!
//! [`publish_every`], [`publish`] and [`confirm_channels`] serve the relay and
//! flow ceilings and the other scenarios too.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use handoff_bus::{Bus, BusConfig, Topology};
use handoff_events::PROTOBUF_CONTENT_TYPE;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

use crate::measure::{Failures, Latencies, Measured};
use crate::options::Options;
use crate::payload;
use crate::procs::Watched;
use crate::service::Service;

/// What the ceiling scenario found.
#[derive(Debug)]
pub struct Ceiling {
    pub measured: Measured,
    /// Size of one encoded envelope (the AMQP body), in bytes.
    pub envelope_bytes: usize,
    /// Messages the queue held at the end, against the confirmed publishes.
    pub queued: u32,
    pub confirmed: u64,
    /// Confirm-mode channels the publishes were spread over.
    pub channels: usize,
}

/// Runs the ceiling in a namespace of its own, removed afterwards whatever happens.
pub async fn run(
    opts: &Options,
    run_id: &str,
    watched: &Watched,
    interrupted: &CancellationToken,
) -> anyhow::Result<Ceiling> {
    in_namespace(
        &format!("bench-{run_id}-broker"),
        async |bus, _: &mut ()| measure(opts, run_id, watched, bus, interrupted).await,
    )
    .await
}

/// What a part still has running when it ends early: stopped before its namespace goes.
pub trait Leftovers: Default {
    /// Stops whatever is still running. Only after an error does anything remain: a part
    /// stops its processes itself before its checks.
    async fn stop_all(&mut self);
}

/// A part without child processes.
impl Leftovers for () {
    async fn stop_all(&mut self) {}
}

/// A part with one service.
impl Leftovers for Option<Service> {
    async fn stop_all(&mut self) {
        if let Some(service) = self.take() {
            let _ = service.stop(LEFTOVER_STOP_WITHIN).await;
        }
    }
}

/// SIGTERM to exit for a process left running by a part that failed.
pub const LEFTOVER_STOP_WITHIN: Duration = Duration::from_secs(15);

/// Runs a part's `body` in a namespace of its own: a bus that declared the v1 topology there
/// and the part's [`Leftovers`]. Afterwards, whatever happened, it stops what is still
/// running, then removes the namespace's queues and exchanges and its Redis keys.
pub async fn in_namespace<L: Leftovers, T>(
    namespace: &str,
    body: impl AsyncFnOnce(&Bus, &mut L) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let (bus, stop) = scenario_bus(namespace);
    let mut leftovers = L::default();
    let result = body(&bus, &mut leftovers).await;
    leftovers.stop_all().await;
    remove_scenario_bus(&bus, stop).await;
    handoff_test_support::cleanup_redis(namespace).await;
    result
}

/// Waits until `bus` has declared the `scenario`'s topology, then opens the bench's own
/// connection, on which the scenario's plain lapin work runs.
pub async fn connect(bus: &Bus, scenario: &str) -> anyhow::Result<Connection> {
    bus.wait_ready(Duration::from_secs(30))
        .await
        .with_context(|| format!("declaring the {scenario}'s topology on RabbitMQ"))?;
    open_connection().await
}

/// A plain lapin connection to the broker the bench measures.
pub async fn open_connection() -> anyhow::Result<Connection> {
    Connection::connect(
        &handoff_test_support::amqp_url(),
        ConnectionProperties::default(),
    )
    .await
    .context("connecting to RabbitMQ")
}

/// A bus declaring the v1 topology in a scenario's own `namespace`.
fn scenario_bus(namespace: &str) -> (Bus, CancellationToken) {
    let stop = CancellationToken::new();
    let bus = Bus::start(
        BusConfig {
            url: handoff_test_support::amqp_url(),
            ..BusConfig::default()
        },
        Topology::v1(namespace),
        stop.clone(),
    );
    (bus, stop)
}

/// Deletes the scenario's queues and exchanges and closes its bus.
async fn remove_scenario_bus(bus: &Bus, stop: CancellationToken) {
    if let Err(err) = bus.teardown().await {
        let namespace = bus.topology().namespace();
        eprintln!("handoff-bench: could not remove namespace {namespace}: {err}");
    }
    bus.close().await;
    stop.cancel();
}

/// A backlog of raw envelopes waiting in a stage's queue before any clock starts.
pub struct Backlog {
    /// How many were published (and are in the queue).
    pub expected: u64,
    /// Size of one envelope on the wire.
    pub input_bytes: usize,
    /// How long publishing them took (not part of any measurement).
    pub took: Duration,
}

/// Publishes `opts.events` raw envelopes (ids marked `tag`) to `raw.<type>` and checks
/// that `queue` then holds exactly that many.
#[allow(clippy::too_many_arguments)] // Each is one independent input of the preload.
pub async fn preload_backlog(
    channels: &[Channel],
    counter: &crate::queues::Counter,
    topology: &Topology,
    queue: &str,
    run_id: &str,
    tag: char,
    opts: &Options,
    interrupted: &CancellationToken,
) -> anyhow::Result<Backlog> {
    let messages: Vec<(String, Vec<u8>)> = (0..opts.events)
        .map(|i| {
            let id = payload::event_id(run_id, tag, i);
            let body = payload::envelope(&id);
            (id, body)
        })
        .collect();
    let input_bytes = messages.first().map_or(0, |(_, body)| body.len());
    let expected = messages.len() as u64;
    let started = Instant::now();
    publish_every(
        channels,
        &Target {
            exchange: topology.events_exchange(),
            routing_key: payload::EVENT_TYPE.raw_routing_key(),
        },
        messages,
        opts.concurrency,
        interrupted,
    )
    .await
    .with_context(|| format!("preloading {queue}"))?;
    let took = started.elapsed();
    let queued = counter.count(queue).await?;
    if u64::from(queued) != expected {
        bail!("{queue} holds {queued} messages after preloading {expected}");
    }
    Ok(Backlog {
        expected,
        input_bytes,
        took,
    })
}

async fn measure(
    opts: &Options,
    run_id: &str,
    watched: &Watched,
    bus: &Bus,
    interrupted: &CancellationToken,
) -> anyhow::Result<Ceiling> {
    let connection = connect(bus, "ceiling").await?;
    let target = Target {
        exchange: bus.topology().events_exchange().to_string(),
        routing_key: payload::EVENT_TYPE.raw_routing_key(),
    };
    let queue = bus.topology().stage_queue("normalizer");
    let channels = confirm_channels(&connection).await?;
    let channel_count = channels.len();

    let message = |tag: char, i: usize| {
        let id = payload::event_id(run_id, tag, i);
        let body = payload::envelope(&id);
        (id, body)
    };
    let warmup: Vec<(String, Vec<u8>)> = (0..opts.warmup).map(|i| message('c', i)).collect();
    let messages: Vec<(String, Vec<u8>)> = (0..opts.events).map(|i| message('C', i)).collect();
    let envelope_bytes = messages.first().map_or(0, |(_, body)| body.len());

    let far = Duration::from_secs(3600);
    let warm_plan = Plan {
        concurrency: opts.concurrency,
        within: far,
        stop: interrupted,
    };
    let warm = publish_all(&channels, &target, warmup, &warm_plan).await?;
    let plan = Plan {
        within: opts.max_duration,
        ..warm_plan
    };
    let before = watched.sample();
    let (latencies, failures) = publish_all(&channels, &target, messages, &plan).await?;
    let cpu = before.until(&watched.sample());
    if interrupted.is_cancelled() {
        bail!("interrupted");
    }

    let confirmed = (warm.0.len() + latencies.len()) as u64;
    let queued = bus
        .message_count(&queue)
        .await
        .context("counting the ceiling queue")?;
    let _ = connection.close(200, "bench done".into()).await;
    Ok(Ceiling {
        measured: Measured {
            concurrency: opts.concurrency,
            events: latencies.len() as u64,
            failed_events: failures.events + warm.1.events,
            errors: failures.messages,
            latencies,
            cpu,
        },
        envelope_bytes,
        queued,
        confirmed,
        channels: channel_count,
    })
}

/// As many confirm channels as a service's bus opens (`bus.publish_channels`): the broker
/// runs one process per channel, so this decides how much of it can work in parallel.
pub async fn confirm_channels(connection: &Connection) -> anyhow::Result<Vec<Channel>> {
    let count = usize::from(BusConfig::default().publish_channels.max(1));
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        let channel = connection
            .create_channel()
            .await
            .context("opening a channel")?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("enabling publisher confirms")?;
        channels.push(channel);
    }
    Ok(channels)
}

/// Publishes every one of `messages` (event id, encoded envelope) the way the ceiling does
/// (confirmed, `concurrency` in flight): a backlog put into a queue before a scenario drains
/// it, or the flow ceiling's input. Fails on the first refused publish: a scenario cannot
/// start from a short backlog, nor a flow be counted with events missing.
pub async fn publish_every(
    channels: &[Channel],
    target: &Target,
    messages: Vec<(String, Vec<u8>)>,
    concurrency: usize,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let plan = Plan {
        concurrency,
        within: Duration::from_secs(3600),
        stop,
    };
    let (_, failures) = publish_all(channels, target, messages, &plan).await?;
    if stop.is_cancelled() {
        bail!("interrupted");
    }
    if let Some(first) = failures.messages.first() {
        bail!(
            "{} of the publishes failed; the first: {first}",
            failures.events
        );
    }
    Ok(())
}

/// Where a publish goes.
pub struct Target {
    pub exchange: String,
    pub routing_key: String,
}

struct Plan<'a> {
    concurrency: usize,
    within: Duration,
    stop: &'a CancellationToken,
}

/// Publishes `messages` with `concurrency` publishes awaiting their confirm at any time,
/// workers spread evenly over `channels`, until all are confirmed or `within` has passed.
async fn publish_all(
    channels: &[Channel],
    target: &Target,
    messages: Vec<(String, Vec<u8>)>,
    plan: &Plan<'_>,
) -> anyhow::Result<(Latencies, Failures)> {
    let concurrency = plan.concurrency;
    let messages = Arc::new(messages);
    let next = Arc::new(AtomicUsize::new(0));
    let exchange: lapin::types::ShortString = target.exchange.as_str().into();
    let routing_key: lapin::types::ShortString = target.routing_key.as_str().into();
    let deadline = Instant::now() + plan.within;
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let channel = channels[w % channels.len()].clone();
            let (messages, next, stop) = (messages.clone(), next.clone(), plan.stop.clone());
            let (exchange, routing_key) = (exchange.clone(), routing_key.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut failures = Failures::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= messages.len() || Instant::now() >= deadline || stop.is_cancelled() {
                        break;
                    }
                    let (id, body) = &messages[i];
                    let started = Instant::now();
                    match publish(&channel, &exchange, &routing_key, i, id, body).await {
                        Ok(()) => latencies.push(started.elapsed()),
                        Err(err) => failures.add(1, || format!("publish {id}: {err:#}")),
                    }
                }
                (latencies, failures)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(concurrency);
    let mut failures = Vec::with_capacity(concurrency);
    for worker in workers {
        let (l, f) = worker.await.context("a publisher task panicked")?;
        latencies.push(l);
        failures.push(f);
    }
    Ok((Latencies::merge(latencies), Failures::merge(failures)))
}

/// One persistent, mandatory publish with the properties and headers a service's bus sets,
/// awaited until the broker confirms it.
pub async fn publish(
    channel: &Channel,
    exchange: &lapin::types::ShortString,
    routing_key: &lapin::types::ShortString,
    seq: usize,
    event_id: &str,
    body: &[u8],
) -> anyhow::Result<()> {
    // The properties and headers ingest's bus sets, so each message costs the broker the same.
    let mut headers = FieldTable::default();
    headers.insert(
        "x-handoff-publish-seq".into(),
        AMQPValue::LongLongInt(i64::try_from(seq).unwrap_or(i64::MAX)),
    );
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .as_bytes()
                .into(),
        ),
    );
    let properties = BasicProperties::default()
        // 2 = persistent: written to the quorum log before the confirm, as ingest's are.
        .with_delivery_mode(2)
        .with_timestamp(now_unix())
        .with_content_type(PROTOBUF_CONTENT_TYPE.into())
        .with_message_id(event_id.into())
        .with_type("handoff.v1.Envelope".into())
        .with_headers(headers);
    let confirm = channel
        .basic_publish(
            exchange.clone(),
            routing_key.clone(),
            // Mandatory, like ingest: an unroutable event must come back, not vanish.
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            properties,
        )
        .await
        .context("sending")?
        .await
        .context("waiting for the confirm")?;
    if confirm.is_nack() {
        bail!("the broker nacked the message");
    }
    if confirm.take_message().is_some() {
        bail!("the message was unroutable (returned)");
    }
    Ok(())
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
