//! The read loop: takes a free job slot, reads new entries from the group (or takes over idle
//! ones, every half `CLAIM_IDLE_MS`), and runs each delivery as a job of its own, until the
//! worker's shutdown token (`JobContext::shutdown`) is cancelled.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::context::JobContext;
use crate::job;
use crate::stream::Jobs;

/// Runs until shutdown; returns the jobs still running, for the caller's grace period.
pub async fn run(ctx: Arc<JobContext>, mut jobs: Jobs) -> anyhow::Result<JoinSet<()>> {
    let stop = ctx.shutdown.clone();
    let concurrency = ctx.config.concurrency();
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut running = JoinSet::new();
    let takeover_every =
        (ctx.config.claim_idle() / 2).clamp(Duration::from_millis(100), Duration::from_secs(10));
    let mut next_takeover = tokio::time::Instant::now();
    let mut group_ready = false;
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        while running.try_join_next().is_some() {}
        if !group_ready {
            match jobs.ensure_group().await {
                Ok(()) => group_ready = true,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot reach the consumer group; retrying");
                    pause(&stop, &mut backoff).await;
                    continue;
                }
            }
        }
        let first = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.context("job slots closed")?,
            () = stop.cancelled() => break,
        };
        let mut permits = vec![first];
        while let Ok(permit) = slots.clone().try_acquire_owned() {
            permits.push(permit);
        }
        let deliveries = if tokio::time::Instant::now() >= next_takeover {
            next_takeover = tokio::time::Instant::now() + takeover_every;
            match jobs.take_over_idle(ctx.config.claim_idle(), permits.len()).await {
                Ok(taken) if !taken.is_empty() => {
                    metrics::counter!("md5_jobs_taken_over_total").increment(taken.len() as u64);
                    tracing::info!(jobs.taken_over = taken.len(), "took over idle jobs");
                    Ok(taken)
                }
                Ok(_) => jobs.read_new(permits.len()).await,
                Err(err) => Err(err),
            }
        } else {
            jobs.read_new(permits.len()).await
        };
        match deliveries {
            Ok(deliveries) => {
                backoff = Duration::from_millis(100);
                for delivery in deliveries {
                    let permit = permits.pop().expect("never more entries than COUNT");
                    let ctx = ctx.clone();
                    running.spawn(async move {
                        job::handle(ctx, delivery).await;
                        drop(permit);
                    });
                }
            }
            Err(err) if err.code() == Some("NOGROUP") => {
                tracing::warn!("the consumer group is gone (Redis lost its data); recreating it");
                group_ready = false;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the stream; retrying");
                pause(&stop, &mut backoff).await;
            }
        }
    }

    Ok(running)
}

async fn pause(stop: &CancellationToken, backoff: &mut Duration) {
    tokio::select! {
        () = tokio::time::sleep(*backoff) => {}
        () = stop.cancelled() => {}
    }
    *backoff = (*backoff * 2).min(Duration::from_secs(5));
}
