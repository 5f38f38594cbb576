//! The printed report: the throughput table with each scenario's ratio to
//! its bare-broker ceiling and its target, the CPU table that says where the
//! cores went, the table of the pure normalization cost, and the crm-writer's
//! use of a CRM quota.

use std::fmt::Write as _;
use std::time::Duration;

use crate::cost::Cost;
use crate::measure::Measured;

/// One row of the report.
pub struct Row<'a> {
    pub scenario: String,
    pub measured: &'a Measured,
    /// Events/s of the ceiling this row is compared to (its own rate for a ceiling row);
    /// `None` when that ceiling was not measured in this run.
    pub ceiling: Option<f64>,
    /// The share of the ceiling this scenario should reach, if it has a target.
    pub target: Option<f64>,
    /// What one latency sample is ("publish→confirm", "request", "batch request").
    pub latency_of: &'static str,
    /// p50 and p99 estimated elsewhere (a service's Prometheus histogram) when the bench
    /// cannot time each message itself; shown with `≈`.
    pub estimated: Option<(Duration, Duration)>,
}

/// Renders the throughput and CPU tables.
pub fn tables(rows: &[Row<'_>], cores: usize) -> String {
    let mut out = String::new();
    let width = rows
        .iter()
        .map(|r| r.scenario.chars().count())
        .max()
        .unwrap_or(8)
        .max(8);
    let _ = writeln!(
        out,
        "{:<width$}  {:>5}  {:>7}  {:>9}  {:>8}  {:>8}  {:<22}  vs ceiling",
        "scenario", "conc", "events", "events/s", "p50 ms", "p99 ms", "latency of"
    );
    for row in rows {
        let m = row.measured;
        let rate = m.events_per_second();
        let versus = match row.ceiling.filter(|c| *c > 0.0) {
            None => "- (its ceiling was not measured)".to_owned(),
            Some(ceiling) => {
                let ratio = rate / ceiling;
                match row.target {
                    None => format!("{:.0}%", ratio * 100.0),
                    Some(target) => format!(
                        "{:.0}%  (target ≥ {:.0}%: {})",
                        ratio * 100.0,
                        target * 100.0,
                        if ratio >= target { "met" } else { "NOT met" }
                    ),
                }
            }
        };
        let (p50, p99) = match row.estimated {
            Some((p50, p99)) => (format!("≈{}", millis(p50)), format!("≈{}", millis(p99))),
            None => (
                millis(m.latencies.percentile(50.0)),
                millis(m.latencies.percentile(99.0)),
            ),
        };
        let _ = writeln!(
            out,
            "{:<width$}  {:>5}  {:>7}  {:>9}  {:>8}  {:>8}  {:<22}  {versus}",
            row.scenario,
            m.concurrency,
            thousands(m.events),
            thousands(rate.round() as u64),
            p50,
            p99,
            row.latency_of,
        );
    }

    let _ = writeln!(
        out,
        "\nCPU seconds used during each measured window ({cores} cores = {cores} CPU-s per wall second, \
         shared by the services, RabbitMQ, Redis, the sandbox and this bench process):"
    );
    let _ = writeln!(
        out,
        "{:<width$}  {:>6}  {:>6}  {:>10}  {:>6}  {:>7}  {:>11}  {:>9}  {:>8}  {:>5}  {:>7}  {:>6}  {:>14}  {:>5}  {:>8}",
        "scenario",
        "wall s",
        "ingest",
        "normalizer",
        "crm-w",
        "email-w",
        "service/1k",
        "all/1k ev",
        "rabbitmq",
        "redis",
        "sandbox",
        "bench",
        "bench share",
        "other",
        "box busy"
    );
    let mut busy_elsewhere = false;
    for row in rows {
        let m = row.measured;
        let cpu = &m.cpu;
        let wall = cpu.wall.as_secs_f64();
        let per_1k = m.service_cpu_per_1k();
        let all_per_1k = [cpu.service(), cpu.broker, cpu.redis, cpu.sandbox, cpu.bench]
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
            "{:<width$}  {:>6.2}  {:>6}  {:>10}  {:>6}  {:>7}  {:>11}  {:>9.3}  {:>8}  {:>5}  {:>7}  {:>6}  {:>14}  {:>5}  {:>8}",
            row.scenario,
            wall,
            seconds(cpu.ingest),
            seconds(cpu.normalizer),
            seconds(cpu.crm_writer),
            seconds(cpu.email_writer),
            per_1k.map_or("-".to_owned(), |s| format!("{s:.3}")),
            all_per_1k,
            seconds(cpu.broker),
            seconds(cpu.redis),
            seconds(cpu.sandbox),
            seconds(cpu.bench),
            share.unwrap_or_else(|| "-".to_owned()),
            seconds(cpu.other()),
            busy,
        );
    }
    let _ = writeln!(
        out,
        "(\"…/1k\" = CPU-s per 1,000 events: the service under test alone, and service + RabbitMQ + \
         Redis + sandbox + bench together, the figure least disturbed by other work; \"crm-w\" / \
         \"email-w\" = the crm-writer and the email-writer; \"sandbox\" = the stand-in HubSpot and \
         Mailchimp the writers write to; \"bench\" = this process: the load generator, the lapin \
         publisher or the relay, or only a poller while services drain; \"other\" = busy CPU of the whole machine not used by those, kernel \
         included; \"box busy\" = all busy CPU / capacity)"
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

/// Renders the pure normalization cost, one line per body, against `target_us`.
pub fn cost_table(costs: &[Cost], target_us: f64) -> String {
    let mut out = String::new();
    let width = costs.iter().map(|c| c.name.len()).max().unwrap_or(4).max(4);
    let _ = writeln!(
        out,
        "{:<width$}  {:>6}  {:>10}  {:>8}  {:>7}  {:>7}  {:>7}  per event",
        "body", "bytes", "iterations", "mean µs", "p50 µs", "p99 µs", "ev/s/core"
    );
    for c in costs {
        let mean_us = c.mean.as_secs_f64() * 1e6;
        let per_core = if mean_us > 0.0 { 1e6 / mean_us } else { 0.0 };
        let _ = writeln!(
            out,
            "{:<width$}  {:>6}  {:>10}  {:>8.2}  {:>7.2}  {:>7.2}  {:>7}  target < {target_us:.0} µs: {}",
            c.name,
            c.bytes,
            thousands(c.iterations as u64),
            mean_us,
            c.p50.as_secs_f64() * 1e6,
            c.p99.as_secs_f64() * 1e6,
            thousands(per_core.round() as u64),
            if mean_us < target_us && c.p99.as_secs_f64() * 1e6 < target_us {
                "met"
            } else if mean_us < target_us {
                "met on the mean, not at p99"
            } else {
                "NOT met"
            }
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
