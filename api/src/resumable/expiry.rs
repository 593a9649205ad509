//! The expiry janitor: ends resumable uploads that went `UPLOAD_EXPIRY_SECONDS` without an
//! append: each task ends `expired`, its file and row go, and it gets no log line.
//!
//! Every api runs it; the conditional updates let them race safely, and an upload whose lock is
//! held (an append in progress, here or elsewhere) is alive whatever its clock says, so it is
//! skipped. A completed upload is never touched: it has no row here.

use std::time::Duration;

use shared::maintenance::Service;
use tokio_util::sync::CancellationToken;

use super::UploadError;
use crate::state::AppState;
use shared::{TaskStatus, uploads};

/// Most uploads one batch ends; a pass goes on batch after batch while they are full and each
/// ends some (so a backlog is drained at once, not a batch per period).
const BATCH: i64 = 100;

/// How often the janitor looks: a quarter of the expiry, between 1 s and 60 s.
pub fn period(expiry: Duration) -> Duration {
    (expiry / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Ends every upload whose time has passed, a batch at a time; returns how many it ended.
pub async fn run_once(state: &AppState) -> Result<usize, UploadError> {
    let mut ended = 0;
    loop {
        let (due, ended_now) = run_batch(state).await?;
        ended += ended_now;
        // A short batch was all that was due; a batch that ended nothing holds only uploads
        // being appended to (alive) or that cannot be handled now: the next period retries.
        if due < BATCH as usize || ended_now == 0 {
            return Ok(ended);
        }
    }
}

/// Ends one batch of the uploads whose time has passed: how many were due, how many it ended.
async fn run_batch(state: &AppState) -> Result<(usize, usize), UploadError> {
    let due = state.db.run(async |conn| uploads::expired(conn, BATCH).await).await?;
    let due_count = due.len();
    let mut ended = 0;
    for task_id in due {
        let lock = match super::lock(state, task_id).await {
            Ok(lock) => lock,
            // Being appended to: alive.
            Err(UploadError::Busy) => continue,
            // Ended, its file already gone (an api died between removing it and its row): only
            // the row is left to remove.
            Err(UploadError::Gone(_)) => {
                state.db.run(async |conn| uploads::forget(conn, task_id).await).await?;
                continue;
            }
            // One upload that cannot be handled must not stop the others from expiring.
            Err(err) => {
                tracing::warn!(task.id = %task_id, error = ?err, "cannot expire this resumable upload");
                continue;
            }
        };
        let detail = format!(
            "the upload expired before it was complete: no bytes arrived for {} s, or {} s passed since its creation",
            state.config.upload_expiry().idle.as_secs(),
            state.config.upload_expiry_seconds
        );
        if super::end(state, lock, TaskStatus::Expired, &detail, true).await? {
            ended += 1;
        }
    }
    Ok((due_count, ended))
}

/// Runs [`run_once`] every [`period`], as a maintenance service.
pub struct ExpireUploads {
    /// The api's state (its database, settings and storage).
    pub state: AppState,
}

impl Service for ExpireUploads {
    fn name(&self) -> &'static str {
        "resumable upload expiry"
    }

    async fn run(self, stop: CancellationToken) {
        let period = period(self.state.config.upload_expiry().idle);
        loop {
            match run_once(&self.state).await {
                Ok(0) => {}
                Ok(ended) => {
                    metrics::counter!("md5_resumable_uploads_total", "event" => "expired")
                        .increment(ended as u64);
                    tracing::info!(uploads.expired = ended, "removed expired resumable uploads");
                }
                Err(err) => tracing::warn!(error = ?err, "cannot expire resumable uploads"),
            }
            tokio::select! {
                () = tokio::time::sleep(period) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}
