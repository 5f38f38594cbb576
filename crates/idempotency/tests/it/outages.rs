//! Redis down, cut or silent: errors come back quickly, never a hang, and health follows.

use std::time::{Duration, Instant};

use handoff_idempotency::{IdempotencyKey, RedisConfig, Store, StoreError};
use handoff_test_support::{self as support, TcpProxy};
use tokio_util::sync::CancellationToken;

fn store_at(url: String, op_timeout: Duration) -> Store {
    let cfg = RedisConfig { url, op_timeout };
    Store::new(&cfg, &support::namespace()).expect("valid url")
}

/// A local port with nothing listening on it.
async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// Waits until `cond` holds, for at most `limit`.
async fn eventually(limit: Duration, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn a_closed_port_fails_fast_and_is_unhealthy() {
    support::init_telemetry();
    let port = closed_port().await;
    // Construction does no I/O: a service starts even when Redis is down.
    let store = store_at(format!("redis://127.0.0.1:{port}/"), Duration::from_secs(2));
    assert!(
        !store.is_healthy(),
        "not healthy before Redis ever answered"
    );

    let started = Instant::now();
    let err = store.ping().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.is_transient());

    let started = Instant::now();
    let key = IdempotencyKey::new("ingest", "pub-1", "ev-1");
    let err = store
        .claim(&key, "fp", Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(!store.is_healthy());
}

#[tokio::test]
async fn a_silent_server_times_out_instead_of_hanging() {
    support::init_telemetry();
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let store = store_at(
        format!("redis://127.0.0.1:{port}/"),
        Duration::from_millis(300),
    );

    let started = Instant::now();
    let err = store.ping().await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(err, StoreError::Timeout(_) | StoreError::Unavailable(_)),
        "{err:?}"
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(!store.is_healthy());
    hold.abort();
}

#[tokio::test]
async fn a_cut_connection_recovers_after_restore() {
    support::init_telemetry();
    let proxy = TcpProxy::start(support::redis_addr()).await;
    let url = support::url_via(&support::redis_url(), proxy.addr());
    let store = store_at(url, Duration::from_millis(500));
    let key = IdempotencyKey::new("ingest", "pub-1", "ev-cut");

    store.ping().await.unwrap();
    assert!(store.is_healthy());

    proxy.cut();
    let started = Instant::now();
    let err = store
        .claim(&key, "fp", Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(!store.is_healthy());

    proxy.restore();
    let store2 = store.clone();
    assert!(
        eventually(Duration::from_secs(10), async || store2
            .ping()
            .await
            .is_ok())
        .await,
        "the store reconnects by itself"
    );
    assert!(store.is_healthy());
    store
        .claim(&key, "fp", Duration::from_secs(30))
        .await
        .unwrap();

    support::cleanup_redis(store.namespace()).await;
}

#[tokio::test]
async fn the_health_monitor_follows_redis() {
    support::init_telemetry();
    let proxy = TcpProxy::start(support::redis_addr()).await;
    let url = support::url_via(&support::redis_url(), proxy.addr());
    let store = store_at(url, Duration::from_millis(300));
    let shutdown = CancellationToken::new();
    store.spawn_health_monitor(Duration::from_millis(100), shutdown.clone());

    let s = store.clone();
    assert!(eventually(Duration::from_secs(5), async || s.is_healthy()).await);

    proxy.cut();
    let s = store.clone();
    assert!(eventually(Duration::from_secs(5), async || !s.is_healthy()).await);

    proxy.restore();
    let s = store.clone();
    assert!(
        eventually(Duration::from_secs(10), async || s.is_healthy()).await,
        "healthy again without any traffic but the monitor's pings"
    );
    shutdown.cancel();
}
