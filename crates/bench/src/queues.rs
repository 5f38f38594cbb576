//! Reading queue depths during a drain, and the queue check of the
//! normalizer scenarios: each canonical message lands in both writers' queues,
//! the input queue ends empty and nothing is dead-lettered.
//!
//! [`Counter`] keeps one channel open for passive declares, so a poll costs
//! the broker one small round trip, not a channel each time (as
//! `Bus::message_count` does). Small is not free: a passive declare of a quorum
//! queue asks its Raft leader for the count, about 0.2 ms of RabbitMQ's CPU
//! here, so polling every 5 ms through a 3 s drain took about 5% of the
//! broker's work in the window, on the service's side of the comparison only
//! (the relay counts its own acks). [`PollPace`] therefore looks seldom while
//! the end is far and often only as it nears.

use std::time::{Duration, Instant};

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

/// When to look next at a queue that a service fills at a steady rate during a measured drain:
/// every [`PollPace::COARSE`] while the end is far, then at half the time the rate so far says
/// is left, down to [`PollPace::FINE`], so the window closes within a fine poll of the last
/// message with a few dozen polls instead of hundreds.
#[derive(Debug, Clone, Copy)]
pub struct PollPace {
    /// The count when the window opened, and when that was.
    first: u64,
    since: Instant,
}

impl PollPace {
    /// The longest wait between two looks.
    pub const COARSE: Duration = Duration::from_millis(50);
    /// The shortest: how late the window may close after the last message arrived.
    pub const FINE: Duration = Duration::from_millis(5);

    /// Starts pacing at the window's opening, when the queue held `first`.
    pub fn new(first: u64) -> Self {
        PollPace {
            first,
            since: Instant::now(),
        }
    }

    /// How long to wait before the next look, having just seen `seen` of `target`.
    pub fn next(&self, seen: u64, target: u64) -> Duration {
        Self::wait(
            seen.saturating_sub(self.first),
            self.since.elapsed(),
            target.saturating_sub(seen),
        )
    }

    /// The wait for `done` messages in `elapsed` with `left` to go.
    fn wait(done: u64, elapsed: Duration, left: u64) -> Duration {
        if done == 0 {
            return elapsed.clamp(Self::FINE, Self::COARSE);
        }
        // Half the time left at the rate so far: each look halves the distance to the end.
        let half_left = elapsed.mul_f64(left as f64 / done as f64 / 2.0);
        half_left.clamp(Self::FINE, Self::COARSE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn looks_seldom_while_the_end_is_far() {
        // 1,000 done in 100 ms with 19,000 to go: about 1.9 s left.
        assert_eq!(PollPace::wait(1_000, 100 * MS, 19_000), PollPace::COARSE);
    }

    #[test]
    fn halves_the_distance_as_the_end_nears() {
        // 10,000 in 1 s, 400 to go: 40 ms left, look again in 20.
        assert_eq!(PollPace::wait(10_000, 1_000 * MS, 400), 20 * MS);
        // 50 to go: 5 ms left, and never more often than FINE.
        assert_eq!(PollPace::wait(10_000, 1_000 * MS, 50), PollPace::FINE);
        assert_eq!(PollPace::wait(10_000, 1_000 * MS, 0), PollPace::FINE);
    }

    #[test]
    fn without_progress_it_backs_off_from_fine_to_coarse() {
        assert_eq!(PollPace::wait(0, Duration::ZERO, 100), PollPace::FINE);
        assert_eq!(PollPace::wait(0, 20 * MS, 100), 20 * MS);
        assert_eq!(PollPace::wait(0, 5_000 * MS, 100), PollPace::COARSE);
    }
}
