//! The parked dead letters in Redis: records, indexes, status changes and the audit log.
//!
//! Redis is the store of record here, run with AOF persistence (`appendfsync always`),
//! so a dead letter acknowledged to the broker is on disk (see ARCHITECTURE.md for why
//! Redis rather than a RabbitMQ stream). Keys, all under `{ns}:dlq:`:
//!
//! - `rec:{id}`: hash with `summary` (JSON [`Summary`]), `record` (the `DeadLetter`
//!   protobuf, dropped by a purge), `state` (JSON [`State`]) and `status`;
//! - `ix:all` and `ix:{dimension}:{value}`: sorted sets of ids scored by
//!   dead-lettered-at (unix ms); a filter is an intersection, a time window a score range;
//! - `facet`: hash id → `fingerprint\tstage\tclass\tstatus`, what group and stats
//!   scans read (one field per dead letter instead of a whole record);
//! - `groups`: hash fingerprint → JSON [`Group`] (the cause, as first seen);
//! - `audit`: stream of [`AuditEntry`];
//! - `job:{id}`, `job:{id}:ids`, `jobs`: replay jobs (see `replay.rs`).
//!
//! Every write that must be all-or-nothing is one Lua script (`lua/`).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use handoff_delivery::RedisHandle;
use handoff_events::{Message, v1};
use handoff_idempotency::{RedisConfig, StoreError};
use redis::Script;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::record::{self, Dimension, Status, Summary};

static PARK: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/park.lua")));
static QUERY: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/query.lua")));
static FACETS: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/facets.lua")));
static TRANSITION: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/transition.lua")));

/// Dead letters one `facets.lua` call reads: a few milliseconds of Redis at a time.
const FACET_CHUNK: u64 = 5_000;

/// Audit entries kept (the stream is trimmed to about this many).
const AUDIT_KEEP: usize = 100_000;

/// What an operator asks for: every set field must match; times bound dead-lettered-at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Filter {
    pub stage: Option<String>,
    pub event_type: Option<String>,
    pub error_class: Option<String>,
    pub destination: Option<String>,
    /// Vendor code or HTTP status, or the broker's reason.
    pub code: Option<String>,
    pub publisher: Option<String>,
    /// Normalized by the store before the lookup, as the ledger's index is.
    pub email: Option<String>,
    /// A group: what `groups` lists.
    pub fingerprint: Option<String>,
    pub event_id: Option<String>,
    pub status: Option<Status>,
    /// RFC 3339.
    pub since: Option<String>,
    /// RFC 3339.
    pub until: Option<String>,
}

impl Filter {
    /// Parses `since` / `until`; an unreadable time is the operator's error, said plainly.
    pub fn window(&self) -> Result<(i64, i64), String> {
        let bound = |name: &str, value: &Option<String>| -> Result<Option<i64>, String> {
            value
                .as_deref()
                .map(|text| {
                    OffsetDateTime::parse(text, &Rfc3339)
                        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
                        .map_err(|_| format!("{name} {text:?} is not an RFC 3339 time"))
                })
                .transpose()
        };
        Ok((
            bound("since", &self.since)?.unwrap_or(i64::MIN),
            bound("until", &self.until)?.unwrap_or(i64::MAX),
        ))
    }

    fn pairs(&self) -> Vec<(Dimension, String)> {
        let email = self.email.as_deref().map(|raw| {
            handoff_normalize::field::email(raw, false)
                .unwrap_or_else(|_| raw.trim().to_lowercase())
        });
        [
            (Dimension::Stage, self.stage.clone()),
            (Dimension::EventType, self.event_type.clone()),
            (Dimension::ErrorClass, self.error_class.clone()),
            (Dimension::Destination, self.destination.clone()),
            (Dimension::Code, self.code.clone()),
            (Dimension::Publisher, self.publisher.clone()),
            (Dimension::Email, email),
            (Dimension::Fingerprint, self.fingerprint.clone()),
            (Dimension::Event, self.event_id.clone()),
            (Dimension::Status, self.status.map(|s| s.label().to_owned())),
        ]
        .into_iter()
        .filter_map(|(d, v)| v.filter(|v| !v.is_empty()).map(|v| (d, v)))
        .collect()
    }
}

/// What an operator picked for a replay or a purge: ids, or a filter (a group is a
/// filter on its fingerprint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    Ids(Vec<String>),
    Filter(Box<Filter>),
}

impl Selection {
    /// Exactly one of: ids, a filter, a group.
    pub fn of(
        ids: &[String],
        filter: Option<&Filter>,
        group: Option<&str>,
    ) -> Result<Selection, String> {
        match (ids.is_empty(), filter, group) {
            (false, None, None) => Ok(Selection::Ids(ids.to_vec())),
            (true, Some(filter), None) => Ok(Selection::Filter(Box::new(filter.clone()))),
            (true, None, Some(group)) => Ok(Selection::Filter(Box::new(Filter {
                fingerprint: Some(group.to_owned()),
                ..Filter::default()
            }))),
            _ => Err("name exactly one of: ids, a filter, a group".into()),
        }
    }

    /// The filter, for the audit log.
    pub fn filter(&self) -> Option<&Filter> {
        match self {
            Selection::Filter(filter) => Some(filter),
            Selection::Ids(_) => None,
        }
    }
}

/// What has happened to a dead letter since it was parked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    pub status: Option<Status>,
    pub parked_at: String,
    pub replay: Option<ReplayState>,
    pub purge: Option<PurgeState>,
    /// Every status change, oldest first.
    pub history: Vec<HistoryEntry>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReplayState {
    pub job: String,
    pub mode: String,
    pub at: String,
    /// `sent` once the broker confirmed the copy; `failed_again` when a dead letter of
    /// the same event and stage arrived after it (see `failed_again_as`).
    pub outcome: Option<String>,
    pub failed_again_as: Option<String>,
    pub failed_again_at: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PurgeState {
    pub by: String,
    pub reason: String,
    pub at: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HistoryEntry {
    pub status: String,
    pub at: Option<String>,
}

/// A dead letter as the store holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Parked {
    pub summary: Summary,
    pub state: State,
    /// `None` once purged.
    pub record: Option<v1::DeadLetter>,
}

/// One row of a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub summary: Summary,
    pub state: State,
}

/// A page of a list, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// How many match in all.
    pub total: u64,
    pub offset: u64,
    pub rows: Vec<Row>,
}

/// "The same failure": its description as first seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Group {
    pub fingerprint: String,
    pub stage: String,
    pub error_class: String,
    pub destination: String,
    pub code: String,
    pub cause: String,
    /// One dead letter of the group, to `show`.
    pub example: String,
}

/// Counts over the dead letters a filter matches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facets {
    pub total: u64,
    pub groups: Vec<GroupCount>,
    /// Parked dead letters per stage and error class.
    pub parked: Vec<ParkedCount>,
    pub by_status: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCount {
    pub group: Group,
    pub count: u64,
    /// Of which still parked.
    pub parked: u64,
    pub first_seen: String,
    pub last_seen: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedCount {
    pub stage: String,
    pub error_class: String,
    pub count: u64,
    pub oldest: String,
}

/// Who did what, when, to how many.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuditEntry {
    /// The stream id, set when read back.
    pub id: String,
    pub at: String,
    pub operator: String,
    /// `replay`, `replay.pause`, `replay.resume`, `replay.cancel`, `purge`, …
    pub action: String,
    pub filter: Option<Filter>,
    pub ids: Vec<String>,
    pub count: u64,
    pub reason: String,
    pub job: String,
    pub detail: String,
}

/// Whether Redis keeps what it acknowledged across a crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durability {
    pub appendonly: bool,
    pub appendfsync: String,
}

impl Durability {
    /// AOF on and every write fsynced before its reply.
    pub fn is_crash_safe(&self) -> bool {
        self.appendonly && self.appendfsync == "always"
    }
}

/// The parked dead letters of one namespace.
#[derive(Clone, Debug)]
pub struct DeadLetterStore {
    redis: RedisHandle,
    prefix: String,
}

impl DeadLetterStore {
    pub fn new(cfg: &RedisConfig, namespace: &str) -> Result<Self, StoreError> {
        Ok(Self {
            redis: RedisHandle::new(cfg)?,
            prefix: format!("{namespace}:dlq:"),
        })
    }

    /// The connection, for the replay jobs' own keys.
    pub fn redis(&self) -> &RedisHandle {
        &self.redis
    }

    /// `{ns}:dlq:{suffix}`.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    fn record_prefix(&self) -> String {
        self.key("rec:")
    }

    fn index_key(&self, dimension: Dimension, value: &str) -> String {
        self.key(&format!("ix:{}:{value}", dimension.segment()))
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.redis
            .run(|mut conn| async move { redis::cmd("PING").query_async::<()>(&mut conn).await })
            .await
    }

    /// Reads Redis' persistence settings (`CONFIG GET`), `None` where `CONFIG` is
    /// disabled (some managed services): the operator's word is all there is then.
    pub async fn durability(&self) -> Result<Option<Durability>, StoreError> {
        let answer: Result<Vec<String>, StoreError> = self
            .redis
            .run(|mut conn| async move {
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("append*")
                    .query_async(&mut conn)
                    .await
            })
            .await;
        let pairs = match answer {
            Ok(pairs) => pairs,
            Err(StoreError::Redis(_)) => return Ok(None),
            Err(err) => return Err(err),
        };
        let get = |name: &str| {
            pairs
                .chunks(2)
                .find(|kv| kv[0] == name)
                .and_then(|kv| kv.get(1).cloned())
                .unwrap_or_default()
        };
        Ok(Some(Durability {
            appendonly: get("appendonly") == "yes",
            appendfsync: get("appendfsync"),
        }))
    }

    /// Parks a dead letter; `false` if it was parked before (same id).
    pub async fn park(
        &self,
        summary: &Summary,
        record: &v1::DeadLetter,
    ) -> Result<bool, StoreError> {
        let now = record::rfc3339(OffsetDateTime::now_utc());
        let state = State {
            status: Some(Status::Parked),
            parked_at: now.clone(),
            history: vec![HistoryEntry {
                status: Status::Parked.label().into(),
                at: Some(now.clone()),
            }],
            ..State::default()
        };
        let group = Group {
            fingerprint: summary.fingerprint.clone(),
            stage: summary.stage.clone(),
            error_class: summary.error_class.clone(),
            destination: summary.destination.clone(),
            code: summary.error_code.clone(),
            cause: summary.cause.clone(),
            example: summary.id.clone(),
        };
        let facet = format!(
            "{}\t{}\t{}\tparked",
            summary.fingerprint,
            clean(&summary.stage),
            clean(&summary.error_class)
        );
        let mut invocation = PARK.prepare_invoke();
        invocation
            .key(self.key(&format!("rec:{}", summary.id)))
            .key(self.key("facet"))
            .key(self.key("groups"))
            .key(self.index_key(Dimension::Event, &summary.event_id));
        invocation.key(self.key("ix:all"));
        invocation.key(self.index_key(Dimension::Status, Status::Parked.label()));
        for (dimension, value) in summary.index_entries() {
            invocation.key(self.index_key(dimension, value));
        }
        invocation
            .arg(&summary.id)
            .arg(summary.score())
            .arg(json(summary))
            .arg(record.encode_to_vec())
            .arg(json(&state))
            .arg(facet)
            .arg(&summary.fingerprint)
            .arg(json(&group))
            .arg(if summary.event_id.is_empty() {
                ""
            } else {
                summary.stage.as_str()
            })
            .arg(self.record_prefix())
            .arg(now)
            .arg(&summary.origin_routing_key);
        let parked: i64 = self
            .redis
            .run(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await?;
        Ok(parked == 1)
    }

    /// One dead letter with its record (unless purged).
    pub async fn get(&self, id: &str) -> Result<Option<Parked>, StoreError> {
        let key = self.key(&format!("rec:{id}"));
        let fields: (Option<String>, Option<String>, Option<Vec<u8>>) = self
            .redis
            .run(|mut conn| async move {
                redis::cmd("HMGET")
                    .arg(key)
                    .arg("summary")
                    .arg("state")
                    .arg("record")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let (Some(summary), state, record) = fields else {
            return Ok(None);
        };
        let summary: Summary = serde_json::from_str(&summary)
            .map_err(|e| StoreError::Corrupt(format!("dead letter {id}: summary: {e}")))?;
        let state: State = state
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("dead letter {id}: state: {e}")))?
            .unwrap_or_default();
        let record = record
            .map(|bytes| v1::DeadLetter::decode(bytes.as_slice()))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("dead letter {id}: record: {e}")))?;
        Ok(Some(Parked {
            summary,
            state,
            record,
        }))
    }

    /// The keys a filter intersects: one per set field, or the all-index.
    fn filter_keys(&self, filter: &Filter) -> Vec<String> {
        let keys: Vec<String> = filter
            .pairs()
            .iter()
            .map(|(d, v)| self.index_key(*d, v))
            .collect();
        if keys.is_empty() {
            vec![self.key("ix:all")]
        } else {
            keys
        }
    }

    fn scratch_key(&self) -> String {
        self.key(&format!("tmp:{}", uuid::Uuid::new_v4().simple()))
    }

    /// One page of the dead letters matching `filter`, newest first.
    pub async fn list(&self, filter: &Filter, offset: u64, limit: u64) -> Result<Page, QueryError> {
        let (min, max) = filter.window().map_err(QueryError::BadFilter)?;
        let mut invocation = QUERY.prepare_invoke();
        invocation.key(self.scratch_key());
        for key in self.filter_keys(filter) {
            invocation.key(key);
        }
        invocation
            .arg(min)
            .arg(max)
            .arg(offset)
            .arg(limit)
            .arg(self.record_prefix());
        let answer: redis::Value = self
            .redis
            .run(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await?;
        parse_page(answer, offset).map_err(QueryError::Store)
    }

    /// Counts per group, per stage and class of the parked, per status.
    pub async fn facets(&self, filter: &Filter) -> Result<Facets, QueryError> {
        let (min, max) = filter.window().map_err(QueryError::BadFilter)?;
        let keys = self.filter_keys(filter);
        // Several filters: their intersection, made once, then walked in chunks.
        let scratch = (keys.len() > 1).then(|| self.scratch_key());
        let source = match &scratch {
            Some(target) => {
                let (scratch, keys) = (target.clone(), keys.clone());
                self.redis
                    .run(|mut conn| async move {
                        redis::pipe()
                            .atomic()
                            .cmd("ZINTERSTORE")
                            .arg(&scratch)
                            .arg(keys.len())
                            .arg(&keys)
                            .ignore()
                            .cmd("PEXPIRE")
                            .arg(&scratch)
                            .arg(60_000)
                            .ignore()
                            .query_async::<()>(&mut conn)
                            .await
                    })
                    .await?;
                target.clone()
            }
            None => keys[0].clone(),
        };
        let walked = self.walk_facets(&source, min, max).await;
        if let Some(scratch) = scratch {
            let _ = self
                .redis
                .run(|mut conn| async move {
                    redis::cmd("DEL")
                        .arg(scratch)
                        .query_async::<()>(&mut conn)
                        .await
                })
                .await;
        }
        let raw = walked?;
        let fingerprints: Vec<String> = raw.groups.keys().cloned().collect();
        let described: Vec<Option<String>> = if fingerprints.is_empty() {
            Vec::new()
        } else {
            let key = self.key("groups");
            let fps = fingerprints.clone();
            self.redis
                .run(|mut conn| async move {
                    redis::cmd("HMGET")
                        .arg(key)
                        .arg(fps)
                        .query_async(&mut conn)
                        .await
                })
                .await?
        };
        let mut groups: Vec<GroupCount> = fingerprints
            .iter()
            .zip(described)
            .filter_map(|(fp, group)| {
                let counts = raw.groups.get(fp)?;
                let group = group
                    .and_then(|g| serde_json::from_str::<Group>(&g).ok())
                    .unwrap_or_else(|| Group {
                        fingerprint: fp.clone(),
                        ..Group::default()
                    });
                Some(GroupCount {
                    group,
                    count: counts.n,
                    parked: counts.parked,
                    first_seen: ms_to_rfc3339(counts.first),
                    last_seen: ms_to_rfc3339(counts.last),
                })
            })
            .collect();
        groups.sort_by(|a, b| b.count.cmp(&a.count).then(a.first_seen.cmp(&b.first_seen)));
        let mut parked: Vec<ParkedCount> = raw
            .parked
            .into_iter()
            .map(|(key, counts)| {
                let (stage, class) = key.split_once('|').unwrap_or((key.as_str(), ""));
                ParkedCount {
                    stage: stage.to_owned(),
                    error_class: class.to_owned(),
                    count: counts.n,
                    oldest: ms_to_rfc3339(counts.oldest),
                }
            })
            .collect();
        parked.sort_by(|a, b| (&a.stage, &a.error_class).cmp(&(&b.stage, &b.error_class)));
        Ok(Facets {
            total: raw.total,
            groups,
            parked,
            by_status: raw.status,
        })
    }

    /// Adds up `facets.lua` over the part of `source` in the window, a chunk of ranks at a
    /// time. Dead letters parked meanwhile mostly come after the window's end (newer
    /// scores); one parked or moved inside it may shift a chunk boundary by one.
    async fn walk_facets(&self, source: &str, min: i64, max: i64) -> Result<RawFacets, QueryError> {
        // The window as a range of ranks: chunks by rank cost no skipping.
        let (before, within): (u64, u64) = {
            let source = source.to_owned();
            self.redis
                .run(|mut conn| async move {
                    redis::pipe()
                        .cmd("ZCOUNT")
                        .arg(&source)
                        .arg("-inf")
                        .arg(format!("({min}"))
                        .cmd("ZCOUNT")
                        .arg(&source)
                        .arg(min)
                        .arg(max)
                        .query_async(&mut conn)
                        .await
                })
                .await?
        };
        let mut sum = RawFacets::default();
        let end = before + within;
        let mut start = before;
        while start < end {
            let last = (start + FACET_CHUNK - 1).min(end - 1);
            let mut invocation = FACETS.prepare_invoke();
            invocation
                .key(source)
                .key(self.key("facet"))
                .arg(start)
                .arg(last);
            let answer: String = self
                .redis
                .run(|mut conn| async move { invocation.invoke_async(&mut conn).await })
                .await?;
            let part: RawFacets = serde_json::from_str(&answer)
                .map_err(|e| QueryError::Store(StoreError::Corrupt(format!("facets: {e}"))))?;
            sum.add(part);
            start = last + 1;
        }
        Ok(sum)
    }

    /// Every id matching `filter` (newest first), at most `max`.
    pub async fn ids(&self, filter: &Filter, max: u64) -> Result<Vec<String>, QueryError> {
        let mut ids = Vec::new();
        let page_size = 5_000;
        let mut offset = 0;
        while (ids.len() as u64) < max {
            let page = self
                .list(filter, offset, page_size.min(max - ids.len() as u64))
                .await?;
            let n = page.rows.len() as u64;
            ids.extend(page.rows.into_iter().map(|r| r.summary.id));
            if n == 0 || offset + n >= page.total {
                break;
            }
            offset += n;
        }
        Ok(ids)
    }

    /// The ids a selection names, at most `max` (more ids than that is the operator's
    /// error; a filter matching more is cut to the newest `max`).
    pub async fn select(&self, selection: &Selection, max: u64) -> Result<Vec<String>, QueryError> {
        match selection {
            Selection::Ids(ids) if ids.len() as u64 > max => Err(QueryError::BadFilter(format!(
                "{} ids is more than replay.max_selection ({max})",
                ids.len()
            ))),
            Selection::Ids(ids) => Ok(ids.clone()),
            Selection::Filter(filter) => self.ids(filter, max).await,
        }
    }

    /// Moves `ids` that are in one of `from` to `to`, merging `patch` into their state;
    /// `only_job` limits it to dead letters that job took; returns the ids moved.
    pub async fn transition(
        &self,
        ids: &[String],
        from: &[Status],
        to: Status,
        mut patch: serde_json::Map<String, serde_json::Value>,
        drop_record: bool,
        only_job: Option<&str>,
    ) -> Result<Vec<String>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        patch.insert(
            "changed_at".into(),
            record::rfc3339(OffsetDateTime::now_utc()).into(),
        );
        let from: Vec<&str> = from.iter().map(|s| s.label()).collect();
        let mut moved = Vec::with_capacity(ids.len());
        // Bounded chunks keep each script short, so Redis serves others in between.
        for chunk in ids.chunks(500) {
            let mut invocation = TRANSITION.prepare_invoke();
            invocation
                .key(self.key("facet"))
                .key(self.key("ix:all"))
                .arg(self.record_prefix())
                .arg(self.key("ix:status:"))
                .arg(from.join(","))
                .arg(to.label())
                .arg(serde_json::Value::Object(patch.clone()).to_string())
                .arg(if drop_record { "1" } else { "0" })
                .arg(only_job.unwrap_or(""));
            for id in chunk {
                invocation.arg(id);
            }
            let done: Vec<String> = self
                .redis
                .run(|mut conn| async move { invocation.invoke_async(&mut conn).await })
                .await?;
            moved.extend(done);
        }
        Ok(moved)
    }

    /// Appends to the audit log.
    pub async fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let key = self.key("audit");
        let body = json(entry);
        self.redis
            .run(|mut conn| async move {
                redis::cmd("XADD")
                    .arg(key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(AUDIT_KEEP)
                    .arg("*")
                    .arg("entry")
                    .arg(body)
                    .query_async::<String>(&mut conn)
                    .await
            })
            .await?;
        Ok(())
    }

    /// The newest `limit` audit entries, newest first.
    pub async fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let key = self.key("audit");
        let entries: Vec<(String, Vec<(String, String)>)> = self
            .redis
            .run(|mut conn| async move {
                redis::cmd("XREVRANGE")
                    .arg(key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(limit)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(entries
            .into_iter()
            .filter_map(|(id, fields)| {
                let body = fields.into_iter().find(|(k, _)| k == "entry")?.1;
                let mut entry: AuditEntry = serde_json::from_str(&body).ok()?;
                entry.id = id;
                Some(entry)
            })
            .collect())
    }
}

/// A query's failure: the operator's filter, or the store.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    BadFilter(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Default, Deserialize)]
struct RawFacets {
    #[serde(default, deserialize_with = "map_or_empty")]
    groups: BTreeMap<String, RawGroup>,
    #[serde(default, deserialize_with = "map_or_empty")]
    parked: BTreeMap<String, RawParked>,
    #[serde(default, deserialize_with = "map_or_empty")]
    status: BTreeMap<String, u64>,
    total: u64,
}

impl RawFacets {
    fn add(&mut self, part: RawFacets) {
        self.total += part.total;
        for (fp, g) in part.groups {
            let sum = self.groups.entry(fp).or_insert(RawGroup {
                n: 0,
                first: g.first,
                last: g.last,
                parked: 0,
            });
            sum.n += g.n;
            sum.parked += g.parked;
            sum.first = sum.first.min(g.first);
            sum.last = sum.last.max(g.last);
        }
        for (key, p) in part.parked {
            let sum = self.parked.entry(key).or_insert(RawParked {
                n: 0,
                oldest: p.oldest,
            });
            sum.n += p.n;
            sum.oldest = sum.oldest.min(p.oldest);
        }
        for (status, n) in part.status {
            *self.status.entry(status).or_default() += n;
        }
    }
}

#[derive(Deserialize)]
struct RawGroup {
    n: u64,
    first: i64,
    last: i64,
    parked: u64,
}

#[derive(Deserialize)]
struct RawParked {
    n: u64,
    oldest: i64,
}

/// Lua's cjson writes an empty table as `{}`, but as `[]` never; still, accept both.
fn map_or_empty<'de, D, V>(d: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either<V> {
        Map(BTreeMap<String, V>),
        List(#[allow(dead_code)] Vec<serde_json::Value>),
    }
    Ok(match Either::deserialize(d)? {
        Either::Map(map) => map,
        Either::List(_) => BTreeMap::new(),
    })
}

fn parse_page(answer: redis::Value, offset: u64) -> Result<Page, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("query answer: {what}"));
    let redis::Value::Array(items) = answer else {
        return Err(corrupt("not an array"));
    };
    let mut items = items.into_iter();
    let total: u64 = match items.next() {
        Some(redis::Value::Int(n)) => u64::try_from(n).unwrap_or_default(),
        _ => return Err(corrupt("no total")),
    };
    let mut rows = Vec::new();
    for item in items {
        let (_id, summary, state, _status): (String, String, String, String) =
            redis::from_redis_value(item).map_err(|e| corrupt(&e.to_string()))?;
        let summary: Summary =
            serde_json::from_str(&summary).map_err(|e| corrupt(&format!("summary: {e}")))?;
        let state: State =
            serde_json::from_str(&state).map_err(|e| corrupt(&format!("state: {e}")))?;
        rows.push(Row { summary, state });
    }
    Ok(Page {
        total,
        offset,
        rows,
    })
}

fn ms_to_rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map(record::rfc3339)
        .unwrap_or_default()
}

/// Tabs separate a facet line's fields.
fn clean(value: &str) -> String {
    value.replace('\t', " ")
}

fn json<T: Serialize>(value: &T) -> String {
    // Serializing our own plain structs cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}
