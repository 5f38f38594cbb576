//! The flow ceiling ([8/10], before the pipeline): what RabbitMQ alone allows
//! the pipeline's message flow on this machine, as the yardstick the relay
//! ceiling cannot be for it.
//!
//! The relay ceiling moves one message through one stage. An event through the
//! pipeline costs the broker four confirmed publishes and five deliveries:
//! ingest's raw message (to the normalizer), the canonical one (one copy each
//! to the crm-writer and the email-writer), the crm-writer's
//! `crm.contact.synced` report (to the email-writer, which acks it unused) and
//! the email-writer's `email.subscriber.synced` report (to the crm-writer,
//! which writes the subscriber id back). This scenario does exactly that with
//! plain lapin and nothing else: no HTTP, no Redis, no destination calls, no
//! Handoff code in the hot path.
//!
//! Fair on the same axes as the relay: a namespace of its own with the
//! topology `Bus::start` declares for `Topology::v1`; one connection per stage
//! as each service has, a consumer at the bus's default prefetch and as many
//! confirm channels as a service's bus opens; every delivery handled on a task
//! of its own (publish its output persistent and mandatory, wait for the
//! confirm, then ack), messages of the services' sizes with their properties
//! and headers. The producer publishes the raw envelopes with confirms,
//! `--concurrency` at once, as ingest's clients do in the pipeline's peak,
//! while the stages drain: events/s is `--pipeline-events` over the window
//! from the first publish to the last of their 5 × N deliveries acked.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use handoff_bus::{
    Bus, BusConfig, CRM_CONTACT_SYNCED, CRM_WRITER, EMAIL_SUBSCRIBER_SYNCED, EMAIL_WRITER,
    NORMALIZER, Topology,
};
use handoff_events::Message as _;
use handoff_events::v1::envelope::Payload;
use handoff_events::v1::{Envelope, Synced, SyncedRecord};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, Consumer};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::ceiling::{self, Target};
use crate::measure::{Failures, Latencies, Measured};
use crate::options::Options;
use crate::payload;
use crate::procs::Watched;
use crate::queues::{Counter, StageCounts};
use crate::report::thousands;

/// Confirmed publishes per event in the pipeline: raw, canonical and the two reports.
pub const PUBLISHES_PER_EVENT: u64 = 4;
/// Deliveries per event: the raw one, two canonical copies and the two reports.
pub const DELIVERIES_PER_EVENT: u64 = 5;

/// What the flow ceiling found.
#[derive(Debug)]
pub struct Flow {
    /// Events through the whole flow; latencies are each delivery's delivery → ack.
    pub measured: Measured,
    /// Deliveries acked in the window (`DELIVERIES_PER_EVENT` per event when complete).
    pub deliveries: u64,
    /// The queues once the stages stopped: all empty when nothing was lost.
    pub counts: StageCounts,
    /// Events the run set out to carry.
    pub expected: u64,
}

impl Flow {
    /// One line for the report and, if a queue still holds anything or a delivery is
    /// missing, the problem that makes the run invalid.
    pub fn check(&self) -> (String, Option<String>) {
        let want = self.expected * DELIVERIES_PER_EVENT;
        let queued = [
            self.counts.input,
            self.counts.crm,
            self.counts.email,
            self.counts.dead,
        ];
        let ok = self.deliveries == want && queued.iter().all(|n| *n == 0);
        let line = format!(
            "{} of {} deliveries acked; left in the normalizer, crm-writer, email-writer and \
             dead-letter queues: {} {} {} {}: {}",
            thousands(self.deliveries),
            thousands(want),
            thousands(u64::from(queued[0])),
            thousands(u64::from(queued[1])),
            thousands(u64::from(queued[2])),
            thousands(u64::from(queued[3])),
            if ok { "ok" } else { "WRONG" },
        );
        let problem = (!ok).then(|| format!("flow ceiling: {line}"));
        (line, problem)
    }
}

/// Runs the flow ceiling in a namespace of its own, removed afterwards whatever happens.
pub async fn run(
    opts: &Options,
    run_id: &str,
    watched: &Watched,
    interrupted: &CancellationToken,
) -> anyhow::Result<Flow> {
    ceiling::in_namespace(&format!("bench-{run_id}-flow"), async |bus, _: &mut ()| {
        measure(opts, run_id, watched, bus, interrupted).await
    })
    .await
}

/// What a stage publishes for a delivery whose routing key starts with `on`.
struct Rule {
    on: String,
    routing_key: ShortString,
    body: Arc<[u8]>,
}

/// One stand-in for a service: its queue and what it publishes for each kind of delivery
/// (a delivery no rule matches is only acked, as a report the stage does not act on).
struct Stage {
    name: &'static str,
    queue: String,
    rules: Vec<Rule>,
}

impl Stage {
    fn output(&self, routing_key: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| routing_key.starts_with(&r.on))
    }
}

/// What every stage's tasks report to.
struct Progress {
    deliveries: AtomicU64,
    target: u64,
    all_done: Notify,
    last: Mutex<Option<Instant>>,
    latencies: Mutex<Vec<Duration>>,
    failures: Mutex<Failures>,
}

impl Progress {
    fn handled(&self, result: anyhow::Result<Duration>) {
        match result {
            Ok(latency) => self
                .latencies
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(latency),
            Err(err) => self
                .failures
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .add(1, || format!("{err:#}")),
        }
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        // A failed delivery counts too, so the run ends; the failure makes it invalid.
        if self.deliveries.fetch_add(1, Ordering::AcqRel) + 1 >= self.target {
            self.all_done.notify_one();
        }
    }
}

async fn measure(
    opts: &Options,
    run_id: &str,
    watched: &Watched,
    bus: &Bus,
    interrupted: &CancellationToken,
) -> anyhow::Result<Flow> {
    // The producer's connection, then one per stage, as each service has its own.
    let mut connections = vec![ceiling::connect(bus, "flow").await?];
    let topology = bus.topology().clone();
    let expected = opts.pipeline_events as u64;
    let stages = stages(&topology, run_id)?;
    for _ in &stages {
        connections.push(ceiling::open_connection().await?);
    }
    let result = carry(
        opts,
        run_id,
        watched,
        &topology,
        stages,
        &connections,
        expected,
        interrupted,
    )
    .await;
    for connection in &connections {
        let _ = connection.close(200, "bench done".into()).await;
    }
    result
}

/// The three stand-ins and what each publishes, with bodies of the services' sizes.
fn stages(topology: &Topology, run_id: &str) -> anyhow::Result<Vec<Stage>> {
    let event_id = payload::event_id(run_id, 'F', 0);
    let canonical = payload::canonical_envelope(&event_id)?;
    let crm_report = report(&canonical, CRM_WRITER, "hubspot", CRM_CONTACT_SYNCED)?;
    let email_report = report(
        &canonical,
        EMAIL_WRITER,
        "mailchimp",
        EMAIL_SUBSCRIBER_SYNCED,
    )?;
    let canonical_key = payload::EVENT_TYPE.canonical_routing_key();
    Ok(vec![
        Stage {
            name: NORMALIZER,
            queue: topology.stage_queue(NORMALIZER),
            rules: vec![Rule {
                on: "raw.".to_owned(),
                routing_key: canonical_key.as_str().into(),
                body: canonical.into(),
            }],
        },
        Stage {
            name: CRM_WRITER,
            queue: topology.stage_queue(CRM_WRITER),
            rules: vec![Rule {
                on: "canonical.".to_owned(),
                routing_key: CRM_CONTACT_SYNCED.into(),
                body: crm_report.into(),
            }],
        },
        Stage {
            name: EMAIL_WRITER,
            queue: topology.stage_queue(EMAIL_WRITER),
            rules: vec![Rule {
                on: "canonical.".to_owned(),
                routing_key: EMAIL_SUBSCRIBER_SYNCED.into(),
                body: email_report.into(),
            }],
        },
    ])
}

/// A writer's `Synced` report about the canonical envelope, as `delivery::Writer::report`
/// builds it: the event's fields, the records written.
fn report(
    canonical: &[u8],
    stage: &str,
    destination: &str,
    routing_key: &str,
) -> anyhow::Result<Vec<u8>> {
    let envelope = Envelope::decode(canonical).context("decoding the canonical envelope")?;
    let record = |kind: &str, id: &str, key_property: &str, key: &str| SyncedRecord {
        kind: kind.to_owned(),
        id: id.to_owned(),
        key_property: key_property.to_owned(),
        key: key.to_owned(),
        disposition: "updated".to_owned(),
    };
    let records = if destination == "hubspot" {
        vec![
            record("contact", "100000001", "email", "alex@example.com"),
            record("deal", "998877", "handoff_deal_key", "D-9001"),
        ]
    } else {
        vec![record(
            "member",
            "6b2c8e4f0a1d3e5f7a9b8c7d6e5f4a3b",
            "email",
            "alex@example.com",
        )]
    };
    Ok(Envelope {
        event_type: routing_key.to_owned(),
        payload: Some(Payload::Synced(Synced {
            stage: stage.to_owned(),
            destination: destination.to_owned(),
            delivered_event_type: envelope.event_type.clone(),
            records,
        })),
        ..envelope
    }
    .encode_to_vec())
}

/// A stage subscribed and ready, before any clock starts.
struct Subscribed {
    stage: Arc<Stage>,
    channels: Arc<Vec<Channel>>,
    consumer_channel: Channel,
    consumer: Consumer,
    tag: String,
}

async fn subscribe(
    connection: &Connection,
    stage: Stage,
    run_id: &str,
) -> anyhow::Result<Subscribed> {
    let channels = ceiling::confirm_channels(connection).await?;
    let consumer_channel = connection
        .create_channel()
        .await
        .context("opening a consumer channel")?;
    consumer_channel
        .basic_qos(
            BusConfig::default().prefetch,
            BasicQosOptions { global: false },
        )
        .await
        .context("setting the prefetch")?;
    let tag = format!("handoff-bench-flow-{}-{run_id}", stage.name);
    let consumer = consumer_channel
        .basic_consume(
            stage.queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("subscribing to {}", stage.queue))?;
    Ok(Subscribed {
        stage: Arc::new(stage),
        channels: Arc::new(channels),
        consumer_channel,
        consumer,
        tag,
    })
}

#[allow(clippy::too_many_arguments)] // Each is one independent input of the run.
async fn carry(
    opts: &Options,
    run_id: &str,
    watched: &Watched,
    topology: &Topology,
    stages: Vec<Stage>,
    connections: &[Connection],
    expected: u64,
    interrupted: &CancellationToken,
) -> anyhow::Result<Flow> {
    let (producer_connection, stage_connections) = connections
        .split_first()
        .context("no connection for the producer")?;
    let mut subscribed = Vec::new();
    for (stage, connection) in stages.into_iter().zip(stage_connections) {
        subscribed.push(subscribe(connection, stage, run_id).await?);
    }
    let producer_channels = ceiling::confirm_channels(producer_connection).await?;
    let counter = Counter::open(producer_connection).await?;
    let messages: Vec<(String, Vec<u8>)> = (0..opts.pipeline_events)
        .map(|i| {
            let id = payload::event_id(run_id, 'F', i);
            let body = payload::envelope(&id);
            (id, body)
        })
        .collect();
    let target = Target {
        exchange: topology.events_exchange().to_string(),
        routing_key: payload::EVENT_TYPE.raw_routing_key(),
    };
    let exchange: ShortString = topology.events_exchange().as_str().into();
    let progress = Arc::new(Progress {
        deliveries: AtomicU64::new(0),
        target: expected * DELIVERIES_PER_EVENT,
        all_done: Notify::new(),
        last: Mutex::new(None),
        latencies: Mutex::new(Vec::new()),
        failures: Mutex::new(Failures::default()),
    });

    let stop = CancellationToken::new();
    let before = watched.sample();
    let started = Instant::now();
    let mut consumers = JoinSet::new();
    let mut cancels = Vec::new();
    for sub in subscribed {
        cancels.push((sub.consumer_channel.clone(), sub.tag.clone()));
        consumers.spawn(consume(
            sub,
            exchange.clone(),
            progress.clone(),
            stop.clone(),
        ));
    }
    let published = ceiling::publish_every(
        &producer_channels,
        &target,
        messages,
        opts.concurrency,
        interrupted,
    )
    .await;
    if published.is_ok() {
        let deadline = tokio::time::Instant::from_std(started) + opts.max_duration;
        while progress.deliveries.load(Ordering::Acquire) < progress.target {
            tokio::select! {
                () = interrupted.cancelled() => break,
                () = tokio::time::sleep_until(deadline) => break,
                () = progress.all_done.notified() => {}
                // Woken now and then in case a notification raced the check above.
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }
    let after = watched.sample();
    stop.cancel();
    for (channel, tag) in &cancels {
        let _ = channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
    }
    while let Some(joined) = consumers.join_next().await {
        joined.context("a flow stage panicked")??;
    }
    for (channel, _) in &cancels {
        let _ = channel.close(200, "flow done".into()).await;
    }
    published.context("publishing the flow ceiling's raw events")?;
    if interrupted.is_cancelled() {
        bail!("interrupted");
    }

    let last = *progress.last.lock().unwrap_or_else(PoisonError::into_inner);
    let mut cpu = before.until(&after);
    cpu.wall = last.map_or(Duration::ZERO, |last| last.duration_since(started));
    let deliveries = progress.deliveries.load(Ordering::Acquire);
    let latencies = std::mem::take(
        &mut *progress
            .latencies
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    let failures = std::mem::take(
        &mut *progress
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    let counts = counter.stages(topology).await?;
    Ok(Flow {
        measured: Measured {
            concurrency: opts.concurrency,
            // Events whose five deliveries all went through.
            events: deliveries.min(progress.target) / DELIVERIES_PER_EVENT,
            failed_events: failures.events,
            errors: failures.messages,
            latencies: Latencies::merge([latencies]),
            cpu,
        },
        deliveries,
        counts,
        expected,
    })
}

/// A stage's consumer loop: each delivery on a task of its own until `stop`.
async fn consume(
    mut sub: Subscribed,
    exchange: ShortString,
    progress: Arc<Progress>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut tasks = JoinSet::new();
    let mut seq = 0usize;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                joined.context("a flow task panicked")?;
            }
            next = sub.consumer.next() => match next {
                Some(Ok(delivery)) => {
                    seq += 1;
                    let (stage, channels) = (sub.stage.clone(), sub.channels.clone());
                    let (exchange, progress) = (exchange.clone(), progress.clone());
                    tasks.spawn(async move {
                        let result = handle(&stage, &channels, &exchange, delivery, seq).await;
                        progress.handled(result);
                    });
                }
                Some(Err(err)) => bail!("the {} stand-in's consumer failed: {err}", sub.stage.name),
                // The subscription ends when the run cancels it.
                None if stop.is_cancelled() => break,
                None => bail!("the broker ended the {} stand-in's subscription", sub.stage.name),
            },
        }
    }
    // Deliveries still in flight (interrupted or out of time) go back to the queue.
    tasks.shutdown().await;
    Ok(())
}

/// Publishes what the stage makes of one delivery, if anything, waits for its confirm, then
/// acks the delivery; answers delivery → ack.
async fn handle(
    stage: &Stage,
    channels: &[Channel],
    exchange: &ShortString,
    delivery: Delivery,
    seq: usize,
) -> anyhow::Result<Duration> {
    let received = Instant::now();
    let event_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map_or(String::new(), ToString::to_string);
    if let Some(rule) = stage.output(delivery.routing_key.as_str()) {
        let channel = &channels[seq % channels.len()];
        ceiling::publish(
            channel,
            exchange,
            &rule.routing_key,
            seq,
            &event_id,
            &rule.body,
        )
        .await
        .with_context(|| format!("{} publishing for {event_id}", stage.name))?;
    }
    delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .with_context(|| format!("{} acking {event_id}", stage.name))?;
    Ok(received.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_stage_publishes_what_its_service_does() {
        let stages = stages(&Topology::v1("flow-test"), "abc").expect("stages");
        let out = |stage: usize, key: &str| {
            stages[stage]
                .output(key)
                .map(|rule| rule.routing_key.to_string())
        };
        let canonical = payload::EVENT_TYPE.canonical_routing_key();
        let raw = payload::EVENT_TYPE.raw_routing_key();
        assert_eq!(out(0, &raw), Some(canonical.clone()));
        assert_eq!(out(1, &canonical), Some(CRM_CONTACT_SYNCED.to_owned()));
        assert_eq!(out(1, EMAIL_SUBSCRIBER_SYNCED), None);
        assert_eq!(out(2, &canonical), Some(EMAIL_SUBSCRIBER_SYNCED.to_owned()));
        assert_eq!(out(2, CRM_CONTACT_SYNCED), None);
        // Together: four publishes (raw by the producer) for five deliveries.
        let publishes = 1 + stages.iter().map(|s| s.rules.len() as u64).sum::<u64>();
        assert_eq!(publishes, PUBLISHES_PER_EVENT);
    }

    #[test]
    fn reports_decode_as_synced_envelopes_of_the_event() {
        let canonical = payload::canonical_envelope("evt_abc_F00000000").expect("canonical");
        let body = report(&canonical, CRM_WRITER, "hubspot", CRM_CONTACT_SYNCED).expect("report");
        let envelope = Envelope::decode(body.as_slice()).expect("decodes");
        assert_eq!(envelope.event_id, "evt_abc_F00000000");
        assert_eq!(envelope.event_type, CRM_CONTACT_SYNCED);
        assert!(matches!(envelope.payload, Some(Payload::Synced(ref s)) if s.records.len() == 2));
    }
}
