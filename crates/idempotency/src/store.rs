//! [`Store`]: the Redis client behind claims, completions, releases and the ledger.
//!
//! One multiplexed connection per `Store` (redis' `ConnectionManager`), shared by every clone, which
//! reconnects by itself after a broken connection. It is created lazily on the first operation, so
//! a service whose Redis is down at start still starts, answers `/healthz`, and reports not-ready
//! (through [`Store::is_healthy`]) until Redis comes back.
//!
//! Every operation is one round trip (a Lua script loaded once and then called by SHA, or a
//! `MULTI` pipeline) and is bounded by `op_timeout`, connection set-up included (for a coalesced
//! operation: queueing included).
//!
//! Claims and completions are coalesced (`batch.rs`): concurrent calls of [`Store::claim`] (or of
//! [`Store::complete`] / [`Store::complete_with_outcome`]) share one script call,
//! `lua/claim_many.lua` (`lua/complete_many.lua`), which handles every item exactly as a lone call
//! would and answers each item on its own. Callers see the same signatures and results; Redis sees
//! far fewer script calls under load, which is most of its CPU per event. An idle store sends a
//! lone request at once: nothing ever waits on a timer to fill a batch. A batch-wide failure
//! (connection lost, timeout, a script error) answers every request of that batch with the same
//! [`StoreError`]; an error of one item's command (e.g. `WRONGTYPE`) answers only that item.
//! [`Store::release`] is rare (failed side effects only) and stays a direct call.
//!
//! The store targets a single Redis (a primary, optionally with replicas or Sentinel), not Redis
//! Cluster: a script may only touch keys of one hash slot there, and a batch touches many unrelated
//! keys. That was already so before coalescing: `complete` writes the idempotency record and the
//! ledger, which live in different slots, in one script call (ARCHITECTURE.md). The email index
//! adds a third slot to the same call (and a second to [`Store::ledger_record`]'s `MULTI`), for
//! the same reason: the hash and its index entry must be written together or not at all. Scripts
//! still touch only the keys they are given, so that no key is hidden from Redis.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script, Value};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::batch::{BatchCall, BatchResult, Batcher};
use crate::ledger::{
    DELIVERED, FIRST_SEEN_AT, LEDGER_EMAIL_INDEX_MAX, Ledger, LedgerUpdate, RETRYING,
};
use crate::{Claim, ClaimToken, Completion, IdempotencyKey, RedisConfig, StoreError};

const CLAIM_MANY_LUA: &str = include_str!("lua/claim_many.lua");
const COMPLETE_MANY_LUA: &str = include_str!("lua/complete_many.lua");
static CLAIM_MANY: LazyLock<Script> = LazyLock::new(|| Script::new(CLAIM_MANY_LUA));
static COMPLETE_MANY: LazyLock<Script> = LazyLock::new(|| Script::new(COMPLETE_MANY_LUA));
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/release.lua")));
static PRUNE_EMAIL_INDEX: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/prune_email_index.lua")));

/// Writes a stage's field (`ARGV[1]`, `ARGV[2]`) unless it already holds `ARGV[3]` (the
/// delivered status, as it appears in the field's JSON). Sent with `EVAL`: it only runs for
/// retry notices, which are rare, and Redis caches the compiled script anyway.
const RETRY_NOTICE_LUA: &str = "local current = redis.call('HGET', KEYS[1], ARGV[1]) \
if current and string.find(current, ARGV[3], 1, true) then return 0 end \
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) return 1";

const STARTED: &str = "started:";
const FINISHED: &str = "finished:";

/// What the batcher tasks need: the connection and its bookkeeping, but not the batchers, so a
/// task never keeps the queue that feeds it alive (it ends when the last `Store` clone is dropped).
struct Shared {
    client: redis::Client,
    /// [`RedisConfig::connection_manager_config`]: the reconnect policy every service shares.
    manager: ConnectionManagerConfig,
    conn: OnceCell<ConnectionManager>,
    namespace: String,
    op_timeout: Duration,
    healthy: AtomicBool,
    script_calls: AtomicU64,
    script_requests: AtomicU64,
}

struct Inner {
    shared: Arc<Shared>,
    claims: Batcher<ClaimItem, Option<String>>,
    completions: Batcher<CompleteItem, String>,
}

/// One claim as `claim_many.lua` takes it.
struct ClaimItem {
    key: String,
    record: String,
    lease_ms: i64,
}

/// One completion as `complete_many.lua` takes it.
struct CompleteItem {
    key: String,
    suffix: String,
    finished: String,
    retention_ms: i64,
    ledger: Option<LedgerItem>,
}

struct LedgerItem {
    key: String,
    ttl_ms: i64,
    first_seen_at: String,
    fields: Vec<(String, String)>,
    index: Option<IndexItem>,
}

/// The email index entry of a ledger update that carries an email.
struct IndexItem {
    key: String,
    event_id: String,
    score_ms: i64,
}

/// Handle to the idempotency records and the ledger in Redis. Cheap to clone; clones share one
/// connection, one health flag and the batchers that coalesce claims and completions.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// How many claim/complete script calls a store made and how many requests they answered
/// (`requests / calls` is the mean batch size). For tests and benchmarks.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchStats {
    /// `claim_many` and `complete_many` calls sent.
    pub calls: u64,
    /// Claims and completions those calls carried.
    pub requests: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("namespace", &self.inner.shared.namespace)
            .field("op_timeout", &self.inner.shared.op_timeout)
            .field("healthy", &self.is_healthy())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Creates a store whose keys all start with `"{namespace}:"`. Does no I/O: the connection is
    /// opened on the first operation. Fails only for a malformed URL.
    pub fn new(cfg: &RedisConfig, namespace: &str) -> Result<Store, StoreError> {
        let client = redis::Client::open(cfg.url.as_str()).map_err(StoreError::InvalidUrl)?;
        let shared = Arc::new(Shared {
            client,
            manager: cfg.connection_manager_config(),
            conn: OnceCell::new(),
            namespace: namespace.to_owned(),
            op_timeout: cfg.op_timeout,
            healthy: AtomicBool::new(false),
            script_calls: AtomicU64::new(0),
            script_requests: AtomicU64::new(0),
        });
        let claims: BatchCall<ClaimItem, Option<String>> = {
            let shared = Arc::clone(&shared);
            Arc::new(move |items| {
                let shared = Arc::clone(&shared);
                Box::pin(async move { shared.claim_many(items).await })
            })
        };
        let completions: BatchCall<CompleteItem, String> = {
            let shared = Arc::clone(&shared);
            Arc::new(move |items| {
                let shared = Arc::clone(&shared);
                Box::pin(async move { shared.complete_many(items).await })
            })
        };
        // The batchers spawn their tasks on first use, inside the caller's runtime.
        Ok(Store {
            inner: Arc::new(Inner {
                shared,
                claims: Batcher::new(claims),
                completions: Batcher::new(completions),
            }),
        })
    }

    /// The namespace every key starts with.
    pub fn namespace(&self) -> &str {
        &self.inner.shared.namespace
    }

    /// Claim/complete script calls so far and the requests they answered.
    #[doc(hidden)]
    pub fn batch_stats(&self) -> BatchStats {
        BatchStats {
            calls: self.inner.shared.script_calls.load(Ordering::Relaxed),
            requests: self.inner.shared.script_requests.load(Ordering::Relaxed),
        }
    }

    /// `"{namespace}:{a}:{b}..."`.
    pub fn key(&self, parts: &[&str]) -> String {
        let mut key = self.inner.shared.namespace.clone();
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    /// The Redis key of an idempotency record: `"{namespace}:idem:{stage}:{scope}:{id}"`.
    pub fn idempotency_key(&self, key: &IdempotencyKey) -> String {
        self.key(&["idem", &key.stage, &key.scope, &key.id])
    }

    /// The Redis key of a ledger: `"{namespace}:ledger:{publisher_id}:{event_id}"`.
    pub fn ledger_key(&self, publisher_id: &str, event_id: &str) -> String {
        self.key(&["ledger", publisher_id, event_id])
    }

    /// The Redis key of an email index (a sorted set of event ids):
    /// `"{namespace}:ledger-email:{publisher_id}:{email}"`, with `email` exactly as given (callers
    /// pass it normalized). The email is the last part, so a `:` in it cannot make two keys meet.
    pub fn ledger_email_key(&self, publisher_id: &str, email: &str) -> String {
        self.key(&["ledger-email", publisher_id, email])
    }

    /// Sends `PING`; succeeds when Redis answers within `op_timeout`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run(|mut conn| async move { redis::cmd("PING").query_async::<()>(&mut conn).await })
            .await
    }

    /// True when the last operation (or health-monitor ping) reached Redis. False until the first
    /// one has, so a service reports not-ready until Redis has answered once.
    pub fn is_healthy(&self) -> bool {
        self.inner.shared.healthy.load(Ordering::Relaxed)
    }

    /// Spawns a task that pings Redis right away and then every `every` until `shutdown` is
    /// cancelled, keeping [`Store::is_healthy`] current even when no traffic flows (and driving the
    /// reconnection while Redis is away). Must be called inside a Tokio runtime.
    pub fn spawn_health_monitor(&self, every: Duration, shutdown: CancellationToken) {
        let store = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = ticks.tick() => {
                        // The result is recorded by `run`, which also logs health transitions.
                        let _ = store.ping().await;
                    }
                }
            }
        });
    }

    /// Claims `key` for the caller's side effect, writing `"started:<fingerprint>:<token>"` with a
    /// `lease` TTL if nothing is there, else reporting what is there, in one atomic round trip.
    ///
    /// `fingerprint` identifies the payload (a hash of it), so a caller can tell a retry of the same
    /// event ([`Claim::matches`]) from a different payload reusing an id. `lease` must outlast the
    /// side effect: when it runs out, another worker may claim the key and repeat the effect.
    pub async fn claim(
        &self,
        key: &IdempotencyKey,
        fingerprint: &str,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let redis_key = self.idempotency_key(key);
        let token = ClaimToken::generate();
        let item = ClaimItem {
            key: redis_key.clone(),
            record: format!("{STARTED}{fingerprint}:{}", token.as_str()),
            lease_ms: millis(lease),
        };
        // A client span per check, so a trace shows where the dedupe decision was made and what
        // it was (OpenTelemetry's database conventions: Redis is the system).
        let span = tracing::info_span!(
            "idempotency.claim",
            otel.name = "idempotency claim",
            otel.kind = "client",
            db.system.name = "redis",
            db.operation.name = "EVALSHA",
            handoff.stage = %key.stage,
            handoff.claim.result = tracing::field::Empty,
        );
        let existing = match self
            .coalesced(self.inner.claims.submit(item))
            .instrument(span.clone())
            .await
        {
            Ok(existing) => existing,
            Err(err) => {
                span.record("handoff.claim.result", "error");
                self.take_back_unanswered_claim(key, token, lease);
                return Err(err);
            }
        };
        let claim = match existing {
            None => Ok(Claim::Acquired(token)),
            Some(record) => parse_record(&redis_key, &record),
        };
        let result = match &claim {
            Ok(Claim::Acquired(_)) => "acquired",
            Ok(Claim::Done { .. }) => "done",
            Ok(Claim::InFlight { .. }) => "in_flight",
            Err(_) => "error",
        };
        span.record("handoff.claim.result", result);
        claim
    }

    /// Releases our claim in the background, retrying every half second until Redis answers or
    /// `within` (the claim's lease: after it the claim is gone anyway) has passed. For a release
    /// that failed because Redis was away: left alone, the claim would make every retry of the
    /// event wait its whole lease for a worker that gave up long ago.
    pub fn release_in_background(
        &self,
        key: &IdempotencyKey,
        token: &ClaimToken,
        within: Duration,
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.clone();
        let key = key.clone();
        let token = token.clone();
        runtime.spawn(async move {
            let deadline = tokio::time::Instant::now() + within;
            while tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if store.release(&key, &token).await.is_ok() {
                    return;
                }
            }
        });
    }

    /// Completes our claim (with `ledger`) in the background, retrying every half second until
    /// Redis answers or `within` has passed. For a completion that failed because Redis was away
    /// after the side effect happened: the message is retried meanwhile, and finds the event
    /// done once this lands.
    pub fn complete_in_background(
        &self,
        key: &IdempotencyKey,
        token: &ClaimToken,
        fingerprint: &str,
        retention: Duration,
        ledger: Option<LedgerUpdate>,
        within: Duration,
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.clone();
        let key = key.clone();
        let token = token.clone();
        let fingerprint = fingerprint.to_owned();
        runtime.spawn(async move {
            let deadline = tokio::time::Instant::now() + within;
            while tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let done = store
                    .complete(&key, &token, &fingerprint, retention, ledger.as_ref())
                    .await;
                if done.is_ok() {
                    return;
                }
            }
        });
    }

    /// A claim whose answer did not come back in time may still have landed (or land later, from
    /// a batch still queued): then every retry of the event would find it "in flight" and wait a
    /// whole lease for a worker that gave up. So the claim is released in the background, every
    /// half second until two releases have gone through (the second catches a claim that landed
    /// after the first) or the lease has passed (Redis may be away for a while). A release only
    /// deletes a record carrying our token, so this never touches anyone else's claim.
    fn take_back_unanswered_claim(&self, key: &IdempotencyKey, token: ClaimToken, lease: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.clone();
        let key = key.clone();
        let pause = self.inner.shared.op_timeout.max(Duration::from_millis(500));
        runtime.spawn(async move {
            let deadline = tokio::time::Instant::now() + lease;
            let mut released = 0;
            while released < 2 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(pause).await;
                match store.release(&key, &token).await {
                    Ok(()) => released += 1,
                    Err(err) => {
                        tracing::debug!(error = %err, "Could not take back an unanswered claim yet.");
                    }
                }
            }
        });
    }

    /// Replaces our started record with `"finished:<fingerprint>"`, kept for `retention`, and
    /// applies `ledger` (if any) in the same round trip.
    ///
    /// If our lease ran out and the key is gone, `finished` is written anyway: the side effect did
    /// happen, and recording it is what stops a redelivery from repeating it. If another worker has
    /// claimed the key meanwhile, its record is left alone: that worker owns the key now and will
    /// finish (or release) it itself; overwriting its lock could hide a payload with a different
    /// fingerprint, and a repeat is made harmless by the destinations' natural-key upserts. Both
    /// cases mean the lease is too short for the side effect and are logged as warnings.
    pub async fn complete(
        &self,
        key: &IdempotencyKey,
        token: &ClaimToken,
        fingerprint: &str,
        retention: Duration,
        ledger: Option<&LedgerUpdate>,
    ) -> Result<(), StoreError> {
        let outcome = self
            .complete_with_outcome(key, token, fingerprint, retention, ledger)
            .await?;
        match outcome {
            Completion::Completed => {}
            Completion::AlreadyFinished => tracing::debug!(
                stage = %key.stage, id = %key.id,
                "Idempotency key was already finished by another worker."
            ),
            Completion::LeaseExpired => tracing::warn!(
                stage = %key.stage, id = %key.id,
                "Claim lease ran out before completion; recorded as finished anyway. The lease is shorter than the side effect."
            ),
            Completion::ClaimedByOther => tracing::warn!(
                stage = %key.stage, id = %key.id,
                "Claim lease ran out and another worker claimed the key; its claim is kept. The lease is shorter than the side effect."
            ),
        }
        Ok(())
    }

    /// Like [`Store::complete`], but reports what was found (for callers and tests that care).
    pub async fn complete_with_outcome(
        &self,
        key: &IdempotencyKey,
        token: &ClaimToken,
        fingerprint: &str,
        retention: Duration,
        ledger: Option<&LedgerUpdate>,
    ) -> Result<Completion, StoreError> {
        let redis_key = self.idempotency_key(key);
        let item = CompleteItem {
            key: redis_key.clone(),
            suffix: token.suffix(),
            finished: format!("{FINISHED}{fingerprint}"),
            retention_ms: millis(retention),
            ledger: ledger.map(|update| LedgerItem {
                key: self.ledger_key(&update.publisher_id, &update.event_id),
                ttl_ms: millis(update.ttl),
                first_seen_at: update.at.clone(),
                fields: update.fields(),
                index: update.indexed_email().map(|email| IndexItem {
                    key: self.ledger_email_key(&update.publisher_id, email),
                    event_id: update.event_id.clone(),
                    score_ms: update.at_unix_ms(),
                }),
            }),
        };
        let span = tracing::info_span!(
            "idempotency.complete",
            otel.name = "idempotency complete",
            otel.kind = "client",
            db.system.name = "redis",
            db.operation.name = "EVALSHA",
            handoff.stage = %key.stage,
        );
        let outcome = self
            .coalesced(self.inner.completions.submit(item))
            .instrument(span)
            .await?;
        match outcome.as_str() {
            "completed" => Ok(Completion::Completed),
            "lease_expired" => Ok(Completion::LeaseExpired),
            "already_finished" => Ok(Completion::AlreadyFinished),
            "claimed_by_other" => Ok(Completion::ClaimedByOther),
            other => Err(StoreError::Corrupt(format!(
                "complete script returned {other:?} for {redis_key}"
            ))),
        }
    }

    /// Deletes the started record if it is still ours, so a retry can claim at once after a failed
    /// side effect. Anything else there (another claim, a finished record) is left untouched.
    pub async fn release(
        &self,
        key: &IdempotencyKey,
        token: &ClaimToken,
    ) -> Result<(), StoreError> {
        self.release_if_ours(key, token).await.map(|_| ())
    }

    /// Like [`Store::release`], returning whether our record was there and is now gone.
    pub async fn release_if_ours(
        &self,
        key: &IdempotencyKey,
        token: &ClaimToken,
    ) -> Result<bool, StoreError> {
        let redis_key = self.idempotency_key(key);
        let mut invocation = RELEASE.key(&redis_key);
        invocation.arg(token.suffix());
        let deleted: i64 = self
            .run(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await?;
        Ok(deleted == 1)
    }

    /// Applies one ledger update (fields, `first_seen_at` if new, TTL) in one `MULTI` round trip;
    /// with an email, the event's email index entry too (see the `ledger` module).
    pub async fn ledger_record(&self, update: &LedgerUpdate) -> Result<(), StoreError> {
        let key = self.ledger_key(&update.publisher_id, &update.event_id);
        let ttl = millis(update.ttl);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_nx(&key, FIRST_SEEN_AT, &update.at)
            .ignore();
        let mut fields = update.event_fields();
        let (stage_field, stage_json) = update.stage_field();
        if update.status == RETRYING {
            // A try that failed while Redis was away notes `retrying` once Redis is back, which
            // can be after the completion (by its retry, or in the background) wrote
            // `delivered`; the delivery must stay the last word.
            pipe.cmd("EVAL")
                .arg(RETRY_NOTICE_LUA)
                .arg(1)
                .arg(&key)
                .arg(&stage_field)
                .arg(&stage_json)
                .arg(format!("\"status\":\"{DELIVERED}\""))
                .ignore();
        } else {
            fields.push((stage_field, stage_json));
        }
        if !fields.is_empty() {
            pipe.hset_multiple(&key, &fields).ignore();
        }
        pipe.pexpire(&key, ttl).ignore();
        if let Some(email) = update.indexed_email() {
            let index = self.ledger_email_key(&update.publisher_id, email);
            // NX: an event keeps the score it was first indexed with, whoever reports later.
            pipe.cmd("ZADD")
                .arg(&index)
                .arg("NX")
                .arg(update.at_unix_ms())
                .arg(&update.event_id)
                .ignore()
                .zremrangebyrank(&index, 0, index_trim_stop())
                .ignore()
                .pexpire(&index, ttl)
                .ignore();
        }
        self.run(|mut conn| async move { pipe.query_async::<()>(&mut conn).await })
            .await
    }

    /// The ledgers of up to `limit` events indexed under `email` for this publisher, newest first
    /// (by when each was first indexed). `email` is looked up exactly as given, so callers pass
    /// the normalized form the writers indexed ([`LedgerUpdate::with_email`]).
    ///
    /// Two round trips within one `op_timeout`: `ZREVRANGE` for the ids, then one pipeline of
    /// `HGETALL`s. (A single script could not do it without building the ledger keys itself,
    /// hiding them from Redis.) Ids whose ledger has expired are left out, so a page can be short
    /// when it reaches them; they mostly sort last, as ledgers expire in the order of their last
    /// news. They are then removed from the index, best effort, by a script that re-checks each
    /// ledger so that one written meanwhile keeps its entry.
    pub async fn ledger_by_email(
        &self,
        publisher_id: &str,
        email: &str,
        limit: usize,
    ) -> Result<Vec<Ledger>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let index = self.ledger_email_key(publisher_id, email);
        let ledger_prefix = self.ledger_key(publisher_id, "");
        let stop = isize::try_from(limit).unwrap_or(isize::MAX) - 1;
        let (ids, hashes) = self
            .run(|mut conn| {
                let index = index.clone();
                let ledger_prefix = ledger_prefix.clone();
                async move {
                    let ids: Vec<String> = conn.zrevrange(&index, 0, stop).await?;
                    if ids.is_empty() {
                        return Ok((ids, Vec::new()));
                    }
                    let mut pipe = redis::pipe();
                    for id in &ids {
                        pipe.hgetall(format!("{ledger_prefix}{id}"));
                    }
                    let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
                    Ok((ids, hashes))
                }
            })
            .await?;
        if hashes.len() != ids.len() {
            return Err(StoreError::Corrupt(format!(
                "{index}: {} ledger reads answered for {} ids",
                hashes.len(),
                ids.len()
            )));
        }
        let mut ledgers = Vec::with_capacity(ids.len());
        let mut expired = Vec::new();
        for (id, hash) in ids.into_iter().zip(hashes) {
            let key = format!("{ledger_prefix}{id}");
            match Ledger::from_hash(&key, publisher_id, &id, hash)? {
                Some(ledger) => ledgers.push(ledger),
                None => expired.push(id),
            }
        }
        if !expired.is_empty() {
            self.prune_email_index(&index, &ledger_prefix, &expired)
                .await;
        }
        Ok(ledgers)
    }

    /// Removes `event_ids` from an email index if their ledgers are (still) gone. Best effort: a
    /// failure only leaves them for the next read or the trim.
    async fn prune_email_index(&self, index: &str, ledger_prefix: &str, event_ids: &[String]) {
        let mut invocation = PRUNE_EMAIL_INDEX.key(index);
        for id in event_ids {
            invocation.key(format!("{ledger_prefix}{id}")).arg(id);
        }
        let pruned: Result<i64, StoreError> = self
            .run(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await;
        match pruned {
            Ok(n) => {
                tracing::debug!(index = %index, pruned = n, "Pruned expired ledgers from an email index.")
            }
            Err(err) => {
                tracing::debug!(index = %index, error = %err, "Could not prune an email index; the next read retries.")
            }
        }
    }

    /// Reads the ledger of one event; `None` when nothing was recorded (or it expired).
    pub async fn ledger_get(
        &self,
        publisher_id: &str,
        event_id: &str,
    ) -> Result<Option<Ledger>, StoreError> {
        let key = self.ledger_key(publisher_id, event_id);
        let hash: HashMap<String, String> = self
            .run(|mut conn| {
                let key = key.clone();
                async move { conn.hgetall(key).await }
            })
            .await?;
        Ledger::from_hash(&key, publisher_id, event_id, hash)
    }

    /// Runs one operation bounded by `op_timeout` and records whether Redis was reachable.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.inner.shared.run(op).await
    }

    /// Waits for a coalesced request's answer, bounded by `op_timeout` from the moment the caller
    /// asked (queueing included), so a stalled Redis is a quick error here as everywhere else.
    async fn coalesced<T>(
        &self,
        answer: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let shared = &self.inner.shared;
        match tokio::time::timeout(shared.op_timeout, answer).await {
            Ok(result) => result,
            Err(_) => {
                let err = StoreError::Timeout(shared.op_timeout);
                shared.set_healthy(false, Some(&err));
                Err(err)
            }
        }
    }
}

impl Shared {
    /// The shared connection, created on first use (inside the runtime, which the connection
    /// manager needs for its background task).
    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                ConnectionManager::new_lazy_with_config(self.client.clone(), self.manager.clone())
            })
            .await
            .map_err(StoreError::from)?;
        Ok(conn.clone())
    }

    /// Runs one operation bounded by `op_timeout` and records whether Redis was reachable.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let attempt = async {
            let conn = self.connection().await?;
            op(conn).await.map_err(StoreError::from)
        };
        let result = match tokio::time::timeout(self.op_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(self.op_timeout)),
        };
        let reachable = match &result {
            Ok(_) => true,
            Err(err) => !err.is_connectivity(),
        };
        self.set_healthy(reachable, result.as_ref().err());
        result
    }

    fn set_healthy(&self, healthy: bool, err: Option<&StoreError>) {
        let was = self.healthy.swap(healthy, Ordering::Relaxed);
        if was && !healthy {
            match err {
                Some(err) => tracing::warn!(error = %err, "Redis became unreachable."),
                None => tracing::warn!("Redis became unreachable."),
            }
        } else if !was && healthy {
            tracing::info!(namespace = %self.namespace, "Redis is reachable.");
        }
    }

    /// One `claim_many.lua` call for a batch of claims: per item, `None` when acquired, else the
    /// record found.
    async fn claim_many(&self, items: Vec<ClaimItem>) -> BatchResult<Option<String>> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(CLAIM_MANY.get_hash()).arg(items.len());
        for item in &items {
            cmd.arg(&item.key);
        }
        for item in &items {
            cmd.arg(&item.record).arg(item.lease_ms);
        }
        let replies = self.eval_many(cmd, CLAIM_MANY_LUA, items.len()).await?;
        Ok(replies
            .into_iter()
            .map(|reply| match reply {
                Value::Nil | Value::Boolean(false) => Ok(None),
                other => item_string(other, "claim_many").map(Some),
            })
            .collect())
    }

    /// One `complete_many.lua` call for a batch of completions: per item, the outcome word.
    async fn complete_many(&self, items: Vec<CompleteItem>) -> BatchResult<String> {
        let keys = items.iter().map(|i| {
            1 + i
                .ledger
                .as_ref()
                .map_or(0, |ledger| 1 + usize::from(ledger.index.is_some()))
        });
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(COMPLETE_MANY.get_hash()).arg(keys.sum::<usize>());
        for item in &items {
            cmd.arg(&item.key);
            if let Some(ledger) = &item.ledger {
                cmd.arg(&ledger.key);
                if let Some(index) = &ledger.index {
                    cmd.arg(&index.key);
                }
            }
        }
        for item in &items {
            let kind = match &item.ledger {
                None => "0",
                Some(LedgerItem { index: None, .. }) => "1",
                Some(LedgerItem { index: Some(_), .. }) => "2",
            };
            cmd.arg(kind)
                .arg(&item.suffix)
                .arg(&item.finished)
                .arg(item.retention_ms);
            if let Some(ledger) = &item.ledger {
                cmd.arg(ledger.ttl_ms)
                    .arg(&ledger.first_seen_at)
                    .arg(ledger.fields.len());
                for (field, value) in &ledger.fields {
                    cmd.arg(field).arg(value);
                }
                if let Some(index) = &ledger.index {
                    cmd.arg(&index.event_id)
                        .arg(index.score_ms)
                        .arg(LEDGER_EMAIL_INDEX_MAX);
                }
            }
        }
        let replies = self.eval_many(cmd, COMPLETE_MANY_LUA, items.len()).await?;
        Ok(replies
            .into_iter()
            .map(|reply| item_string(reply, "complete_many"))
            .collect())
    }

    /// Sends an `EVALSHA` (loading the script first if Redis does not know it yet) and returns its
    /// per-item replies, still unparsed: an error reply of one item is that item's error, so the
    /// reply is read as raw values rather than with `query_async`, which fails on any error inside.
    async fn eval_many(
        &self,
        cmd: redis::Cmd,
        source: &'static str,
        items: usize,
    ) -> Result<Vec<Value>, StoreError> {
        self.script_calls.fetch_add(1, Ordering::Relaxed);
        self.script_requests
            .fetch_add(u64::try_from(items).unwrap_or(u64::MAX), Ordering::Relaxed);
        let reply = self
            .run(|mut conn| async move {
                match top_level(conn.req_packed_command(&cmd).await) {
                    Err(err)
                        if err.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                    {
                        // A restarted or flushed Redis forgot the script: load it, then retry once.
                        redis::cmd("SCRIPT")
                            .arg("LOAD")
                            .arg(source)
                            .query_async::<String>(&mut conn)
                            .await?;
                        top_level(conn.req_packed_command(&cmd).await)
                    }
                    other => other,
                }
            })
            .await?;
        match reply {
            Value::Array(replies) if replies.len() == items => Ok(replies),
            other => Err(StoreError::Corrupt(format!(
                "batch script answered {other:?} for {items} items"
            ))),
        }
    }
}

/// A top-level error reply as an error (the connection may hand it over as a value).
fn top_level(reply: redis::RedisResult<Value>) -> redis::RedisResult<Value> {
    match reply? {
        Value::ServerError(err) => Err(err.into()),
        value => Ok(value),
    }
}

/// One item's reply as a string, or that item's error.
fn item_string(reply: Value, script: &str) -> Result<String, StoreError> {
    match reply {
        Value::ServerError(err) => Err(StoreError::from(redis::RedisError::from(err))),
        Value::BulkString(bytes) => String::from_utf8(bytes)
            .map_err(|err| StoreError::Corrupt(format!("{script} answered non-UTF-8: {err}"))),
        Value::SimpleString(text) => Ok(text),
        other => Err(StoreError::Corrupt(format!(
            "{script} answered {other:?} for an item"
        ))),
    }
}

/// The `ZREMRANGEBYRANK` stop that keeps an email index's newest [`LEDGER_EMAIL_INDEX_MAX`]
/// members: ranks `0..=-(max + 1)` are the oldest beyond them.
fn index_trim_stop() -> isize {
    let max = isize::try_from(LEDGER_EMAIL_INDEX_MAX).unwrap_or(isize::MAX - 1);
    -(max + 1)
}

/// A duration in whole milliseconds, at least 1 (Redis rejects `PX 0`).
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// Parses an existing record into [`Claim::InFlight`] or [`Claim::Done`].
fn parse_record(key: &str, record: &str) -> Result<Claim, StoreError> {
    if let Some(rest) = record.strip_prefix(STARTED) {
        // The token never contains ':'; the fingerprint may, so split at the last one.
        if let Some((fingerprint, _token)) = rest.rsplit_once(':') {
            return Ok(Claim::InFlight {
                fingerprint: fingerprint.to_owned(),
            });
        }
    } else if let Some(fingerprint) = record.strip_prefix(FINISHED) {
        return Ok(Claim::Done {
            fingerprint: fingerprint.to_owned(),
        });
    }
    Err(StoreError::Corrupt(format!(
        "{key} holds {record:?}, not a started/finished record"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse() {
        assert_eq!(
            parse_record("k", "started:sha:ab:tok").unwrap(),
            Claim::InFlight {
                fingerprint: "sha:ab".into()
            }
        );
        assert_eq!(
            parse_record("k", "finished:sha").unwrap(),
            Claim::Done {
                fingerprint: "sha".into()
            }
        );
        assert!(matches!(
            parse_record("k", "garbage"),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn the_trim_keeps_the_newest_max_members() {
        assert_eq!(
            index_trim_stop(),
            -(isize::try_from(LEDGER_EMAIL_INDEX_MAX).unwrap_or(0) + 1)
        );
    }

    #[test]
    fn millis_is_never_zero() {
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(Duration::from_secs(2)), 2000);
    }

    #[test]
    fn keys_are_namespaced() {
        let store = Store::new(&RedisConfig::default(), "ns").unwrap();
        assert_eq!(store.key(&["a", "b"]), "ns:a:b");
        let key = IdempotencyKey::new("ingest", "pub-1", "ev-1");
        assert_eq!(store.idempotency_key(&key), "ns:idem:ingest:pub-1:ev-1");
        assert_eq!(store.ledger_key("pub-1", "ev-1"), "ns:ledger:pub-1:ev-1");
        assert_eq!(
            store.ledger_email_key("pub-1", "alex@example.com"),
            "ns:ledger-email:pub-1:alex@example.com"
        );
    }

    #[test]
    fn malformed_url_is_the_only_constructor_error() {
        let cfg = RedisConfig {
            url: "not a url".into(),
            ..RedisConfig::default()
        };
        assert!(matches!(
            Store::new(&cfg, "ns"),
            Err(StoreError::InvalidUrl(_))
        ));
    }
}
