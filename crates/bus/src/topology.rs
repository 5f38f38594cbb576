//! Names and declaration of every exchange and queue of one namespace.
//!
//! ```text
//! {ns}.events        topic exchange, durable: every publish lands here
//! {ns}.{stage}       quorum queue per stage, bound to the events exchange by its keys
//! {ns}.{stage}.delay.{tier}
//!                    quorum queue per stage and retry tier: message TTL = tier, then
//!                    dead-lettered (at-least-once) through the default exchange back
//!                    to {ns}.{stage}; a long delay passes through several of them
//! {ns}.dead-letter   topic exchange, durable: DeadLetter records and broker dead letters
//! {ns}.dead-letters  quorum queue bound "#" to the dead-letter exchange
//! ```
//!
//! [`declare`] is idempotent: the supervisor in `bus.rs` runs it on every (re)connect.
//! [`teardown`] deletes it all again (tests, tenant removal).

use std::time::Duration;

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ExchangeKind};

use crate::{BusConfig, BusError};

/// Stage name of the normalizer (`raw.*` → `canonical.*`).
pub const NORMALIZER: &str = "normalizer";
/// Stage name of the CRM writer (`canonical.*` → the CRM).
pub const CRM_WRITER: &str = "crm-writer";
/// Stage name of the email writer (`canonical.*` → the email platform).
pub const EMAIL_WRITER: &str = "email-writer";
/// Routing key of the crm-writer's report on a contact it wrote (`handoff.v1.Synced`).
pub const CRM_CONTACT_SYNCED: &str = "crm.contact.synced";
/// Routing key of the email-writer's report on a member it wrote (`handoff.v1.Synced`): the
/// crm-writer writes the subscriber id back onto the CRM contact.
pub const EMAIL_SUBSCRIBER_SYNCED: &str = "email.subscriber.synced";

/// Names of every exchange and queue for one namespace, and the stages that consume.
///
/// A namespace isolates one deployment (or one test) from another on the same
/// broker; a stage is one consuming service (`normalizer`, `crm-writer`, ...) with
/// its own queue, bound to the events exchange by its binding keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    namespace: String,
    stages: Vec<Stage>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stage {
    name: String,
    binding_keys: Vec<String>,
}

impl Topology {
    /// A topology with the namespace's exchanges and dead-letter queue, and no stages.
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            stages: Vec::new(),
        }
    }

    /// The product's stages: the `normalizer` consumes every raw event (`raw.#`); the
    /// `crm-writer` and the `email-writer` each consume every canonical event
    /// (`canonical.#`); each also takes the other's reports: the `crm-writer`
    /// `email.subscriber.synced` (the subscriber id to write back onto the CRM
    /// contact), the `email-writer` `crm.contact.synced` (the CRM ids of the
    /// contacts; v1 acks them unused, but every publish is mandatory, so each
    /// report needs a queue). Every service declares all the stages, so whatever
    /// one stage publishes is routable and waits for the next even before it
    /// has started.
    pub fn v1(namespace: impl Into<String>) -> Self {
        Self::new(namespace)
            .with_stage(NORMALIZER, &["raw.#"])
            .with_stage(CRM_WRITER, &["canonical.#", EMAIL_SUBSCRIBER_SYNCED])
            .with_stage(EMAIL_WRITER, &["canonical.#", CRM_CONTACT_SYNCED])
    }

    /// Adds a stage (or replaces its binding keys if it is already there).
    pub fn with_stage(mut self, stage: &str, binding_keys: &[&str]) -> Self {
        let binding_keys = binding_keys.iter().map(|k| (*k).to_owned()).collect();
        match self.stages.iter_mut().find(|s| s.name == stage) {
            Some(existing) => existing.binding_keys = binding_keys,
            None => self.stages.push(Stage {
                name: stage.to_owned(),
                binding_keys,
            }),
        }
        self
    }

    /// The namespace every name starts with.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The stages, in the order they were added.
    pub fn stages(&self) -> impl Iterator<Item = &str> {
        self.stages.iter().map(|s| s.name.as_str())
    }

    /// Whether `stage` is part of this topology.
    pub fn has_stage(&self, stage: &str) -> bool {
        self.stages.iter().any(|s| s.name == stage)
    }

    /// The binding keys of `stage`, empty if it is not part of the topology.
    pub fn binding_keys(&self, stage: &str) -> &[String] {
        self.stages
            .iter()
            .find(|s| s.name == stage)
            .map(|s| s.binding_keys.as_slice())
            .unwrap_or_default()
    }

    /// `{ns}.events`: topic exchange, durable; every publish goes here.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.namespace)
    }

    /// `{ns}.dead-letter`: topic exchange, durable.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dead-letter", self.namespace)
    }

    /// `{ns}.dead-letters`: quorum queue bound `#` to the dead-letter exchange.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead-letters", self.namespace)
    }

    /// `{ns}.{stage}`: the stage's quorum queue.
    pub fn stage_queue(&self, stage: &str) -> String {
        format!("{}.{stage}", self.namespace)
    }

    /// `{ns}.{stage}.delay.{tier}`, e.g. `prod.normalizer.delay.30s`.
    pub fn delay_queue(&self, stage: &str, delay: Duration) -> String {
        format!("{}.{stage}.delay.{}", self.namespace, tier_label(delay))
    }
}

/// A short, stable label for a delay tier: `500ms`, `1s`, `30s`, `2m`, `1h`.
pub(crate) fn tier_label(delay: Duration) -> String {
    let ms = delay.as_millis();
    if ms == 0 || !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms / 1000)
    }
}

/// The largest tier not longer than `delay`, or the smallest tier when `delay` is
/// shorter than all of them (never early); `None` without tiers.
///
/// Rounding up to a tier would turn 1.3 s into 5 s and erase a backoff's jitter;
/// instead a message waits the largest tier that fits and the consumer sends it on
/// through further tiers until less than the smallest tier is left of its
/// `x-handoff-not-before`, and waits that out in-process (13 s with tiers 1, 5, 30 s:
/// 5 + 5 + 1 + 1 + 1, then under a second in the consumer).
pub(crate) fn pick_tier(tiers: &[Duration], delay: Duration) -> Option<Duration> {
    tiers
        .iter()
        .copied()
        .filter(|t| *t <= delay)
        .max()
        .or_else(|| tiers.iter().copied().min())
}

pub(crate) fn short(s: &str) -> Result<ShortString, BusError> {
    ShortString::try_new(s)
        .map_err(|_| BusError::Amqp(format!("name longer than 255 bytes: {s:.40}...")))
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn int(n: u64) -> AMQPValue {
    AMQPValue::LongLongInt(i64::try_from(n).unwrap_or(i64::MAX))
}

/// Arguments shared by every quorum queue that dead-letters.
fn quorum_args(dead_letter_exchange: &str) -> FieldTable {
    let mut args = FieldTable::default();
    // Replicated, durable, and the only queue type with at-least-once dead-lettering.
    args.insert("x-queue-type".into(), long("quorum"));
    args.insert("x-dead-letter-exchange".into(), long(dead_letter_exchange));
    // The broker keeps a dead-lettered message until the target queue confirms it.
    args.insert("x-dead-letter-strategy".into(), long("at-least-once"));
    // At-least-once dead-lettering requires it; and a full queue should refuse
    // (nack) publishes rather than silently drop its oldest messages.
    args.insert("x-overflow".into(), long("reject-publish"));
    args
}

/// Declares the whole topology; safe to run again on a live broker.
pub(crate) async fn declare(
    conn: &Connection,
    topology: &Topology,
    cfg: &BusConfig,
) -> Result<(), BusError> {
    let channel = conn.create_channel().await?;
    let result = declare_on(&channel, topology, cfg).await;
    let _ = channel.close(200, "topology declared".into()).await;
    result
}

async fn declare_on(
    channel: &Channel,
    topology: &Topology,
    cfg: &BusConfig,
) -> Result<(), BusError> {
    // Durable: the exchanges must survive a broker restart along with the queues.
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    // Durable queues (quorum queues must be); not exclusive or auto-delete, since they
    // outlive every consumer.
    let durable_queue = QueueDeclareOptions::durable();
    let events = topology.events_exchange();
    let dlx = topology.dead_letter_exchange();
    for exchange in [&events, &dlx] {
        channel
            .exchange_declare(
                short(exchange)?,
                ExchangeKind::Topic,
                durable_exchange,
                FieldTable::default(),
            )
            .await?;
    }

    // The dead-letter queue itself has no DLX and no delivery limit: it is the end of
    // the line, and a quorum queue with a delivery limit but no DLX drops messages.
    let dlq = topology.dead_letter_queue();
    let mut dlq_args = FieldTable::default();
    dlq_args.insert("x-queue-type".into(), long("quorum"));
    dlq_args.insert("x-overflow".into(), long("reject-publish"));
    channel
        .queue_declare(short(&dlq)?, durable_queue, dlq_args)
        .await?;
    channel
        .queue_bind(
            short(&dlq)?,
            short(&dlx)?,
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    for stage in &topology.stages {
        let queue = topology.stage_queue(&stage.name);
        let mut args = quorum_args(&dlx);
        // Poison-message backstop: after this many deliveries the broker
        // dead-letters the message (x-death says why) instead of redelivering it.
        args.insert(
            "x-delivery-limit".into(),
            int(u64::from(cfg.delivery_limit)),
        );
        channel
            .queue_declare(short(&queue)?, durable_queue, args)
            .await?;
        for key in &stage.binding_keys {
            channel
                .queue_bind(
                    short(&queue)?,
                    short(&events)?,
                    short(key)?,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        for tier in &cfg.retry_delays {
            let delay_queue = topology.delay_queue(&stage.name, *tier);
            // Dead-letter through the default exchange straight back to the stage
            // queue once the tier's TTL expires; nobody consumes a delay queue.
            let mut args = quorum_args("");
            args.insert("x-dead-letter-routing-key".into(), long(&queue));
            args.insert(
                "x-message-ttl".into(),
                int(u64::try_from(tier.as_millis()).unwrap_or(u64::MAX)),
            );
            channel
                .queue_declare(short(&delay_queue)?, durable_queue, args)
                .await?;
        }
    }
    Ok(())
}

/// Deletes every queue and exchange of the topology, continuing past failures and
/// reporting the first one.
pub(crate) async fn teardown(
    conn: &Connection,
    topology: &Topology,
    cfg: &BusConfig,
) -> Result<(), BusError> {
    let mut queues = Vec::new();
    for stage in &topology.stages {
        queues.push(topology.stage_queue(&stage.name));
        for tier in &cfg.retry_delays {
            queues.push(topology.delay_queue(&stage.name, *tier));
        }
    }
    queues.push(topology.dead_letter_queue());
    let exchanges = [topology.events_exchange(), topology.dead_letter_exchange()];

    let mut first_error = None;
    let mut channel = conn.create_channel().await?;
    for queue in &queues {
        // Unconditional delete: teardown means the messages go too.
        let result = channel
            .queue_delete(short(queue)?, QueueDeleteOptions::default())
            .await;
        if let Err(err) = result {
            first_error.get_or_insert(BusError::from(err));
            // A failed operation closes the channel; carry on with a fresh one.
            channel = conn.create_channel().await?;
        }
    }
    for exchange in &exchanges {
        // if_unused = false: the bindings go with the queues deleted above anyway.
        let result = channel
            .exchange_delete(short(exchange)?, ExchangeDeleteOptions::default())
            .await;
        if let Err(err) = result {
            first_error.get_or_insert(BusError::from(err));
            channel = conn.create_channel().await?;
        }
    }
    let _ = channel.close(200, "topology deleted".into()).await;
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_namespace() {
        let t = Topology::v1("prod");
        assert_eq!(t.namespace(), "prod");
        assert_eq!(t.events_exchange(), "prod.events");
        assert_eq!(t.dead_letter_exchange(), "prod.dead-letter");
        assert_eq!(t.dead_letter_queue(), "prod.dead-letters");
        assert_eq!(t.stage_queue("normalizer"), "prod.normalizer");
        assert_eq!(
            t.delay_queue("normalizer", Duration::from_secs(30)),
            "prod.normalizer.delay.30s"
        );
        assert_eq!(
            t.stages().collect::<Vec<_>>(),
            vec!["normalizer", "crm-writer", "email-writer"]
        );
        assert_eq!(t.binding_keys("normalizer"), ["raw.#".to_owned()]);
        assert_eq!(
            t.binding_keys("crm-writer"),
            [
                "canonical.#".to_owned(),
                "email.subscriber.synced".to_owned()
            ]
        );
        assert_eq!(
            t.binding_keys("email-writer"),
            ["canonical.#".to_owned(), "crm.contact.synced".to_owned()]
        );
        assert!(Topology::new("x").stages().next().is_none());
    }

    #[test]
    fn with_stage_replaces_binding_keys() {
        let t = Topology::new("ns")
            .with_stage("normalizer", &["raw.#"])
            .with_stage("crm-writer", &["canonical.#"])
            .with_stage("normalizer", &["raw.lead.*"]);
        assert_eq!(
            t.stages().collect::<Vec<_>>(),
            vec!["normalizer", "crm-writer"]
        );
        assert_eq!(t.binding_keys("normalizer"), ["raw.lead.*".to_owned()]);
        assert!(t.has_stage("crm-writer"));
        assert!(!t.has_stage("email-writer"));
    }

    #[test]
    fn tier_labels_are_short() {
        assert_eq!(tier_label(Duration::from_millis(250)), "250ms");
        assert_eq!(tier_label(Duration::from_secs(1)), "1s");
        assert_eq!(tier_label(Duration::from_secs(90)), "90s");
        assert_eq!(tier_label(Duration::from_secs(120)), "2m");
        assert_eq!(tier_label(Duration::from_secs(600)), "10m");
        assert_eq!(tier_label(Duration::from_secs(7200)), "2h");
    }

    #[test]
    fn retries_pick_the_largest_tier_that_fits() {
        let tiers = BusConfig::default().retry_delays;
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        assert_eq!(pick_tier(&tiers, Duration::ZERO), Some(ms(200)));
        assert_eq!(pick_tier(&tiers, ms(150)), Some(ms(200)), "never early");
        assert_eq!(pick_tier(&tiers, ms(200)), Some(ms(200)));
        assert_eq!(pick_tier(&tiers, ms(999)), Some(ms(200)));
        assert_eq!(pick_tier(&tiers, s(1)), Some(s(1)));
        assert_eq!(pick_tier(&tiers, ms(1300)), Some(s(1)));
        assert_eq!(pick_tier(&tiers, s(45)), Some(s(30)));
        assert_eq!(pick_tier(&tiers, s(3600)), Some(s(600)));
        assert_eq!(pick_tier(&[], s(1)), None);
    }

    #[test]
    fn a_long_delay_hops_through_tiers_and_arrives_within_the_smallest() {
        let tiers = [1, 5, 30].map(Duration::from_secs);
        let hops = |delay: Duration| {
            let mut left = delay;
            let mut hops = Vec::new();
            while !left.is_zero() {
                let tier = pick_tier(&tiers, left).expect("tiers");
                hops.push(tier.as_secs());
                left = left.saturating_sub(tier);
            }
            hops
        };
        assert_eq!(hops(Duration::from_secs(13)), vec![5, 5, 1, 1, 1]);
        assert_eq!(hops(Duration::from_millis(1300)), vec![1, 1]);
        assert_eq!(hops(Duration::from_secs(75)), vec![30, 30, 5, 5, 5]);
    }
}
