//! The request log and the statistics tests count side effects with.
//!
//! Every vendor request (not `/_sandbox/*`) becomes one [`RequestEntry`] once it is answered or
//! dropped: when, what, which token, the caller's W3C `traceparent` (so a trace test can check the
//! request's parent is the caller's client span), the status, the injected fault if any, and for
//! writes one [`Write`] per record touched, saying create or update and under which key (the
//! unique property value the caller identified the record by, else its id). [`Stats`] is kept as
//! entries arrive, so it stays exact after the log is trimmed to its capacity.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

/// Whether a write made a new record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteOp {
    Create,
    Update,
}

/// One record a request created or updated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    /// HubSpot: `contacts`, `companies`, `deals`, `tickets`, or `associations`. Mailchimp:
    /// `members` (create or update), `tags` (update), `events` (create), keyed by lower-cased
    /// email.
    pub object_type: String,
    /// The record's id at the vendor.
    pub id: String,
    /// The natural key: the unique property value (an email, `handoff_deal_id`, …), else the id.
    pub key: String,
    pub op: WriteOp,
}

/// One vendor request, as the sandbox saw and answered it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestEntry {
    /// Position in arrival-of-answer order, from 1; survives trimming so tests can page.
    pub seq: u64,
    /// When the request arrived (UTC, milliseconds).
    pub at: String,
    /// Time from arrival to answer (or drop), including injected latency.
    pub elapsed_ms: u64,
    /// Which vendor API: `hubspot` or `mailchimp`.
    pub api: String,
    pub method: String,
    pub path: String,
    /// The credential presented, if any: HubSpot's bearer token, Mailchimp's API key.
    pub token: Option<String>,
    /// The request's `traceparent` header as sent, if any: its parent id is the caller's client
    /// span. `default` so logs written before the field existed still read.
    #[serde(default)]
    pub traceparent: Option<String>,
    /// The status answered; `None` when the connection was dropped without an answer.
    pub status: Option<u16>,
    /// The injected fault that shaped the answer: `outage`, `storm`, `error`, `timeout`.
    pub fault: Option<String>,
    /// Records created or updated by this request (also when the answer was dropped).
    pub writes: Vec<Write>,
}

/// Counts over every request since start or reset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub requests: u64,
    /// By status code as a string (`"200"`), plus `"dropped"` for answers never sent.
    pub by_status: BTreeMap<String, u64>,
    /// 429s served, from the rate limiter and from storms alike.
    pub rate_limited: u64,
    /// Answers shaped by an injected fault, by fault name.
    pub faults: BTreeMap<String, u64>,
    /// Creates per object type and key: a value above 1 is a duplicate.
    pub creates: BTreeMap<String, BTreeMap<String, u64>>,
    /// Updates per object type and key.
    pub updates: BTreeMap<String, BTreeMap<String, u64>>,
    /// Per rate-limit key (token, or `oauth:<client>`): the most requests admitted in any rolling
    /// window; 429s are not counted here.
    pub max_in_window: BTreeMap<String, u64>,
    /// Mailchimp members a request moved from `unsubscribed` or `cleaned` to `subscribed` (with
    /// `status`; `status_if_new` never changes an existing member). Should stay 0.
    #[serde(default)]
    pub resubscribed: u64,
}

/// The bounded log plus running statistics.
#[derive(Debug)]
pub struct RequestLog {
    capacity: usize,
    entries: VecDeque<RequestEntry>,
    next_seq: u64,
    stats: Stats,
}

impl RequestLog {
    /// An empty log keeping at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        RequestLog {
            capacity: capacity.max(1),
            entries: VecDeque::new(),
            next_seq: 1,
            stats: Stats::default(),
        }
    }

    /// Appends `entry` (its `seq` is assigned here) and counts it.
    pub fn record(&mut self, mut entry: RequestEntry) {
        entry.seq = self.next_seq;
        self.next_seq += 1;
        let s = &mut self.stats;
        s.requests += 1;
        let status = entry
            .status
            .map_or_else(|| "dropped".to_owned(), |c| c.to_string());
        *s.by_status.entry(status).or_default() += 1;
        if entry.status == Some(429) {
            s.rate_limited += 1;
        }
        if let Some(f) = &entry.fault {
            *s.faults.entry(f.clone()).or_default() += 1;
        }
        for w in &entry.writes {
            let table = match w.op {
                WriteOp::Create => &mut s.creates,
                WriteOp::Update => &mut s.updates,
            };
            *table
                .entry(w.object_type.clone())
                .or_default()
                .entry(w.key.clone())
                .or_default() += 1;
        }
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
    }

    /// Every kept entry, oldest first.
    pub fn entries(&self) -> Vec<RequestEntry> {
        self.entries.iter().cloned().collect()
    }

    /// The running statistics (without `max_in_window`, which the rate limiter fills in).
    pub fn stats(&self) -> Stats {
        self.stats.clone()
    }

    /// Forgets everything, as at start-up.
    pub fn reset(&mut self) {
        *self = RequestLog::new(self.capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(status: Option<u16>, writes: Vec<Write>) -> RequestEntry {
        RequestEntry {
            seq: 0,
            at: String::new(),
            elapsed_ms: 0,
            api: "hubspot".into(),
            method: "POST".into(),
            path: "/".into(),
            token: None,
            traceparent: None,
            status,
            fault: None,
            writes,
        }
    }

    #[test]
    fn stats_survive_trimming() {
        let mut log = RequestLog::new(2);
        let w = |op| Write {
            object_type: "contacts".into(),
            id: "1".into(),
            key: "a@b.com".into(),
            op,
        };
        log.record(entry(Some(201), vec![w(WriteOp::Create)]));
        log.record(entry(Some(200), vec![w(WriteOp::Update)]));
        log.record(entry(Some(429), vec![]));
        log.record(entry(None, vec![w(WriteOp::Update)]));
        let entries = log.entries();
        assert_eq!(
            entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![3, 4]
        );
        let s = log.stats();
        assert_eq!(s.requests, 4);
        assert_eq!(s.rate_limited, 1);
        assert_eq!(s.by_status.get("dropped"), Some(&1));
        assert_eq!(s.creates["contacts"]["a@b.com"], 1);
        assert_eq!(s.updates["contacts"]["a@b.com"], 2);
    }
}
