//! `handoff-email-writer`: loads configuration, installs telemetry, binds the admin listener and
//! runs [`handoff_email_writer::run`] until SIGTERM or SIGINT.

use anyhow::Context as _;
use handoff_email_writer::Config;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg: Config = handoff_kit::config::load_or_exit("handoff-email-writer");
    let _telemetry = handoff_kit::telemetry::init("handoff-email-writer", &cfg.telemetry)
        .context("starting telemetry")?;
    let admin = tokio::net::TcpListener::bind(cfg.admin.listen)
        .await
        .with_context(|| format!("binding the admin listener on {}", cfg.admin.listen))?;
    let shutdown = CancellationToken::new();
    handoff_kit::shutdown::cancel_on_signal(shutdown.clone());
    handoff_email_writer::run(cfg, admin, shutdown).await
}
