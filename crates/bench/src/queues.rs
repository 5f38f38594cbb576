//! Reading queue depths during a drain, and the queue check of the
//! normalizer scenarios: each canonical message lands in both writers' queues,
//! the input queue ends empty and nothing is dead-lettered.
//!
//! [`Counter`] keeps one channel open for passive declares, so polling a
//! queue every few milliseconds costs the broker one small round trip, not a
//! channel each time (as `Bus::message_count` does).

use anyhow::Context as _;
use handoff_bus::{CRM_WRITER, EMAIL_WRITER, NORMALIZER, Topology};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

use crate::report::thousands;

/// Polls queue depths on a channel of its own.
pub struct Counter {
    channel: Channel,
}

impl Counter {
    /// Opens the polling channel on `connection`.
    pub async fn open(connection: &Connection) -> anyhow::Result<Counter> {
        let channel = connection
            .create_channel()
            .await
            .context("opening a channel to count queues")?;
        Ok(Counter { channel })
    }

    /// Messages ready in `queue` (delivered but unacked ones are not counted).
    pub async fn count(&self, queue: &str) -> anyhow::Result<u32> {
        let declared = self
            .channel
            // Passive: only look; a missing queue is an error, not created.
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::default().passive(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("counting the messages in {queue}"))?;
        Ok(declared.message_count())
    }

    /// The depths a normalizer scenario is judged by.
    pub async fn stages(&self, topology: &Topology) -> anyhow::Result<StageCounts> {
        Ok(StageCounts {
            input: self.count(&topology.stage_queue(NORMALIZER)).await?,
            crm: self.count(&topology.stage_queue(CRM_WRITER)).await?,
            email: self.count(&topology.stage_queue(EMAIL_WRITER)).await?,
            dead: self.count(&topology.dead_letter_queue()).await?,
        })
    }
}

/// Depths of the queues around the normalizer stage.
#[derive(Debug, Clone, Copy)]
pub struct StageCounts {
    /// `{ns}.normalizer`: the raw input.
    pub input: u32,
    /// `{ns}.crm-writer` and `{ns}.email-writer`: one copy of each canonical message each.
    pub crm: u32,
    pub email: u32,
    /// `{ns}.dead-letters`.
    pub dead: u32,
}

impl StageCounts {
    /// One line for the report and, if the counts are not what `n` relayed messages leave
    /// behind, the problem that makes the run invalid.
    pub fn check(&self, scenario: &str, n: u64) -> (String, Option<String>) {
        let ok = u64::from(self.crm) == n
            && u64::from(self.email) == n
            && self.input == 0
            && self.dead == 0;
        let line = format!(
            "crm-writer {} and email-writer {} of {} expected, input queue {}, dead letters {}: {}",
            thousands(u64::from(self.crm)),
            thousands(u64::from(self.email)),
            thousands(n),
            thousands(u64::from(self.input)),
            thousands(u64::from(self.dead)),
            if ok { "✓" } else { "MISMATCH ✗" }
        );
        let problem = (!ok).then(|| format!("{scenario}: queue check failed: {line}"));
        (line, problem)
    }
}
