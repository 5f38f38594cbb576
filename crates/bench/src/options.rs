//! Command-line and environment options of `handoff-bench`.
//!
//! Every option is a flag (`--events 20000` or `--events=20000`) with an
//! environment fallback (`HANDOFF_BENCH_EVENTS`), so `make bench` can be tuned
//! without editing the Makefile. Flags win over the environment.
//! `--only` picks which part runs, so a developer can iterate on one service.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};

/// The usage text printed by `--help` and after a bad flag.
pub const USAGE: &str = "\
usage: handoff-bench [--only PARTS] [--events N] [--concurrency C] [--batch-size B]
                     [--batch-concurrency K] [--warmup W] [--max-seconds S]
                     [--iterations I] [--ingest-bin PATH] [--normalizer-bin PATH]

  --only PARTS           comma-separated parts to run (default all; HANDOFF_BENCH_ONLY):
                           ingest      [1-3/6] bare broker, ingest single, ingest batch
                           normalizer  [4-5/6] relay ceiling, normalizer service
                           normalize   [6/6]   pure normalization cost, in-process
  --events N             events per scenario; for the relay and the normalizer, the backlog
                         each drains (default 20000; env HANDOFF_BENCH_EVENTS)
  --concurrency C        in-flight publishes / HTTP requests (default 64; HANDOFF_BENCH_CONCURRENCY)
  --batch-size B         events per batch request, 1..=500 (default 100; HANDOFF_BENCH_BATCH_SIZE)
  --batch-concurrency K  batch requests in flight (default max(C/16, 2); HANDOFF_BENCH_BATCH_CONCURRENCY)
  --warmup W             single requests sent before measuring (default 1000; HANDOFF_BENCH_WARMUP)
  --max-seconds S        a scenario stops sending (measuring a drain) after S seconds
                         (default 15; HANDOFF_BENCH_MAX_SECONDS)
  --iterations I         timed normalize calls per body in [6/6] (default 200000;
                         HANDOFF_BENCH_ITERATIONS)
  --ingest-bin PATH      the ingest binary (default: handoff-ingest beside this binary;
                         HANDOFF_INGEST_BIN)
  --normalizer-bin PATH  the normalizer binary (default: handoff-normalizer beside this
                         binary; HANDOFF_NORMALIZER_BIN)";

/// The parts of the bench `--only` can pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    /// Bare broker, ingest single, ingest batch.
    pub ingest: bool,
    /// Relay ceiling and normalizer service.
    pub normalizer: bool,
    /// Pure normalization cost.
    pub normalize: bool,
}

impl Parts {
    const ALL: Parts = Parts {
        ingest: true,
        normalizer: true,
        normalize: true,
    };

    fn parse(list: &str) -> anyhow::Result<Parts> {
        let mut parts = Parts {
            ingest: false,
            normalizer: false,
            normalize: false,
        };
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "ingest" => parts.ingest = true,
                "normalizer" => parts.normalizer = true,
                "normalize" => parts.normalize = true,
                "all" => parts = Parts::ALL,
                other => bail!(
                    "--only takes ingest, normalizer, normalize or all (comma-separated), \
                     not {other:?}"
                ),
            }
        }
        if parts
            == (Parts {
                ingest: false,
                normalizer: false,
                normalize: false,
            })
        {
            bail!("--only needs at least one part");
        }
        Ok(parts)
    }
}

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
    /// Timed `normalize` calls per body in the pure normalization cost.
    pub iterations: usize,
    /// Which parts run.
    pub only: Parts,
    /// Path of the `handoff-ingest` binary.
    pub ingest_bin: PathBuf,
    /// Path of the `handoff-normalizer` binary.
    pub normalizer_bin: PathBuf,
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
        let mut iterations = env("HANDOFF_BENCH_ITERATIONS");
        let mut only = env("HANDOFF_BENCH_ONLY");
        let mut ingest_bin = env("HANDOFF_INGEST_BIN");
        let mut normalizer_bin = env("HANDOFF_NORMALIZER_BIN");

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
                "--iterations" => &mut iterations,
                "--only" => &mut only,
                "--ingest-bin" => &mut ingest_bin,
                "--normalizer-bin" => &mut normalizer_bin,
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
        let iterations = number("--iterations", iterations, 200_000)?;
        if events == 0
            || concurrency == 0
            || batch_concurrency == 0
            || max_seconds == 0
            || iterations == 0
        {
            bail!(
                "--events, --concurrency, --batch-concurrency, --max-seconds and --iterations \
                 must be positive"
            );
        }
        let only = match only {
            Some(list) => Parts::parse(&list)?,
            None => Parts::ALL,
        };
        if !(1..=MAX_BATCH).contains(&batch_size) {
            bail!("--batch-size must be 1 to {MAX_BATCH}, not {batch_size}");
        }
        let ingest_bin = match ingest_bin {
            Some(path) => PathBuf::from(path),
            None => beside_this_binary("handoff-ingest")?,
        };
        let normalizer_bin = match normalizer_bin {
            Some(path) => PathBuf::from(path),
            None => beside_this_binary("handoff-normalizer")?,
        };
        Ok(Some(Options {
            events,
            concurrency,
            batch_size,
            batch_concurrency,
            warmup,
            max_duration: Duration::from_secs(max_seconds as u64),
            iterations,
            only,
            ingest_bin,
            normalizer_bin,
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

/// A service binary in the directory of this one: `cargo run --release -p handoff-bench`
/// runs `target/release/handoff-bench`, and `cargo build --release --bins` puts the
/// services beside it.
fn beside_this_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the handoff-bench binary")?;
    let dir = exe
        .parent()
        .context("the handoff-bench binary has no parent directory")?;
    Ok(dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Options {
        let mut all = vec![
            "--ingest-bin",
            "/x/handoff-ingest",
            "--normalizer-bin",
            "/x/handoff-normalizer",
        ];
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
        assert_eq!(o.only, Parts::ALL);
    }

    #[test]
    fn only_picks_parts() {
        let o = parse(&["--only", "normalizer,normalize"]);
        assert_eq!(
            o.only,
            Parts {
                ingest: false,
                normalizer: true,
                normalize: true
            }
        );
        assert!(parse(&["--only=ingest"]).only.ingest);
        assert_eq!(parse(&["--only=all"]).only, Parts::ALL);
    }

    #[test]
    fn bad_flags_are_refused() {
        let bad = |args: &[&str]| Options::parse(args.iter().map(|s| (*s).to_owned())).is_err();
        assert!(bad(&["--events"]));
        assert!(bad(&["--events", "many"]));
        assert!(bad(&["--batch-size", "501"]));
        assert!(bad(&["--concurrency", "0"]));
        assert!(bad(&["--frobnicate"]));
        assert!(bad(&["--only", "everything"]));
        assert!(bad(&["--only", ","]));
        assert!(bad(&["--iterations", "0"]));
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
