//! `handoff-normalizer`: loads configuration, installs telemetry, binds the
//! admin listener and runs [`handoff_normalizer::run`] until SIGTERM or SIGINT.
//!
//! `handoff-normalizer check EVENT_TYPE [FILE] [--schema-version N] [--config F]`
//! prints what the configured normalizer makes of one raw JSON body (stdin
//! without FILE) and exits 1 if it would be dead-lettered.

#![allow(clippy::print_stdout)] // `check` prints its verdict.

use std::io::Read as _;

use anyhow::{Context as _, bail};
use handoff_normalize::Normalizer;
use handoff_normalizer::Config;
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("check") {
        let accepted = check(&args[1..])?;
        std::process::exit(if accepted { 0 } else { 1 });
    }
    serve()
}

#[tokio::main]
async fn serve() -> anyhow::Result<()> {
    let cfg: Config = handoff_kit::config::load_or_exit("handoff-normalizer");
    let _telemetry = handoff_kit::telemetry::init("handoff-normalizer", &cfg.telemetry)
        .context("starting telemetry")?;
    let admin = tokio::net::TcpListener::bind(cfg.admin.listen)
        .await
        .with_context(|| format!("binding the admin listener on {}", cfg.admin.listen))?;
    let shutdown = CancellationToken::new();
    handoff_kit::shutdown::cancel_on_signal(shutdown.clone());
    handoff_normalizer::run(cfg, admin, shutdown).await
}

/// `check EVENT_TYPE [FILE] [--schema-version N]`; returns whether the event was accepted.
fn check(args: &[String]) -> anyhow::Result<bool> {
    let cfg: Config = handoff_kit::config::load_or_exit("handoff-normalizer");
    let mut positional = Vec::new();
    let mut schema_version = handoff_events::CURRENT_SCHEMA_VERSION;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--schema-version" => {
                let value = rest.next().context("--schema-version needs a number")?;
                schema_version = value
                    .parse()
                    .with_context(|| format!("--schema-version {value:?} is not a number"))?;
            }
            "--config" | "-c" => {
                rest.next();
            }
            other if other.starts_with("--config=") => {}
            other => positional.push(other),
        }
    }
    let (event_type, file) = match positional.as_slice() {
        [event_type] => (*event_type, None),
        [event_type, file] => (*event_type, Some(*file)),
        _ => bail!(
            "usage: handoff-normalizer check EVENT_TYPE [FILE] [--schema-version N] [--config F]"
        ),
    };
    let mut body = Vec::new();
    match file {
        Some(path) => body = std::fs::read(path).with_context(|| format!("reading {path}"))?,
        None => {
            std::io::stdin()
                .read_to_end(&mut body)
                .context("reading stdin")?;
        }
    }
    let normalizer = Normalizer::new(&cfg.normalize).context("compiling [normalize]")?;
    let (accepted, verdict) =
        handoff_normalizer::check::check(&normalizer, event_type, schema_version, &body)
            .map_err(anyhow::Error::msg)?;
    println!("{}", serde_json::to_string_pretty(&verdict)?);
    Ok(accepted)
}
