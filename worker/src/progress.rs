//! A running hash's progress, told to whoever watches its task (event streams, `GET`): one
//! notification, no row written.

use std::time::Duration;

use shared::db::connection;
use shared::queries;
use uuid::Uuid;

use crate::context::JobContext;

/// How often a running hash announces its progress; a hash shorter than this announces nothing.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// Tells whoever watches the task (event streams, `GET`) how far its hash has come: one
/// notification, no row written. Best effort: a notification that cannot be sent within
/// [`PROGRESS_EVERY`] is skipped (the next one says more).
pub async fn announce_progress(ctx: &JobContext, task_id: Uuid, bytes: u64) {
    let announce = async {
        let mut conn = connection(&ctx.bookkeeping).await?;
        anyhow::Ok(queries::announce_progress(&mut conn, task_id, bytes).await?)
    };
    match tokio::time::timeout(PROGRESS_EVERY, announce).await {
        Ok(Ok(())) => metrics::counter!("md5_progress_announced_total").increment(1),
        Ok(Err(err)) => tracing::debug!(error = format!("{err:#}"), "cannot announce the hash's progress"),
        Err(_) => tracing::debug!("announcing the hash's progress timed out"),
    }
}
