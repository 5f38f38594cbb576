//! Consumer acks, coalesced: one `basic.ack` with `multiple = true` settles every
//! message a subscription has finished with, up to the first one still being handled.
//!
//! Handlers finish out of order, so a multiple ack may only cover a tag when every
//! unsettled tag below it is finished too. [`Acks`] keeps the subscription's unsettled
//! tags and the finished ones; a background task sends one ack for the longest finished
//! prefix each time it is woken. An idle subscription therefore acks each message at
//! once; under load, messages that finish while an ack is on its way leave together
//! in the next one. Acks are about six times cheaper per message this way, for the
//! client and the broker alike (`shared/NOTES.md`).
//!
//! A handler that takes long (or never ends) must not hold every other ack back: a
//! finished message still waiting behind an unfinished one after [`STALE_AFTER`] is
//! acked on its own, so a slow message keeps only its own prefetch slot.
//!
//! Nacks (requeues) are never coalesced: they are sent on their own, and their tag
//! leaves the unsettled set only after the nack went out, so no multiple ack can
//! cover it first. An ack that never goes out (the channel closed first) means a
//! redelivery, as any lost ack does: the at-least-once contract holds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use lapin::Channel;
use lapin::options::BasicAckOptions;
use tokio::sync::Notify;
use tracing::debug;

/// How long a finished message may wait behind an unfinished one before it is acked on
/// its own. Out-of-order finishes within a prefetch window resolve in milliseconds.
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(1);

/// The coalescing acks of one subscription (one channel); cheap to clone.
#[derive(Clone)]
pub(crate) struct Acks {
    inner: Arc<Inner>,
}

struct Inner {
    channel: Channel,
    tags: Mutex<Tags>,
    wake: Notify,
}

/// Delivery tags of one channel.
#[derive(Debug, Default)]
struct Tags {
    /// Delivered and not yet settled by an ack that went out or a nack.
    unsettled: BTreeSet<u64>,
    /// Of those, the ones whose handler finished with an ack, and when.
    finished: BTreeMap<u64, Instant>,
    /// No more acks: the subscription ended.
    closed: bool,
}

impl Tags {
    /// The highest tag one multiple ack may settle now (every unsettled tag up to it is
    /// finished), removed with everything below it; `None` if the lowest is unfinished.
    fn take_finished_prefix(&mut self) -> Option<u64> {
        let mut upto = None;
        for tag in &self.unsettled {
            if !self.finished.contains_key(tag) {
                break;
            }
            upto = Some(*tag);
        }
        let upto = upto?;
        let above = upto.checked_add(1)?;
        self.unsettled = self.unsettled.split_off(&above);
        self.finished = self.finished.split_off(&above);
        Some(upto)
    }

    /// Finished tags that have waited behind an unfinished one since before `cutoff`,
    /// removed: each is acked on its own.
    fn take_stale(&mut self, cutoff: Instant) -> Vec<u64> {
        let stale: Vec<u64> = self
            .finished
            .iter()
            .filter(|(_, at)| **at <= cutoff)
            .map(|(tag, _)| *tag)
            .collect();
        for tag in &stale {
            self.finished.remove(tag);
            self.unsettled.remove(tag);
        }
        stale
    }
}

impl Acks {
    /// Starts the acks of a subscription on `channel`; the task ends with [`Acks::close`].
    pub(crate) fn start(channel: Channel) -> Acks {
        let acks = Acks {
            inner: Arc::new(Inner {
                channel,
                tags: Mutex::new(Tags::default()),
                wake: Notify::new(),
            }),
        };
        tokio::spawn(send_loop(Arc::downgrade(&acks.inner)));
        acks
    }

    fn tags(&self) -> MutexGuard<'_, Tags> {
        // The sets stay consistent at every step, so a panic elsewhere leaves them usable.
        self.inner
            .tags
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A delivery arrived: it stays unsettled until acked or nacked.
    pub(crate) fn delivered(&self, tag: u64) {
        self.tags().unsettled.insert(tag);
    }

    /// Its handler is done with it and the message may go.
    pub(crate) fn ack(&self, tag: u64) {
        self.tags().finished.insert(tag, Instant::now());
        self.inner.wake.notify_one();
    }

    /// It was nacked (the nack already sent): nothing more to send for it.
    pub(crate) fn nacked(&self, tag: u64) {
        let mut tags = self.tags();
        tags.unsettled.remove(&tag);
        tags.finished.remove(&tag);
        drop(tags);
        // Tags above it may now form a finished prefix.
        self.inner.wake.notify_one();
    }

    /// Sends whatever can be acked now and stops the task: the subscription is ending.
    pub(crate) async fn close(&self) {
        self.send_ready().await;
        self.tags().closed = true;
        self.inner.wake.notify_one();
    }

    async fn send_ready(&self) {
        let (prefix, stale) = {
            let mut tags = self.tags();
            let prefix = tags.take_finished_prefix();
            let stale = Instant::now()
                .checked_sub(STALE_AFTER)
                .map(|cutoff| tags.take_stale(cutoff))
                .unwrap_or_default();
            (prefix, stale)
        };
        if let Some(upto) = prefix {
            self.send(upto, true).await;
        }
        for tag in stale {
            self.send(tag, false).await;
        }
    }

    async fn send(&self, tag: u64, multiple: bool) {
        let options = BasicAckOptions { multiple };
        if let Err(err) = self.inner.channel.basic_ack(tag, options).await {
            debug!(error = %err, tag, multiple, "Ack failed; the broker will redeliver.");
        }
    }
}

/// Sends acks until the subscription closes or every handle to it is gone (its consumer
/// loop was dropped without closing it).
async fn send_loop(inner: Weak<Inner>) {
    while let Some(inner) = inner.upgrade() {
        let acks = Acks { inner };
        // Woken by a finish or a nack, and at least every STALE_AFTER for the stale.
        let _ = tokio::time::timeout(STALE_AFTER, acks.inner.wake.notified()).await;
        if acks.tags().closed {
            return;
        }
        acks.send_ready().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(unsettled: &[u64], finished: &[u64]) -> Tags {
        let now = Instant::now();
        Tags {
            unsettled: unsettled.iter().copied().collect(),
            finished: finished.iter().map(|tag| (*tag, now)).collect(),
            closed: false,
        }
    }

    #[test]
    fn only_a_finished_prefix_is_acked() {
        // 2 is still being handled: 1 may go, 3 and 4 must wait for it.
        let mut t = tags(&[1, 2, 3, 4], &[1, 3, 4]);
        assert_eq!(t.take_finished_prefix(), Some(1));
        assert_eq!(t.take_finished_prefix(), None);
        assert_eq!(t.unsettled, [2, 3, 4].into());
        t.finished.insert(2, Instant::now());
        assert_eq!(t.take_finished_prefix(), Some(4));
        assert!(t.unsettled.is_empty() && t.finished.is_empty());
        assert_eq!(t.take_finished_prefix(), None);
    }

    #[test]
    fn a_nacked_tag_is_never_under_a_multiple_ack_before_its_nack() {
        // 5 is being nacked: until its nack went out it is unsettled and unfinished, so
        // nothing at or above it is acked.
        let mut t = tags(&[4, 5, 6], &[4, 6]);
        assert_eq!(t.take_finished_prefix(), Some(4));
        assert_eq!(t.take_finished_prefix(), None);
        // The nack went out: 6 may go.
        t.unsettled.remove(&5);
        assert_eq!(t.take_finished_prefix(), Some(6));
    }

    #[test]
    fn finished_tags_stuck_behind_a_slow_one_go_on_their_own_once_stale() {
        let mut t = tags(&[1, 2, 3], &[2, 3]);
        let start = t.finished[&2];
        assert_eq!(t.take_finished_prefix(), None);
        // Not yet stale: nothing.
        assert!(t.take_stale(start - Duration::from_millis(1)).is_empty());
        // Stale: 2 and 3 are acked singly; 1 (still being handled) stays unsettled.
        assert_eq!(t.take_stale(start), vec![2, 3]);
        assert_eq!(t.unsettled, [1].into());
        assert!(t.finished.is_empty());
    }

    #[test]
    fn nothing_finished_nothing_acked() {
        assert_eq!(tags(&[], &[]).take_finished_prefix(), None);
        assert_eq!(tags(&[7, 8], &[8]).take_finished_prefix(), None);
    }
}
