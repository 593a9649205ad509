//! Stops the hash of a task cancelled (or an upload expired) while this worker runs it, the
//! moment Postgres announces the change (see `shared::events`: workers hear only those). After a
//! reconnection or a lag, when announcements may have been missed, it reads the status of every
//! task hashing here. The heartbeat's lease extension, which fails for a task no longer
//! `processing`, is the slower backstop.

use std::sync::Arc;

use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use super::Service;
use crate::context::JobContext;
use shared::events::TaskEvent;
use shared::queries;

/// The service; subscribe (in [`StopCancelled::new`]) before the first job runs.
pub struct StopCancelled {
    ctx: Arc<JobContext>,
    events: broadcast::Receiver<TaskEvent>,
}

impl StopCancelled {
    /// Watches `events` for cancelled tasks that `ctx` is hashing.
    pub fn new(ctx: Arc<JobContext>, events: &shared::events::TaskEvents) -> Self {
        StopCancelled { ctx, events: events.subscribe() }
    }

    /// Reads the status of every task hashing here, and stops those that were cancelled.
    async fn recheck(&self) {
        let running = self.ctx.running.task_ids();
        if running.is_empty() {
            return;
        }
        let Ok(mut conn) = shared::db::connection(&self.ctx.bookkeeping).await else { return };
        for task_id in running {
            if let Ok(Some(task)) = queries::find_task(&mut conn, task_id).await
                && task.status.ends_without_result()
            {
                self.stop(task_id);
            }
        }
    }

    fn stop(&self, task_id: uuid::Uuid) {
        if self.ctx.running.stop(task_id) {
            metrics::counter!("md5_hashes_stopped_total").increment(1);
            tracing::info!(task.id = %task_id, "task cancelled or expired: stopped its hash");
        }
    }
}

impl Service for StopCancelled {
    fn name(&self) -> &'static str {
        "stop-cancelled"
    }

    async fn run(mut self, stop: CancellationToken) {
        loop {
            let event = tokio::select! {
                event = self.events.recv() => event,
                () = stop.cancelled() => return,
            };
            match event {
                Ok(TaskEvent::Changed(task_id, status)) if status.ends_without_result() => self.stop(task_id),
                Ok(TaskEvent::Changed(..) | TaskEvent::Progress(..)) => {}
                Ok(TaskEvent::Resync) | Err(RecvError::Lagged(_)) => self.recheck().await,
                Err(RecvError::Closed) => return,
            }
        }
    }
}
