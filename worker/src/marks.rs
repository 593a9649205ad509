//! The "logged" marks (`md5_tasks.logged_at`), written off the jobs' path.
//!
//! A job records its mark after its entry is acknowledged and does not wait for it: the marks
//! made within [`LINGER`] of each other go out in one statement on the bookkeeping pool, so at a
//! few hundred jobs a second a mark costs a tenth of a statement instead of nearly one, and no
//! job slot waits for it. A mark never written (a crash, or Postgres away for longer than the
//! writer keeps them) costs only work: the sweeper finds the task finished but unmarked,
//! re-enqueues it, and the log search finds its line, so it is not written twice.

use std::sync::Mutex;
use std::time::Duration;

use shared::db::{Pool, connection};
use shared::queries;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long the first mark of a batch waits for others.
const LINGER: Duration = Duration::from_millis(50);

/// Most marks one statement carries.
const MAX_BATCH: usize = 1024;

/// Most marks kept while Postgres does not answer; older ones are dropped (the sweeper redoes
/// their tasks' bookkeeping).
const MOST_KEPT: usize = 100_000;

/// How long [`Marks::close`] waits for the last marks to be written.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The handle jobs record their marks through, and the task that writes them.
pub struct Marks {
    sender: mpsc::UnboundedSender<Uuid>,
    closing: CancellationToken,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Marks {
    /// Starts the writer, on `bookkeeping` (asynchronous commit: a lost mark is redone).
    pub fn spawn(bookkeeping: Pool) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        let closing = CancellationToken::new();
        let writer = tokio::spawn(write(bookkeeping, receiver, closing.clone()));
        Marks { sender, closing, writer: Mutex::new(Some(writer)) }
    }

    /// Records that task `task_id`'s log line is written; returns at once.
    pub fn record(&self, task_id: Uuid) {
        // Fails only once the writer is gone (the process is stopping): the sweeper redoes it.
        let _ = self.sender.send(task_id);
    }

    /// Writes the marks recorded so far (for at most [`CLOSE_TIMEOUT`]) and stops the writer.
    pub async fn close(&self) {
        self.closing.cancel();
        let writer = self.writer.lock().expect("not poisoned").take();
        if let Some(writer) = writer
            && tokio::time::timeout(CLOSE_TIMEOUT, writer).await.is_err()
        {
            tracing::warn!("the last logged marks were not written in time; the sweeper redoes them");
        }
    }
}

/// The writer: waits for a mark, lingers, writes every mark received meanwhile; retries a failed
/// write every second, keeping at most [`MOST_KEPT`]; once `closing`, writes what is left once.
async fn write(pool: Pool, mut receiver: mpsc::UnboundedReceiver<Uuid>, closing: CancellationToken) {
    let mut pending: Vec<Uuid> = Vec::new();
    loop {
        if pending.is_empty() {
            tokio::select! {
                received = receiver.recv_many(&mut pending, MAX_BATCH) => if received == 0 { return },
                () = closing.cancelled() => {}
            }
        }
        tokio::select! {
            () = tokio::time::sleep(LINGER) => {}
            () = closing.cancelled() => {}
        }
        while let Ok(task_id) = receiver.try_recv() {
            pending.push(task_id);
        }
        if pending.len() > MOST_KEPT {
            let dropped = pending.len() - MOST_KEPT;
            tracing::warn!(
                marks.dropped = dropped,
                "too many logged marks unwritten; the sweeper redoes them"
            );
            pending.drain(..dropped);
        }
        while !pending.is_empty() {
            let batch = pending.len().min(MAX_BATCH);
            metrics::histogram!("md5_batch_size", "batch" => "mark").record(batch as f64);
            let written = async {
                let mut conn = connection(&pool).await?;
                anyhow::Ok(queries::mark_all_logged(&mut conn, &pending[..batch]).await?)
            }
            .await;
            match written {
                Ok(()) => {
                    pending.drain(..batch);
                }
                Err(err) if closing.is_cancelled() => {
                    tracing::warn!(
                        error = format!("{err:#}"),
                        "cannot write the last logged marks; the sweeper redoes them"
                    );
                    return;
                }
                Err(err) => {
                    tracing::warn!(error = format!("{err:#}"), "cannot write logged marks; retrying in 1 s");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = closing.cancelled() => {}
                    }
                    break;
                }
            }
        }
        if closing.is_cancelled() && pending.is_empty() && receiver.is_empty() {
            return;
        }
    }
}
