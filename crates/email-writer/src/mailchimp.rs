//! The Mailchimp adapter: carries out a [`MemberPlan`] with Marketing API v3 calls through the
//! shared delivery engine (pacing, basic auth with the API key, client span, classification; a
//! 429 is waited out without using an attempt).
//!
//! 1. Merge fields: ownership drops those another system owns, then the stale guard (per field,
//!    record `member:<list>:<hash>`) drops those a newer event already wrote.
//! 2. `PUT /3.0/lists/{list}/members/{hash}` with `status_if_new` and never `status` (see
//!    `plan.rs`): Mailchimp creates the member the first time and updates it after, and leaves
//!    an existing member's status alone, so the writer never resubscribes anyone. The PUT is
//!    made even when every merge field is stale: it is what makes sure the member exists for
//!    the tags and the event, and it changes nothing else.
//! 3. `POST …/tags` with the plan's tags (adding a tag twice is a no-op).
//! 4. The member event, at most once per (event name, member, invoice), under a step claim and
//!    after checking Mailchimp's list of the member's events (`GET …/events`): see
//!    [`Mailchimp::send_event_once`].
//!
//! Mailchimp answers the PUT with `200` and the member whether it created it or not, and no
//! field of the answer tells the two apart reliably (`last_changed` moves on updates too), so a
//! member's disposition is reported as `upserted`.

use std::collections::BTreeMap;
use std::time::Duration;

use handoff_bus::EMAIL_WRITER;
use handoff_delivery::writer::metrics;
use handoff_delivery::{ApiRequest, Destination, OwnershipConfig, StaleGuard, WriteError};
use handoff_idempotency::{Claim, ClaimToken, Completion, IdempotencyKey, Store};
use reqwest::Method;
use serde_json::Value;
use tracing::{debug, error, warn};

use crate::plan::{self, MemberEvent, MemberPlan};

/// The destination's name in metrics, pacing, credentials, stale-guard keys and ownership tables.
pub const DESTINATION: &str = "mailchimp";

/// The disposition of every member write (see the module docs).
pub const UPSERTED: &str = "upserted";

/// Events per page of the member-event check: Mailchimp's maximum, so most members take one call.
const EVENTS_PAGE: usize = 1000;

/// Pages the member-event check reads at most (10,000 events), so a member with an enormous
/// history cannot hold a worker for long; past that the event is posted (see
/// [`Mailchimp::send_event_once`]).
const EVENTS_MAX_PAGES: usize = 10;

/// What the writer knows about the event besides its plan.
#[derive(Debug, Clone, Copy)]
pub struct WriteFacts<'a> {
    /// The event's id: the stale guard's mark and the member event's claim say who wrote.
    pub event_id: &'a str,
    /// For metrics.
    pub event_type: &'a str,
    /// With the event id, what the member event's claim records as its sender.
    pub publisher_id: &'a str,
    /// The system the event came from (the envelope's `source`), for field ownership.
    pub source: &'a str,
    /// When the event happened, in ms since the epoch, for the stale guard.
    pub occurred_at_ms: i64,
}

/// What became of the member event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// Posted now.
    Sent,
    /// Posted before, by this event or another about the same invoice: not posted again.
    AlreadySent,
}

impl EventOutcome {
    /// `sent` / `already_sent`, for the ledger and metrics.
    pub fn label(self) -> &'static str {
        match self {
            EventOutcome::Sent => "sent",
            EventOutcome::AlreadySent => "already_sent",
        }
    }
}

/// The member as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Mailchimp's member id (the subscriber hash).
    pub member_id: String,
    /// The member's status after the upsert, as Mailchimp answered it.
    pub status: String,
    /// Merge fields left out because a newer event wrote them.
    pub stale_fields: Vec<String>,
    /// Merge fields left out because another system owns them (`[ownership]`).
    pub owned_fields: Vec<String>,
    pub member_event: Option<EventOutcome>,
}

/// The merge fields to write, and those left out and why.
struct Admitted {
    write: BTreeMap<String, String>,
    owned: Vec<String>,
    stale: Vec<String>,
}

/// Why the plan was not carried out.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Write(#[from] WriteError),
    /// Another worker holds the claim on this member event (a concurrent event about the same
    /// invoice, or a worker that died holding it until its lease runs out): try again later.
    #[error("another worker is sending this member event")]
    EventInFlight,
}

impl From<handoff_delivery::CallError> for ApplyError {
    fn from(err: handoff_delivery::CallError) -> Self {
        ApplyError::Write(err.into())
    }
}

/// The adapter; cheap to clone.
#[derive(Debug, Clone)]
pub struct Mailchimp {
    /// Mailchimp's API through the shared engine (pacing, API key, classification).
    pub destination: Destination,
    /// The audience every member is written to.
    pub list_id: String,
    /// Per merge field, the newest event that wrote it.
    pub stale: StaleGuard,
    /// Which system owns which merge field (destination `mailchimp`).
    pub ownership: OwnershipConfig,
    /// Holds the member events' step claims.
    pub store: Store,
    /// How long a member event's claim blocks others: the dedupe lease, which outlasts a call
    /// with its 429 waits.
    pub event_lease: Duration,
    /// How long a sent member event is remembered (`routes.payment_failed.remember_for`).
    pub event_retention: Duration,
}

impl Mailchimp {
    /// Writes the member, its tags and its event.
    pub async fn apply(
        &self,
        plan: &MemberPlan,
        facts: WriteFacts<'_>,
    ) -> Result<Applied, ApplyError> {
        // Admission and the member's write in one turn, so they land in admission order.
        let turn = self
            .stale
            .lock_record(
                DESTINATION,
                &plan::guard_key(&self.list_id, &plan.subscriber_hash),
            )
            .await;
        let Admitted {
            write: merge_fields,
            owned: owned_fields,
            stale: stale_fields,
        } = self.admitted_merge_fields(plan, facts).await?;
        let path = plan::member_path(&self.list_id, &plan.subscriber_hash);
        let request = ApiRequest::new(Method::PUT, path.clone(), "member.upsert")
            .json(plan::upsert_body(plan, &merge_fields));
        let answer = self.destination.call(&request).await?;
        let member_id = answer
            .body
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| {
                WriteError::Unexpected("the member upsert answered without an id".to_owned())
            })?
            .to_owned();
        let status = answer
            .body
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        drop(turn);

        if !plan.tags.is_empty() {
            let request = ApiRequest::new(Method::POST, format!("{path}/tags"), "member.tags")
                .json(plan::tags_body(&plan.tags));
            self.destination.call(&request).await?;
        }
        let member_event = match &plan.event {
            Some(event) => Some(self.send_event_once(plan, event, facts).await?),
            None => None,
        };
        Ok(Applied {
            member_id,
            status,
            stale_fields,
            owned_fields,
            member_event,
        })
    }

    /// The plan's merge fields less those another system owns and those a newer event wrote.
    async fn admitted_merge_fields(
        &self,
        plan: &MemberPlan,
        facts: WriteFacts<'_>,
    ) -> Result<Admitted, WriteError> {
        let filtered =
            self.ownership
                .writable(DESTINATION, facts.source, plan.merge_fields.clone());
        for (field, owner) in &filtered.skipped {
            metrics::owned_field_skipped(EMAIL_WRITER, owner);
            debug!(field, owner, "Left out a merge field another system owns.");
        }
        let mut write = filtered.write;
        let fields: Vec<&str> = write.keys().map(String::as_str).collect();
        let record = plan::guard_key(&self.list_id, &plan.subscriber_hash);
        let admission = self
            .stale
            .admit_fields(
                DESTINATION,
                &record,
                facts.occurred_at_ms,
                facts.event_id,
                &fields,
            )
            .await
            .map_err(|err| WriteError::Guard(err.to_string()))?;
        if !admission.stale.is_empty() {
            metrics::stale_skipped(
                EMAIL_WRITER,
                facts.event_type,
                "subscriber",
                admission.stale.len(),
            );
            debug!(
                %record,
                fields = ?admission.stale,
                newer_seen = admission.newer_seen,
                "Left out merge fields a newer event has written."
            );
            write.retain(|field, _| !admission.stale.contains(field));
        }
        Ok(Admitted {
            write,
            owned: filtered
                .skipped
                .into_iter()
                .map(|(field, _)| field)
                .collect(),
            stale: admission.stale,
        })
    }

    /// Posts `event` unless it was posted before, under a step-level claim on
    /// (event name, member, invoice) in the idempotency store, taken before anything else and
    /// completed right after:
    ///
    /// 1. Claim. Finished: another event about the same invoice, or an earlier delivery of this
    ///    one, posted it; nothing is sent. Held by another worker: it is posting it now; the
    ///    message is deferred and then finds the claim finished (skip) or released (go on).
    /// 2. Check Mailchimp: `GET …/members/{hash}/events` (`Mailchimp::listed_before`). An event
    ///    with the same name and `invoice_id` there means an earlier attempt posted it and never
    ///    recorded it (below): nothing is sent, the claim is completed, the outcome is
    ///    `already_sent`.
    /// 3. `POST …/members/{hash}/events`, then complete the claim at once. A failed call (the
    ///    check or the POST) releases the claim, so the retry can go on.
    ///
    /// Why the check: the POST and the claim's completion are two systems. If the process dies
    /// between Mailchimp recording the event and the completion reaching Redis (or Redis is
    /// unreachable throughout the completion's few retries), the claim stays `started` until its
    /// lease runs out and the next attempt claims afresh; an answer lost on the way back (a
    /// timeout or a reset after Mailchimp applied the POST) is a transient failure, which
    /// releases the claim. Mailchimp's events endpoint takes no idempotency key, so only its
    /// event list can tell that the event is there.
    ///
    /// Why every time, not only on a retry: the attempt that follows a lost post cannot be told
    /// from a first attempt. A crashed worker's message does come back `redelivered`, but it
    /// finds the event's own claim still held and is deferred, and the deferred copy (a fresh
    /// publish: `redelivered` false, the attempt unchanged) is the one that goes on to post. A
    /// lost answer's retry comes back with `attempt > 1`, but another event about the same
    /// invoice (billing reporting the failure again under a new event id) arrives as attempt 1
    /// and takes the step claim the failed attempt released. And a claim whose lease ran out
    /// leaves nothing to tell it from no claim. So the check is made for every member event
    /// with an identity: one GET (a page of up to 1,000 events, only their names and invoice ids)
    /// per `payment_failed`, the one route with a member event; the other routes make none.
    ///
    /// Residual risk, stated plainly: the check sees what Mailchimp lists, when it lists it. If
    /// Mailchimp's event list lags behind a POST it applied, or a POST whose answer the writer
    /// gave up on is still being processed when the next attempt reads the list, the event is
    /// posted a second time. A crash's redelivery reads the list only after the claim's lease
    /// has run out (`dedupe.lease`, 180 s by default); a lost answer's retry reads it after the
    /// retry backoff, which is full jitter and can be well under a second on an early attempt
    /// (after a timeout, the HTTP timeout has passed as well; after a reset, nothing more). The
    /// check also reads at most `EVENTS_MAX_PAGES` pages: a member with more than 10,000 events
    /// is posted to without a complete check (a warning says so). An event deleted from
    /// Mailchimp (or a member deleted and added again) is posted again once the claim's
    /// retention (`routes.payment_failed.remember_for`) has passed.
    ///
    /// The claim's lease (`dedupe.lease`) must also outlast the check and the POST, their waits
    /// for one of the `max_in_flight` connections included; a completion that finds the claim
    /// lost says so (an error log and `handoff_writer_records_total{record="member_event",
    /// disposition="lease_lost"}`).
    pub async fn send_event_once(
        &self,
        plan: &MemberPlan,
        event: &MemberEvent,
        facts: WriteFacts<'_>,
    ) -> Result<EventOutcome, ApplyError> {
        let key = plan::event_key(&self.list_id, &plan.subscriber_hash, event);
        // Says which event sent it, for an SRE reading the record.
        let fingerprint = format!("{}/{}", facts.publisher_id, facts.event_id);
        let token = match self.store.claim(&key, &fingerprint, self.event_lease).await {
            Ok(Claim::Acquired(token)) => token,
            Ok(Claim::Done { fingerprint: by }) => {
                metrics::record(EMAIL_WRITER, "member_event", "already_sent");
                debug!(sent_by = %by, "The member event was sent before; not sending it again.");
                return Ok(EventOutcome::AlreadySent);
            }
            Ok(Claim::InFlight { .. }) => return Err(ApplyError::EventInFlight),
            Err(err) => {
                return Err(WriteError::Guard(format!(
                    "the member event's claim is unavailable: {err}"
                ))
                .into());
            }
        };
        let claimed = EventClaim {
            key: &key,
            token: &token,
            fingerprint: &fingerprint,
        };
        let listed = match self.listed_before(plan, event).await {
            Ok(listed) => listed,
            Err(err) => {
                self.release(&claimed).await;
                return Err(err.into());
            }
        };
        if listed {
            // An earlier attempt posted it and its answer, or its record, was lost.
            debug!("Mailchimp already lists this member event; not sending it again.");
            self.record_sent(&claimed).await;
            metrics::record(EMAIL_WRITER, "member_event", "already_sent");
            return Ok(EventOutcome::AlreadySent);
        }
        let request = ApiRequest::new(
            Method::POST,
            format!(
                "{}/events",
                plan::member_path(&self.list_id, &plan.subscriber_hash)
            ),
            "member.event",
        )
        .json(plan::event_body(event));
        if let Err(err) = self.destination.call(&request).await {
            self.release(&claimed).await;
            return Err(err.into());
        }
        self.record_sent(&claimed).await;
        metrics::record(EMAIL_WRITER, "member_event", "sent");
        Ok(EventOutcome::Sent)
    }

    /// Whether Mailchimp lists `event` on the member already (the same name and `invoice_id`),
    /// reading the member's events a page of [`EVENTS_PAGE`] at a time until the last one, at
    /// most [`EVENTS_MAX_PAGES`] pages. The order Mailchimp lists them in is not relied on.
    async fn listed_before(
        &self,
        plan: &MemberPlan,
        event: &MemberEvent,
    ) -> Result<bool, WriteError> {
        let mut offset = 0;
        for _ in 0..EVENTS_MAX_PAGES {
            let path =
                plan::events_page_path(&self.list_id, &plan.subscriber_hash, EVENTS_PAGE, offset);
            let answer = self
                .destination
                .call(&ApiRequest::new(Method::GET, path, "member.events.list"))
                .await?;
            let events = answer
                .body
                .get("events")
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    WriteError::Unexpected(
                        "the member events list answered without an events array".to_owned(),
                    )
                })?;
            if events
                .iter()
                .any(|listed| plan::is_same_event(event, listed))
            {
                return Ok(true);
            }
            offset += events.len();
            let total = answer
                .body
                .get("total_items")
                .and_then(Value::as_u64)
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(0);
            if events.len() < EVENTS_PAGE || offset >= total {
                return Ok(false);
            }
        }
        warn!(
            read = offset,
            "The member has more events than the check reads; sending the member event without a complete check."
        );
        Ok(false)
    }

    /// Gives the member event's claim back so a retry can take it (best effort: it expires).
    async fn release(&self, claimed: &EventClaim<'_>) {
        if let Err(err) = self.store.release(claimed.key, claimed.token).await {
            debug!(error = %err, "Could not release the member event's claim yet; retrying in the background.");
            self.store
                .release_in_background(claimed.key, claimed.token, self.event_lease);
        }
    }

    /// Completes the member event's claim: the event is in Mailchimp. Done at once, and a failed
    /// completion retried briefly rather than left to the lease (after which the next attempt's
    /// check finds the event).
    async fn record_sent(&self, claimed: &EventClaim<'_>) {
        let mut pause = Duration::from_millis(50);
        for attempt in 1..=3 {
            match self
                .store
                .complete_with_outcome(
                    claimed.key,
                    claimed.token,
                    claimed.fingerprint,
                    self.event_retention,
                    None,
                )
                .await
            {
                Ok(completion) => {
                    if matches!(
                        completion,
                        Completion::AlreadyFinished | Completion::ClaimedByOther
                    ) {
                        // The lease ran out while this call waited (for a connection, or out
                        // 429s), and another event about the invoice took the claim: it may
                        // have posted too. Said loudly: the lease is too short for the load.
                        error!(
                            ?completion,
                            "The member event's claim ran out before it was sent; another worker may have sent it too. Raise dedupe.lease."
                        );
                        metrics::record(EMAIL_WRITER, "member_event", "lease_lost");
                    }
                    return;
                }
                Err(err) if attempt < 3 => {
                    warn!(error = %err, attempt, "Could not record the sent member event; trying again.");
                    tokio::time::sleep(pause).await;
                    pause *= 4;
                }
                Err(err) => {
                    error!(error = %err, "Sent the member event but could not record it yet: recording it in the background (meanwhile an attempt checks Mailchimp's event list before sending it again).");
                    // Left `started`, the claim would hold every other report of the invoice
                    // for its whole lease.
                    self.store.complete_in_background(
                        claimed.key,
                        claimed.token,
                        claimed.fingerprint,
                        self.event_retention,
                        None,
                        self.event_lease,
                    );
                }
            }
        }
    }
}

/// A member event's step claim, as taken.
struct EventClaim<'a> {
    key: &'a IdempotencyKey,
    token: &'a ClaimToken,
    fingerprint: &'a str,
}
