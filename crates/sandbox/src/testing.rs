//! Starting a sandbox in-process, for this crate's tests and for other crates' tests (crm-writer,
//! the pipeline scenarios): [`spawn`] binds both listeners on `127.0.0.1:0` and returns a
//! [`Running`] with the base URLs and typed access to records, Mailchimp members and events, the
//! request log, stats and faults, without going through HTTP.
//!
//! ```no_run
//! # async fn demo() -> Result<(), handoff_sandbox::Error> {
//! use handoff_sandbox::testing::{self, TEST_TOKEN};
//! let sandbox = testing::spawn(testing::config()).await?;
//! // point the client under test at sandbox.base_url with `Bearer {TEST_TOKEN}` ...
//! let stats = sandbox.stats();
//! sandbox.stop().await
//! # }
//! ```

use std::net::SocketAddr;
use std::ops::Deref;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Config, Error, Sandbox};

/// The private-app token [`config`] accepts.
pub const TEST_TOKEN: &str = "pat-test";

/// The Mailchimp API key [`config`] accepts (as the basic-auth password, any username).
pub const TEST_MAILCHIMP_KEY: &str = "0123456789abcdef0123456789abcdef-us1";

/// The Mailchimp audience [`config`] configures.
pub const TEST_MAILCHIMP_LIST: &str = "test-list";

/// A configuration for tests: token [`TEST_TOKEN`], HubSpot's default quota, Mailchimp key
/// [`TEST_MAILCHIMP_KEY`] with audience [`TEST_MAILCHIMP_LIST`] and 10 connections, no faults, a
/// short shutdown grace, and OAuth client `sandbox-client` / `sandbox-secret` with refresh token
/// `sandbox-refresh-token`.
pub fn config() -> Config {
    let mut cfg = Config::default();
    cfg.hubspot.tokens = vec![TEST_TOKEN.to_owned()];
    cfg.mailchimp.api_keys = vec![TEST_MAILCHIMP_KEY.to_owned()];
    cfg.mailchimp.lists = vec![TEST_MAILCHIMP_LIST.to_owned()];
    cfg.shutdown.grace = Duration::from_secs(2);
    cfg
}

/// A sandbox running in this process. Dropping it stops the server too; [`Running::stop`] also
/// waits for it.
#[derive(Debug)]
pub struct Running {
    /// `http://127.0.0.1:PORT`: the vendor APIs and `/_sandbox/*`.
    pub base_url: String,
    /// `http://127.0.0.1:PORT`: `/healthz`, `/readyz`, `/metrics`.
    pub admin_url: String,
    /// The instance, for typed access to its state.
    pub sandbox: Sandbox,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), Error>>>,
}

impl Deref for Running {
    type Target = Sandbox;

    fn deref(&self) -> &Sandbox {
        &self.sandbox
    }
}

async fn bind_any(what: &'static str) -> Result<(TcpListener, SocketAddr), Error> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|source| Error::Io { what, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| Error::Io { what, source })?;
    Ok((listener, addr))
}

/// Starts a sandbox configured by `cfg` on two fresh ports (`cfg`'s listen addresses are ignored,
/// so parallel tests never collide).
pub async fn spawn(cfg: Config) -> Result<Running, Error> {
    let (http, http_addr) = bind_any("binding the test HTTP listener").await?;
    let (admin, admin_addr) = bind_any("binding the test admin listener").await?;
    let sandbox = Sandbox::new(cfg);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(crate::serve(sandbox.clone(), http, admin, shutdown.clone()));
    Ok(Running {
        base_url: format!("http://{http_addr}"),
        admin_url: format!("http://{admin_addr}"),
        sandbox,
        shutdown,
        task: Some(task),
    })
}

impl Running {
    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) -> Result<(), Error> {
        self.shutdown.cancel();
        match self.task.take() {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
