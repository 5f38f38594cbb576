//! Where the CPU goes: CPU seconds of ingest, the normalizer, the crm-writer,
//! the email-writer, the dead-letter handler, the sandbox, RabbitMQ, Redis and
//! the bench itself read
//! from `/proc`, and a service's peak resident memory.
//!
//! Every process in a run shares the same cores, so a scenario's figures only
//! make sense next to what each of them burned meanwhile. Linux only; on other
//! systems the readings are simply absent.

use std::fs;
use std::time::{Duration, Instant};

/// Clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`): 100 on every mainstream Linux
/// architecture. Reading it with `sysconf` would need `unsafe` or another dependency.
const TICKS_PER_SECOND: f64 = 100.0;

/// The processes whose CPU time a scenario reports.
#[derive(Debug, Clone, Default)]
pub struct Watched {
    /// The ingest child, when one is running.
    pub ingest: Option<u32>,
    /// The normalizer child, when one is running.
    pub normalizer: Option<u32>,
    /// The crm-writer child, when one is running.
    pub crm_writer: Option<u32>,
    /// The email-writer child, when one is running.
    pub email_writer: Option<u32>,
    /// The dead-letter handler child (`handoff-dlq serve`), when one is running.
    pub dead_letters: Option<u32>,
    /// The sandbox child, when one is running: the stand-in for HubSpot and Mailchimp, counted
    /// apart from the services under test like the broker and Redis are.
    pub sandbox: Option<u32>,
    /// Every `beam.smp` (the RabbitMQ node), when the broker runs on this machine.
    pub broker: Vec<u32>,
    /// Every `redis-server`, when Redis runs on this machine.
    pub redis: Vec<u32>,
}

impl Watched {
    /// Finds the local broker and Redis processes; the services are set by the caller.
    pub fn local_servers() -> Watched {
        Watched {
            ingest: None,
            normalizer: None,
            crm_writer: None,
            email_writer: None,
            dead_letters: None,
            sandbox: None,
            broker: pids_named("beam.smp"),
            redis: pids_named("redis-server"),
        }
    }

    /// Takes a reading of every watched process and of this one.
    pub fn sample(&self) -> Sample {
        Sample {
            at: Instant::now(),
            ingest: self.ingest.and_then(cpu_seconds),
            normalizer: self.normalizer.and_then(cpu_seconds),
            crm_writer: self.crm_writer.and_then(cpu_seconds),
            email_writer: self.email_writer.and_then(cpu_seconds),
            dead_letters: self.dead_letters.and_then(cpu_seconds),
            sandbox: self.sandbox.and_then(cpu_seconds),
            broker: sum(&self.broker),
            redis: sum(&self.redis),
            bench: cpu_seconds_of("self"),
            machine: machine_busy_seconds(),
        }
    }
}

/// CPU seconds consumed so far by each watched process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    at: Instant,
    ingest: Option<f64>,
    normalizer: Option<f64>,
    crm_writer: Option<f64>,
    email_writer: Option<f64>,
    dead_letters: Option<f64>,
    sandbox: Option<f64>,
    broker: Option<f64>,
    redis: Option<f64>,
    bench: Option<f64>,
    machine: Option<f64>,
}

impl Sample {
    /// What was used between `self` (earlier) and `later`.
    pub fn until(&self, later: &Sample) -> CpuUse {
        let delta = |a: Option<f64>, b: Option<f64>| Some((b? - a?).max(0.0));
        CpuUse {
            wall: later.at.duration_since(self.at),
            ingest: delta(self.ingest, later.ingest),
            normalizer: delta(self.normalizer, later.normalizer),
            crm_writer: delta(self.crm_writer, later.crm_writer),
            email_writer: delta(self.email_writer, later.email_writer),
            dead_letters: delta(self.dead_letters, later.dead_letters),
            sandbox: delta(self.sandbox, later.sandbox),
            broker: delta(self.broker, later.broker),
            redis: delta(self.redis, later.redis),
            bench: delta(self.bench, later.bench),
            machine: delta(self.machine, later.machine),
        }
    }
}

/// CPU seconds used by each process over one scenario's measured window.
#[derive(Debug, Clone, Copy)]
pub struct CpuUse {
    pub wall: Duration,
    pub ingest: Option<f64>,
    pub normalizer: Option<f64>,
    pub crm_writer: Option<f64>,
    pub email_writer: Option<f64>,
    /// The dead-letter handler.
    pub dead_letters: Option<f64>,
    /// The sandbox CRM: the destination's work, not the service's.
    pub sandbox: Option<f64>,
    pub broker: Option<f64>,
    pub redis: Option<f64>,
    pub bench: Option<f64>,
    /// Busy CPU seconds of the whole machine, every process and the kernel included.
    pub machine: Option<f64>,
}

impl CpuUse {
    /// CPU seconds of the services under test (ingest, the normalizer, the writers, the
    /// dead-letter handler), if any ran.
    pub fn service(&self) -> Option<f64> {
        let services = [
            self.ingest,
            self.normalizer,
            self.crm_writer,
            self.email_writer,
            self.dead_letters,
        ];
        services
            .iter()
            .any(Option::is_some)
            .then(|| services.iter().flatten().sum())
    }

    /// Busy CPU seconds not accounted for by the watched processes: other work on the box
    /// (a build, another test) competing with the scenario.
    pub fn other(&self) -> Option<f64> {
        let watched = self.service().unwrap_or(0.0)
            + self.sandbox.unwrap_or(0.0)
            + self.broker.unwrap_or(0.0)
            + self.redis.unwrap_or(0.0)
            + self.bench.unwrap_or(0.0);
        self.machine.map(|busy| (busy - watched).max(0.0))
    }
}

/// Peak resident set size (`VmHWM`) of `pid`, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

fn cpu_seconds(pid: u32) -> Option<f64> {
    cpu_seconds_of(&pid.to_string())
}

/// `utime + stime` of a process (all its threads), from `/proc/<pid>/stat`.
fn cpu_seconds_of(pid: &str) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat).map(|ticks| ticks as f64 / TICKS_PER_SECOND)
}

/// Fields 14 and 15 of `stat`. The command name (field 2) may hold spaces and parentheses,
/// so the fields are counted from after its last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // `fields[0]` is field 3 (state), so field 14 is `fields[11]`.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Busy time of all CPUs together, from the first line of `/proc/stat`: everything but
/// `idle` and `iowait`.
fn machine_busy_seconds() -> Option<f64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    parse_busy_ticks(stat.lines().next()?).map(|ticks| ticks as f64 / TICKS_PER_SECOND)
}

fn parse_busy_ticks(cpu_line: &str) -> Option<u64> {
    let mut fields = cpu_line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let ticks: Vec<u64> = fields.map(|f| f.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]; guest time is
    // already counted in user and nice.
    let (idle, iowait) = (*ticks.get(3)?, *ticks.get(4)?);
    let total: u64 = ticks.iter().take(8).sum();
    Some(total - idle - iowait)
}

fn sum(pids: &[u32]) -> Option<f64> {
    let readings: Vec<f64> = pids.iter().filter_map(|&pid| cpu_seconds(pid)).collect();
    (!readings.is_empty()).then(|| readings.iter().sum())
}

fn pids_named(name: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == name)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "1234 (tokio (rt) x) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 9 0";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
    }

    #[test]
    fn busy_time_leaves_out_idle_and_iowait() {
        let line = "cpu  613416 0 56721 36933 1141 0 621 3226 0 0";
        assert_eq!(parse_busy_ticks(line), Some(613_416 + 56_721 + 621 + 3_226));
        assert_eq!(parse_busy_ticks("cpu0 1 2 3 4 5 6 7 8"), None);
    }

    #[test]
    fn this_process_can_be_read() {
        assert!(cpu_seconds_of("self").is_some());
        assert!(peak_rss_kib(std::process::id()).is_some_and(|kib| kib > 0));
    }
}
