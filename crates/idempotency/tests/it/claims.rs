//! Claim / complete / release semantics and the TTLs they set.

use std::time::Duration;

use handoff_idempotency::{Claim, Completion, IdempotencyKey};

use crate::Fixture;

const LEASE: Duration = Duration::from_secs(30);
const RETENTION: Duration = Duration::from_secs(3600);

fn key(id: &str) -> IdempotencyKey {
    IdempotencyKey::new("ingest", "pub-1", id)
}

#[tokio::test]
async fn claim_then_in_flight_then_done() {
    let mut fx = Fixture::new().await;
    let k = key("ev-1");

    let token = fx.acquire(&k, "fp-a", LEASE).await;
    let redis_key = format!("{}:idem:ingest:pub-1:ev-1", fx.ns);
    assert_eq!(
        fx.get(&redis_key).await.unwrap(),
        format!("started:fp-a:{}", token.as_str())
    );

    let second = fx.store.claim(&k, "fp-a", LEASE).await.unwrap();
    assert_eq!(
        second,
        Claim::InFlight {
            fingerprint: "fp-a".into()
        }
    );
    assert!(second.matches("fp-a"));

    let outcome = fx
        .store
        .complete_with_outcome(&k, &token, "fp-a", RETENTION, None)
        .await
        .unwrap();
    assert_eq!(outcome, Completion::Completed);
    assert_eq!(fx.get(&redis_key).await.unwrap(), "finished:fp-a");

    let third = fx.store.claim(&k, "fp-a", LEASE).await.unwrap();
    assert_eq!(
        third,
        Claim::Done {
            fingerprint: "fp-a".into()
        }
    );

    fx.cleanup().await;
}

#[tokio::test]
async fn a_different_fingerprint_is_reported_not_matched() {
    let fx = Fixture::new().await;
    let k = key("ev-2");
    let token = fx.acquire(&k, "fp-a", LEASE).await;

    let in_flight = fx.store.claim(&k, "fp-b", LEASE).await.unwrap();
    assert_eq!(
        in_flight,
        Claim::InFlight {
            fingerprint: "fp-a".into()
        }
    );
    assert!(!in_flight.matches("fp-b"));

    fx.store
        .complete(&k, &token, "fp-a", RETENTION, None)
        .await
        .unwrap();
    let done = fx.store.claim(&k, "fp-b", LEASE).await.unwrap();
    assert_eq!(
        done,
        Claim::Done {
            fingerprint: "fp-a".into()
        }
    );
    assert!(!done.matches("fp-b"));

    fx.cleanup().await;
}

#[tokio::test]
async fn fingerprints_may_contain_colons() {
    let fx = Fixture::new().await;
    let k = key("ev-colon");
    let fp = "sha256:abc:def";
    let token = fx.acquire(&k, fp, LEASE).await;
    assert_eq!(
        fx.store.claim(&k, fp, LEASE).await.unwrap(),
        Claim::InFlight {
            fingerprint: fp.into()
        }
    );
    assert!(fx.store.release_if_ours(&k, &token).await.unwrap());
    fx.cleanup().await;
}

#[tokio::test]
async fn claim_and_complete_set_lease_and_retention_ttls() {
    let mut fx = Fixture::new().await;
    let k = key("ev-ttl");
    let redis_key = fx.store.idempotency_key(&k);

    let token = fx.acquire(&k, "fp", LEASE).await;
    let lease_left = fx.pttl(&redis_key).await;
    assert!(
        lease_left > 25_000 && lease_left <= 30_000,
        "lease PTTL {lease_left}"
    );

    fx.store
        .complete(&k, &token, "fp", RETENTION, None)
        .await
        .unwrap();
    let retention_left = fx.pttl(&redis_key).await;
    assert!(
        retention_left > 3_590_000 && retention_left <= 3_600_000,
        "retention PTTL {retention_left}"
    );

    fx.cleanup().await;
}

#[tokio::test]
async fn an_expired_lease_lets_a_new_claim_in_and_keeps_it() {
    let mut fx = Fixture::new().await;
    let k = key("ev-lease");
    let old = fx.acquire(&k, "fp", Duration::from_millis(150)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let Claim::Acquired(new) = fx.store.claim(&k, "fp", LEASE).await.unwrap() else {
        panic!("the lease ran out, so a new claim acquires");
    };
    assert_ne!(old, new);

    // The first worker finishing late must not overwrite the live claim of the second.
    let late = fx
        .store
        .complete_with_outcome(&k, &old, "fp", RETENTION, None)
        .await
        .unwrap();
    assert_eq!(late, Completion::ClaimedByOther);
    let redis_key = fx.store.idempotency_key(&k);
    assert_eq!(
        fx.get(&redis_key).await.unwrap(),
        format!("started:fp:{}", new.as_str())
    );
    // Nor may it release it.
    assert!(!fx.store.release_if_ours(&k, &old).await.unwrap());

    let outcome = fx
        .store
        .complete_with_outcome(&k, &new, "fp", RETENTION, None)
        .await
        .unwrap();
    assert_eq!(outcome, Completion::Completed);

    // A completion arriving after someone else finished leaves the record alone.
    let again = fx
        .store
        .complete_with_outcome(&k, &old, "fp-other", RETENTION, None)
        .await
        .unwrap();
    assert_eq!(again, Completion::AlreadyFinished);
    assert_eq!(fx.get(&redis_key).await.unwrap(), "finished:fp");

    fx.cleanup().await;
}

#[tokio::test]
async fn completing_after_the_lease_vanished_still_records_finished() {
    let mut fx = Fixture::new().await;
    let k = key("ev-late");
    let token = fx.acquire(&k, "fp", Duration::from_millis(100)).await;
    tokio::time::sleep(Duration::from_millis(250)).await;

    let outcome = fx
        .store
        .complete_with_outcome(&k, &token, "fp", RETENTION, None)
        .await
        .unwrap();
    assert_eq!(outcome, Completion::LeaseExpired);
    let redis_key = fx.store.idempotency_key(&k);
    assert_eq!(fx.get(&redis_key).await.unwrap(), "finished:fp");
    assert!(fx.pttl(&redis_key).await > 3_500_000);
    assert_eq!(
        fx.store.claim(&k, "fp", LEASE).await.unwrap(),
        Claim::Done {
            fingerprint: "fp".into()
        }
    );

    fx.cleanup().await;
}

#[tokio::test]
async fn release_frees_the_key_at_once() {
    let mut fx = Fixture::new().await;
    let k = key("ev-release");
    let token = fx.acquire(&k, "fp", LEASE).await;
    fx.store.release(&k, &token).await.unwrap();
    assert_eq!(fx.get(&fx.store.idempotency_key(&k)).await, None);

    let Claim::Acquired(retry) = fx.store.claim(&k, "fp", LEASE).await.unwrap() else {
        panic!("a released key can be claimed again at once");
    };
    // Releasing twice (or with a stale token) is harmless.
    assert!(!fx.store.release_if_ours(&k, &token).await.unwrap());
    fx.store
        .complete(&k, &retry, "fp", RETENTION, None)
        .await
        .unwrap();
    // A finished record is never released.
    assert!(!fx.store.release_if_ours(&k, &retry).await.unwrap());
    assert_eq!(
        fx.store.claim(&k, "fp", LEASE).await.unwrap(),
        Claim::Done {
            fingerprint: "fp".into()
        }
    );

    fx.cleanup().await;
}

#[tokio::test]
async fn concurrent_claims_have_exactly_one_winner() {
    let fx = Fixture::new().await;
    let k = key("ev-race");
    let attempts = (0..64).map(|_| {
        let store = fx.store.clone();
        let k = k.clone();
        tokio::spawn(async move { store.claim(&k, "fp", LEASE).await })
    });
    let mut acquired = 0;
    for attempt in futures::future::join_all(attempts).await {
        match attempt.unwrap().unwrap() {
            Claim::Acquired(_) => acquired += 1,
            Claim::InFlight { fingerprint } => assert_eq!(fingerprint, "fp"),
            Claim::Done { .. } => panic!("nobody completed"),
        }
    }
    assert_eq!(acquired, 1);
    fx.cleanup().await;
}

#[tokio::test]
async fn a_foreign_value_is_reported_corrupt() {
    let mut fx = Fixture::new().await;
    let k = key("ev-corrupt");
    let redis_key = fx.store.idempotency_key(&k);
    let () = redis::cmd("SET")
        .arg(&redis_key)
        .arg("something else")
        .arg("EX")
        .arg(60)
        .query_async(&mut fx.raw)
        .await
        .unwrap();
    let err = fx.store.claim(&k, "fp", LEASE).await.unwrap_err();
    assert!(
        matches!(err, handoff_idempotency::StoreError::Corrupt(_)),
        "{err}"
    );
    assert!(!err.is_transient());
    assert!(fx.store.is_healthy(), "Redis answered, so it is healthy");
    fx.cleanup().await;
}
