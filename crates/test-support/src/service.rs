//! A service running in-process for a test: its `run` function on a task of its own with an
//! admin listener on a free port and a shutdown token; ready when `/readyz` says so, stopped by
//! cancelling the token and waiting for `run` to drain and return.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One service under test. Dropping it cancels the service (a panicking test leaves nothing
/// running); [`InProcess::stop`] also waits for it and fails the test if it failed.
pub struct InProcess {
    pub name: &'static str,
    /// `http://127.0.0.1:PORT`: `/readyz`, `/healthz`, `/metrics`.
    pub admin_url: String,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl InProcess {
    /// Starts `run(admin_listener, shutdown)` on a task of its own.
    pub async fn start<F>(
        name: &'static str,
        run: impl FnOnce(TcpListener, CancellationToken) -> F,
    ) -> InProcess
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (listener, admin_url) = listener().await;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(listener, shutdown.clone()));
        InProcess {
            name,
            admin_url,
            shutdown,
            task: Some(task),
        }
    }

    /// Waits until `/readyz` says the service is connected to the broker and Redis.
    pub async fn wait_ready(&self) {
        let url = format!("{}/readyz", self.admin_url);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !reqwest::get(&url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never became ready",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Cancels the service and waits until it has drained and returned without error.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let Some(task) = self.task.take() else {
            return;
        };
        match tokio::time::timeout(Duration::from_secs(20), task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => panic!("{} failed: {err:#}", self.name),
            Ok(Err(err)) => panic!("{} panicked: {err}", self.name),
            Err(_) => panic!("{} did not stop within 20 s", self.name),
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A listener on a free local port and its base URL.
pub async fn listener() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    (listener, url)
}
