//! One confirm-mode channel with many publishes in flight, and exact outcomes for each.
//!
//! lapin pipelines publishes on a channel well, but two details make its per-publish
//! results unreliable under concurrency, and Handoff answers `202` on them:
//!
//! 1. lapin numbers a publish (for its confirm) and queues its frames in two separate
//!    steps; two tasks publishing at once can put their frames on the wire in the
//!    opposite order of their numbers, and a nack would then reach the wrong caller.
//!    [`ConfirmChannel::publish`] runs that synchronous first step under a lock.
//! 2. lapin hands a `basic.return` (unroutable mandatory message) to whichever confirm
//!    completes next, which with pipelining may be another message's. So every publish
//!    carries a per-channel sequence number in the `x-handoff-publish-seq` header, one
//!    dispatcher task per channel collects all confirms, files each returned message
//!    under the sequence number it carries, and only decides "acked and routed" for a
//!    publish once every confirm that could have carried its return has been seen
//!    (see [`dispatch`]).

use std::collections::{BTreeSet, HashSet};
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::Poll;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};
use tokio::sync::{mpsc, oneshot};

use crate::BusError;
use crate::headers::PUBLISH_SEQ;

/// A confirm-mode channel; cheap to share, publishes from many tasks at once.
pub(crate) struct ConfirmChannel {
    channel: Channel,
    tracker: Arc<Mutex<Tracker>>,
    next_seq: Arc<AtomicU64>,
}

/// Publishes between "numbered" and "handed to the dispatcher".
struct Tracker {
    /// Sequence numbers whose frames may not be written yet, so whose confirm the
    /// dispatcher cannot see yet.
    writing: BTreeSet<u64>,
    to_dispatcher: mpsc::UnboundedSender<ToDispatcher>,
}

enum ToDispatcher {
    /// A publish is written; here is its confirm and where its outcome goes.
    Confirm {
        seq: u64,
        routing_key: String,
        confirm: PublisherConfirm,
        reply: oneshot::Sender<Result<(), BusError>>,
    },
    /// A publish left the writing set without a confirm (failed or abandoned).
    Wake,
}

impl ConfirmChannel {
    /// Opens a channel in confirm mode and starts its dispatcher.
    pub(crate) async fn open(conn: &Connection) -> Result<Arc<Self>, BusError> {
        let channel = conn.create_channel().await?;
        // Publisher confirms: a publish is only reported Ok once the broker has taken
        // responsibility for it (for quorum queues: a majority has it on disk).
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let tracker = Arc::new(Mutex::new(Tracker {
            writing: BTreeSet::new(),
            to_dispatcher: tx,
        }));
        let next_seq = Arc::new(AtomicU64::new(0));
        tokio::spawn(dispatch(rx, Arc::downgrade(&tracker), next_seq.clone()));
        Ok(Arc::new(Self {
            channel,
            tracker,
            next_seq,
        }))
    }

    /// Whether the channel can still take publishes.
    pub(crate) fn is_open(&self) -> bool {
        self.channel.status().connected()
    }

    /// Closes the channel (best effort).
    pub(crate) async fn close(&self) {
        if self.is_open() {
            let _ = self.channel.close(200, "bye".into()).await;
        }
    }

    /// Publishes with the mandatory flag and waits for the broker's verdict.
    ///
    /// No timeout here: the caller bounds the whole call, and abandoning it at any
    /// await point leaves the bookkeeping consistent.
    pub(crate) async fn publish(
        &self,
        exchange: ShortString,
        routing_key: ShortString,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BusError> {
        // mandatory: an unroutable message comes back as basic.return (-> Unroutable)
        // instead of being dropped while the broker still acks it.
        // immediate: unsupported by RabbitMQ 3.x; it would close the channel.
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let mut properties = Some(properties);
        let mut publishing = None;
        let mut guard = None;
        // The first poll of basic_publish numbers the publish and queues its frames
        // without yielding; doing it under the tracker lock keeps wire order equal to
        // lapin's confirm numbering. The guard is created in the same critical section.
        let first = poll_fn(|cx| {
            let mut tracker = lock(&self.tracker);
            let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
            tracker.writing.insert(seq);
            guard = Some(WritingGuard {
                tracker: &self.tracker,
                seq,
                message: None,
            });
            let properties = with_seq(properties.take().unwrap_or_default(), seq);
            let mut fut = Box::pin(self.channel.basic_publish(
                exchange.clone(),
                routing_key.clone(),
                options,
                body,
                properties,
            ));
            let poll = fut.as_mut().poll(cx);
            publishing = Some(fut);
            Poll::Ready(poll)
        })
        .await;
        let written = match (first, publishing) {
            (Poll::Ready(result), _) => result,
            (Poll::Pending, Some(fut)) => fut.await,
            (Poll::Pending, None) => Err(lapin::ErrorKind::FutureCompleted.into()),
        };
        let Some(mut guard) = guard else {
            return Err(BusError::Amqp("publish was not started".into()));
        };
        let confirm = match written {
            Ok(confirm) => confirm,
            Err(err) => return Err(BusError::from(err)),
        };
        let (reply, outcome) = oneshot::channel();
        guard.message = Some(ToDispatcher::Confirm {
            seq: guard.seq,
            routing_key: routing_key.to_string(),
            confirm,
            reply,
        });
        drop(guard);
        outcome.await.unwrap_or_else(|_| {
            Err(BusError::Unconfirmed(
                "the publisher channel went away".into(),
            ))
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The critical sections cannot panic half-way through an update; a poisoned lock
    // still holds consistent data.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn with_seq(properties: BasicProperties, seq: u64) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(
        PUBLISH_SEQ.into(),
        AMQPValue::LongLongInt(i64::try_from(seq).unwrap_or(i64::MAX)),
    );
    properties.with_headers(headers)
}

fn seq_of(headers: &Option<FieldTable>) -> Option<u64> {
    match headers.as_ref()?.inner().get(PUBLISH_SEQ)? {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

/// Takes a publish out of the writing set and, in the same critical section, hands
/// its confirm (or a wake-up) to the dispatcher; runs on every exit path, including
/// a caller giving up mid-write.
struct WritingGuard<'a> {
    tracker: &'a Mutex<Tracker>,
    seq: u64,
    message: Option<ToDispatcher>,
}

impl Drop for WritingGuard<'_> {
    fn drop(&mut self) {
        let mut tracker = lock(self.tracker);
        tracker.writing.remove(&self.seq);
        let message = self.message.take().unwrap_or(ToDispatcher::Wake);
        // Fails only if the dispatcher is gone, and then nobody waits for it.
        let _ = tracker.to_dispatcher.send(message);
    }
}

type Resolved = (
    u64,
    String,
    oneshot::Sender<Result<(), BusError>>,
    lapin::Result<Confirmation>,
);

struct Undecided {
    seq: u64,
    routing_key: String,
    reply: oneshot::Sender<Result<(), BusError>>,
    /// Every publish numbered below this one may have carried our return.
    horizon: u64,
}

/// Collects the confirms of one channel and answers each publisher.
///
/// A `basic.return` for message X reaches lapin before X's ack, and lapin attaches it
/// to the next confirm it completes: X's own or one completed before it. A publisher
/// whose confirm came back clean is therefore answered only once every publish
/// numbered before the moment its confirm was seen (its `horizon`) has been handed
/// over and harvested; by then any return for it has been filed.
async fn dispatch(
    mut rx: mpsc::UnboundedReceiver<ToDispatcher>,
    tracker: Weak<Mutex<Tracker>>,
    next_seq: Arc<AtomicU64>,
) {
    let mut in_flight: FuturesUnordered<Pin<Box<dyn Future<Output = Resolved> + Send>>> =
        FuturesUnordered::new();
    let mut undecided: Vec<Undecided> = Vec::new();
    // Sequence numbers whose return arrived on another publish's confirm.
    let mut returned: HashSet<u64> = HashSet::new();
    let mut rx_open = true;
    let push = |in_flight: &mut FuturesUnordered<_>, message: ToDispatcher| {
        if let ToDispatcher::Confirm {
            seq,
            routing_key,
            confirm,
            reply,
        } = message
        {
            in_flight.push(
                Box::pin(async move { (seq, routing_key, reply, confirm.await) })
                    as Pin<Box<dyn Future<Output = Resolved> + Send>>,
            );
        }
    };
    loop {
        if !rx_open && in_flight.is_empty() && undecided.is_empty() {
            return;
        }
        tokio::select! {
            message = rx.recv(), if rx_open => match message {
                Some(message) => push(&mut in_flight, message),
                None => rx_open = false,
            },
            Some(resolved) = in_flight.next(), if !in_flight.is_empty() => {
                harvest(resolved, &next_seq, &mut returned, &mut undecided);
            }
            else => return,
        }
        // Settle: everything numbered below `low` has been handed over by now.
        let low = match tracker.upgrade() {
            Some(tracker) => {
                let tracker = lock(&tracker);
                tracker
                    .writing
                    .first()
                    .copied()
                    .unwrap_or_else(|| next_seq.load(Ordering::SeqCst))
            }
            None => u64::MAX,
        };
        while let Ok(message) = rx.try_recv() {
            push(&mut in_flight, message);
        }
        while let Some(Some(resolved)) = in_flight.next().now_or_never() {
            harvest(resolved, &next_seq, &mut returned, &mut undecided);
        }
        if undecided.iter().any(|u| u.horizon <= low) {
            for u in std::mem::take(&mut undecided) {
                if u.horizon > low {
                    undecided.push(u);
                } else if returned.remove(&u.seq) {
                    let _ = u.reply.send(Err(BusError::Unroutable(u.routing_key)));
                } else {
                    let _ = u.reply.send(Ok(()));
                }
            }
        }
    }
}

fn harvest(
    (seq, routing_key, reply, result): Resolved,
    next_seq: &AtomicU64,
    returned: &mut HashSet<u64>,
    undecided: &mut Vec<Undecided>,
) {
    let confirmation = match result {
        Ok(confirmation) => confirmation,
        // Sent, but the channel or connection failed before the confirm.
        Err(err) => {
            let _ = reply.send(Err(BusError::Unconfirmed(err.to_string())));
            return;
        }
    };
    let nacked = confirmation.is_nack();
    let mut own_return = false;
    if let Some(message) = confirmation.take_message() {
        match seq_of(message.properties.headers()) {
            Some(s) if s == seq => own_return = true,
            Some(s) => {
                returned.insert(s);
            }
            None => {}
        }
    }
    if nacked {
        returned.remove(&seq);
        let _ = reply.send(Err(BusError::Nacked));
    } else if own_return {
        returned.remove(&seq);
        let _ = reply.send(Err(BusError::Unroutable(routing_key)));
    } else {
        undecided.push(Undecided {
            seq,
            routing_key,
            reply,
            horizon: next_seq.load(Ordering::SeqCst),
        });
    }
}
