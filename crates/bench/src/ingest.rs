//! The ingest service under test, run as its real release binary in a child
//! process ([`Service`]) with a throw-away configuration: a random namespace
//! and API key, free local ports, JSON logs at `warn` into a file beside the
//! config.

use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::Context as _;
use sha2::{Digest, Sha256};

use crate::payload;
use crate::service::{Service, free_port};

/// A running `handoff-ingest`.
pub struct Ingest {
    service: Service,
    /// `http://127.0.0.1:<port>` of the public API.
    pub base: String,
    /// The bearer key of the bench's publisher.
    pub key: String,
}

impl Ingest {
    /// Writes a config for `namespace` and starts `bin` with it.
    pub fn spawn(bin: &Path, namespace: &str) -> anyhow::Result<Ingest> {
        let http = free_port().context("finding a free port for the HTTP API")?;
        let admin = free_port().context("finding a free port for the admin server")?;
        let key = format!("bench-key-{}", handoff_test_support::namespace());
        let service = Service::spawn(
            "ingest",
            bin,
            namespace,
            &config(namespace, http, admin, &key),
            admin,
        )?;
        Ok(Ingest {
            service,
            base: format!("http://127.0.0.1:{http}"),
            key,
        })
    }

    /// The child's process id, for `/proc` readings.
    pub fn pid(&self) -> u32 {
        self.service.pid()
    }

    /// Fails with ingest's last log lines if it has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.service.check_alive()
    }

    /// Polls `/readyz` until it answers 200, failing early if the process exits.
    pub async fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        self.service.wait_ready(within).await
    }

    /// Sends SIGTERM and waits for the graceful drain (see [`Service::stop`]).
    pub async fn stop(self, grace: Duration) -> anyhow::Result<ExitStatus> {
        self.service.stop(grace).await
    }

    /// The last `lines` lines ingest wrote, indented, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        self.service.log_tail(lines)
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
