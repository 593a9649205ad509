//! One delivery, from claim to acknowledgement.
//!
//! Order per job: claim the row → hash → commit the result → append the log line → delete the
//! upload → XACK (+XDEL) → record that it is logged. (A quick job's first delivery hashes first
//! and claims with its result: see `crate::quick`.) A crash anywhere leaves either an
//! unacknowledged entry (taken over by another worker) or a row the sweeper re-enqueues; the
//! conditional updates and the log search make every retry a no-op where work was already done.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use shared::db::connection;
use shared::queries::{self, Completion, Outcome};
use shared::{LogLine, Md5Hex, Task};
use tracing::Instrument as _;
use uuid::Uuid;

pub use crate::context::JobContext;
use crate::follow::{Followed, Following};
use crate::progress::{PROGRESS_EVERY, announce_progress};
use crate::results_log::Appended;
use crate::stream::Delivery;

/// Longest a job keeps retrying Postgres, Redis or the log in place before it leaves its entry
/// pending for a takeover.
const RETRY_FOR: Duration = Duration::from_secs(120);

/// What becomes of a delivery's stream entry, decided by the job and carried out in one place,
/// [`settle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    /// XACK + XDEL: nothing is left to do for this entry (malformed, unknown task, duplicate).
    Acknowledge,
    /// The task's line is on disk: acknowledge, then record `logged_at`.
    AcknowledgeLogged(Uuid),
    /// Leave the entry pending, so it is redelivered to some worker once idle.
    LeavePending,
}

/// Handles one delivery; failures are logged here, once, and leave the entry pending.
pub async fn handle(ctx: Arc<JobContext>, delivery: Delivery) {
    let task_id = delivery.job.as_ref().map(|job| job.task_id.to_string()).unwrap_or_default();
    let request_id = delivery.job.as_ref().ok().and_then(|job| job.request_id.clone()).unwrap_or_default();
    let span = tracing::info_span!("job", task.id = %task_id, request.id = %request_id, entry.id = %delivery.entry_id);
    async move {
        let settled = match process(&ctx, &delivery).await {
            Ok(decision) => settle(&ctx, &delivery, decision).await,
            Err(err) => Err(err),
        };
        if let Err(err) = settled {
            tracing::error!(error = format!("{err:#}"), "job left pending for a retry");
        }
    }
    .instrument(span)
    .await
}

/// The only place an entry is acknowledged. The file is already gone (see [`finish`]); a crash
/// before the XACK redelivers the job, a crash before the mark leaves it to the sweeper.
async fn settle(ctx: &JobContext, delivery: &Delivery, decision: Settle) -> anyhow::Result<()> {
    match decision {
        Settle::LeavePending => Ok(()),
        Settle::Acknowledge => acknowledge(ctx, delivery).await,
        Settle::AcknowledgeLogged(task_id) => {
            crate::fault::point(&ctx.config, "before_ack");
            acknowledge(ctx, delivery).await?;
            crate::fault::point(&ctx.config, "before_mark");
            // Last, and without waiting for it (`crate::marks`): if this mark is lost, the
            // sweeper finds the task finished but unmarked, re-enqueues it, and the log search
            // finds its line.
            ctx.marks.record(task_id);
            Ok(())
        }
    }
}

async fn process(ctx: &JobContext, delivery: &Delivery) -> anyhow::Result<Settle> {
    let job = match &delivery.job {
        Ok(job) => job,
        Err(err) => {
            tracing::warn!(error = %err, "dropping a malformed stream entry");
            return Ok(Settle::Acknowledge);
        }
    };
    let following = if job.follow {
        match crate::follow::follow(ctx, &delivery.entry_id, job.task_id).await? {
            Followed::Complete(following) => following,
            Followed::Gone => return Ok(Settle::Acknowledge),
            Followed::Stopping => return Ok(Settle::LeavePending),
        }
    } else {
        None
    };
    if job.quick && !job.follow && !delivery.taken_over {
        crate::fault::point(&ctx.config, "after_claim");
        if let Some(completion) = crate::quick::hash(ctx, job.task_id).await {
            crate::fault::point(&ctx.config, "after_hash");
            let finished =
                retry(ctx, "record the result", || ctx.batches.complete.call(completion.clone())).await?;
            if let Some(finished) = finished {
                return recorded(ctx, finished).await;
            }
            // Cancelled, claimed by another worker, or not what its job said: the claimed way
            // finds out which.
        }
    }
    let claimed =
        retry(ctx, "claim the task", || ctx.batches.claim.call((job.task_id, delivery.taken_over))).await?;
    let Some(task) = claimed else {
        return not_claimable(ctx, delivery, job.task_id).await;
    };
    let outcome = if task.attempts > ctx.config.max_deliveries as i32 {
        let reason = format!(
            "given up after {} attempts: the job kept failing or crashing its worker",
            ctx.config.max_deliveries
        );
        match ctx.jobs.dead_letter(&delivery.entry_id, task.task_id, &reason).await {
            Ok(true) => metrics::counter!("md5_jobs_dead_lettered_total").increment(1),
            Ok(false) => {}
            Err(err) => tracing::warn!(error = %err, "cannot copy the job to the dead-letter stream"),
        }
        Outcome::Failed { error: reason }
    } else {
        crate::fault::point(&ctx.config, "after_claim");
        let resume = following.filter(|following| following.fits(&task));
        match hash_with_heartbeat(ctx, &task, &delivery.entry_id, resume).await {
            Some(outcome) => outcome,
            None => return stopped(ctx, task.task_id).await,
        }
    };
    crate::fault::point(&ctx.config, "after_hash");

    let completion = Completion::claimed(task.task_id, outcome);
    let finished = retry(ctx, "record the result", || ctx.batches.complete.call(completion.clone())).await?;
    let Some(finished) = finished else {
        // Cancelled meanwhile, or our lease passed and another worker took the task over.
        return stopped(ctx, task.task_id).await;
    };
    recorded(ctx, finished).await
}

/// The task's result is committed: counts it, then [`finish`]es it.
async fn recorded(ctx: &JobContext, finished: Task) -> anyhow::Result<Settle> {
    crate::fault::point(&ctx.config, "after_commit");
    crate::fault::pause_after_commit(&ctx.config).await;
    metrics::counter!("md5_tasks_finished_total", "status" => finished.status.as_str()).increment(1);
    if let Some(finished_at) = finished.finished_at {
        let latency = (finished_at - finished.created_at).to_std().unwrap_or_default();
        metrics::histogram!("md5_upload_to_done_seconds").record(latency.as_secs_f64());
    }
    tracing::info!(
        task.status = finished.status.as_str(),
        task.md5 = finished.result.as_ref().map_or("", Md5Hex::as_str),
        "task finished"
    );
    finish(ctx, &finished, false).await
}

/// The hash was stopped, or its result not recorded, because the task is no longer this
/// worker's: cancelled (no result, no log line: its file goes, the entry is acknowledged), or
/// taken over by another worker after our lease passed (the entry stays pending for it).
async fn stopped(ctx: &JobContext, task_id: Uuid) -> anyhow::Result<Settle> {
    match load_task(ctx, task_id).await? {
        Some(task) if task.status.ends_without_result() => {
            tracing::info!(task.status = task.status.as_str(), "task cancelled; no result and no log line");
            remove_upload(ctx, &task).await;
            Ok(Settle::Acknowledge)
        }
        // Forgotten (`DELETE`) while it was hashed: its row and file are gone, nothing is left
        // to record; its entry is settled now, not after a takeover a lease later.
        None => {
            tracing::info!("task forgotten; no result and no log line");
            Ok(Settle::Acknowledge)
        }
        Some(_) => {
            tracing::warn!("lease lost while hashing; leaving the task to its new owner");
            Ok(Settle::LeavePending)
        }
    }
}

/// The task's row, Postgres retried in place.
async fn load_task(ctx: &JobContext, task_id: Uuid) -> anyhow::Result<Option<Task>> {
    retry(ctx, "load the task", || async {
        let mut conn = connection(&ctx.pool).await?;
        anyhow::Ok(queries::find_task(&mut conn, task_id).await?)
    })
    .await
}

/// The task could not be claimed: it is finished, held by a live worker, or unknown.
async fn not_claimable(ctx: &JobContext, delivery: &Delivery, task_id: Uuid) -> anyhow::Result<Settle> {
    match load_task(ctx, task_id).await? {
        None => {
            tracing::warn!("no such task; dropping the entry");
            Ok(Settle::Acknowledge)
        }
        Some(task) if task.status.ends_without_result() => {
            // Cancelled while queued (or in a race with our claim): never hashed, never logged.
            tracing::debug!(
                task.status = task.status.as_str(),
                "delivery of a task that ended without a result"
            );
            remove_upload(ctx, &task).await;
            Ok(Settle::Acknowledge)
        }
        Some(task) if task.status.is_finished() && task.logged_at.is_some() => {
            // A duplicate, or a redelivery after a crash between logging and acknowledging.
            tracing::debug!("delivery of a finished and logged task");
            remove_upload(ctx, &task).await;
            Ok(Settle::Acknowledge)
        }
        // A crash came between recording the result and recording the log line.
        Some(task) if task.status.is_finished() => finish(ctx, &task, true).await,
        Some(_) if delivery.taken_over => {
            // Its previous holder's lease has not quite run out: leave the entry pending, so
            // it is taken over again once the lease has passed.
            tracing::debug!("task still leased; taking it over later");
            Ok(Settle::LeavePending)
        }
        Some(_) => {
            // A second entry for a task a live worker holds (the sweeper re-added it).
            tracing::debug!("task held by another worker; dropping the duplicate entry");
            Ok(Settle::Acknowledge)
        }
    }
}

/// Appends the task's line (searching for an earlier one when `recovering`) and deletes the
/// upload; the entry is then acknowledged and the line recorded by [`settle`].
async fn finish(ctx: &JobContext, task: &Task, recovering: bool) -> anyhow::Result<Settle> {
    let now = chrono::Utc::now();
    let line = LogLine::new(task, &ctx.consumer, now);
    let mut attempts = 0u32;
    let appended = retry(ctx, "append to the results log", || {
        attempts += 1;
        // A recovering task may have its line already. So may any task after a failed attempt:
        // the write can have gone through before the flush failed, and the file's content is
        // then unknown. Either way, search (from a fresh handle) before writing.
        let search = recovering || attempts > 1;
        let (line, finished_at) = (&line, task.finished_at.unwrap_or(now));
        async move { anyhow::Ok(ctx.log.append(line, finished_at, search).await?) }
    })
    .await?;
    if appended == Appended::AlreadyPresent {
        tracing::info!("the task's log line was already written; not writing it again");
    }
    crate::fault::point(&ctx.config, "after_log");
    // The file goes before the acknowledgement: a crash between the two redelivers the job,
    // which deletes it again (a no-op), rather than leaving a file nobody will delete.
    remove_upload(ctx, task).await;
    Ok(Settle::AcknowledgeLogged(task.task_id))
}

/// XACK + XDEL of the delivery's entry, batched with other jobs'.
async fn acknowledge(ctx: &JobContext, delivery: &Delivery) -> anyhow::Result<()> {
    retry(ctx, "acknowledge", || ctx.batches.ack.call(delivery.entry_id.clone())).await
}

/// Deletes the stored upload of a finished task, unless `KEEP_UPLOADS`; a missing file is fine.
async fn remove_upload(ctx: &JobContext, task: &Task) {
    if ctx.config.keep_uploads {
        return;
    }
    let path = shared::config::upload_path(&ctx.config.storage.upload_dir, task.task_id);
    let remove = move || std::fs::remove_file(path);
    let size = u64::try_from(task.size_bytes).unwrap_or(u64::MAX);
    let removed = ctx.volume.on_file(size, remove).await;
    match removed {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => tracing::warn!(error = %err, "cannot delete the stored upload"),
    }
}

/// Hashes the stored upload while a heartbeat extends the lease and keeps the entry from
/// looking idle, so a long hash is never taken over while this worker lives, and its progress
/// is announced every [`PROGRESS_EVERY`]. `None` if the hash was stopped: the task was
/// cancelled (the cancel watcher stops it at once) or the heartbeat found the task no longer
/// ours.
async fn hash_with_heartbeat(
    ctx: &JobContext,
    task: &Task,
    entry_id: &str,
    resume: Option<Following>,
) -> Option<Outcome> {
    let path = shared::config::upload_path(&ctx.config.storage.upload_dir, task.task_id);
    let registered = ctx.running.register(task.task_id);
    let progress = registered.progress.clone();
    let algorithms = task.algorithms();
    // A large file that needs MD5 alone joins the SIMD lanes (which count their bytes as they
    // go); any other hashes on a blocking thread, one per CPU.
    let in_lanes = resume.is_none()
        && algorithms.iter().all(|algorithm| *algorithm == shared::Algorithm::Md5)
        && task.size_bytes as u64 > crate::hash::OVERLAP_ABOVE_BYTES;
    let followed = resume.as_ref().map_or(0, Following::hashed);
    let hashing = async {
        let started = std::time::Instant::now();
        let hashed =
            if let Some(resume) = resume {
                // Hashed while it arrived: only the rest is left.
                let _turn = ctx.hashing.acquire().await;
                let progress = progress.clone();
                tokio::task::spawn_blocking(move || resume.finish(&progress)).await
            } else if in_lanes {
                Ok(ctx.lanes.md5_watched(path, progress.clone()).await.map(|(digest, size)| {
                    (shared::Digests::md5_only(shared::Md5Hex::from_digest(digest)), size)
                }))
            } else {
                let _turn = ctx.hashing.acquire().await;
                let progress = progress.clone();
                tokio::task::spawn_blocking(move || {
                    crate::hash::digest_file_watched(&path, &algorithms, &progress)
                })
                .await
            };
        (hashed, started.elapsed())
    };
    tokio::pin!(hashing);
    let beat = ctx.config.claim_idle() / 3;
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
    let mut announce = tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    announce.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut announced = 0;
    let (result, took) = loop {
        tokio::select! {
            result = &mut hashing => break result,
            // Dropping `hashing` takes the file out of its lane; a hashing thread sees the stop
            // within a buffer.
            () = progress.stopped() => return None,
            _ = announce.tick() => {
                let bytes = progress.bytes();
                if bytes != announced {
                    announced = bytes;
                    announce_progress(ctx, task.task_id, bytes).await;
                }
            }
            _ = heartbeat.tick() => {
                let lease = ctx.config.claim_idle();
                let extended = match connection(&ctx.bookkeeping).await {
                    Ok(mut conn) => queries::extend_lease(&mut conn, task.task_id, &ctx.consumer, lease).await.unwrap_or(true),
                    Err(_) => true,
                };
                if extended {
                    if let Err(err) = ctx.jobs.touch(entry_id).await {
                        tracing::warn!(error = %err, "heartbeat could not touch the stream entry");
                    }
                } else {
                    progress.stop();
                }
            }
        }
    };
    if progress.is_stopped() {
        return None;
    }
    Some(match result {
        Ok(Ok((digests, size))) if size == task.size_bytes as u64 => {
            metrics::histogram!("md5_hash_duration_seconds").record(took.as_secs_f64());
            if !in_lanes {
                metrics::counter!("md5_hashed_bytes_total").increment(size);
            }
            tracing::info!(
                hash.duration_ms = took.as_millis() as u64,
                hash.size_bytes = size,
                hash.while_uploading_bytes = followed,
                "hashed"
            );
            checked(digests, &task.expected())
        }
        Ok(Ok((_, size))) => Outcome::Failed {
            error: format!("the stored upload is {size} bytes, expected {}", task.size_bytes),
        },
        Ok(Err(err)) if err.kind() == std::io::ErrorKind::NotFound => {
            Outcome::Failed { error: "the uploaded file is missing from the upload volume".into() }
        }
        Ok(Err(err)) => Outcome::Failed { error: format!("the uploaded file cannot be read: {err}") },
        Err(join) => Outcome::Failed { error: format!("hashing failed: {join}") },
    })
}

/// The outcome of a hash whose client expected `expected`: `done`, or `failed` naming the first
/// algorithm whose digest differs, the expected and the computed value.
fn checked(
    digests: shared::Digests,
    expected: &std::collections::BTreeMap<shared::Algorithm, String>,
) -> Outcome {
    match digests.mismatch(expected) {
        None => Outcome::Done { digests },
        Some((algorithm, want, got)) => {
            metrics::counter!("md5_digest_mismatches_total").increment(1);
            Outcome::Failed {
                error: format!(
                    "{algorithm} mismatch: expected {want}, computed {}",
                    got.unwrap_or("nothing (the algorithm was not computed)")
                ),
            }
        }
    }
}

/// Runs `step` until it succeeds, backing off from 100 ms to 5 s, for at most [`RETRY_FOR`]
/// or until shutdown.
async fn retry<T, E, F, Fut>(ctx: &JobContext, what: &str, mut step: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: Into<anyhow::Error>,
{
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        match step().await {
            Ok(value) => return Ok(value),
            Err(err) => {
                let err: anyhow::Error = err.into();
                if started.elapsed() >= RETRY_FOR || ctx.shutdown.is_cancelled() {
                    return Err(err).with_context(|| format!("cannot {what}"));
                }
                tracing::warn!(
                    error = format!("{err:#}"),
                    retry.delay_ms = delay.as_millis() as u64,
                    "cannot {what}; retrying"
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = ctx.shutdown.cancelled() => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
