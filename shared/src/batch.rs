//! Group commit for any statement: callers that arrive while one batch is being written go out
//! together as the next batch.
//!
//! A [`Batcher`] owns one task that takes every waiting request (up to a maximum), runs the
//! batch's `flush` once, and answers each caller with its own result. Nothing waits for a timer:
//! a lone request goes out at once (after one yield to the runtime, so that requests made ready
//! by the same event, such as the jobs of one log flush, join it), and under load each flush
//! carries everything that queued up during the previous one, so the cost per request falls as
//! load grows. Each caller still gets
//! its answer only after the statement that carried its request has completed.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

type Reply<Resp> = oneshot::Sender<Result<Resp, BatchError>>;

/// Why a batched request got no response of its own. Every caller of a failed batch gets the
/// same error, its cause chain intact (`source()` reaches the statement's own error).
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    /// The batch's flush returned an error.
    #[error("the {batch} batch failed")]
    Failed {
        /// The batcher's name.
        batch: &'static str,
        /// What the flush returned.
        #[source]
        cause: SharedError,
    },
    /// The batch's flush panicked.
    #[error("the {batch} batch panicked")]
    Panicked {
        /// The batcher's name.
        batch: &'static str,
        /// The panic, as the runtime reported it.
        #[source]
        cause: SharedError,
    },
    /// The flush answered a different number of responses than it got requests.
    #[error("the {batch} batch answered {responses} responses for {requests} requests")]
    Miscounted {
        /// The batcher's name.
        batch: &'static str,
        /// Responses returned.
        responses: usize,
        /// Requests given.
        requests: usize,
    },
    /// The batching task is gone (the runtime is shutting down).
    #[error("the {0} batcher has stopped")]
    Stopped(&'static str),
}

/// One error shared by every caller of a batch: cloning shares it, and its `source()` chain is
/// the original one.
#[derive(Debug, Clone)]
pub struct SharedError(Arc<anyhow::Error>);

impl SharedError {
    fn new(err: impl Into<anyhow::Error>) -> Self {
        SharedError(Arc::new(err.into()))
    }
}

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&*self.0, f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let inner: &(dyn std::error::Error + 'static) = self.0.as_ref().as_ref();
        inner.source()
    }
}

/// A handle for submitting requests to one batching task; cheap to clone.
pub struct Batcher<Req, Resp> {
    name: &'static str,
    requests: mpsc::UnboundedSender<(Req, Reply<Resp>)>,
}

impl<Req, Resp> Clone for Batcher<Req, Resp> {
    fn clone(&self) -> Self {
        Batcher { name: self.name, requests: self.requests.clone() }
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// Spawns the batching task. `flush` gets at most `max_batch` requests in arrival order and
    /// returns one response per request, in the same order; its error goes to every caller of
    /// the batch. One flush runs at a time. The task ends when every handle is dropped.
    ///
    /// `name` labels the `md5_batch_size` histogram.
    pub fn spawn<F, Fut>(name: &'static str, max_batch: usize, mut flush: F) -> Self
    where
        F: FnMut(Vec<Req>) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<Vec<Resp>>> + Send + 'static,
    {
        let (requests, mut receiver) = mpsc::unbounded_channel::<(Req, Reply<Resp>)>();
        let max_batch = max_batch.max(1);
        tokio::spawn(async move {
            let mut waiting = Vec::with_capacity(max_batch);
            while receiver.recv_many(&mut waiting, max_batch).await > 0 {
                // Requests made ready by one event (a read of several stream entries, one log
                // flush for many jobs) are often still on their way: let the tasks that are
                // ready run first, once, and take what they sent.
                if waiting.len() < max_batch {
                    tokio::task::yield_now().await;
                    while waiting.len() < max_batch {
                        let Ok(request) = receiver.try_recv() else { break };
                        waiting.push(request);
                    }
                }
                let (batch, replies): (Vec<Req>, Vec<Reply<Resp>>) = waiting.drain(..).unzip();
                let size = batch.len();
                metrics::histogram!("md5_batch_size", "batch" => name).record(size as f64);
                // On a task of its own, so a panic in one flush fails its batch, not the batcher.
                let outcome = match tokio::spawn(flush(batch)).await {
                    Ok(Ok(responses)) if responses.len() == size => Ok(responses),
                    Ok(Ok(responses)) => Err(BatchError::Miscounted {
                        batch: name,
                        responses: responses.len(),
                        requests: size,
                    }),
                    Ok(Err(err)) => Err(BatchError::Failed { batch: name, cause: SharedError::new(err) }),
                    Err(join) => Err(BatchError::Panicked { batch: name, cause: SharedError::new(join) }),
                };
                match outcome {
                    Ok(responses) => {
                        for (reply, response) in replies.into_iter().zip(responses) {
                            let _ = reply.send(Ok(response));
                        }
                    }
                    Err(err) => {
                        for reply in replies {
                            let _ = reply.send(Err(err.clone()));
                        }
                    }
                }
            }
        });
        Batcher { name, requests }
    }

    /// Submits `request` with the next batch and waits for its own response.
    pub async fn call(&self, request: Req) -> Result<Resp, BatchError> {
        let (reply, response) = oneshot::channel();
        self.requests.send((request, reply)).map_err(|_| BatchError::Stopped(self.name))?;
        response.await.map_err(|_| BatchError::Stopped(self.name))?
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn requests_arriving_during_a_flush_share_the_next_one_and_each_gets_its_own_answer() {
        let flushes = Arc::new(AtomicUsize::new(0));
        let counted = flushes.clone();
        let batcher = Batcher::spawn("test", 64, move |batch: Vec<u32>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(batch.into_iter().map(|n| n * 2).collect())
            }
        });
        let calls: Vec<_> = (0..100u32)
            .map(|n| {
                let batcher = batcher.clone();
                tokio::spawn(async move { (n, batcher.call(n).await.unwrap()) })
            })
            .collect();
        for call in calls {
            let (n, doubled) = call.await.unwrap();
            assert_eq!(doubled, n * 2);
        }
        let flushes = flushes.load(Ordering::SeqCst);
        assert!((2..=10).contains(&flushes), "100 requests took {flushes} flushes of at most 64");
    }

    #[tokio::test]
    async fn a_failed_or_panicking_flush_fails_its_batch_only() {
        let batcher = Batcher::spawn("test", 8, |batch: Vec<u32>| async move {
            match batch[0] {
                0 => anyhow::bail!("the statement failed"),
                1 => panic!("flush panicked"),
                _ => Ok(batch),
            }
        });
        let failed = anyhow::Error::new(batcher.call(0).await.unwrap_err());
        assert_eq!(format!("{failed:#}"), "the test batch failed: the statement failed");
        assert!(matches!(batcher.call(1).await, Err(BatchError::Panicked { .. })));
        assert_eq!(batcher.call(2).await.unwrap(), 2);
    }
}
