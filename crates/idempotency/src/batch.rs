//! Request coalescing: [`Batcher`] turns many concurrent single-item requests into few calls that
//! each handle a batch, without ever waiting on a timer.
//!
//! Callers hand their item and a oneshot reply channel to a background task over an mpsc queue.
//! The task takes the first request, waits for one of [`MAX_IN_FLIGHT`] call slots, then takes
//! whatever else is already queued (up to [`MAX_BATCH`]) and starts one call for all of them. An
//! idle batcher therefore sends a lone request at once; batches only form from requests that
//! arrived while earlier calls were in flight, which is exactly when Redis is the bottleneck.
//!
//! The task is spawned on first use (inside the caller's runtime: [`crate::Store::new`] is sync
//! and may run outside one) and ends when its [`Batcher`] is dropped, because the queue's only
//! sender lives in the batcher. A caller whose future is dropped just never reads its reply; a
//! request whose caller is already gone when its batch forms is left out of the call.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::StoreError;

/// Most requests answered by one call. A Lua script blocks Redis while it runs; 128 claims or
/// completions take a few tens of microseconds there, well below anything a client would notice
/// as a stall, and the per-call overhead (parsing, dispatch, the round trip) is already spread so
/// thin by a few dozen items that larger batches would buy almost nothing. At ingest's
/// 3,000–7,000 events/s batches are usually far smaller; the cap only bites in bursts.
pub(crate) const MAX_BATCH: usize = 128;

/// Calls of one kind in flight at once. More than one, so a single slow call (a large batch, a
/// network hiccup) does not hold every other request back; few, so that while Redis is busy the
/// requests queue up and leave in large batches instead of as many small calls. All of them share
/// one multiplexed connection, so they are pipelined, not parallel, in Redis anyway.
pub(crate) const MAX_IN_FLIGHT: usize = 4;

/// Requests that may wait for a batch before callers have to wait to enqueue (back-pressure,
/// still bounded by the caller's `op_timeout`): many full batches' worth, so it only fills when
/// Redis has stopped answering.
const QUEUE: usize = MAX_BATCH * MAX_IN_FLIGHT * 8;

/// What one call answers: one result per item, in order, or one error for the whole batch.
pub(crate) type BatchResult<O> = Result<Vec<Result<O, StoreError>>, StoreError>;

/// A call for one batch of items.
pub(crate) type BatchFuture<O> = Pin<Box<dyn Future<Output = BatchResult<O>> + Send>>;

/// Starts the call for a batch of items.
pub(crate) type BatchCall<I, O> = Arc<dyn Fn(Vec<I>) -> BatchFuture<O> + Send + Sync>;

struct Request<I, O> {
    item: I,
    reply: oneshot::Sender<Result<O, StoreError>>,
}

/// Coalesces concurrent requests of one kind into batch calls (see the module doc).
pub(crate) struct Batcher<I, O> {
    call: BatchCall<I, O>,
    queue: OnceLock<mpsc::Sender<Request<I, O>>>,
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// A batcher whose batches are handled by `call`. Does not spawn anything yet.
    pub(crate) fn new(call: BatchCall<I, O>) -> Self {
        Batcher {
            call,
            queue: OnceLock::new(),
        }
    }

    /// Answers one request, as part of whatever batch it lands in. Not bounded in time by
    /// itself: the caller wraps it in its operation timeout.
    pub(crate) async fn submit(&self, item: I) -> Result<O, StoreError> {
        let Some(queue) = self.queue() else {
            // No Tokio runtime to run the batcher on: answer this one request directly.
            return self.call_one(item).await;
        };
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(request)) = queue.send(Request { item, reply }).await {
            // The batcher is gone (its runtime shut down under a store that outlived it). The
            // request never reached it, so answering it directly cannot apply it twice.
            return self.call_one(request.item).await;
        }
        match answer.await {
            Ok(result) => result,
            // Only if the batch call itself panicked; whether it reached Redis is unknown.
            Err(_) => Err(StoreError::Redis(redis::RedisError::from((
                redis::ErrorKind::Client,
                "the request batcher stopped before answering",
            )))),
        }
    }

    /// The queue to the batcher task, spawning the task on first use; `None` outside a runtime.
    fn queue(&self) -> Option<&mpsc::Sender<Request<I, O>>> {
        if let Some(queue) = self.queue.get() {
            return Some(queue);
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        Some(self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            runtime.spawn(run(rx, Arc::clone(&self.call)));
            tx
        }))
    }

    async fn call_one(&self, item: I) -> Result<O, StoreError> {
        let mut results = (self.call)(vec![item]).await?;
        match (results.pop(), results.is_empty()) {
            (Some(result), true) => result,
            _ => Err(StoreError::Corrupt(
                "batch call did not answer exactly one result for one request".to_owned(),
            )),
        }
    }
}

/// The batcher task: runs until every sender is gone and the queue is empty.
async fn run<I: Send + 'static, O: Send + 'static>(
    mut queue: mpsc::Receiver<Request<I, O>>,
    call: BatchCall<I, O>,
) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        // Wait for a free slot before draining: whatever arrives meanwhile joins this batch.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            // The semaphore is never closed; ending quietly beats panicking if it ever were.
            break;
        };
        let mut batch = Vec::with_capacity(MAX_BATCH.min(queue.len() + 1));
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        // Callers that gave up (timeout, dropped future) get nothing; their items are not sent.
        batch.retain(|request| !request.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let (items, replies): (Vec<I>, Vec<_>) = batch
            .into_iter()
            .map(|request| (request.item, request.reply))
            .unzip();
        let pending = call(items);
        tokio::spawn(async move {
            let result = pending.await;
            drop(slot);
            answer(replies, result);
        });
    }
}

/// Sends each caller its own result, or every caller the batch's error.
fn answer<O>(replies: Vec<oneshot::Sender<Result<O, StoreError>>>, result: BatchResult<O>) {
    let err = match result {
        Ok(results) if results.len() == replies.len() => {
            for (reply, result) in replies.into_iter().zip(results) {
                // A caller that stopped waiting discards its answer.
                let _ = reply.send(result);
            }
            return;
        }
        Ok(results) => StoreError::Corrupt(format!(
            "batch call answered {} results for {} requests",
            results.len(),
            replies.len()
        )),
        Err(err) => err,
    };
    for reply in replies {
        let _ = reply.send(Err(err.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A call that records batch sizes and echoes items, failing batches that contain 0.
    fn echo(sizes: Arc<Mutex<Vec<usize>>>) -> BatchCall<u32, u32> {
        Arc::new(move |items: Vec<u32>| {
            let sizes = Arc::clone(&sizes);
            Box::pin(async move {
                if let Ok(mut sizes) = sizes.lock() {
                    sizes.push(items.len());
                }
                tokio::task::yield_now().await;
                if items.contains(&0) {
                    return Err(StoreError::Corrupt("zero".into()));
                }
                Ok(items
                    .into_iter()
                    .map(|i| {
                        if i == 7 {
                            Err(StoreError::Corrupt("seven".into()))
                        } else {
                            Ok(i * 10)
                        }
                    })
                    .collect())
            })
        })
    }

    #[tokio::test]
    async fn concurrent_requests_share_calls_and_keep_their_own_results() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let batcher = Arc::new(Batcher::new(echo(Arc::clone(&sizes))));
        let tasks: Vec<_> = (1..=300u32)
            .map(|i| {
                let batcher = Arc::clone(&batcher);
                tokio::spawn(async move { (i, batcher.submit(i).await) })
            })
            .collect();
        for task in tasks {
            let (i, result) = task.await.expect("task");
            match result {
                Ok(v) => assert_eq!(v, i * 10),
                Err(StoreError::Corrupt(msg)) => assert!(i == 7 && msg == "seven"),
                Err(other) => panic!("{i}: {other}"),
            }
        }
        let sizes = sizes.lock().expect("lock").clone();
        assert_eq!(sizes.iter().sum::<usize>(), 300);
        assert!(sizes.len() < 300, "{sizes:?}");
        assert!(sizes.iter().all(|&n| n <= MAX_BATCH), "{sizes:?}");
    }

    #[tokio::test]
    async fn a_batch_error_reaches_every_request_of_the_batch() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let batcher = Batcher::new(echo(sizes));
        assert!(matches!(
            batcher.submit(0).await,
            Err(StoreError::Corrupt(_))
        ));
        assert_eq!(batcher.submit(2).await.expect("ok"), 20);
    }

    #[tokio::test]
    async fn the_task_ends_when_the_batcher_is_dropped() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let call = echo(Arc::clone(&sizes));
        let weak = Arc::downgrade(&call);
        let batcher = Batcher::new(call);
        assert_eq!(batcher.submit(1).await.expect("ok"), 10);
        drop(batcher);
        for _ in 0..100 {
            if weak.upgrade().is_none() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the batcher task still holds its call after the batcher was dropped");
    }

    #[test]
    fn outside_a_runtime_nothing_is_spawned() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let batcher = Batcher::new(echo(sizes));
        assert!(batcher.queue().is_none());
    }
}
