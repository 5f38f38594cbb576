//! The printed report: the throughput table with each scenario's ratio to the
//! bare-broker ceiling and its target, and the CPU table that says where the
//! two cores went.

use std::fmt::Write as _;
use std::time::Duration;

use crate::measure::Measured;

/// One row of the report.
pub struct Row<'a> {
    pub scenario: String,
    pub measured: &'a Measured,
    /// The share of the ceiling this scenario should reach, if it has a target.
    pub target: Option<f64>,
    /// What one latency sample is ("publish→confirm", "request", "batch request").
    pub latency_of: &'static str,
}

/// Renders both tables. `ceiling` is the events/s every ratio is taken against.
pub fn tables(rows: &[Row<'_>], ceiling: f64, cores: usize) -> String {
    let mut out = String::new();
    let width = rows
        .iter()
        .map(|r| r.scenario.len())
        .max()
        .unwrap_or(8)
        .max(8);
    let _ = writeln!(
        out,
        "{:<width$}  {:>5}  {:>7}  {:>9}  {:>7}  {:>7}  {:<16}  vs ceiling",
        "scenario", "conc", "events", "events/s", "p50 ms", "p99 ms", "latency of"
    );
    for row in rows {
        let m = row.measured;
        let rate = m.events_per_second();
        let ratio = if ceiling > 0.0 { rate / ceiling } else { 0.0 };
        let versus = match row.target {
            None => format!("{:.0}%", ratio * 100.0),
            Some(target) => format!(
                "{:.0}%  (target ≥ {:.0}%: {})",
                ratio * 100.0,
                target * 100.0,
                if ratio >= target { "met" } else { "NOT met" }
            ),
        };
        let _ = writeln!(
            out,
            "{:<width$}  {:>5}  {:>7}  {:>9}  {:>7}  {:>7}  {:<16}  {versus}",
            row.scenario,
            m.concurrency,
            thousands(m.events),
            thousands(rate.round() as u64),
            millis(m.latencies.percentile(50.0)),
            millis(m.latencies.percentile(99.0)),
            row.latency_of,
        );
    }

    let _ = writeln!(
        out,
        "\nCPU seconds used during each measured window ({cores} cores = {cores} CPU-s per wall second, \
         shared by ingest, RabbitMQ, Redis and this load generator):"
    );
    let _ = writeln!(
        out,
        "{:<width$}  {:>6}  {:>6}  {:>12}  {:>12}  {:>8}  {:>5}  {:>8}  {:>14}  {:>5}  {:>9}",
        "scenario",
        "wall s",
        "ingest",
        "ingest/1k ev",
        "all 4/1k ev",
        "rabbitmq",
        "redis",
        "load gen",
        "load gen share",
        "other",
        "box busy"
    );
    let mut busy_elsewhere = false;
    for row in rows {
        let m = row.measured;
        let cpu = &m.cpu;
        let wall = cpu.wall.as_secs_f64();
        let per_1k = cpu
            .ingest
            .filter(|_| m.events > 0)
            .map(|s| s / (m.events as f64 / 1000.0));
        let all_per_1k = [cpu.ingest, cpu.broker, cpu.redis, cpu.bench]
            .iter()
            .flatten()
            .sum::<f64>()
            / (m.events.max(1) as f64 / 1000.0);
        let share = cpu
            .bench
            .filter(|_| wall > 0.0)
            .map(|s| format!("{:.0}% of {cores} cores", 100.0 * s / (wall * cores as f64)));
        let capacity = wall * cores as f64;
        let busy = cpu
            .machine
            .filter(|_| capacity > 0.0)
            .map_or("-".to_owned(), |b| format!("{:.0}%", 100.0 * b / capacity));
        // Other work using more than a tenth of the box makes every figure of the row low.
        busy_elsewhere |= cpu.other().is_some_and(|o| o > 0.1 * capacity);
        let _ = writeln!(
            out,
            "{:<width$}  {:>6.2}  {:>6}  {:>12}  {:>12.3}  {:>8}  {:>5}  {:>8}  {:>14}  {:>5}  {:>9}",
            row.scenario,
            wall,
            seconds(cpu.ingest),
            per_1k.map_or("-".to_owned(), |s| format!("{s:.3}")),
            all_per_1k,
            seconds(cpu.broker),
            seconds(cpu.redis),
            seconds(cpu.bench),
            share.unwrap_or_else(|| "-".to_owned()),
            seconds(cpu.other()),
            busy,
        );
    }
    let _ = writeln!(
        out,
        "(\"…/1k ev\" = CPU-s per 1,000 accepted events: ingest alone, and ingest + RabbitMQ + Redis \
         + load generator together, the figure least disturbed by other work; \"other\" = busy CPU \
         of the whole machine not used by those four, kernel included; \"box busy\" = all busy CPU \
         / capacity)"
    );
    if busy_elsewhere {
        let _ = writeln!(
            out,
            "WARNING: other work used more than 10% of the machine during a scenario; \
             its figures are low. Re-run on a quiet box for numbers to compare."
        );
    }
    out
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn millis(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn seconds(s: Option<f64>) -> String {
    s.map_or("-".to_owned(), |s| format!("{s:.2}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
