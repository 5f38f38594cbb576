//! `Pacer` against the real Redis: GCRA spacing, bursts, 429 penalties, the adapted rate (down
//! after a 429, back up after clean periods, slowed by the vendor's headers), and a quota shared by
//! several "replicas" (separate connections), on the caller's clock and in real time.

use std::time::{Duration, Instant, SystemTime};

use handoff_delivery::{PaceKey, Pacer, PacingConfig, RateInfo, RedisHandle};
use handoff_idempotency::RedisConfig;

use crate::Fixture;

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_824_000)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

/// The default adaptation at `limit` per `per`.
fn config(limit: u32, per: Duration, burst: u32) -> PacingConfig {
    PacingConfig {
        limit,
        per,
        burst,
        ..PacingConfig::default()
    }
}

fn pacer(fx: &Fixture, limit: u32, per: Duration, burst: u32) -> Pacer {
    let cfg = config(limit, per, burst);
    assert_eq!(cfg.validate(), Ok(()));
    Pacer::new(fx.redis.clone(), &fx.ns, &cfg)
}

/// Another replica: the same config on a connection of its own.
fn replica(fx: &Fixture, cfg: &PacingConfig) -> Pacer {
    let redis_cfg = RedisConfig {
        url: handoff_test_support::redis_url(),
        op_timeout: Duration::from_secs(2),
    };
    Pacer::new(
        RedisHandle::new(&redis_cfg).expect("valid url"),
        &fx.ns,
        cfg,
    )
}

/// `n` reservations at `now`, as waits.
async fn waits(pacer: &Pacer, key: &PaceKey, now: SystemTime, n: usize) -> Vec<Duration> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(pacer.acquire_at(key, now).await.expect("acquire"));
    }
    out
}

/// The adapted rate in Redis, in millionths of the limit.
async fn rate(fx: &mut Fixture, pacer: &Pacer, key: &PaceKey) -> Option<String> {
    fx.hget(&pacer.key(key), "rate").await
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

/// With adaptation off (`backoff_percent = 100`) a 429 only pauses; the rate stays.
#[tokio::test]
async fn penalize_pushes_every_slot_past_retry_after() {
    let fx = Fixture::new().await;
    let cfg = PacingConfig {
        backoff_percent: 100,
        ..config(10, Duration::from_secs(1), 3)
    };
    let pacer = Pacer::new(fx.redis.clone(), &fx.ns, &cfg);
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
    let cfg = config(20, Duration::from_secs(1), 1);
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

/// A 429 seen by one replica slows every replica: the adapted rate lives in Redis with the TAT.
#[tokio::test]
async fn a_429_lowers_the_rate_of_every_replica() {
    let mut fx = Fixture::new().await;
    let cfg = config(10, Duration::from_secs(1), 1);
    let (a, b) = (replica(&fx, &cfg), replica(&fx, &cfg));
    let key = PaceKey::new("hubspot", "app-1");
    assert_eq!(waits(&a, &key, t0(), 3).await, [ms(0), ms(100), ms(200)]);
    // The 429 came back at 300 ms, without Retry-After: the rate drops to 70 %, 7 per second.
    let at = t0() + ms(300);
    a.penalize_at(&key, Duration::ZERO, at)
        .await
        .expect("penalize");
    assert_eq!(rate(&mut fx, &a, &key).await.as_deref(), Some("700000"));
    // Both replicas now space their requests 1/7 s apart, taking turns on one schedule.
    let step = 142_857;
    assert_eq!(b.acquire_at(&key, at).await.expect("acquire"), ms(0));
    assert_eq!(a.acquire_at(&key, at).await.expect("acquire"), us(step));
    assert_eq!(b.acquire_at(&key, at).await.expect("acquire"), us(2 * step));
    // An unrelated quota is untouched.
    let other = PaceKey::new("hubspot", "app-2");
    assert_eq!(waits(&b, &other, at, 2).await, [ms(0), ms(100)]);
    fx.cleanup().await;
}

/// Each 429 outside the window lowers the rate to 70 % of what it was, down to the 10 % floor;
/// the 429s within the window (answers to requests already on their way) pause without lowering
/// it again.
#[tokio::test]
async fn repeated_429s_lower_the_rate_down_to_the_floor() {
    let mut fx = Fixture::new().await;
    let pacer = pacer(&fx, 10, Duration::from_secs(10), 1);
    let key = PaceKey::new("hubspot", "app-1");
    pacer
        .penalize_at(&key, Duration::ZERO, t0())
        .await
        .expect("penalize");
    for late in [100, 500, 999] {
        pacer
            .penalize_at(&key, Duration::ZERO, t0() + ms(late))
            .await
            .expect("penalize");
    }
    assert_eq!(rate(&mut fx, &pacer, &key).await.as_deref(), Some("700000"));
    // A Retry-After longer than the window widens it: the 429s during the pause do not count.
    let at = t0() + Duration::from_secs(2);
    pacer
        .penalize_at(&key, Duration::from_secs(3), at)
        .await
        .expect("penalize");
    pacer
        .penalize_at(&key, Duration::ZERO, at + Duration::from_secs(2))
        .await
        .expect("penalize");
    assert_eq!(rate(&mut fx, &pacer, &key).await.as_deref(), Some("490000"));
    // 0.7^n of the limit, one decrease a second, until the floor.
    let mut want = 490_000u64;
    for second in 6..12 {
        pacer
            .penalize_at(&key, Duration::ZERO, t0() + Duration::from_secs(second))
            .await
            .expect("penalize");
        want = (want * 7 / 10).max(100_000);
        assert_eq!(
            rate(&mut fx, &pacer, &key).await,
            Some(want.to_string()),
            "after the 429 at {second} s"
        );
    }
    assert_eq!(want, 100_000);
    // At the floor, 10 % of 10 per 10 s: one request per 10 s.
    let at = t0() + ms(11_500);
    assert_eq!(
        waits(&pacer, &key, at, 3).await,
        [ms(0), ms(10_000), ms(20_000)]
    );
    fx.cleanup().await;
}

/// After a 429 the rate climbs back by 5 % of the limit for every clean period, up to the
/// configured limit and never above it; a replica that comes later sees the same climb.
#[tokio::test]
async fn the_rate_recovers_after_clean_periods_but_never_above_the_limit() {
    let mut fx = Fixture::new().await;
    let cfg = config(10, Duration::from_secs(1), 1);
    let (a, b) = (replica(&fx, &cfg), replica(&fx, &cfg));
    let key = PaceKey::new("hubspot", "app-1");
    a.penalize_at(&key, Duration::ZERO, t0())
        .await
        .expect("penalize");
    // Within the first period: still 70 %, 1/7 s apart.
    let at = t0() + ms(999);
    assert_eq!(waits(&b, &key, at, 2).await, [ms(0), us(142_857)]);
    // Two clean periods later: 80 %, 125 ms apart (half a period is not counted yet).
    let at = t0() + ms(2_500);
    assert_eq!(waits(&a, &key, at, 3).await, [ms(0), ms(125), ms(250)]);
    assert_eq!(rate(&mut fx, &a, &key).await.as_deref(), Some("800000"));
    // The key lives until the rate is back in full (6 periods after the 429), plus a second.
    let ttl = fx.pttl(&a.key(&key)).await;
    assert!(ttl > 4_000 && ttl <= 4_500, "{ttl}");
    // Six periods after the 429 the rate is back at the limit, and stays there.
    for (second, replica) in [(6, &b), (60, &a), (600, &b)] {
        let at = t0() + Duration::from_secs(second);
        assert_eq!(
            waits(replica, &key, at, 4).await,
            [ms(0), ms(100), ms(200), ms(300)],
            "{second} s after the 429"
        );
        assert_eq!(rate(&mut fx, &a, &key).await.as_deref(), Some("1000000"));
    }
    fx.cleanup().await;
}

/// A recovery that a 429 interrupts starts again from the lowered rate, and the clean periods
/// count from that 429.
#[tokio::test]
async fn a_429_during_recovery_restarts_the_count() {
    let mut fx = Fixture::new().await;
    let pacer = pacer(&fx, 10, Duration::from_secs(1), 1);
    let key = PaceKey::new("hubspot", "app-1");
    pacer
        .penalize_at(&key, Duration::ZERO, t0())
        .await
        .expect("penalize");
    // 3.5 periods: 70 + 3 * 5 = 85 %; the 429 then makes it 59.5 %.
    pacer
        .penalize_at(&key, Duration::ZERO, t0() + ms(3_500))
        .await
        .expect("penalize");
    assert_eq!(rate(&mut fx, &pacer, &key).await.as_deref(), Some("595000"));
    // 0.9 period after that 429 nothing is recovered; 1 period after, 5 % is.
    pacer
        .acquire_at(&key, t0() + ms(4_400))
        .await
        .expect("acquire");
    assert_eq!(rate(&mut fx, &pacer, &key).await.as_deref(), Some("595000"));
    pacer
        .acquire_at(&key, t0() + ms(4_500))
        .await
        .expect("acquire");
    assert_eq!(rate(&mut fx, &pacer, &key).await.as_deref(), Some("645000"));
    fx.cleanup().await;
}

/// When HubSpot's headers say few requests are left, requests are spread over its interval, on
/// every replica, until that interval has passed; answers with enough left change nothing.
#[tokio::test]
async fn observe_spreads_the_last_requests_over_the_vendors_interval() {
    let mut fx = Fixture::new().await;
    // Off by default; on for a quota shared with other clients.
    let cfg = PacingConfig {
        slow_below_percent: 10,
        ..config(10, Duration::from_secs(1), 3)
    };
    let (a, b) = (replica(&fx, &cfg), replica(&fx, &cfg));
    let key = PaceKey::new("hubspot", "app-1");
    let headers = |remaining: u32| RateInfo {
        max: Some(100),
        remaining: Some(remaining),
        interval: Some(Duration::from_secs(10)),
        retry_after: None,
    };
    // Plenty left: no Redis call at all, the burst of 3 goes at once.
    a.observe_at(&key, &headers(50), t0())
        .await
        .expect("observe");
    assert_eq!(fx.pttl(&a.key(&key)).await, -2);
    assert_eq!(
        waits(&a, &key, t0(), 4).await,
        [ms(0), ms(0), ms(0), ms(100)]
    );
    // 4 of 100 left at 1 s: one request every 2.5 s, no burst, on both replicas, for 10 s.
    let at = t0() + Duration::from_secs(1);
    a.observe_at(&key, &headers(4), at).await.expect("observe");
    assert_eq!(
        waits(&b, &key, at, 3).await,
        [ms(2_500), ms(5_000), ms(7_500)]
    );
    // The rate itself is not lowered: it is the vendor's number for now, not a 429.
    assert_eq!(rate(&mut fx, &a, &key).await.as_deref(), Some("1000000"));
    // None left: a whole interval before the next request.
    let at = t0() + Duration::from_secs(2);
    b.observe_at(&key, &headers(0), at).await.expect("observe");
    assert_eq!(
        a.acquire_at(&key, at).await.expect("acquire"),
        Duration::from_secs(10)
    );
    // Once the interval after the last such answer has passed, the configured rate is back.
    let at = t0() + Duration::from_secs(40);
    assert_eq!(waits(&b, &key, at, 4).await, [ms(0), ms(0), ms(0), ms(100)]);
    // Headers without the numbers needed are ignored.
    a.observe_at(&key, &RateInfo::default(), at)
        .await
        .expect("observe");
    fx.cleanup().await;
}
