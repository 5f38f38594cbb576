//! The ingest service under test, run as its real release binary in a child
//! process with a throw-away configuration: a random namespace and API key,
//! free local ports, JSON logs at `warn` into a file beside the config.
//!
//! The child gets a clean environment for its configuration: `HANDOFF_*`
//! variables (the bench's own flags among them) would be read as config keys,
//! and `RUST_LOG` / `OTEL_*` would change what is measured, so none are passed.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use sha2::{Digest, Sha256};
use tokio::process::{Child, Command};

use crate::payload;

/// A running `handoff-ingest`.
pub struct Ingest {
    child: Child,
    pid: u32,
    /// `http://127.0.0.1:<port>` of the public API.
    pub base: String,
    /// `http://127.0.0.1:<port>` of the admin server (`/readyz`, `/metrics`).
    pub admin: String,
    /// The bearer key of the bench's publisher.
    pub key: String,
    config_path: PathBuf,
    log_path: PathBuf,
}

impl Ingest {
    /// Writes a config for `namespace` and starts `bin` with it.
    pub fn spawn(bin: &Path, namespace: &str) -> anyhow::Result<Ingest> {
        if !bin.is_file() {
            bail!(
                "{} does not exist; build it first with `cargo build --release --bins`",
                bin.display()
            );
        }
        let http = free_port().context("finding a free port for the HTTP API")?;
        let admin = free_port().context("finding a free port for the admin server")?;
        let key = format!("bench-key-{}", handoff_test_support::namespace());
        let dir = std::env::temp_dir();
        let config_path = dir.join(format!("handoff-bench-{namespace}.toml"));
        let log_path = dir.join(format!("handoff-bench-{namespace}.log"));
        std::fs::write(&config_path, config(namespace, http, admin, &key))
            .with_context(|| format!("writing {}", config_path.display()))?;
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let log_err = log.try_clone().context("sharing the log file")?;

        let mut command = Command::new(bin);
        for (name, _) in std::env::vars_os() {
            let name_str = name.to_string_lossy();
            if name_str.starts_with("HANDOFF_")
                || name_str.starts_with("OTEL_")
                || name_str == "RUST_LOG"
            {
                command.env_remove(&name);
            }
        }
        let child = command
            .env("HANDOFF_CONFIG", &config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // If the bench dies half-way, the service must not outlive it.
            .kill_on_drop(true)
            // Its own process group: Ctrl-C in the terminal reaches only the bench, which
            // then stops ingest itself and cleans up after it.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("ingest exited at once")?;
        Ok(Ingest {
            child,
            pid,
            base: format!("http://127.0.0.1:{http}"),
            admin: format!("http://127.0.0.1:{admin}"),
            key,
            config_path,
            log_path,
        })
    }

    /// The child's process id, for `/proc` readings.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Polls `/readyz` until it answers 200, failing early if the process exits.
    pub async fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .context("building the readiness client")?;
        let url = format!("{}/readyz", self.admin);
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().context("checking on ingest")? {
                bail!(
                    "ingest exited during start-up ({status}); its output:\n{}",
                    self.log_tail(20)
                );
            }
            if let Ok(response) = client.get(&url).send().await
                && response.status() == reqwest::StatusCode::OK
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "ingest was not ready within {within:?} ({url}); its output:\n{}",
                    self.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends SIGTERM and waits for the graceful drain; kills the process if it takes longer
    /// than `grace`. Returns how it exited.
    pub async fn stop(mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait().context("checking on ingest")? {
            self.remove_files();
            return Ok(status);
        }
        // `kill -TERM` rather than a signal crate: the workspace forbids `unsafe`, and one
        // signal is not worth a dependency.
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        if !sent.as_ref().is_ok_and(ExitStatus::success) {
            eprintln!("handoff-bench: SIGTERM to ingest failed ({sent:?}); killing it");
            let _ = self.child.kill().await;
        }
        let status = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status.context("waiting for ingest to exit")?,
            Err(_) => {
                eprintln!(
                    "handoff-bench: ingest did not stop within {grace:?} of SIGTERM; killing it"
                );
                self.child.kill().await.context("killing ingest")?;
                self.child
                    .wait()
                    .await
                    .context("waiting for ingest to die")?
            }
        };
        if !status.success() {
            eprintln!(
                "handoff-bench: ingest exited with {status}; its output:\n{}",
                self.log_tail(20)
            );
        }
        self.remove_files();
        Ok(status)
    }

    /// The last `lines` lines ingest wrote, indented, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let mut out = String::new();
        for line in &all[all.len().saturating_sub(lines)..] {
            let _ = writeln!(out, "    {line}");
        }
        if out.is_empty() {
            out.push_str("    (nothing)\n");
        }
        out
    }

    fn remove_files(&self) {
        let _ = std::fs::remove_file(&self.config_path);
        let _ = std::fs::remove_file(&self.log_path);
    }
}

/// The configuration file: everything the bench depends on is spelled out, the rest is
/// ingest's defaults (the production settings).
fn config(namespace: &str, http: u16, admin: u16, key: &str) -> String {
    let key_sha256 = hex::encode(Sha256::digest(key.as_bytes()));
    let amqp = handoff_test_support::amqp_url();
    let redis = handoff_test_support::redis_url();
    let publisher = payload::PUBLISHER_ID;
    format!(
        r#"# Written by handoff-bench; removed when the run ends.
namespace = "{namespace}"

[http]
listen = "127.0.0.1:{http}"

[admin]
listen = "127.0.0.1:{admin}"

[bus]
url = "{amqp}"

[redis]
url = "{redis}"

[shutdown]
# Nothing is in flight by the time the bench stops ingest; keep the wait short.
grace = "5s"

[telemetry]
# Production's format; nothing is logged per event at warn.
log_format = "json"
log_filter = "warn"

[[publishers]]
id = "{publisher}"
key_sha256 = "{key_sha256}"
event_types = ["*"]
# High enough that the rate limiter never answers 429 during the bench.
rate_per_second = 10000000
burst = 10000000
"#
    )
}

/// A port nothing listens on right now. Another process could take it before ingest binds
/// it; on a bench box that race is not worth more machinery.
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
