//! Command-line and environment options of `handoff-bench`.
//!
//! Every option is a flag (`--events 20000` or `--events=20000`) with an
//! environment fallback (`HANDOFF_BENCH_EVENTS`), so `make bench` can be tuned
//! without editing the Makefile. Flags win over the environment.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};

/// The usage text printed by `--help` and after a bad flag.
pub const USAGE: &str = "\
usage: handoff-bench [--events N] [--concurrency C] [--batch-size B]
                     [--batch-concurrency K] [--warmup W] [--max-seconds S]
                     [--ingest-bin PATH]

  --events N             events per scenario (default 20000; env HANDOFF_BENCH_EVENTS)
  --concurrency C        in-flight publishes / HTTP requests (default 64; HANDOFF_BENCH_CONCURRENCY)
  --batch-size B         events per batch request, 1..=500 (default 100; HANDOFF_BENCH_BATCH_SIZE)
  --batch-concurrency K  batch requests in flight (default max(C/16, 2); HANDOFF_BENCH_BATCH_CONCURRENCY)
  --warmup W             single requests sent before measuring (default 1000; HANDOFF_BENCH_WARMUP)
  --max-seconds S        a scenario stops sending after S seconds (default 15; HANDOFF_BENCH_MAX_SECONDS)
  --ingest-bin PATH      the ingest binary (default: handoff-ingest beside this binary;
                         HANDOFF_INGEST_BIN)";

/// What one run of the bench does.
#[derive(Debug, Clone)]
pub struct Options {
    /// Events (messages) each scenario sends, unless `max_duration` runs out first.
    pub events: usize,
    /// In-flight publishes for the ceiling and concurrent HTTP clients for the single endpoint.
    pub concurrency: usize,
    /// Events per batch request.
    pub batch_size: usize,
    /// Batch requests in flight. Each carries `batch_size` events, so a small number already
    /// keeps far more events in flight than the single endpoint does.
    pub batch_concurrency: usize,
    /// Requests sent before measuring, to open connections and warm ingest's caches.
    pub warmup: usize,
    /// A scenario stops handing out work after this long, so a slow box still ends in time.
    pub max_duration: Duration,
    /// Path of the `handoff-ingest` binary.
    pub ingest_bin: PathBuf,
}

/// Largest batch ingest accepts by default (`http.batch_max_events`).
const MAX_BATCH: usize = 500;

impl Options {
    /// Reads the environment, then `args` (without the program name).
    ///
    /// Returns `Ok(None)` for `--help`.
    pub fn parse(args: impl IntoIterator<Item = String>) -> anyhow::Result<Option<Options>> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let mut events = env("HANDOFF_BENCH_EVENTS");
        let mut concurrency = env("HANDOFF_BENCH_CONCURRENCY");
        let mut batch_size = env("HANDOFF_BENCH_BATCH_SIZE");
        let mut batch_concurrency = env("HANDOFF_BENCH_BATCH_CONCURRENCY");
        let mut warmup = env("HANDOFF_BENCH_WARMUP");
        let mut max_seconds = env("HANDOFF_BENCH_MAX_SECONDS");
        let mut ingest_bin = env("HANDOFF_INGEST_BIN");

        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
                None => (arg.clone(), None),
            };
            if flag == "--help" || flag == "-h" {
                return Ok(None);
            }
            let slot = match flag.as_str() {
                "--events" => &mut events,
                "--concurrency" => &mut concurrency,
                "--batch-size" => &mut batch_size,
                "--batch-concurrency" => &mut batch_concurrency,
                "--warmup" => &mut warmup,
                "--max-seconds" => &mut max_seconds,
                "--ingest-bin" => &mut ingest_bin,
                _ => bail!("unknown argument {arg:?}"),
            };
            let value = match inline {
                Some(value) => value,
                None => args
                    .next()
                    .with_context(|| format!("{flag} needs a value"))?,
            };
            *slot = Some(value);
        }

        let events = number("--events", events, 20_000)?;
        let concurrency = number("--concurrency", concurrency, 64)?;
        let batch_size = number("--batch-size", batch_size, 100)?;
        let batch_concurrency = number(
            "--batch-concurrency",
            batch_concurrency,
            (concurrency / 16).max(2),
        )?;
        let warmup = number("--warmup", warmup, 1_000)?;
        let max_seconds = number("--max-seconds", max_seconds, 15)?;
        if events == 0 || concurrency == 0 || batch_concurrency == 0 || max_seconds == 0 {
            bail!(
                "--events, --concurrency, --batch-concurrency and --max-seconds must be positive"
            );
        }
        if !(1..=MAX_BATCH).contains(&batch_size) {
            bail!("--batch-size must be 1 to {MAX_BATCH}, not {batch_size}");
        }
        let ingest_bin = match ingest_bin {
            Some(path) => PathBuf::from(path),
            None => default_ingest_bin()?,
        };
        Ok(Some(Options {
            events,
            concurrency,
            batch_size,
            batch_concurrency,
            warmup,
            max_duration: Duration::from_secs(max_seconds as u64),
            ingest_bin,
        }))
    }
}

fn number(flag: &str, value: Option<String>, default: usize) -> anyhow::Result<usize> {
    match value {
        None => Ok(default),
        Some(v) => v
            .replace('_', "")
            .parse()
            .with_context(|| format!("{flag} must be a whole number, not {v:?}")),
    }
}

/// `handoff-ingest` in the directory of this binary: `cargo run --release -p handoff-bench`
/// runs `target/release/handoff-bench`, and `cargo build --release --bins` puts ingest beside it.
fn default_ingest_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the handoff-bench binary")?;
    let dir = exe
        .parent()
        .context("the handoff-bench binary has no parent directory")?;
    Ok(dir.join(format!("handoff-ingest{}", std::env::consts::EXE_SUFFIX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Options {
        let mut all = vec!["--ingest-bin", "/x/handoff-ingest"];
        all.extend_from_slice(args);
        Options::parse(all.into_iter().map(str::to_owned))
            .expect("parses")
            .expect("not --help")
    }

    #[test]
    fn flags_override_defaults_in_both_spellings() {
        let o = parse(&["--events", "500", "--concurrency=32", "--batch-size", "50"]);
        assert_eq!((o.events, o.concurrency, o.batch_size), (500, 32, 50));
        assert_eq!(o.batch_concurrency, 2, "max(32/16, 2)");
        assert_eq!(o.ingest_bin, PathBuf::from("/x/handoff-ingest"));
    }

    #[test]
    fn bad_flags_are_refused() {
        let bad = |args: &[&str]| Options::parse(args.iter().map(|s| (*s).to_owned())).is_err();
        assert!(bad(&["--events"]));
        assert!(bad(&["--events", "many"]));
        assert!(bad(&["--batch-size", "501"]));
        assert!(bad(&["--concurrency", "0"]));
        assert!(bad(&["--frobnicate"]));
    }

    #[test]
    fn help_is_not_an_error() {
        assert!(
            Options::parse(["--help".to_owned()])
                .expect("parses")
                .is_none()
        );
    }
}
