//! Coalescing: concurrent claims and completions share script calls, keep their own results, and
//! a lone request on an idle store leaves at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use handoff_idempotency::{Claim, Completion, IdempotencyKey, LedgerUpdate, RedisConfig, Store};
use handoff_idempotency::{ClaimToken, StoreError};

use crate::Fixture;

const LEASE: Duration = Duration::from_secs(30);
const RETENTION: Duration = Duration::from_secs(3600);

fn key(id: impl std::fmt::Display) -> IdempotencyKey {
    IdempotencyKey::new("ingest", "pub-1", format!("ev-{id}"))
}

/// Runs `n` claims of `key_of(i)` with fingerprint `fp-{i}` at once, each in its own task.
async fn claim_all(
    store: &Store,
    n: usize,
    key_of: impl Fn(usize) -> IdempotencyKey,
) -> Vec<Result<Claim, StoreError>> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let store = store.clone();
            let k = key_of(i);
            tokio::spawn(async move { store.claim(&k, &format!("fp-{i}"), LEASE).await })
        })
        .collect();
    futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|joined| joined.expect("claim task"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_concurrent_claims_of_distinct_keys_all_acquire() {
    let mut fx = Fixture::new().await;
    let results = claim_all(&fx.store, 500, key).await;
    for (i, result) in results.into_iter().enumerate() {
        let Claim::Acquired(token) = result.expect("claim") else {
            panic!("claim {i} did not acquire its own key");
        };
        let stored = fx.get(&fx.store.idempotency_key(&key(i))).await;
        assert_eq!(stored, Some(format!("started:fp-{i}:{}", token.as_str())));
    }
    let stats = fx.store.batch_stats();
    assert_eq!(stats.requests, 500);
    assert!(stats.calls < 500, "{stats:?}");
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_claims_of_one_key_have_one_winner() {
    let fx = Fixture::new().await;
    let results = claim_all(&fx.store, 200, |_| key("same")).await;
    let mut winners = Vec::new();
    for (i, result) in results.into_iter().enumerate() {
        match result.expect("claim") {
            Claim::Acquired(_) => winners.push(i),
            Claim::InFlight { fingerprint } => assert!(fingerprint.starts_with("fp-")),
            Claim::Done { .. } => panic!("nobody completed"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    // Everyone in flight saw the winner's fingerprint.
    let winner = format!("fp-{}", winners[0]);
    assert_eq!(
        fx.store
            .claim(&key("same"), "fp-x", LEASE)
            .await
            .expect("claim"),
        Claim::InFlight {
            fingerprint: winner
        }
    );
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_completions_are_seen_as_done_with_their_fingerprints() {
    let fx = Fixture::new().await;
    const N: usize = 300;
    let tokens: Vec<ClaimToken> = claim_all(&fx.store, N, key)
        .await
        .into_iter()
        .map(|result| match result.expect("claim") {
            Claim::Acquired(token) => token,
            other => panic!("{other:?}"),
        })
        .collect();

    // Every third completion carries a ledger update, so batches mix both shapes.
    let tasks: Vec<_> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, token)| {
            let store = fx.store.clone();
            tokio::spawn(async move {
                let ledger = (i % 3 == 0).then(|| {
                    LedgerUpdate::now("pub-1", format!("ev-{i}"), "ingest", "accepted")
                        .with_event_type("lead.created")
                        .with_detail("n", i)
                        .with_ttl(Duration::from_secs(120))
                });
                store
                    .complete_with_outcome(
                        &key(i),
                        &token,
                        &format!("fp-{i}"),
                        RETENTION,
                        ledger.as_ref(),
                    )
                    .await
            })
        })
        .collect();
    for (i, joined) in futures::future::join_all(tasks)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(
            joined.expect("complete task").expect("complete"),
            Completion::Completed,
            "item {i}"
        );
    }

    // Claims after the completions (again all at once) find each key done with its own payload.
    let again = claim_all(&fx.store, N, key).await;
    for (i, result) in again.into_iter().enumerate() {
        assert_eq!(
            result.expect("claim"),
            Claim::Done {
                fingerprint: format!("fp-{i}")
            }
        );
    }
    for i in (0..N).step_by(3) {
        let ledger = fx
            .store
            .ledger_get("pub-1", &format!("ev-{i}"))
            .await
            .expect("ledger")
            .expect("written");
        assert_eq!(ledger.stages["ingest"].status, "accepted");
        assert_eq!(ledger.stages["ingest"].detail["n"], i);
    }
    assert_eq!(
        fx.store.ledger_get("pub-1", "ev-1").await.expect("ledger"),
        None,
        "no ledger where none was asked for"
    );
    fx.cleanup().await;
}

#[tokio::test]
async fn concurrent_requests_share_script_calls() {
    let fx = Fixture::new().await;
    fx.store.ping().await.expect("Redis is up");
    let results = claim_all(&fx.store, 400, key).await;
    assert!(results.iter().all(|r| matches!(r, Ok(Claim::Acquired(_)))));
    let stats = fx.store.batch_stats();
    assert_eq!(stats.requests, 400);
    assert!(
        stats.calls * 4 <= stats.requests,
        "400 concurrent claims took {} script calls",
        stats.calls
    );
    fx.cleanup().await;
}

#[tokio::test]
async fn a_lone_claim_on_an_idle_store_leaves_at_once() {
    let fx = Fixture::new().await;
    fx.store.ping().await.expect("Redis is up");
    // Warm up: the connection exists and the script is loaded.
    fx.store
        .claim(&key("warm"), "fp", LEASE)
        .await
        .expect("claim");

    let before = fx.store.batch_stats();
    let started = Instant::now();
    for i in 0..50 {
        let one = Instant::now();
        let claim = fx.store.claim(&key(i), "fp", LEASE).await.expect("claim");
        assert!(matches!(claim, Claim::Acquired(_)));
        assert!(
            one.elapsed() < Duration::from_millis(100),
            "a lone claim took {:?}",
            one.elapsed()
        );
    }
    let took = started.elapsed();
    let after = fx.store.batch_stats();
    // Each sequential claim was its own call: nothing waited for company.
    assert_eq!(after.calls - before.calls, 50);
    assert_eq!(after.requests - before.requests, 50);
    assert!(
        took < Duration::from_secs(1),
        "50 sequential claims took {took:?}"
    );
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_items_error_stays_that_items_error() {
    let mut fx = Fixture::new().await;
    // A hash where a record should be: GET on it fails with WRONGTYPE.
    let bad = fx.store.idempotency_key(&key(7));
    let () = redis::pipe()
        .hset(&bad, "f", "v")
        .ignore()
        .expire(&bad, 60)
        .ignore()
        .query_async(&mut fx.raw)
        .await
        .expect("HSET");

    let results = claim_all(&fx.store, 100, key).await;
    for (i, result) in results.into_iter().enumerate() {
        match (i, result) {
            (7, Err(err)) => {
                assert!(matches!(err, StoreError::Redis(_)), "{err:?}");
                assert!(err.to_string().contains("WRONGTYPE"), "{err}");
                assert!(err.is_transient() && !err.is_connectivity());
            }
            (7, Ok(claim)) => panic!("the hash was claimed: {claim:?}"),
            (i, result) => assert!(matches!(result, Ok(Claim::Acquired(_))), "{i}: {result:?}"),
        }
    }
    assert!(fx.store.is_healthy(), "Redis answered, so it is healthy");

    // Completing onto the hash fails for that item alone, too.
    let Ok(Claim::Acquired(token)) = fx.store.claim(&key("tok"), "fp", LEASE).await else {
        panic!("a fresh key acquires");
    };
    let err = fx
        .store
        .complete_with_outcome(&key(7), &token, "fp", RETENTION, None)
        .await
        .expect_err("WRONGTYPE");
    assert!(matches!(err, StoreError::Redis(_)), "{err:?}");
    fx.cleanup().await;
}

#[tokio::test]
async fn a_dropped_caller_does_not_disturb_the_others() {
    let fx = Fixture::new().await;
    fx.store.ping().await.expect("Redis is up");
    let store = fx.store.clone();
    let abandoned = tokio::spawn(async move { store.claim(&key("gone"), "fp", LEASE).await });
    abandoned.abort();
    let results = claim_all(&fx.store, 50, key).await;
    assert!(results.iter().all(|r| matches!(r, Ok(Claim::Acquired(_)))));
    fx.cleanup().await;
}

/// A private Redis on a free port, killed when dropped: a server that has never seen our scripts.
struct PrivateRedis {
    _child: tokio::process::Child,
    url: String,
}

impl PrivateRedis {
    async fn start() -> PrivateRedis {
        Self::start_with(&[]).await
    }

    async fn start_with(extra: &[&str]) -> PrivateRedis {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (deploy/ensure-services.sh)");
        let url = format!("redis://127.0.0.1:{port}/");
        let client = redis::Client::open(url.as_str()).expect("url");
        for _ in 0..100 {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<()>(&mut conn)
                    .await
                    .is_ok()
            {
                return PrivateRedis { _child: child, url };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the private redis-server did not start");
    }
}

#[tokio::test]
async fn a_server_without_the_scripts_gets_them_loaded() {
    handoff_test_support::init_telemetry();
    let redis = PrivateRedis::start().await;
    let cfg = RedisConfig {
        url: redis.url.clone(),
        op_timeout: Duration::from_secs(2),
    };
    let store = Store::new(&cfg, "private").expect("url");
    let results = claim_all(&store, 20, key).await;
    let tokens: Vec<_> = results
        .into_iter()
        .map(|r| match r {
            Ok(Claim::Acquired(token)) => token,
            other => panic!("{other:?}"),
        })
        .collect();
    let store = Arc::new(store);
    let tasks: Vec<_> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, token)| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .complete_with_outcome(&key(i), &token, &format!("fp-{i}"), RETENTION, None)
                    .await
            })
        })
        .collect();
    for joined in futures::future::join_all(tasks).await {
        assert_eq!(
            joined.expect("task").expect("complete"),
            Completion::Completed
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_connection_fails_every_waiting_claim_quickly_and_recovers() {
    handoff_test_support::init_telemetry();
    let proxy = handoff_test_support::TcpProxy::start(handoff_test_support::redis_addr()).await;
    let cfg = RedisConfig {
        url: handoff_test_support::url_via(&handoff_test_support::redis_url(), proxy.addr()),
        op_timeout: Duration::from_millis(500),
    };
    let store = Store::new(&cfg, &handoff_test_support::namespace()).expect("url");
    store.ping().await.expect("Redis is up");

    proxy.cut();
    let started = Instant::now();
    for result in claim_all(&store, 200, key).await {
        let err = result.expect_err("Redis is cut off");
        assert!(err.is_transient() && err.is_connectivity(), "{err:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert!(!store.is_healthy());

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.ping().await.is_err() {
        assert!(Instant::now() < deadline, "the store reconnects by itself");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for result in claim_all(&store, 200, |i| key(format!("after-{i}"))).await {
        assert!(matches!(result, Ok(Claim::Acquired(_))), "{result:?}");
    }
    handoff_test_support::cleanup_redis(store.namespace()).await;
}

/// A claim whose answer came too late (the server was stalled) still landed; the store takes it
/// back, so the event's retry acquires it instead of waiting a whole lease for nobody.
#[tokio::test]
async fn a_claim_answered_too_late_is_taken_back() {
    let redis = PrivateRedis::start_with(&["--enable-debug-command", "yes"]).await;
    let cfg = RedisConfig {
        url: redis.url.clone(),
        op_timeout: Duration::from_millis(200),
    };
    let store = Store::new(&cfg, "private").expect("url");
    // A first claim loads the script, so the late one is one EVALSHA that runs on waking.
    assert!(matches!(
        store.claim(&key("warm"), "fp", LEASE).await,
        Ok(Claim::Acquired(_))
    ));
    // Stall the server for a second on a connection of its own: the claim queues behind it.
    let client = redis::Client::open(redis.url.as_str()).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let stall = tokio::spawn(async move {
        redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg("1")
            .query_async::<()>(&mut conn)
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let late = store.claim(&key("late"), "fp", LEASE).await;
    assert!(matches!(late, Err(StoreError::Timeout(_))), "{late:?}");
    // (The stalling client may time out too; the server sleeps its second all the same.)
    let _ = stall.await;
    // The claim ran when the server woke up, and was released right after.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        match store.claim(&key("late"), "fp", LEASE).await {
            Ok(Claim::Acquired(_)) => break,
            Ok(Claim::InFlight { .. }) | Err(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the unanswered claim was never taken back"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(other) => panic!("{other:?}"),
        }
    }
}
