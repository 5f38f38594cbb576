//! A Handoff service under test, run as its real release binary in a child
//! process with a throw-away configuration file (written beside its log in
//! the temp directory, both removed when it stops): what [`crate::ingest`],
//! [`crate::normalizer`], [`crate::delivery`] (the crm-writer and the
//! sandbox CRM) and [`crate::dead_letters`] (`handoff-dlq serve`) have in common.
//!
//! The child gets a clean environment for its configuration: `HANDOFF_*`
//! variables (the bench's own flags among them) would be read as config keys,
//! and `RUST_LOG` / `OTEL_*` would change what is measured, so none are passed.
//! Secrets a service reads from its own variables (the crm-writer's
//! `HUBSPOT_ACCESS_TOKEN`) are given explicitly ([`Service::spawn_with_env`]).

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

/// A running service binary.
pub struct Service {
    /// What the service is called in messages ("ingest", "the normalizer").
    name: &'static str,
    child: Child,
    pid: u32,
    /// `http://127.0.0.1:<port>` of the admin server (`/readyz`, `/metrics`).
    pub admin: String,
    config_path: PathBuf,
    log_path: PathBuf,
}

impl Service {
    /// Writes `config` for `namespace` and starts `bin` with it (`HANDOFF_CONFIG`).
    /// `admin_port` is where the config tells the admin server to listen.
    pub fn spawn(
        name: &'static str,
        bin: &Path,
        namespace: &str,
        config: &str,
        admin_port: u16,
    ) -> anyhow::Result<Service> {
        Service::spawn_with_env(name, bin, namespace, config, admin_port, &[])
    }

    /// [`Service::spawn`] with `env` set in the child as well: variables outside the
    /// `HANDOFF_` prefix, such as the secret a config names by its variable.
    pub fn spawn_with_env(
        name: &'static str,
        bin: &Path,
        namespace: &str,
        config: &str,
        admin_port: u16,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Service> {
        Service::start(name, bin, &[], namespace, config, admin_port, env)
    }

    /// [`Service::spawn`] with command-line `args`: a binary with subcommands
    /// (`handoff-dlq serve`).
    pub fn spawn_with_args(
        name: &'static str,
        bin: &Path,
        args: &[&str],
        namespace: &str,
        config: &str,
        admin_port: u16,
    ) -> anyhow::Result<Service> {
        Service::start(name, bin, args, namespace, config, admin_port, &[])
    }

    fn start(
        name: &'static str,
        bin: &Path,
        args: &[&str],
        namespace: &str,
        config: &str,
        admin_port: u16,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Service> {
        if !bin.is_file() {
            bail!(
                "{} does not exist; build it first with `cargo build --release --bins`",
                bin.display()
            );
        }
        let stem = bin
            .file_stem()
            .map_or("service".into(), |s| s.to_string_lossy());
        let dir = std::env::temp_dir();
        let config_path = dir.join(format!("handoff-bench-{namespace}-{stem}.toml"));
        let log_path = dir.join(format!("handoff-bench-{namespace}-{stem}.log"));
        std::fs::write(&config_path, config)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let log_err = log.try_clone().context("sharing the log file")?;

        let mut command = Command::new(bin);
        command.args(args);
        for (var, _) in std::env::vars_os() {
            let var_str = var.to_string_lossy();
            if var_str.starts_with("HANDOFF_")
                || var_str.starts_with("OTEL_")
                || var_str == "RUST_LOG"
            {
                command.env_remove(&var);
            }
        }
        for (var, value) in env {
            command.env(var, value);
        }
        let child = command
            .env("HANDOFF_CONFIG", &config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // If the bench dies half-way, the service must not outlive it.
            .kill_on_drop(true)
            // Its own process group: Ctrl-C in the terminal reaches only the bench, which
            // then stops the service itself and cleans up after it.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child
            .id()
            .with_context(|| format!("{name} exited at once"))?;
        Ok(Service {
            name,
            child,
            pid,
            admin: format!("http://127.0.0.1:{admin_port}"),
            config_path,
            log_path,
        })
    }

    /// The child's process id, for `/proc` readings.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Fails with the service's last log lines if it has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self
            .child
            .try_wait()
            .with_context(|| format!("checking on {}", self.name))?
        {
            bail!(
                "{} exited ({status}); its output:\n{}",
                self.name,
                self.log_tail(20)
            );
        }
        Ok(())
    }

    /// Polls `/readyz` until it answers 200, failing early if the process exits.
    pub async fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let client = admin_client()?;
        let url = format!("{}/readyz", self.admin);
        let deadline = Instant::now() + within;
        loop {
            self.check_alive().context("during start-up")?;
            if let Ok(response) = client.get(&url).send().await
                && response.status() == reqwest::StatusCode::OK
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} was not ready within {within:?} ({url}); its output:\n{}",
                    self.name,
                    self.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The text of `GET /metrics` on the admin server.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let url = format!("{}/metrics", self.admin);
        let response = admin_client()?
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?
            .error_for_status()
            .with_context(|| format!("GET {url}"))?;
        response
            .text()
            .await
            .with_context(|| format!("reading {url}"))
    }

    /// Sends SIGTERM and waits for the graceful drain; kills the process if it takes longer
    /// than `grace`. Returns how it exited.
    pub async fn stop(mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        let name = self.name;
        if let Some(status) = self
            .child
            .try_wait()
            .with_context(|| format!("checking on {name}"))?
        {
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
            eprintln!("handoff-bench: SIGTERM to {name} failed ({sent:?}); killing it");
            let _ = self.child.kill().await;
        }
        let status = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status.with_context(|| format!("waiting for {name} to exit"))?,
            Err(_) => {
                eprintln!(
                    "handoff-bench: {name} did not stop within {grace:?} of SIGTERM; killing it"
                );
                self.child
                    .kill()
                    .await
                    .with_context(|| format!("killing {name}"))?;
                self.child
                    .wait()
                    .await
                    .with_context(|| format!("waiting for {name} to die"))?
            }
        };
        if !status.success() {
            eprintln!(
                "handoff-bench: {name} exited with {status}; its output:\n{}",
                self.log_tail(20)
            );
        }
        self.remove_files();
        Ok(status)
    }

    /// The last `lines` lines the service wrote, indented, for error messages.
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

fn admin_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .context("building the admin client")
}

/// A port nothing listens on right now. Another process could take it before the service
/// binds it; on a bench box that race is not worth more machinery.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
