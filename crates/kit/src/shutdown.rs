//! Shutdown: wait for SIGTERM/SIGINT, turn it into a cancelled [`CancellationToken`], and bound
//! every drain step with a grace period.
//!
//! The token is created by the service's `main` and passed down (never a global), so tests cancel it
//! directly instead of sending signals. A drain that overruns its grace logs a warning naming what
//! was being drained and returns `false`; the caller then moves on, so the process still exits
//! inside Kubernetes' grace period.

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// `[shutdown]` in every service's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long in-flight work may take to finish after SIGTERM; well under
    /// Kubernetes' default 30 s termination grace period.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace: Duration::from_secs(20),
        }
    }
}

/// Completes on the first SIGTERM or SIGINT (Ctrl-C) and returns the signal's name. If a signal
/// handler cannot be installed, that signal is ignored (logged) and the other still works.
pub async fn wait_for_signal() -> &'static str {
    let ctrl_c = async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => "SIGINT",
            Err(err) => {
                tracing::error!(error = %err, "Cannot listen for SIGINT.");
                std::future::pending().await
            }
        }
    };

    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
                "SIGTERM"
            }
            Err(err) => {
                tracing::error!(error = %err, "Cannot listen for SIGTERM.");
                std::future::pending().await
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<&'static str>();

    tokio::select! {
        name = ctrl_c => name,
        name = term => name,
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn signal() {
    wait_for_signal().await;
}

/// Spawns a task that cancels `token` on the first SIGTERM/SIGINT (and logs it). The task ends
/// quietly if the token is cancelled some other way first. Must be called inside a Tokio runtime.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        tokio::select! {
            name = wait_for_signal() => {
                tracing::info!(signal = name, "Shutdown requested; draining.");
                token.cancel();
            }
            () = token.cancelled() => {}
        }
    });
}

/// Awaits `fut` for at most `grace`. Returns `true` if it finished; on timeout logs a warning naming
/// `what`, drops `fut` and returns `false`.
pub async fn drain<F: Future>(what: &str, grace: Duration, fut: F) -> bool {
    match tokio::time::timeout(grace, fut).await {
        Ok(_) => true,
        Err(_) => {
            tracing::warn!(what, grace = ?grace, "Drain did not finish within its grace period; moving on.");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_times_out_and_reports_false() {
        let started = tokio::time::Instant::now();
        let done = drain(
            "slow thing",
            Duration::from_secs(10),
            std::future::pending::<()>(),
        )
        .await;
        assert!(!done);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn drain_returns_true_when_the_future_finishes() {
        let done = drain(
            "quick thing",
            Duration::from_secs(10),
            tokio::time::sleep(Duration::from_secs(3)),
        )
        .await;
        assert!(done);
    }

    #[tokio::test]
    async fn cancel_on_signal_task_ends_when_token_is_cancelled() {
        let token = CancellationToken::new();
        cancel_on_signal(token.clone());
        token.cancel();
        tokio::task::yield_now().await;
        assert!(token.is_cancelled());
    }
}
