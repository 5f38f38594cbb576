//! The only crate that knows AMQP.
//!
//! Every other Handoff crate talks to RabbitMQ through this one:
//!
//! - [`BusConfig`]: connection, publisher and consumer settings (serde, with defaults
//!   that work against a local broker).
//! - [`Topology`] (`topology.rs`): every exchange and queue name for a namespace,
//!   declared idempotently by the supervisor each time it connects.
//! - [`Bus`] (`bus.rs`): a supervised connection that reconnects with backoff and full
//!   jitter; readiness via [`Bus::is_ready`]; confirmed, persistent, mandatory publishes
//!   via [`Bus::publish`] (the confirm bookkeeping lives in `publisher.rs`).
//! - [`consumer::run`]: the manual-ack consumer loop; a [`Handler`] returns an
//!   [`Outcome`] per message and the loop acks, schedules a delayed retry, defers the
//!   message without counting an attempt, or publishes a `handoff.v1.DeadLetter`
//!   record, always confirming its own output before it acks.
//! - [`trace`]: W3C trace context carried in AMQP headers.
//! - `headers.rs`: conversion between AMQP field tables and string [`Headers`], and the
//!   names of the headers the bus itself maintains.
//!
//! The queue topology is described in ARCHITECTURE.md and on [`Topology`].

// Every public item is documented (the workspace allows missing docs; this crate is
// a contract other crates are written against).
#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::time::Duration;

mod acks;
mod bus;
pub mod consumer;
mod headers;
mod publisher;
mod topology;
pub mod trace;

pub use bus::Bus;
pub use consumer::{Delivery, Failure, Handler, Outcome, record_identity};
pub use headers::{
    HEADER_ATTEMPT, HEADER_ATTEMPTS, HEADER_FIRST_FAILED_AT, HEADER_NOT_BEFORE,
    HEADER_ORIGIN_EXCHANGE, HEADER_ORIGIN_ROUTING_KEY,
};
pub use topology::{
    CRM_CONTACT_SYNCED, CRM_WRITER, EMAIL_SUBSCRIBER_SYNCED, EMAIL_WRITER, NORMALIZER, Topology,
};

/// AMQP headers as Handoff uses them: string keys, string values.
///
/// Values received from the broker in other AMQP types (integers, booleans,
/// timestamps, tables such as `x-death`) are rendered as strings; tables and arrays
/// as JSON.
pub type Headers = BTreeMap<String, String>;

/// Connection, topology and consumer settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// AMQP URL; the default is the local broker with the guest account. A
    /// `heartbeat` query parameter is honoured; without one the bus asks for 10 s so
    /// a dead peer is noticed within about 20 s instead of RabbitMQ's default 2 min.
    pub url: String,
    /// Deliveries in flight per consumer (basic.qos prefetch); also the number of
    /// handlers that run concurrently. RabbitMQ finds 100–300 usually best.
    pub prefetch: u16,
    /// Deliveries of one message before the broker dead-letters it
    /// (`x-delivery-limit` on every stage queue); it is the backstop against poison
    /// messages that crash or hang a handler.
    pub delivery_limit: u32,
    /// How long a publish may wait for the broker's confirm.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// First pause between reconnect attempts.
    #[serde(with = "humantime_serde")]
    pub reconnect_min_delay: Duration,
    /// Largest pause between reconnect attempts.
    #[serde(with = "humantime_serde")]
    pub reconnect_max_delay: Duration,
    /// Delay tiers for `Outcome::RetryLater` and `Outcome::Defer`, ascending; one
    /// delay queue per stage and tier. A retry goes to the largest tier not longer
    /// than the delay, hopping until less than the smallest tier is left, which the
    /// consumer then waits out in-process: a retry is handled when asked, never early
    /// (a delay shorter than the smallest tier waits that tier). The large tiers keep
    /// long waits to a few hops; the smallest bounds how long a message is held.
    #[serde(with = "humantime_list")]
    pub retry_delays: Vec<Duration>,
    /// Attempts (first try included) before a message that keeps asking for
    /// `RetryLater` is dead-lettered as `RetriesExhausted`; `Defer` is not an attempt.
    pub max_attempts: u32,
    /// On shutdown, how long [`consumer::run`] lets in-flight handlers finish (and
    /// their outcomes be confirmed and acked) before it gives up on them; messages of
    /// handlers cut off are redelivered by the broker.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Confirm-mode channels publishes are spread over. Publishes on one channel are
    /// pipelined (many in flight at once); more channels spread the broker-side work.
    pub publish_channels: u16,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
            prefetch: 200,
            delivery_limit: 20,
            publish_timeout: Duration::from_secs(10),
            reconnect_min_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_secs(5),
            retry_delays: vec![
                Duration::from_millis(200),
                Duration::from_secs(1),
                Duration::from_secs(5),
                Duration::from_secs(30),
                Duration::from_secs(120),
                Duration::from_secs(600),
            ],
            max_attempts: 30,
            shutdown_grace: Duration::from_secs(15),
            publish_channels: 2,
        }
    }
}

impl BusConfig {
    /// Checks the settings for values the bus cannot work with; services call this
    /// when they load their configuration so a bad value fails at start-up.
    pub fn validate(&self) -> Result<(), String> {
        if self.url.parse::<lapin::uri::AMQPUri>().is_err() {
            return Err(format!("bus.url {:?} is not an AMQP URL", self.url));
        }
        if self.prefetch == 0 {
            return Err("bus.prefetch must be at least 1".into());
        }
        if self.delivery_limit == 0 {
            return Err("bus.delivery_limit must be at least 1".into());
        }
        if self.publish_timeout.is_zero() {
            return Err("bus.publish_timeout must be positive".into());
        }
        if self.reconnect_min_delay.is_zero() || self.reconnect_min_delay > self.reconnect_max_delay
        {
            return Err(
                "bus.reconnect_min_delay must be positive and at most bus.reconnect_max_delay"
                    .into(),
            );
        }
        if self.retry_delays.is_empty() {
            return Err("bus.retry_delays needs at least one delay tier".into());
        }
        if self.retry_delays.iter().any(|d| d.as_millis() == 0) {
            return Err("bus.retry_delays must all be at least 1ms".into());
        }
        if self.retry_delays.windows(2).any(|w| w[0] >= w[1]) {
            return Err("bus.retry_delays must be strictly ascending".into());
        }
        if self.max_attempts == 0 {
            return Err("bus.max_attempts must be at least 1".into());
        }
        if self.publish_channels == 0 {
            return Err("bus.publish_channels must be at least 1".into());
        }
        Ok(())
    }
}

/// `humantime_serde` for a list of durations (`["1s", "5m"]`).
mod humantime_list {
    use std::time::Duration;

    use humantime_serde::Serde;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(crate) fn serialize<S: Serializer>(value: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        value
            .iter()
            .map(|d| Serde::from(*d))
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let list = Vec::<Serde<Duration>>::deserialize(d)?;
        Ok(list.into_iter().map(Serde::into_inner).collect())
    }
}

/// A message to publish on the events exchange.
#[derive(Debug, Clone, Default)]
pub struct OutgoingMessage {
    /// Topic routing key, e.g. `raw.lead.created`.
    pub routing_key: String,
    /// The payload, usually a protobuf `handoff.v1.Envelope`.
    pub body: Vec<u8>,
    /// AMQP `content_type` property.
    pub content_type: Option<String>,
    /// AMQP `message_id` property; Handoff uses the event id.
    pub message_id: Option<String>,
    /// AMQP `type` property: what kind of message the body is.
    pub message_type: Option<String>,
    /// Application headers; the bus adds `traceparent`/`tracestate` unless present.
    pub headers: Headers,
}

/// Errors of the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// No live connection (or the topology is not declared yet); retry later.
    #[error("not connected to the broker")]
    Unavailable,
    /// The broker refused the message, e.g. a full queue with `reject-publish`.
    #[error("the broker refused the message (nack)")]
    Nacked,
    /// The message reached no queue and the broker returned it (mandatory flag).
    #[error("no queue is bound for routing key {0:?}")]
    Unroutable(String),
    /// No confirm arrived in time; the message may or may not have been stored.
    #[error("the broker did not confirm within {0:?}")]
    ConfirmTimeout(Duration),
    /// The message was sent, but the channel or connection failed before its confirm came:
    /// as with a timeout, it may or may not have been stored.
    #[error("the broker connection failed before the confirm: {0}")]
    Unconfirmed(String),
    /// Any other AMQP or protocol failure.
    #[error("amqp: {0}")]
    Amqp(String),
}

impl BusError {
    /// A short, bounded metric label for the failure: `unavailable`, `nacked`, `unroutable`,
    /// `timeout`, `unconfirmed` or `error`.
    pub fn label(&self) -> &'static str {
        match self {
            BusError::Unavailable => "unavailable",
            BusError::Nacked => "nacked",
            BusError::Unroutable(_) => "unroutable",
            BusError::ConfirmTimeout(_) => "timeout",
            BusError::Unconfirmed(_) => "unconfirmed",
            BusError::Amqp(_) => "error",
        }
    }
}

impl From<lapin::Error> for BusError {
    fn from(err: lapin::Error) -> Self {
        BusError::Amqp(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_has_its_own_metric_label() {
        let labels = [
            BusError::Unavailable,
            BusError::Nacked,
            BusError::Unroutable("raw.x".into()),
            BusError::ConfirmTimeout(Duration::from_secs(1)),
            BusError::Unconfirmed("gone".into()),
            BusError::Amqp("oops".into()),
        ]
        .map(|err| err.label());
        assert_eq!(
            labels,
            [
                "unavailable",
                "nacked",
                "unroutable",
                "timeout",
                "unconfirmed",
                "error"
            ]
        );
    }

    #[test]
    fn defaults_are_valid_and_match_the_contract() {
        let cfg = BusConfig::default();
        assert_eq!(cfg.validate(), Ok(()));
        assert_eq!(cfg.prefetch, 200);
        assert_eq!(cfg.delivery_limit, 20);
        assert_eq!(cfg.max_attempts, 30);
        assert_eq!(
            cfg.retry_delays,
            [200, 1_000, 5_000, 30_000, 120_000, 600_000].map(Duration::from_millis)
        );
    }

    #[test]
    fn config_reads_humantime_and_rejects_unknown_fields() {
        let cfg: BusConfig = serde_json::from_str(
            r#"{"publish_timeout": "3s", "retry_delays": ["1s", "1m"], "prefetch": 50}"#,
        )
        .expect("valid config");
        assert_eq!(cfg.publish_timeout, Duration::from_secs(3));
        assert_eq!(
            cfg.retry_delays,
            vec![Duration::from_secs(1), Duration::from_secs(60)]
        );
        assert_eq!(cfg.prefetch, 50);
        assert_eq!(cfg.delivery_limit, 20);
        assert!(serde_json::from_str::<BusConfig>(r#"{"prefech": 5}"#).is_err());
    }

    #[test]
    fn validation_catches_unusable_values() {
        let bad = |f: fn(&mut BusConfig)| {
            let mut cfg = BusConfig::default();
            f(&mut cfg);
            cfg.validate().is_err()
        };
        assert!(bad(|c| c.url = "http://nope".into()));
        assert!(bad(|c| c.prefetch = 0));
        assert!(bad(|c| c.retry_delays.clear()));
        assert!(bad(
            |c| c.retry_delays = vec![Duration::from_secs(5), Duration::from_secs(1)]
        ));
        assert!(bad(|c| c.reconnect_min_delay = Duration::from_secs(10)));
        assert!(bad(|c| c.max_attempts = 0));
        assert!(bad(|c| c.publish_channels = 0));
    }
}
