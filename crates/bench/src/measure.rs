//! What one scenario measured: throughput, latency percentiles, failures and
//! the CPU every process used meanwhile.

use std::time::Duration;

use crate::procs::CpuUse;

/// Latencies of every completed request (or publish) of a scenario.
#[derive(Debug, Clone, Default)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    /// Merges per-worker recordings. Tens of thousands of samples sort in a millisecond,
    /// so exact percentiles cost less than a histogram's bucketing error.
    pub fn merge(parts: impl IntoIterator<Item = Vec<Duration>>) -> Latencies {
        let mut all: Vec<Duration> = parts.into_iter().flatten().collect();
        all.sort_unstable();
        Latencies(all)
    }

    /// How many samples there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The `p`-th percentile (nearest rank), or zero without samples.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }
}

/// The outcome of one scenario's measured phase.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Requests (or publishes) in flight at once.
    pub concurrency: usize,
    /// Events the service (or broker) accepted.
    pub events: u64,
    /// Events refused or lost to transport errors.
    pub failed_events: u64,
    /// The first few failures, verbatim enough to debug.
    pub errors: Vec<String>,
    /// One sample per completed request.
    pub latencies: Latencies,
    /// CPU used by each process, and the wall time of the phase.
    pub cpu: CpuUse,
}

impl Measured {
    /// Accepted events per second of wall time.
    pub fn events_per_second(&self) -> f64 {
        let secs = self.cpu.wall.as_secs_f64();
        if secs > 0.0 {
            self.events as f64 / secs
        } else {
            0.0
        }
    }

    /// CPU seconds the service under test used per 1,000 events (= ms per event), when it
    /// was watched and handled any.
    pub fn service_cpu_per_1k(&self) -> Option<f64> {
        self.cpu
            .service()
            .filter(|_| self.events > 0)
            .map(|s| s / (self.events as f64 / 1000.0))
    }
}

/// How many failures a scenario keeps word for word.
pub const KEPT_ERRORS: usize = 5;

/// Failures seen by one worker: a count and the first few messages.
#[derive(Debug, Default)]
pub struct Failures {
    pub events: u64,
    pub messages: Vec<String>,
}

impl Failures {
    /// Records `events` lost to one failure described by `message`.
    pub fn add(&mut self, events: u64, message: impl FnOnce() -> String) {
        self.events += events;
        if self.messages.len() < KEPT_ERRORS {
            self.messages.push(message());
        }
    }

    /// Merges per-worker failures.
    pub fn merge(parts: impl IntoIterator<Item = Failures>) -> Failures {
        let mut all = Failures::default();
        for part in parts {
            all.events += part.events;
            for message in part.messages {
                if all.messages.len() < KEPT_ERRORS {
                    all.messages.push(message);
                }
            }
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let ms = |n: u64| Duration::from_millis(n);
        let l = Latencies::merge([
            (1..=50).map(ms).collect(),
            (51..=100).rev().map(ms).collect(),
        ]);
        assert_eq!(l.len(), 100);
        assert_eq!(l.percentile(50.0), ms(50));
        assert_eq!(l.percentile(99.0), ms(99));
        assert_eq!(l.percentile(100.0), ms(100));
        assert_eq!(l.percentile(0.0), ms(1));
        assert_eq!(Latencies::default().percentile(50.0), Duration::ZERO);
    }
}
