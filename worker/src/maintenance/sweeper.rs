//! The sweeper: re-enqueues tasks that have no live stream entry.
//!
//! Postgres is the source of truth; a stream entry can be lost (the api's XADD failed, Redis
//! restarted without persistence, someone ran FLUSHALL). Every interval one worker (whichever
//! takes the turn in Redis) lists unlogged tasks that are old enough to have been picked up,
//! and XADDs those absent from the stream. Duplicate entries are harmless: claims are conditional.

use std::sync::Arc;

use shared::{JobMessage, queries};
use tokio_util::sync::CancellationToken;

use super::Service;
use crate::context::JobContext;

/// Most tasks re-enqueued per sweep.
const SWEEP_BATCH: i64 = 5000;

/// Sweeps every `SWEEP_INTERVAL_MS`.
pub struct Sweeper {
    /// What the jobs share: the pools, the stream and the settings.
    pub ctx: Arc<JobContext>,
}

impl Service for Sweeper {
    fn name(&self) -> &'static str {
        "sweeper"
    }

    async fn run(self, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(self.ctx.config.sweep_interval());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = stop.cancelled() => return,
            }
            let swept = tokio::select! {
                swept = sweep_once(&self.ctx) => swept,
                () = stop.cancelled() => return,
            };
            if let Err(err) = swept {
                tracing::warn!(error = format!("{err:#}"), "sweep failed; trying again next interval");
            }
        }
    }
}

/// Runs one sweep if this worker gets the turn; returns how many tasks it re-enqueued.
pub async fn sweep_once(ctx: &Arc<JobContext>) -> anyhow::Result<usize> {
    let interval = ctx.config.sweep_interval();
    if !ctx.jobs.try_sweep_turn(interval).await? {
        return Ok(0);
    }
    let candidates = {
        let mut conn = shared::db::connection(&ctx.pool).await?;
        queries::tasks_to_sweep(&mut conn, interval, SWEEP_BATCH).await?
    };
    if candidates.is_empty() {
        return Ok(0);
    }
    let live = ctx.jobs.live_task_ids().await?;
    let mut enqueued = 0;
    for task_id in candidates.into_iter().filter(|id| !live.contains(id)) {
        ctx.jobs.enqueue(&JobMessage::new(task_id, None)).await?;
        enqueued += 1;
    }
    metrics::counter!("md5_sweeper_requeued_total").increment(enqueued as u64);
    if enqueued > 0 {
        tracing::info!(sweep.enqueued = enqueued, "re-enqueued tasks that had no stream entry");
    }
    Ok(enqueued)
}
