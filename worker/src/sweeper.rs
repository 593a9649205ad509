//! The sweeper: re-enqueues tasks that have no live stream entry.
//!
//! Postgres is the source of truth; a stream entry can be lost (the api's XADD failed, Redis
//! restarted without persistence, someone ran FLUSHALL). Every interval one worker (whichever
//! takes the turn in Redis) lists unlogged tasks that are old enough to have been picked up,
//! and XADDs those absent from the stream. Duplicate entries are harmless: claims are conditional.

use std::sync::Arc;

use shared::{JobMessage, queries};

use crate::job::JobContext;

/// Most tasks re-enqueued per sweep.
const SWEEP_BATCH: i64 = 5000;

/// Runs one sweep if this worker gets the turn; returns how many tasks it re-enqueued.
pub async fn sweep_once(ctx: &Arc<JobContext>) -> anyhow::Result<usize> {
    let interval = ctx.config.sweep_interval();
    if !ctx.jobs.try_sweep_turn(interval).await? {
        return Ok(0);
    }
    let candidates = {
        let mut conn =
            ctx.pool.get().await.map_err(|err| anyhow::anyhow!("no Postgres connection: {err}"))?;
        queries::tasks_to_sweep(&mut conn, interval, SWEEP_BATCH).await?
    };
    if candidates.is_empty() {
        return Ok(0);
    }
    let live = ctx.jobs.live_task_ids().await?;
    let mut enqueued = 0;
    for task_id in candidates.into_iter().filter(|id| !live.contains(id)) {
        ctx.jobs.enqueue(&JobMessage { task_id, request_id: None }).await?;
        enqueued += 1;
    }
    metrics::counter!("md5_sweeper_requeued_total").increment(enqueued as u64);
    if enqueued > 0 {
        tracing::info!(sweep.enqueued = enqueued, "re-enqueued tasks that had no stream entry");
    }
    Ok(enqueued)
}
