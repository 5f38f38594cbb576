//! The consumer loop: one stage queue, a [`Handler`] per message, an [`Outcome`] each.
//!
//! [`run`] consumes `{ns}.{stage}` with manual acks and `basic.qos(prefetch)`, runs
//! handlers concurrently (at most `prefetch` at once, since the broker sends no more
//! unacked messages than that) and turns each outcome into broker operations, always
//! confirming its own output before it acks the input:
//!
//! - [`Outcome::Ack`] becomes `basic.ack`, coalesced with the subscription's other
//!   finished messages into one `multiple = true` ack where order allows ([`crate::acks`]).
//! - [`Outcome::RetryLater`] sends a copy (same body and properties, attempt + 1,
//!   retry history and `x-handoff-not-before` in headers) to one of the stage's delay
//!   queues; it dead-letters back into the stage queue when its TTL expires. Past
//!   `max_attempts` it becomes a dead letter of class `RetriesExhausted`.
//! - [`Outcome::Defer`] sends a copy the same way with only `x-handoff-not-before`
//!   set: no attempt is used up, so it never runs into `max_attempts`.
//! - A message that comes back before its `x-handoff-not-before` is not handed to
//!   the handler: the loop sends it on, unchanged, through another delay queue (a
//!   "delay hop"). Each hop takes the largest tier that fits the time left, so a wait
//!   ends no earlier than asked and at most one smallest tier later.
//! - [`Outcome::DeadLetter`] publishes a `handoff.v1.DeadLetter` record with the
//!   original message and every piece of context to the dead-letter exchange, routing
//!   key `{stage}.{class label}`.
//!
//! If that output cannot be confirmed, the input is nacked with requeue: the message
//! is tried again, never lost; the queue's delivery limit stops it looping forever.
//! A panicking handler is treated the same way.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use handoff_events::v1::{self, ErrorClass};
use handoff_events::{Message, Timestamp};
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel};
use rand::Rng;
use time::OffsetDateTime;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::acks::Acks;
use crate::headers::{self, AttemptRecord};
use crate::topology::{pick_tier, short};
use crate::{Bus, BusError, Headers, trace};

/// AMQP `type` of the records published to the dead-letter exchange.
pub const DEAD_LETTER_MESSAGE_TYPE: &str = "handoff.v1.DeadLetter";

/// A message due within the smallest delay tier is held in-process for the rest of its
/// wait rather than sent through that tier, which would make it up to a whole tier late
/// (and bunch retries that full jitter spread out into tier-sized steps). The hold is
/// bounded by the smallest tier (200 ms by default), so it never ties up a prefetch slot
/// for long; with no tiers configured only this short tolerance applies.
const NOT_BEFORE_TOLERANCE: Duration = Duration::from_millis(10);

/// Pause before resubscribing after the broker cancelled the consumer or refused it
/// (a missing queue), so a persistent problem is not a hot loop.
const RESUBSCRIBE_DELAY: Duration = Duration::from_secs(1);

/// A message as a handler sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delivery {
    /// The payload, byte for byte.
    pub body: Vec<u8>,
    /// Application headers as strings (see [`crate::Headers`]).
    pub headers: Headers,
    /// The routing key the message was first published with; kept across retry hops.
    pub routing_key: String,
    /// The exchange the message was first published to; kept across retry hops.
    pub exchange: String,
    /// The queue it was consumed from.
    pub queue: String,
    /// AMQP `message_id`.
    pub message_id: Option<String>,
    /// AMQP `content_type`.
    pub content_type: Option<String>,
    /// AMQP `type`.
    pub message_type: Option<String>,
    /// AMQP `delivery_mode` (2 = persistent).
    pub delivery_mode: Option<u8>,
    /// The broker delivered this message before (to us or another consumer) and it
    /// was not acked: a crash or lost connection mid-handling, so maybe a duplicate.
    pub redelivered: bool,
    /// 1 on the first try, from header `x-handoff-attempt`; each `RetryLater` raises
    /// it, `Defer` and delay hops don't.
    pub attempt: u32,
    /// When the first `RetryLater` happened, `None` on the first try.
    pub first_failed_at: Option<OffsetDateTime>,
}

impl Delivery {
    pub(crate) fn from_lapin(delivery: &lapin::message::Delivery, queue: &str) -> Self {
        let props = &delivery.properties;
        let headers = props
            .headers()
            .as_ref()
            .map(headers::from_field_table)
            .unwrap_or_default();
        let exchange = headers
            .get(headers::HEADER_ORIGIN_EXCHANGE)
            .cloned()
            .unwrap_or_else(|| delivery.exchange.to_string());
        let routing_key = headers
            .get(headers::HEADER_ORIGIN_ROUTING_KEY)
            .cloned()
            .unwrap_or_else(|| delivery.routing_key.to_string());
        Delivery {
            body: delivery.data.clone(),
            attempt: headers::attempt(&headers),
            first_failed_at: headers
                .get(headers::HEADER_FIRST_FAILED_AT)
                .and_then(|s| headers::parse_time(s)),
            headers,
            routing_key,
            exchange,
            queue: queue.to_owned(),
            message_id: props.message_id().as_ref().map(|s| s.to_string()),
            content_type: props.content_type().as_ref().map(|s| s.to_string()),
            message_type: props.kind().as_ref().map(|s| s.to_string()),
            delivery_mode: *props.delivery_mode(),
            redelivered: delivery.redelivered,
        }
    }
}

/// What to do with a message once its handler is done.
///
/// `RetryLater` and `Defer` wait in the stage's delay queues: the message comes back
/// no earlier than `delay` and at most one smallest tier (`BusConfig::retry_delays`)
/// later, so a backoff's jitter survives.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done (side effect made or output confirmed): ack it.
    Ack,
    /// A transient failure: try again after `delay`; uses up an attempt.
    RetryLater {
        /// The least time to wait before the next attempt.
        delay: Duration,
        /// What went wrong, for the attempt history and a final dead letter.
        error: String,
    },
    /// Not the message's fault: try again after `delay` without using up an attempt,
    /// e.g. a destination's rate limit (HTTP 429), which would otherwise exhaust the
    /// retries of messages that never failed. Never becomes `RetriesExhausted`.
    Defer {
        /// The least time to wait before handling it again.
        delay: Duration,
        /// Why, for the log.
        reason: String,
    },
    /// A permanent failure: park the message in the dead letters with why.
    DeadLetter(Failure),
}

/// Why a message was given up on; becomes a `handoff.v1.DeadLetter` record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Failure {
    /// The kind of failure (validation, permanent refusal, ...).
    pub class: v1::ErrorClass,
    /// Human-readable cause.
    pub message: String,
    /// Machine-readable cause where there is one (vendor error code, HTTP status).
    pub code: String,
    /// The destination involved, if any (`hubspot`, `mailchimp`).
    pub destination: String,
    /// Field-level reasons: (dotted path, message).
    pub field_errors: Vec<(String, String)>,
    /// From the envelope, when the handler could decode it.
    pub event_id: String,
    /// From the envelope, when the handler could decode it.
    pub event_type: String,
    /// From the envelope, when the handler could decode it.
    pub publisher_id: String,
}

impl Failure {
    /// A failure of `class` with a message; fill in the rest with struct update syntax.
    pub fn new(class: v1::ErrorClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
            ..Self::default()
        }
    }
}

/// Per-message logic of a stage. Handlers run concurrently; they classify failures,
/// they don't touch the broker.
pub trait Handler: Send + Sync + 'static {
    /// Handles one delivery and says what should become of it.
    fn handle(&self, delivery: &Delivery) -> impl Future<Output = Outcome> + Send;
}

/// Records who a message is about on the consumer span it is handled in, once the handler has
/// decoded it, so every log line and the span itself carry the event's identity. Handlers need no
/// span of their own for that: one span fewer per message is CPU saved on every hop. Does nothing
/// outside a consumer span (a handler called directly, in a test).
pub fn record_identity(event_id: &str, event_type: &str, publisher_id: &str) {
    let span = tracing::Span::current();
    span.record("event_id", event_id);
    span.record("event_type", event_type);
    span.record("publisher_id", publisher_id);
}

/// Consumes `topology.stage_queue(stage)` until `shutdown`, then drains.
///
/// Each delivery gets a consumer span (`otel.kind = consumer`, `messaging.system =
/// rabbitmq`, `messaging.destination.name`, `messaging.message.id`) whose parent is the
/// trace context in its headers. On connection loss it waits for the supervisor to
/// reconnect and subscribes again (unacked messages are redelivered by the broker). On
/// shutdown it cancels the subscription, lets in-flight handlers finish and settle
/// their messages for up to `shutdown_grace`, closes its channel and returns `Ok`.
///
/// Errors only if `stage` is not part of the bus's topology.
pub async fn run<H: Handler>(
    bus: &Bus,
    stage: &str,
    handler: Arc<H>,
    shutdown: CancellationToken,
) -> Result<(), BusError> {
    if !bus.topology().has_stage(stage) {
        return Err(BusError::Amqp(format!(
            "stage {stage:?} is not part of the topology"
        )));
    }
    let queue: Arc<str> = bus.topology().stage_queue(stage).into();
    consume(bus, queue, Some(stage.into()), handler, shutdown).await;
    Ok(())
}

/// Consumes the namespace's dead-letter queue (`{ns}.dead-letters`) until `shutdown`,
/// then drains, like [`run`] does for a stage; [`read_dead_letter`] reads what arrives.
///
/// The dead-letter queue has no delay queues and no dead-letter exchange of its own,
/// so only [`Outcome::Ack`] settles a message: any other outcome requeues it at once.
/// A handler that cannot store a message yet (its store is down) should wait and try
/// again itself, and requeue only when it is shutting down.
pub async fn run_dead_letters<H: Handler>(
    bus: &Bus,
    handler: Arc<H>,
    shutdown: CancellationToken,
) -> Result<(), BusError> {
    let queue: Arc<str> = bus.topology().dead_letter_queue().into();
    consume(bus, queue, None, handler, shutdown).await;
    Ok(())
}

/// The subscription loop of [`run`] and [`run_dead_letters`]; `stage` is `None` for
/// the dead-letter queue.
async fn consume<H: Handler>(
    bus: &Bus,
    queue: Arc<str>,
    stage: Option<Arc<str>>,
    handler: Arc<H>,
    shutdown: CancellationToken,
) {
    let span_name: Arc<str> = format!("process {queue}").into();
    let tag_stage = stage.as_deref().unwrap_or("dead-letters");
    let tag = format!("handoff-{tag_stage}-{:016x}", rand::rng().random::<u64>());
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut channel: Option<Channel> = None;
    let mut acks: Option<Acks> = None;

    'subscribe: loop {
        if let Some(old) = acks.take() {
            old.close().await;
        }
        if let Some(old) = channel.take() {
            // Unacked deliveries of handlers still running will fail to ack and be
            // redelivered; that is the at-least-once contract.
            let _ = old.close(200, "resubscribing".into()).await;
        }
        let Some(session) = bus.next_session(&shutdown).await else {
            break 'subscribe;
        };
        let subscribed = subscribe(&session.conn, &queue, &tag, bus.config().prefetch).await;
        let (ch, mut consumer) = match subscribed {
            Ok(pair) => pair,
            Err(err) => {
                warn!(queue = %queue, error = %err, "Could not subscribe; retrying.");
                tokio::select! {
                    _ = shutdown.cancelled() => break 'subscribe,
                    _ = tokio::time::sleep(RESUBSCRIBE_DELAY) => continue 'subscribe,
                }
            }
        };
        info!(queue = %queue, "Consuming.");
        channel = Some(ch.clone());
        let subscription_acks = acks.insert(Acks::start(ch.clone())).clone();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    // Stop deliveries; prefetched ones not yet handed to a handler are
                    // requeued by the broker when the channel closes.
                    let _ = ch.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                    break 'subscribe;
                }
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(err) = joined
                        && err.is_panic()
                    {
                        warn!(queue = %queue, "A message task panicked.");
                    }
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        subscription_acks.delivered(delivery.delivery_tag);
                        let ctx = TaskCtx {
                            bus: bus.clone(),
                            stage: stage.clone(),
                            queue: queue.clone(),
                            span_name: span_name.clone(),
                            acks: subscription_acks.clone(),
                        };
                        tasks.spawn(process(ctx, handler.clone(), delivery));
                    }
                    Some(Err(err)) => {
                        warn!(queue = %queue, error = %err, "Consumer failed; resubscribing.");
                        continue 'subscribe;
                    }
                    None => {
                        warn!(queue = %queue, "The broker ended the subscription; resubscribing.");
                        tokio::select! {
                            _ = shutdown.cancelled() => break 'subscribe,
                            _ = tokio::time::sleep(RESUBSCRIBE_DELAY) => continue 'subscribe,
                        }
                    }
                },
            }
        }
    }

    let grace = bus.config().shutdown_grace;
    let in_flight = tasks.len();
    if in_flight > 0 {
        info!(queue = %queue, in_flight, "Letting in-flight messages finish.");
    }
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        warn!(queue = %queue, left = tasks.len(), ?grace, "Shutdown grace ran out; the broker will redeliver what was cut off.");
        tasks.shutdown().await;
    }
    if let Some(acks) = acks {
        // What finished goes before the channel does; the rest is redelivered.
        acks.close().await;
    }
    if let Some(ch) = channel {
        let _ = ch.close(200, "consumer stopped".into()).await;
    }
    info!(queue = %queue, "Stopped consuming.");
}

async fn subscribe(
    conn: &lapin::Connection,
    queue: &str,
    tag: &str,
    prefetch: u16,
) -> Result<(Channel, lapin::Consumer), BusError> {
    let channel = conn.create_channel().await?;
    // Per-consumer limit (global = false): the broker sends at most `prefetch`
    // unacked messages, which also bounds how many handlers run at once.
    channel
        .basic_qos(prefetch, BasicQosOptions { global: false })
        .await?;
    let consumer = channel
        .basic_consume(
            short(queue)?,
            short(tag)?,
            // Manual acks (no_ack = false): a message is only gone once its outcome
            // is settled. Not exclusive, so stages scale out to many consumers.
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

#[derive(Clone)]
struct TaskCtx {
    bus: Bus,
    /// `None` when consuming the dead-letter queue.
    stage: Option<Arc<str>>,
    queue: Arc<str>,
    /// `"process {queue}"`, the consumer span's name, built once rather than per message.
    span_name: Arc<str>,
    /// The subscription's acks, coalesced.
    acks: Acks,
}

async fn process<H: Handler>(ctx: TaskCtx, handler: Arc<H>, raw: lapin::message::Delivery) {
    let delivery = Delivery::from_lapin(&raw, &ctx.queue);
    let span = tracing::info_span!(
        "consume",
        otel.name = &*ctx.span_name,
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = %ctx.queue,
        messaging.message.id = delivery.message_id.as_deref().unwrap_or(""),
        messaging.rabbitmq.destination.routing_key = %delivery.routing_key,
        handoff.attempt = delivery.attempt,
        event_id = tracing::field::Empty,
        event_type = tracing::field::Empty,
        publisher_id = tracing::field::Empty,
    );
    let _ = span.set_parent(trace::extract(&delivery.headers));
    async move {
        // A dead letter may carry the not-before of the retry it died in; it is due now.
        let left = ctx
            .stage
            .as_ref()
            .and_then(|_| headers::wait_left(&delivery.headers, OffsetDateTime::now_utc()));
        // Without tiers there is nowhere to wait; handling it beats a requeue loop.
        let tiers = &ctx.bus.config().retry_delays;
        let can_wait = !tiers.is_empty();
        let hold_in_process = tiers
            .first()
            .copied()
            .unwrap_or(NOT_BEFORE_TOLERANCE)
            .max(NOT_BEFORE_TOLERANCE);
        let label = match left {
            Some(left) if left > hold_in_process && can_wait => {
                debug!(?left, "Not due yet; sending it through another delay tier.");
                let properties = delayed_copy(&raw, &delivery, Vec::new());
                if Box::pin(send_delayed(&ctx, &raw, properties, left)).await {
                    "delay_hop"
                } else {
                    "requeue"
                }
            }
            _ => {
                if let Some(left) = left.filter(|l| *l <= hold_in_process) {
                    // Never early, and never a whole tier late.
                    tokio::time::sleep(left).await;
                }
                debug!(redelivered = delivery.redelivered, "Handling a message.");
                // Boxed, as are `settle`, `send_delayed` and `requeue`: a handler's future
                // runs to kilobytes (8 KiB for the normalizer's: every await it makes is in
                // it), and unboxed each would be part of this task's, which tokio copies whole
                // when spawning it and again when it completes (10 KiB a message before).
                let outcome = AssertUnwindSafe(Box::pin(handler.handle(&delivery)))
                    .catch_unwind()
                    .await;
                match outcome {
                    Ok(outcome) => Box::pin(settle(&ctx, &raw, &delivery, outcome)).await,
                    Err(_) => {
                        warn!("The handler panicked; requeueing the message.");
                        Box::pin(requeue(&ctx, &raw)).await;
                        "panic"
                    }
                }
            }
        };
        metrics::counter!(
            "handoff_bus_consumed_total",
            "queue" => ctx.queue.to_string(),
            "outcome" => label
        )
        .increment(1);
    }
    .instrument(span)
    .await;
}

/// Applies an outcome; returns the metrics label of what happened.
async fn settle(
    ctx: &TaskCtx,
    raw: &lapin::message::Delivery,
    delivery: &Delivery,
    outcome: Outcome,
) -> &'static str {
    let Some(stage) = ctx.stage.as_deref() else {
        return settle_dead_letter_queue(ctx, raw, outcome).await;
    };
    let cfg = ctx.bus.config();
    let outcome = match outcome {
        Outcome::RetryLater { error, .. } if delivery.attempt >= cfg.max_attempts => {
            Outcome::DeadLetter(Failure {
                class: ErrorClass::RetriesExhausted,
                message: format!("gave up after {} attempts: {error}", delivery.attempt),
                ..Failure::default()
            })
        }
        other => other,
    };
    match outcome {
        Outcome::Ack => {
            ack(ctx, raw);
            debug!("Acked.");
            "ack"
        }
        Outcome::RetryLater { delay, error } => {
            let now = OffsetDateTime::now_utc();
            let properties = retry_copy(raw, delivery, &error, now, delay);
            if !send_delayed(ctx, raw, properties, delay).await {
                return "requeue";
            }
            debug!(%error, ?delay, "Scheduled a retry.");
            "retry"
        }
        Outcome::Defer { delay, reason } => {
            let due = headers::due_at(OffsetDateTime::now_utc(), delay);
            let properties = delayed_copy(
                raw,
                delivery,
                vec![(headers::HEADER_NOT_BEFORE, headers::format_time(due))],
            );
            if !send_delayed(ctx, raw, properties, delay).await {
                return "requeue";
            }
            debug!(%reason, ?delay, "Deferred.");
            "defer"
        }
        Outcome::DeadLetter(failure) => {
            let now = OffsetDateTime::now_utc();
            let class = failure.class;
            let record = dead_letter_record(stage, raw, delivery, failure, now);
            let routing_key = format!("{stage}.{}", class.label());
            // The record's own trace context: the consumer span that gave up (a child
            // of the event's trace), or the event's context if there is no such span.
            let mut trace_headers = Headers::new();
            trace::inject_current(&mut trace_headers);
            if !trace_headers.contains_key(trace::TRACEPARENT) {
                for key in [trace::TRACEPARENT, trace::TRACESTATE] {
                    if let Some(value) = delivery.headers.get(key) {
                        trace_headers.insert(key.to_owned(), value.clone());
                    }
                }
            }
            let headers = headers::to_field_table(&trace_headers);
            let mut properties = BasicProperties::default()
                // Persistent, like everything else on the bus.
                .with_delivery_mode(2)
                .with_timestamp(unix(now))
                .with_content_type(handoff_events::PROTOBUF_CONTENT_TYPE.into())
                .with_type(DEAD_LETTER_MESSAGE_TYPE.into())
                .with_headers(headers);
            if let Some(id) = raw.properties.message_id() {
                properties = properties.with_message_id(id.clone());
            }
            let exchange = ctx.bus.topology().dead_letter_exchange();
            match ctx
                .bus
                .publish_raw(&exchange, &routing_key, &record.encode_to_vec(), properties)
                .await
            {
                Ok(()) => {
                    ack(ctx, raw);
                    debug!(class = class.label(), "Dead-lettered.");
                    "dead_letter"
                }
                Err(err) => {
                    warn!(error = %err, "Could not publish the dead letter; requeueing.");
                    requeue(ctx, raw).await;
                    "requeue"
                }
            }
        }
    }
}

/// Publishes a delayed copy to the stage's delay queue for `delay` (see [`pick_tier`])
/// and acks the original once the broker confirmed the copy; otherwise requeues the
/// original and returns `false`.
async fn send_delayed(
    ctx: &TaskCtx,
    raw: &lapin::message::Delivery,
    properties: BasicProperties,
    delay: Duration,
) -> bool {
    let Some(tier) = pick_tier(&ctx.bus.config().retry_delays, delay) else {
        // No delay tiers configured: immediate redelivery, bounded by the queue's
        // delivery limit.
        requeue(ctx, raw).await;
        return false;
    };
    let Some(stage) = ctx.stage.as_deref() else {
        requeue(ctx, raw).await;
        return false;
    };
    let delay_queue = ctx.bus.topology().delay_queue(stage, tier);
    match ctx
        .bus
        .publish_raw("", &delay_queue, &raw.data, properties)
        .await
    {
        Ok(()) => {
            ack(ctx, raw);
            true
        }
        Err(err) => {
            warn!(error = %err, delay_queue, "Could not send a message to its delay queue; requeueing.");
            requeue(ctx, raw).await;
            false
        }
    }
}

/// The dead-letter queue's settlement: ack, or requeue anything else (there is nowhere
/// else to send it).
async fn settle_dead_letter_queue(
    ctx: &TaskCtx,
    raw: &lapin::message::Delivery,
    outcome: Outcome,
) -> &'static str {
    if outcome == Outcome::Ack {
        ack(ctx, raw);
        return "ack";
    }
    debug!(?outcome, "Requeueing a dead letter.");
    requeue(ctx, raw).await;
    "requeue"
}

/// Acks through the subscription's coalescing acks (see [`crate::acks`]).
fn ack(ctx: &TaskCtx, raw: &lapin::message::Delivery) {
    ctx.acks.ack(raw.delivery_tag);
}

async fn requeue(ctx: &TaskCtx, raw: &lapin::message::Delivery) {
    // requeue = true: back to the queue (counting towards the delivery limit) rather
    // than dropped or dead-lettered without a record.
    let options = BasicNackOptions {
        multiple: false,
        requeue: true,
    };
    if let Err(err) = raw.acker.nack(options).await {
        debug!(error = %err, "Nack failed; the broker will redeliver.");
    }
    // Only now: until the nack is out, no multiple ack may cover this tag.
    ctx.acks.nacked(raw.delivery_tag);
}

fn unix(t: OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp()).unwrap_or_default()
}

fn timestamp(t: OffsetDateTime) -> Timestamp {
    Timestamp {
        seconds: t.unix_timestamp(),
        nanos: i32::try_from(t.nanosecond()).unwrap_or_default(),
    }
}

/// Properties of the retry copy: attempt raised, failure recorded, due after `delay`.
fn retry_copy(
    raw: &lapin::message::Delivery,
    delivery: &Delivery,
    error: &str,
    now: OffsetDateTime,
    delay: Duration,
) -> BasicProperties {
    let mut attempts = headers::parse_attempts(&delivery.headers);
    attempts.push(AttemptRecord::new(delivery.attempt, now, error));
    let set = vec![
        (headers::HEADER_ATTEMPT, (delivery.attempt + 1).to_string()),
        (
            headers::HEADER_FIRST_FAILED_AT,
            headers::format_time(delivery.first_failed_at.unwrap_or(now)),
        ),
        (
            headers::HEADER_ATTEMPTS,
            headers::encode_attempts(&attempts),
        ),
        (
            headers::HEADER_NOT_BEFORE,
            headers::format_time(headers::due_at(now, delay)),
        ),
    ];
    delayed_copy(raw, delivery, set)
}

/// Properties of a copy sent through a delay queue: the original ones with the origin
/// route kept (the hop goes through the default exchange) and `set` applied.
fn delayed_copy(
    raw: &lapin::message::Delivery,
    delivery: &Delivery,
    set: Vec<(&str, String)>,
) -> BasicProperties {
    let mut entries = raw
        .properties
        .headers()
        .as_ref()
        .map(|t| t.inner().clone())
        .unwrap_or_default();
    // The copy starts a fresh life in the broker's eyes; the publisher numbers it anew.
    entries.remove(headers::DELIVERY_COUNT);
    entries.remove(headers::PUBLISH_SEQ);
    let origin = [
        (headers::HEADER_ORIGIN_EXCHANGE, delivery.exchange.clone()),
        (
            headers::HEADER_ORIGIN_ROUTING_KEY,
            delivery.routing_key.clone(),
        ),
    ];
    for (key, value) in origin.into_iter().chain(set) {
        entries.insert(key.into(), AMQPValue::LongString(LongString::from(value)));
    }
    raw.properties
        .clone()
        .with_headers(FieldTable::from(entries))
}

/// The `handoff.v1.DeadLetter` record for a message given up on.
fn dead_letter_record(
    stage: &str,
    raw: &lapin::message::Delivery,
    delivery: &Delivery,
    failure: Failure,
    now: OffsetDateTime,
) -> v1::DeadLetter {
    let outcome = if failure.class == ErrorClass::RetriesExhausted {
        "transient"
    } else {
        "permanent"
    };
    let mut attempts: Vec<v1::Attempt> = headers::parse_attempts(&delivery.headers)
        .into_iter()
        .map(|a| v1::Attempt {
            number: a.n,
            at: headers::parse_time(&a.at).map(timestamp),
            error: a.error,
            outcome: "transient".into(),
        })
        .collect();
    attempts.push(v1::Attempt {
        number: delivery.attempt,
        at: Some(timestamp(now)),
        error: failure.message.clone(),
        outcome: outcome.into(),
    });
    let traceparent = delivery
        .headers
        .get(trace::TRACEPARENT)
        .cloned()
        .unwrap_or_default();
    let trace_id = trace::trace_id_from_traceparent(&traceparent)
        .or_else(trace::current_trace_id)
        .unwrap_or_default();
    v1::DeadLetter {
        event_id: failure.event_id,
        event_type: failure.event_type,
        publisher_id: failure.publisher_id,
        stage: stage.to_owned(),
        error_class: failure.class as i32,
        error_message: failure.message,
        error_code: failure.code,
        field_errors: failure
            .field_errors
            .into_iter()
            .map(|(path, message)| v1::FieldError { path, message })
            .collect(),
        destination: failure.destination,
        attempts,
        first_failed_at: Some(timestamp(delivery.first_failed_at.unwrap_or(now))),
        last_failed_at: Some(timestamp(now)),
        origin_exchange: delivery.exchange.clone(),
        origin_routing_key: delivery.routing_key.clone(),
        origin_queue: delivery.queue.clone(),
        original_body: raw.data.clone(),
        original_headers: delivery
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        original_content_type: delivery.content_type.clone().unwrap_or_default(),
        original_message_id: delivery.message_id.clone().unwrap_or_default(),
        traceparent,
        tracestate: delivery
            .headers
            .get(trace::TRACESTATE)
            .cloned()
            .unwrap_or_default(),
        trace_id,
        dead_lettered_at: Some(timestamp(now)),
    }
}

/// Reads a message from the dead-letter queue as a `handoff.v1.DeadLetter` record.
///
/// The dead-letter queue holds two kinds of messages: records published by [`run`]
/// (message type [`DEAD_LETTER_MESSAGE_TYPE`]), which are decoded, and messages the
/// broker dead-lettered by itself (delivery limit exceeded, queue overflow), which
/// carry only `x-death`; those are wrapped in a record of class `Broker` with the
/// broker's reason as the error code. `None` if a record does not decode.
pub fn read_dead_letter(topology: &crate::Topology, delivery: &Delivery) -> Option<v1::DeadLetter> {
    if delivery.message_type.as_deref() == Some(DEAD_LETTER_MESSAGE_TYPE) {
        return v1::DeadLetter::decode(delivery.body.as_slice()).ok();
    }
    let header = |key: &str| delivery.headers.get(key).cloned().unwrap_or_default();
    let reason = header("x-first-death-reason");
    let origin_queue = header("x-first-death-queue");
    let prefix = format!("{}.", topology.namespace());
    let stage = origin_queue
        .strip_prefix(&prefix)
        .unwrap_or(&origin_queue)
        .to_owned();
    let died_at = delivery
        .headers
        .get("x-death")
        .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        .and_then(|v| v.get(0)?.get("time")?.as_i64())
        .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok());
    let attempts = headers::parse_attempts(&delivery.headers)
        .into_iter()
        .map(|a| v1::Attempt {
            number: a.n,
            at: headers::parse_time(&a.at).map(timestamp),
            error: a.error,
            outcome: "transient".into(),
        })
        .collect();
    let traceparent = header(trace::TRACEPARENT);
    Some(v1::DeadLetter {
        event_id: delivery.message_id.clone().unwrap_or_default(),
        stage,
        error_class: ErrorClass::Broker as i32,
        error_message: format!("dead-lettered by the broker: {reason}"),
        error_code: reason,
        attempts,
        first_failed_at: delivery.first_failed_at.or(died_at).map(timestamp),
        last_failed_at: died_at.map(timestamp),
        origin_exchange: delivery
            .headers
            .get(headers::HEADER_ORIGIN_EXCHANGE)
            .cloned()
            .unwrap_or_else(|| header("x-first-death-exchange")),
        origin_routing_key: delivery.routing_key.clone(),
        origin_queue,
        original_body: delivery.body.clone(),
        original_headers: delivery
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        original_content_type: delivery.content_type.clone().unwrap_or_default(),
        original_message_id: delivery.message_id.clone().unwrap_or_default(),
        trace_id: trace::trace_id_from_traceparent(&traceparent).unwrap_or_default(),
        traceparent,
        tracestate: header(trace::TRACESTATE),
        dead_lettered_at: died_at.map(timestamp),
        ..v1::DeadLetter::default()
    })
}
