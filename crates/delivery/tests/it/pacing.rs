//! `Pacer` against the real Redis: GCRA spacing, bursts, 429 penalties, and a quota shared by
//! several "replicas" (separate connections) in real time.

use std::time::{Duration, Instant, SystemTime};

use handoff_delivery::{PaceKey, Pacer, PacingConfig, RedisHandle};
use handoff_idempotency::RedisConfig;

use crate::Fixture;

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_824_000)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn pacer(fx: &Fixture, limit: u32, per: Duration, burst: u32) -> Pacer {
    let cfg = PacingConfig { limit, per, burst };
    assert_eq!(cfg.validate(), Ok(()));
    Pacer::new(fx.redis.clone(), &fx.ns, &cfg)
}

#[tokio::test]
async fn reservations_are_spaced_by_the_interval() {
    let mut fx = Fixture::new().await;
    let pacer = pacer(&fx, 10, Duration::from_secs(1), 1);
    let key = PaceKey::new("hubspot", "app-1");
    let mut waits = Vec::new();
    for _ in 0..5 {
        waits.push(pacer.acquire_at(&key, t0()).await.expect("acquire"));
    }
    assert_eq!(waits, [ms(0), ms(100), ms(200), ms(300), ms(400)]);
    // 250 ms later the queue has moved on by 250 ms.
    assert_eq!(
        pacer
            .acquire_at(&key, t0() + ms(250))
            .await
            .expect("acquire"),
        ms(250)
    );
    // After an idle spell the next request goes at once.
    assert_eq!(
        pacer
            .acquire_at(&key, t0() + Duration::from_secs(10))
            .await
            .expect("acquire"),
        ms(0)
    );
    // The key says no more than the schedule: it expires a second after its last slot.
    let ttl = fx.pttl(&pacer.key(&key)).await;
    assert!(ttl > 1_000 && ttl <= 1_100, "{ttl}");
    assert_eq!(pacer.key(&key), format!("{}:pace:hubspot:app-1", fx.ns));
    fx.cleanup().await;
}

#[tokio::test]
async fn bursts_are_allowed_up_to_the_configured_size() {
    let fx = Fixture::new().await;
    let pacer = pacer(&fx, 10, Duration::from_secs(1), 3);
    let key = PaceKey::new("hubspot", "app-1");
    let mut waits = Vec::new();
    for _ in 0..5 {
        waits.push(pacer.acquire_at(&key, t0()).await.expect("acquire"));
    }
    assert_eq!(waits, [ms(0), ms(0), ms(0), ms(100), ms(200)]);
    fx.cleanup().await;
}

#[tokio::test]
async fn penalize_pushes_every_slot_past_retry_after() {
    let fx = Fixture::new().await;
    let pacer = pacer(&fx, 10, Duration::from_secs(1), 3);
    let key = PaceKey::new("hubspot", "app-1");
    pacer.acquire_at(&key, t0()).await.expect("acquire");
    pacer
        .penalize_at(&key, Duration::from_secs(5), t0())
        .await
        .expect("penalize");
    // No burst after the pause: the first slot at 5 s, then one per interval.
    assert_eq!(
        pacer.acquire_at(&key, t0()).await.expect("acquire"),
        ms(5_000)
    );
    assert_eq!(
        pacer.acquire_at(&key, t0()).await.expect("acquire"),
        ms(5_100)
    );
    // A shorter penalty does not pull reservations already made forward.
    pacer
        .penalize_at(&key, Duration::from_secs(1), t0())
        .await
        .expect("penalize");
    assert_eq!(
        pacer.acquire_at(&key, t0()).await.expect("acquire"),
        ms(5_200)
    );
    // Other credentials and destinations have quotas of their own.
    let other = PaceKey::new("hubspot", "app-2");
    assert_eq!(
        pacer.acquire_at(&other, t0()).await.expect("acquire"),
        ms(0)
    );
    let mailchimp = PaceKey::new("mailchimp", "app-1");
    assert_eq!(
        pacer.acquire_at(&mailchimp, t0()).await.expect("acquire"),
        ms(0)
    );
    // Redis' clock: a real penalty is honoured from now.
    pacer
        .penalize(&mailchimp, Duration::from_secs(2))
        .await
        .expect("penalize");
    let wait = pacer.acquire(&mailchimp).await.expect("acquire");
    assert!(wait > ms(1_900) && wait <= ms(2_000), "{wait:?}");
    fx.cleanup().await;
}

#[tokio::test]
async fn bad_keys_are_refused() {
    let fx = Fixture::new().await;
    let pacer = pacer(&fx, 10, Duration::from_secs(1), 1);
    for key in [
        PaceKey::new("hub:spot", "app"),
        PaceKey::new("", "app"),
        PaceKey::new("hubspot", ""),
    ] {
        let err = pacer.acquire(&key).await.expect_err("refused");
        assert!(!err.is_transient(), "{err}");
    }
    fx.cleanup().await;
}

/// Three replicas (each with its own connection) share one key at 20 requests/s for 2 s: no
/// one-second window holds more than 20 sends (+1 for a send on the window's edge), and the
/// quota is used (at least 90% of 40).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_quota() {
    let fx = Fixture::new().await;
    let cfg = PacingConfig {
        limit: 20,
        per: Duration::from_secs(1),
        burst: 1,
    };
    let redis_cfg = RedisConfig {
        url: handoff_test_support::redis_url(),
        op_timeout: Duration::from_secs(2),
    };
    let start = Instant::now();
    let run_for = Duration::from_secs(2);
    let replicas = (0..3).map(|_| {
        let pacer = Pacer::new(
            RedisHandle::new(&redis_cfg).expect("valid url"),
            &fx.ns,
            &cfg,
        );
        tokio::spawn(async move {
            let key = PaceKey::new("hubspot", "app-1");
            let mut sent = Vec::new();
            loop {
                let wait = pacer.acquire(&key).await.expect("acquire");
                if start.elapsed() + wait >= run_for {
                    return sent;
                }
                tokio::time::sleep(wait).await;
                sent.push(start.elapsed());
            }
        })
    });
    let mut sends: Vec<Duration> = Vec::new();
    for replica in futures::future::join_all(replicas).await {
        sends.extend(replica.expect("replica"));
    }
    sends.sort();
    let busiest = sends
        .iter()
        .map(|&from| {
            sends
                .iter()
                .filter(|&&t| t >= from && t < from + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(busiest <= 21, "{busiest} sends in one second: {sends:?}");
    assert!(sends.len() >= 36, "only {} sends in 2 s", sends.len());
    fx.cleanup().await;
}
