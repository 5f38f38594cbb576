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
usage: handoff-bench [--only PARTS] [--events N] [--rounds R] [--concurrency C] [--batch-size B]
                     [--batch-concurrency K] [--warmup W] [--max-seconds S]
                     [--iterations I] [--quota-seconds Q] [--pacing-limit L]
                     [--pipeline-events P] [--pipeline-seconds T] [--no-email-writer]
                     [--dead-letters D] [--pacing-dead-letters R] [--pacing-live-rate V]
                     [--ingest-bin PATH] [--normalizer-bin PATH]
                     [--crm-writer-bin PATH] [--email-writer-bin PATH]
                     [--sandbox-bin PATH] [--dlq-bin PATH]

  --only PARTS           comma-separated parts to run (default all; HANDOFF_BENCH_ONLY):
                           ingest      [1-3/10] bare broker, ingest single, ingest batch
                           normalizer  [4-5/10] relay ceiling, normalizer service
                           normalize   [6/10]   pure normalization cost, in-process
                           delivery    [7/10]   crm-writer into the sandbox CRM: throughput
                                                without a quota (beside the relay ceiling,
                                                run for it if normalizer is not), then
                                                HubSpot's quota
                           pipeline    [8/10]   the whole pipeline end to end: ingest →
                                                normalizer → crm-writer + email-writer
                                                into the sandbox, at its peak (closed
                                                loop) and at half of it (open loop),
                                                beside the relay ceiling (run for it if
                                                neither normalizer nor delivery is)
                           dead-letters
                                       [9/10]   the dead-letter handler: parking rate of
                                                --dead-letters records, list, filter, group
                                                and stats latency over them through its
                                                API, replay rate against the configured one
                           replay-pacing
                                       [10/10]  a replay of --pacing-dead-letters beside live
                                                traffic, run to the end, under HubSpot's
                                                quota (about 17 minutes at the default
                                                5/s): the busiest 10 s, 429s, live latency
  --events N             events per scenario; for the relay, the normalizer and the
                         crm-writer, the backlog each drains (default 20000;
                         env HANDOFF_BENCH_EVENTS)
  --rounds R             [4-5/10] runs R rounds of relay ceiling then normalizer, so a
                         change in the machine's speed during the run hits both; the
                         table shows the round with the median share (default 3;
                         HANDOFF_BENCH_ROUNDS)
  --concurrency C        in-flight publishes / HTTP requests (default 64; HANDOFF_BENCH_CONCURRENCY)
  --batch-size B         events per batch request, 1..=500 (default 100; HANDOFF_BENCH_BATCH_SIZE)
  --batch-concurrency K  batch requests in flight (default max(C/16, 2); HANDOFF_BENCH_BATCH_CONCURRENCY)
  --warmup W             single requests sent before measuring (default 1000; HANDOFF_BENCH_WARMUP)
  --max-seconds S        a scenario stops sending (measuring a drain) after S seconds
                         (default 15; HANDOFF_BENCH_MAX_SECONDS)
  --iterations I         timed normalize calls per body in [6/10] (default 200000;
                         HANDOFF_BENCH_ITERATIONS)
  --quota-seconds Q      how long [7/10] measures the crm-writer against HubSpot's quota
                         (default 30; HANDOFF_BENCH_QUOTA_SECONDS)
  --pacing-limit L       the crm-writer's [hubspot.pacing] limit per 10 s under the quota
                         (default: the writer's own default; HANDOFF_BENCH_PACING_LIMIT)
  --pipeline-events P    events [8/10] sends at its peak, closed loop at --concurrency
                         (default 5000; HANDOFF_BENCH_PIPELINE_EVENTS)
  --pipeline-seconds T   how long [8/10] sends open loop at half the peak's events/s
                         (default 20; HANDOFF_BENCH_PIPELINE_SECONDS)
  --no-email-writer      [8/10] without the email-writer: done is then the crm-writer's
                         delivery alone, which is not the pipeline's figure (to see the
                         email-writer's share, or without its binary;
                         HANDOFF_BENCH_NO_EMAIL_WRITER=1)
  --dead-letters D       dead letters [9/10] parks and queries, at least 1000 (default
                         50000; HANDOFF_BENCH_DEAD_LETTERS)
  --pacing-dead-letters R
                         dead letters [10/10] parks and replays beside live traffic
                         (default 5000; HANDOFF_BENCH_PACING_DEAD_LETTERS)
  --pacing-live-rate V   live events per second beside that replay (default 4;
                         HANDOFF_BENCH_PACING_LIVE_RATE)
  --ingest-bin PATH      the ingest binary (default: handoff-ingest beside this binary;
                         HANDOFF_INGEST_BIN)
  --normalizer-bin PATH  the normalizer binary (default: handoff-normalizer beside this
                         binary; HANDOFF_NORMALIZER_BIN)
  --crm-writer-bin PATH  the crm-writer binary (default: handoff-crm-writer beside this
                         binary; HANDOFF_CRM_WRITER_BIN)
  --email-writer-bin PATH
                         the email-writer binary (default: handoff-email-writer beside
                         this binary; HANDOFF_EMAIL_WRITER_BIN)
  --sandbox-bin PATH     the sandbox (HubSpot and Mailchimp) binary (default:
                         handoff-sandbox beside this binary; HANDOFF_SANDBOX_BIN)
  --dlq-bin PATH         the dead-letter handler binary (default: handoff-dlq beside
                         this binary; HANDOFF_DLQ_BIN)";

/// The parts of the bench `--only` can pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    /// Bare broker, ingest single, ingest batch.
    pub ingest: bool,
    /// Relay ceiling and normalizer service.
    pub normalizer: bool,
    /// Pure normalization cost.
    pub normalize: bool,
    /// The crm-writer into the sandbox CRM: throughput without a quota, then under HubSpot's.
    pub delivery: bool,
    /// The whole pipeline end to end, from ingest's 202 to both destinations.
    pub pipeline: bool,
    /// The dead-letter handler: parking, queries over many parked dead letters, replay rate.
    pub dead_letters: bool,
    /// A replay run to the end beside live traffic under HubSpot's quota.
    pub replay_pacing: bool,
}

impl Parts {
    const ALL: Parts = Parts {
        ingest: true,
        normalizer: true,
        normalize: true,
        delivery: true,
        pipeline: true,
        dead_letters: true,
        replay_pacing: true,
    };

    const NONE: Parts = Parts {
        ingest: false,
        normalizer: false,
        normalize: false,
        delivery: false,
        pipeline: false,
        dead_letters: false,
        replay_pacing: false,
    };

    fn parse(list: &str) -> anyhow::Result<Parts> {
        let mut parts = Parts::NONE;
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "ingest" => parts.ingest = true,
                "normalizer" => parts.normalizer = true,
                "normalize" => parts.normalize = true,
                "delivery" => parts.delivery = true,
                "pipeline" => parts.pipeline = true,
                "dead-letters" => parts.dead_letters = true,
                "replay-pacing" => parts.replay_pacing = true,
                "all" => parts = Parts::ALL,
                other => bail!(
                    "--only takes ingest, normalizer, normalize, delivery, pipeline, \
                     dead-letters, replay-pacing or all (comma-separated), not {other:?}"
                ),
            }
        }
        if parts == Parts::NONE {
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
    /// Rounds of relay ceiling then normalizer service in the normalizer part. One pair is at the
    /// mercy of the machine's speed drifting between its two halves; the median of several
    /// alternating pairs is not.
    pub rounds: usize,
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
    /// How long the crm-writer is measured against HubSpot's quota, from its first request.
    pub quota_duration: Duration,
    /// The crm-writer's `[hubspot.pacing] limit` under the quota; `None` leaves the writer's
    /// default, which is what the scenario is about. Set to compare a value before changing
    /// the default.
    pub pacing_limit: Option<u32>,
    /// Events the pipeline's peak phase sends (closed loop at `concurrency`).
    pub pipeline_events: usize,
    /// How long the pipeline's half-peak phase sends (open loop).
    pub pipeline_duration: Duration,
    /// Whether the pipeline runs without the email-writer (`--no-email-writer`): "done" is
    /// then the crm-writer's delivery alone.
    pub no_email_writer: bool,
    /// Dead letters the dead-letter part parks before it queries and replays them.
    pub dead_letters: usize,
    /// Dead letters the replay-pacing part parks and replays beside live traffic.
    pub pacing_dead_letters: usize,
    /// Live events per second beside that replay.
    pub pacing_live_rate: f64,
    /// Which parts run.
    pub only: Parts,
    /// Path of the `handoff-ingest` binary.
    pub ingest_bin: PathBuf,
    /// Path of the `handoff-normalizer` binary.
    pub normalizer_bin: PathBuf,
    /// Path of the `handoff-crm-writer` binary.
    pub crm_writer_bin: PathBuf,
    /// Path of the `handoff-email-writer` binary.
    pub email_writer_bin: PathBuf,
    /// Path of the `handoff-sandbox` binary.
    pub sandbox_bin: PathBuf,
    /// Path of the `handoff-dlq` binary (the dead-letter handler).
    pub dlq_bin: PathBuf,
}

/// Largest batch ingest accepts by default (`http.batch_max_events`).
const MAX_BATCH: usize = 500;
/// Fewest dead letters the dead-letter part parks: its replay groups are shares of them.
const MIN_DEAD_LETTERS: usize = 1_000;

impl Options {
    /// Reads the environment, then `args` (without the program name).
    ///
    /// Returns `Ok(None)` for `--help`.
    pub fn parse(args: impl IntoIterator<Item = String>) -> anyhow::Result<Option<Options>> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let mut events = env("HANDOFF_BENCH_EVENTS");
        let mut rounds = env("HANDOFF_BENCH_ROUNDS");
        let mut concurrency = env("HANDOFF_BENCH_CONCURRENCY");
        let mut batch_size = env("HANDOFF_BENCH_BATCH_SIZE");
        let mut batch_concurrency = env("HANDOFF_BENCH_BATCH_CONCURRENCY");
        let mut warmup = env("HANDOFF_BENCH_WARMUP");
        let mut max_seconds = env("HANDOFF_BENCH_MAX_SECONDS");
        let mut iterations = env("HANDOFF_BENCH_ITERATIONS");
        let mut quota_seconds = env("HANDOFF_BENCH_QUOTA_SECONDS");
        let mut pacing_limit = env("HANDOFF_BENCH_PACING_LIMIT");
        let mut pipeline_events = env("HANDOFF_BENCH_PIPELINE_EVENTS");
        let mut pipeline_seconds = env("HANDOFF_BENCH_PIPELINE_SECONDS");
        let mut no_email_writer = env("HANDOFF_BENCH_NO_EMAIL_WRITER");
        let mut dead_letters = env("HANDOFF_BENCH_DEAD_LETTERS");
        let mut pacing_dead_letters = env("HANDOFF_BENCH_PACING_DEAD_LETTERS");
        let mut pacing_live_rate = env("HANDOFF_BENCH_PACING_LIVE_RATE");
        let mut only = env("HANDOFF_BENCH_ONLY");
        let mut ingest_bin = env("HANDOFF_INGEST_BIN");
        let mut normalizer_bin = env("HANDOFF_NORMALIZER_BIN");
        let mut crm_writer_bin = env("HANDOFF_CRM_WRITER_BIN");
        let mut email_writer_bin = env("HANDOFF_EMAIL_WRITER_BIN");
        let mut sandbox_bin = env("HANDOFF_SANDBOX_BIN");
        let mut dlq_bin = env("HANDOFF_DLQ_BIN");

        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
                None => (arg.clone(), None),
            };
            if flag == "--help" || flag == "-h" {
                return Ok(None);
            }
            // The one flag without a value.
            if flag == "--no-email-writer" {
                no_email_writer = Some(inline.unwrap_or_else(|| "1".to_owned()));
                continue;
            }
            let slot = match flag.as_str() {
                "--events" => &mut events,
                "--rounds" => &mut rounds,
                "--concurrency" => &mut concurrency,
                "--batch-size" => &mut batch_size,
                "--batch-concurrency" => &mut batch_concurrency,
                "--warmup" => &mut warmup,
                "--max-seconds" => &mut max_seconds,
                "--iterations" => &mut iterations,
                "--quota-seconds" => &mut quota_seconds,
                "--pacing-limit" => &mut pacing_limit,
                "--pipeline-events" => &mut pipeline_events,
                "--pipeline-seconds" => &mut pipeline_seconds,
                "--dead-letters" => &mut dead_letters,
                "--pacing-dead-letters" => &mut pacing_dead_letters,
                "--pacing-live-rate" => &mut pacing_live_rate,
                "--only" => &mut only,
                "--ingest-bin" => &mut ingest_bin,
                "--normalizer-bin" => &mut normalizer_bin,
                "--crm-writer-bin" => &mut crm_writer_bin,
                "--email-writer-bin" => &mut email_writer_bin,
                "--sandbox-bin" => &mut sandbox_bin,
                "--dlq-bin" => &mut dlq_bin,
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
        let rounds = number("--rounds", rounds, 3)?;
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
        let quota_seconds = number("--quota-seconds", quota_seconds, 30)?;
        let pacing_limit = match pacing_limit {
            None => None,
            Some(v) => Some(
                u32::try_from(number("--pacing-limit", Some(v), 0)?)
                    .context("--pacing-limit is too large")?,
            ),
        };
        let pipeline_events = number("--pipeline-events", pipeline_events, 5_000)?;
        let pipeline_seconds = number("--pipeline-seconds", pipeline_seconds, 20)?;
        let dead_letters = number("--dead-letters", dead_letters, 50_000)?;
        if dead_letters < MIN_DEAD_LETTERS {
            bail!("--dead-letters must be at least {MIN_DEAD_LETTERS}, not {dead_letters}");
        }
        let pacing_dead_letters = number("--pacing-dead-letters", pacing_dead_letters, 5_000)?;
        if pacing_dead_letters == 0 {
            bail!("--pacing-dead-letters must be at least 1");
        }
        let pacing_live_rate = match pacing_live_rate {
            None => 4.0,
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|r| r.is_finite() && *r > 0.0 && *r <= 1000.0)
                .with_context(|| {
                    format!("--pacing-live-rate must be events per second in (0, 1000], not {v:?}")
                })?,
        };
        let no_email_writer = match no_email_writer.as_deref() {
            None | Some("0" | "false" | "no") => false,
            Some("1" | "true" | "yes") => true,
            Some(other) => bail!("--no-email-writer takes no value (or 1/0), not {other:?}"),
        };
        if events == 0
            || rounds == 0
            || concurrency == 0
            || batch_concurrency == 0
            || max_seconds == 0
            || iterations == 0
            || quota_seconds == 0
            || pacing_limit == Some(0)
            || pipeline_events == 0
            || pipeline_seconds == 0
        {
            bail!(
                "--events, --rounds, --concurrency, --batch-concurrency, --max-seconds, --iterations, \
                 --quota-seconds, --pacing-limit, --pipeline-events and --pipeline-seconds \
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
        let crm_writer_bin = match crm_writer_bin {
            Some(path) => PathBuf::from(path),
            None => beside_this_binary("handoff-crm-writer")?,
        };
        let email_writer_bin = match email_writer_bin {
            Some(path) => PathBuf::from(path),
            None => beside_this_binary("handoff-email-writer")?,
        };
        let sandbox_bin = match sandbox_bin {
            Some(path) => PathBuf::from(path),
            None => beside_this_binary("handoff-sandbox")?,
        };
        let dlq_bin = match dlq_bin {
            Some(path) => PathBuf::from(path),
            None => beside_this_binary("handoff-dlq")?,
        };
        Ok(Some(Options {
            events,
            rounds,
            concurrency,
            batch_size,
            batch_concurrency,
            warmup,
            max_duration: Duration::from_secs(max_seconds as u64),
            iterations,
            quota_duration: Duration::from_secs(quota_seconds as u64),
            pacing_limit,
            pipeline_events,
            pipeline_duration: Duration::from_secs(pipeline_seconds as u64),
            no_email_writer,
            dead_letters,
            pacing_dead_letters,
            pacing_live_rate,
            only,
            ingest_bin,
            normalizer_bin,
            crm_writer_bin,
            email_writer_bin,
            sandbox_bin,
            dlq_bin,
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
        assert_eq!(o.rounds, 3);
        assert_eq!(parse(&["--rounds=5"]).rounds, 5);
    }

    #[test]
    fn only_picks_parts() {
        let o = parse(&["--only", "normalizer,normalize"]);
        assert_eq!(
            o.only,
            Parts {
                normalizer: true,
                normalize: true,
                ..Parts::NONE
            }
        );
        assert!(parse(&["--only=ingest"]).only.ingest);
        assert_eq!(
            parse(&["--only=delivery"]).only,
            Parts {
                delivery: true,
                ..Parts::NONE
            }
        );
        assert_eq!(
            parse(&["--only=pipeline"]).only,
            Parts {
                pipeline: true,
                ..Parts::NONE
            }
        );
        assert_eq!(
            parse(&["--only=dead-letters"]).only,
            Parts {
                dead_letters: true,
                ..Parts::NONE
            }
        );
        assert_eq!(
            parse(&["--only=replay-pacing"]).only,
            Parts {
                replay_pacing: true,
                ..Parts::NONE
            }
        );
        assert_eq!(parse(&["--only=all"]).only, Parts::ALL);
    }

    #[test]
    fn the_replay_pacing_options_parse() {
        let o = parse(&[]);
        assert_eq!((o.pacing_dead_letters, o.pacing_live_rate), (5_000, 4.0));
        let o = parse(&["--pacing-dead-letters=500", "--pacing-live-rate", "2.5"]);
        assert_eq!((o.pacing_dead_letters, o.pacing_live_rate), (500, 2.5));
        for bad in [
            ["--pacing-live-rate", "0"],
            ["--pacing-live-rate", "fast"],
            ["--pacing-dead-letters", "0"],
        ] {
            let args = bad.iter().map(|a| (*a).to_owned());
            assert!(Options::parse(args).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_pipeline_options_parse() {
        let o = parse(&[]);
        assert_eq!(o.pipeline_events, 5_000);
        assert_eq!(o.pipeline_duration, Duration::from_secs(20));
        assert!(!o.no_email_writer);
        let o = parse(&[
            "--pipeline-events=2_000",
            "--no-email-writer",
            "--pipeline-seconds",
            "7",
            "--email-writer-bin",
            "/x/handoff-email-writer",
        ]);
        assert_eq!(o.pipeline_events, 2_000);
        assert_eq!(o.pipeline_duration, Duration::from_secs(7));
        assert!(o.no_email_writer);
        assert_eq!(o.email_writer_bin, PathBuf::from("/x/handoff-email-writer"));
        assert!(!parse(&["--no-email-writer=0"]).no_email_writer);
    }

    #[test]
    fn bad_flags_are_refused() {
        let bad = |args: &[&str]| Options::parse(args.iter().map(|s| (*s).to_owned())).is_err();
        assert!(bad(&["--events"]));
        assert!(bad(&["--events", "many"]));
        assert!(bad(&["--batch-size", "501"]));
        assert!(bad(&["--concurrency", "0"]));
        assert!(bad(&["--rounds", "0"]));
        assert!(bad(&["--frobnicate"]));
        assert!(bad(&["--only", "everything"]));
        assert!(bad(&["--only", ","]));
        assert!(bad(&["--iterations", "0"]));
        assert!(bad(&["--quota-seconds", "0"]));
        assert!(bad(&["--pacing-limit", "0"]));
        assert!(bad(&["--pacing-limit", "5000000000"]));
        assert!(bad(&["--pipeline-events", "0"]));
        assert!(bad(&["--pipeline-seconds", "0"]));
        assert!(bad(&["--no-email-writer=maybe"]));
        assert!(bad(&["--dead-letters", "999"]));
    }

    #[test]
    fn the_quota_options_default_to_the_writer_s_own_pacing() {
        let o = parse(&[]);
        assert_eq!(o.quota_duration, Duration::from_secs(30));
        assert_eq!(o.pacing_limit, None);
        let o = parse(&["--quota-seconds=12", "--pacing-limit", "98"]);
        assert_eq!(o.quota_duration, Duration::from_secs(12));
        assert_eq!(o.pacing_limit, Some(98));
    }

    #[test]
    fn the_dead_letter_options_parse() {
        let o = parse(&[]);
        assert_eq!(o.dead_letters, 50_000);
        let o = parse(&["--dead-letters=5_000", "--dlq-bin", "/x/handoff-dlq"]);
        assert_eq!(o.dead_letters, 5_000);
        assert_eq!(o.dlq_bin, PathBuf::from("/x/handoff-dlq"));
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
