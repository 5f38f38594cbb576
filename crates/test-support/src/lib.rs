//! Helpers shared by the integration tests of every crate.
//!
//! Tests share one RabbitMQ and one Redis; each test isolates itself with a
//! random [`namespace`] (a prefix for every exchange, queue and Redis key) and
//! cleans up after itself. Outages are simulated with a [`TcpProxy`] the test
//! controls, never by stopping the shared servers. Trace tests export to an
//! [`otlp::OtlpReceiver`] and assert on the spans it kept. A test that must crash a
//! server starts a private one ([`private::PrivateRedis`], [`private::PrivateRabbit`]).

pub mod otlp;
pub mod private;
pub mod service;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The most of `sorted` (arrival times, oldest first) in any `per`-long window ending at one
/// of them: what a rolling quota such as HubSpot's 100 per 10 s counts. The e2e pacing test
/// and the paced-replay bench both judge the sandbox's request log by it.
pub fn busiest_window(sorted: &[time::OffsetDateTime], per: std::time::Duration) -> usize {
    let mut most = 0;
    let mut start = 0;
    for (end, t) in sorted.iter().enumerate() {
        while (*t - sorted[start]).unsigned_abs() >= per {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

/// A fresh namespace such as `t3f9c0a1b2c4d`: unique per call, safe in queue names and Redis keys.
pub fn namespace() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("t{}", &id[..12])
}

/// The broker the tests use; `HANDOFF_TEST_AMQP_URL` overrides the local default.
pub fn amqp_url() -> String {
    std::env::var("HANDOFF_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// The Redis the tests use; `HANDOFF_TEST_REDIS_URL` overrides the local default.
pub fn redis_url() -> String {
    std::env::var("HANDOFF_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned())
}

/// Address of the broker behind [`amqp_url`], for a [`TcpProxy`] in front of it.
pub fn amqp_addr() -> SocketAddr {
    host_port(&amqp_url(), 5672)
}

/// Address of the Redis behind [`redis_url`], for a [`TcpProxy`] in front of it.
pub fn redis_addr() -> SocketAddr {
    host_port(&redis_url(), 6379)
}

fn host_port(url: &str, default_port: u16) -> SocketAddr {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().unwrap_or(default_port)),
        None => (authority, default_port),
    };
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    format!("{host}:{port}")
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Rewrites `url` so it points at `addr` instead of its own host and port.
pub fn url_via(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (userinfo, hostpath) = match rest.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), rest),
    };
    let path = hostpath.find('/').map(|i| &hostpath[i..]).unwrap_or("");
    format!("{scheme}://{userinfo}{addr}{path}")
}

/// A direct broker connection (never through a test's proxy) to the
/// namespace's v1 topology (declared if missing), for publishing into and
/// looking into its queues. Its teardown removes the delay queues of the
/// default retry tiers; a test whose services use other tiers takes
/// [`inspector_with`] so that none of its queues outlive it (each one left
/// behind holds broker file handles, and RabbitMQ stops accepting
/// connections when they run out).
pub async fn inspector(namespace: &str) -> handoff_bus::Bus {
    inspector_with(namespace, &handoff_bus::BusConfig::default().retry_delays).await
}

/// [`inspector`] for services that run with the retry tiers `retry_delays`.
pub async fn inspector_with(
    namespace: &str,
    retry_delays: &[std::time::Duration],
) -> handoff_bus::Bus {
    let bus = handoff_bus::Bus::start(
        handoff_bus::BusConfig {
            url: amqp_url(),
            retry_delays: retry_delays.to_vec(),
            ..handoff_bus::BusConfig::default()
        },
        handoff_bus::Topology::v1(namespace),
        tokio_util::sync::CancellationToken::new(),
    );
    if let Err(err) = bus.wait_ready(std::time::Duration::from_secs(20)).await {
        panic!("the inspector could not connect to RabbitMQ: {err}");
    }
    bus
}

/// Takes every message waiting in `queue`.
pub async fn drain_queue(inspector: &handoff_bus::Bus, queue: &str) -> Vec<handoff_bus::Delivery> {
    let mut out = Vec::new();
    loop {
        match inspector.get(queue).await {
            Ok(Some(delivery)) => out.push(delivery),
            Ok(None) => return out,
            Err(err) => panic!("reading {queue}: {err}"),
        }
    }
}

/// Deletes the namespace's queues, exchanges and Redis keys.
pub async fn remove_namespace(inspector: handoff_bus::Bus, namespace: &str) {
    if let Err(err) = inspector.teardown().await {
        eprintln!("tearing down namespace {namespace}: {err}");
    }
    inspector.close().await;
    cleanup_redis(namespace).await;
}

/// Installs tracing + OpenTelemetry for tests once per test binary.
pub fn init_telemetry() {
    handoff_kit::telemetry::init_for_tests();
}

/// Waits until `n` `DeadLetter` records have arrived on the namespace's dead-letter queue and
/// returns them (taken off the queue); fails the test after `within`.
pub async fn dead_letters(
    inspector: &handoff_bus::Bus,
    n: usize,
    within: std::time::Duration,
) -> Vec<handoff_events::v1::DeadLetter> {
    use handoff_events::Message as _;
    let queue = inspector.topology().dead_letter_queue();
    let mut found = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while found.len() < n && tokio::time::Instant::now() < deadline {
        for d in drain_queue(inspector, &queue).await {
            found.push(
                handoff_events::v1::DeadLetter::decode(d.body.as_slice())
                    .expect("a DeadLetter record"),
            );
        }
        if found.len() < n {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    assert!(
        found.len() >= n,
        "expected {n} dead letters within {within:?}, got {}",
        found.len()
    );
    found
}

/// Deletes every Redis key under `prefix` (the test's namespace).
pub async fn cleanup_redis(prefix: &str) {
    let Ok(client) = redis::Client::open(redis_url()) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let pattern = format!("{prefix}:*");
    let keys: Vec<String> = match redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut conn)
        .await
    {
        Ok(keys) => keys,
        Err(_) => return,
    };
    for chunk in keys.chunks(500) {
        let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query_async(&mut conn).await;
    }
}

/// A TCP proxy in front of a real server, which a test can cut and restore to
/// simulate an outage without touching the shared server.
///
/// While cut, live connections are closed and new ones are accepted and closed
/// at once, which is what a client sees when a broker goes away. While stalled,
/// connections stay open but every byte is held until [`TcpProxy::resume`]: a
/// server that stops answering, which a client only notices by its own timeouts.
pub struct TcpProxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    stalled: watch::Sender<bool>,
    stop: watch::Sender<bool>,
}

impl TcpProxy {
    /// Starts a proxy on a random local port forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy port");
        let addr = listener.local_addr().expect("proxy address");
        let up = Arc::new(AtomicBool::new(true));
        let (generation, _) = watch::channel(0u64);
        let (stalled, _) = watch::channel(false);
        let (stop, mut stopped) = watch::channel(false);
        let accept_stalled = stalled.clone();
        let accept_up = up.clone();
        let accept_generation = generation.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = stopped.changed() => return,
                };
                let Ok((inbound, _)) = accepted else { continue };
                if !accept_up.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cut = accept_generation.subscribe();
                let (stalled_in, stalled_out) =
                    (accept_stalled.subscribe(), accept_stalled.subscribe());
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    tokio::select! {
                        () = pump(ri, wo, stalled_in) => {}
                        () = pump(ro, wi, stalled_out) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        TcpProxy {
            addr,
            up,
            generation,
            stalled,
            stop,
        }
    }

    /// Where clients should connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every live connection and refuses new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// Holds every byte, both ways, on live and new connections, closing nothing.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Delivers what was held and lets traffic flow again.
    pub fn resume(&self) {
        self.stalled.send_replace(false);
    }
}

/// Copies `from` to `to`, holding what it read while the proxy is stalled.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut stalled: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stalled.wait_for(|stalled| !*stalled).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        let _ = self.stop.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: f64) -> time::OffsetDateTime {
        time::OffsetDateTime::UNIX_EPOCH
            + std::time::Duration::from_secs_f64(1_774_000_000.0 + secs)
    }

    #[test]
    fn the_busiest_window_slides_over_every_request() {
        let times: Vec<_> = [0.0, 1.0, 2.0, 9.9, 10.0, 10.5, 11.0, 25.0]
            .into_iter()
            .map(at)
            .collect();
        let secs = std::time::Duration::from_secs;
        // [1.0, 11.0): 1.0, 2.0, 9.9, 10.0, 10.5 = 5; a window is half-open, so 0.0 and
        // 10.0 never share one.
        assert_eq!(busiest_window(&times, secs(10)), 5);
        assert_eq!(busiest_window(&times, secs(1)), 3);
        assert_eq!(busiest_window(&[], secs(10)), 0);
    }

    #[test]
    fn urls_are_rewritten_through_a_proxy() {
        let addr: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
        assert_eq!(
            url_via("amqp://guest:guest@127.0.0.1:5672/%2f", addr),
            "amqp://guest:guest@127.0.0.1:40000/%2f"
        );
        assert_eq!(
            url_via("redis://127.0.0.1:6379/", addr),
            "redis://127.0.0.1:40000/"
        );
        assert_eq!(
            host_port("amqp://guest:guest@localhost:5672/%2f", 1).port(),
            5672
        );
    }
}

/// Removes a test's namespace when dropped unless [`TeardownOnDrop::disarm`]ed: the safety net
/// for a test that panics before its own cleanup, so its queues do not outlive it (leftover quorum
/// queues hold broker file handles, and RabbitMQ stops accepting connections when they run out).
/// The cleanup runs on a thread of its own with its own runtime, since `Drop` cannot await.
#[derive(Debug)]
pub struct TeardownOnDrop {
    namespace: String,
    retry_delays: Vec<std::time::Duration>,
    armed: bool,
}

impl TeardownOnDrop {
    /// Guards `namespace`, whose services use the retry tiers `retry_delays`.
    pub fn new(namespace: &str, retry_delays: &[std::time::Duration]) -> Self {
        TeardownOnDrop {
            namespace: namespace.to_owned(),
            retry_delays: retry_delays.to_vec(),
            armed: true,
        }
    }

    /// The test cleaned up itself; nothing left to do on drop.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for TeardownOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let namespace = self.namespace.clone();
        let tiers = self.retry_delays.clone();
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let inspector = inspector_with(&namespace, &tiers).await;
                remove_namespace(inspector, &namespace).await;
            });
        });
        let _ = cleanup.join();
    }
}
