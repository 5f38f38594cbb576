//! `handoff-sandbox`: loads configuration, installs telemetry, binds the listeners and runs
//! [`handoff_sandbox::run`] until SIGTERM or SIGINT.

use anyhow::Context as _;
use handoff_sandbox::Config;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg: Config = handoff_kit::config::load_or_exit("handoff-sandbox");
    let _telemetry = handoff_kit::telemetry::init("handoff-sandbox", &cfg.telemetry)
        .context("starting telemetry")?;
    let http = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .with_context(|| format!("binding the HTTP listener on {}", cfg.http.listen))?;
    let admin = tokio::net::TcpListener::bind(cfg.admin.listen)
        .await
        .with_context(|| format!("binding the admin listener on {}", cfg.admin.listen))?;
    let shutdown = CancellationToken::new();
    handoff_kit::shutdown::cancel_on_signal(shutdown.clone());
    handoff_sandbox::run(cfg, http, admin, shutdown)
        .await
        .context("running the sandbox")
}
