//! Parking: every message on the dead-letter queue becomes a parked dead letter in the
//! store, then is acked. Nothing is acked before Redis has it (and, with AOF
//! `appendfsync always`, before it is on disk); while Redis is away the parker waits
//! and tries again, holding the message, and requeues it only when shutting down.

use std::time::Duration;

use handoff_bus::consumer::{DEAD_LETTER_MESSAGE_TYPE, read_dead_letter};
use handoff_bus::{Delivery, Handler, Outcome, Topology};
use handoff_events::v1::{self, ErrorClass};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::record::Summary;
use crate::store::DeadLetterStore;

/// Longest wait between two tries while Redis is away.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct Parker {
    pub store: DeadLetterStore,
    pub topology: Topology,
    pub shutdown: CancellationToken,
}

impl Handler for Parker {
    async fn handle(&self, delivery: &Delivery) -> Outcome {
        let record = read_dead_letter(&self.topology, delivery)
            .unwrap_or_else(|| unreadable_record(delivery));
        let summary = Summary::of(&record, &message_key(delivery));
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.store.park(&summary, &record).await {
                Ok(new) => {
                    if new {
                        debug!(
                            dead_letter = %summary.id,
                            event_id = %summary.event_id,
                            stage = %summary.stage,
                            error_class = %summary.error_class,
                            fingerprint = %summary.fingerprint,
                            "Parked a dead letter."
                        );
                        metrics::counter!(
                            "handoff_dlq_parked_total",
                            "stage" => summary.stage.clone(),
                            "error_class" => summary.error_class.clone()
                        )
                        .increment(1);
                    } else {
                        debug!(dead_letter = %summary.id, "Already parked (a redelivery).");
                    }
                    return Outcome::Ack;
                }
                Err(err) => {
                    warn!(dead_letter = %summary.id, error = %err, ?backoff, "Could not park a dead letter; holding it and trying again.");
                    metrics::counter!("handoff_dlq_park_failures_total").increment(1);
                    tokio::select! {
                        () = self.shutdown.cancelled() => {
                            // Requeued by the consumer: parked by the next handler to run.
                            return Outcome::RetryLater { delay: Duration::ZERO, error: err.to_string() };
                        }
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// What identifies one dead-lettering of one message: its bytes, plus the broker's
/// `x-death` (the same message dead-lettered twice by the broker differs only there).
fn message_key(delivery: &Delivery) -> Vec<u8> {
    let mut key = delivery.body.clone();
    key.push(0);
    key.extend_from_slice(delivery.message_type.as_deref().unwrap_or("").as_bytes());
    key.push(0);
    if delivery.message_type.as_deref() != Some(DEAD_LETTER_MESSAGE_TYPE) {
        key.extend_from_slice(
            delivery
                .headers
                .get("x-death")
                .map(String::as_str)
                .unwrap_or("")
                .as_bytes(),
        );
    }
    key
}

/// A message typed as a `DeadLetter` record that does not decode is still parked, as
/// itself, so nothing on the dead-letter queue is ever dropped.
fn unreadable_record(delivery: &Delivery) -> v1::DeadLetter {
    v1::DeadLetter {
        stage: "dead-letters".into(),
        error_class: ErrorClass::Undecodable as i32,
        error_message: "a message on the dead-letter queue is not a readable DeadLetter record"
            .into(),
        // No origin: replaying it as-is would only send it here again.
        original_body: delivery.body.clone(),
        original_headers: delivery
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        original_content_type: delivery.content_type.clone().unwrap_or_default(),
        original_message_id: delivery.message_id.clone().unwrap_or_default(),
        ..v1::DeadLetter::default()
    }
}
