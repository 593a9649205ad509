//! `md5-worker`: reads jobs from the Redis consumer group, hashes uploads, records results in
//! Postgres and appends one line per task to the shared results log.
//!
//! It never speaks HTTP to clients and never writes an upload: that is the api's job.
//! **Only this crate reads the stream.**
//!
//! # Delivery and the exactly-once log
//!
//! A row moves `queued → processing → done | failed` (a quick job's `queued → done`, below);
//! `logged_at` records that its log line is written.
//!
//! Two kinds of commit: the row's creation and its result are durable (`synchronous_commit=on`);
//! the claim, the lease and the "logged" mark go through a second pool with `synchronous_commit=off`
//! (`shared::db::build_bookkeeping_pool`), because losing them in a Postgres crash only sends the
//! task down a recovery path below. WAL is sequential, so a later durable commit of the same
//! worker also makes its earlier asynchronous ones durable.
//!
//! A job, per delivery (`worker/src/job.rs`). Steps 1, 3 and 6 go through the worker's batchers
//! (`worker/src/batches.rs`), step 7 through `marks.rs` (the marks of 50 ms, one statement, no job
//! waiting for it): the jobs at the same step share one statement (`WHERE task_id =
//! ANY(…)`, an `UPDATE … FROM unnest(…)` for results, one XACK and one XDEL for many ids), one
//! commit and one round trip. Hashes run one per CPU, whatever `WORKER_CONCURRENCY` is, except
//! the large MD5-only files, which all share the CPUs' SIMD lanes (`lanes.rs`).
//!
//! 1. **claim**: `UPDATE … SET status='processing', attempts+1, worker=me, lease_until=now()+CLAIM_IDLE
//!    WHERE status='queued' OR (status='processing' AND lease_until < now())`. If nothing is updated
//!    the task is finished (then only the log and the ack may be missing), held by a live worker, or
//!    unknown: see below.
//! 2. **hash** on a blocking thread; a heartbeat every third of `CLAIM_IDLE_MS` extends the lease and
//!    `XCLAIM … JUSTID`s the entry so its idle time restarts: a long hash is never taken over while
//!    its worker lives.
//! 3. **commit the result** `WHERE status='processing' AND worker=me`: a worker that stalled past
//!    its lease and was replaced records nothing.
//! 4. **append the log line** under the in-process mutex and the `fcntl` lock, with one `write`, then
//!    `fdatasync`; a torn last line (a crash mid-write) is cut off first. Appends are group-committed:
//!    each process's log writer thread takes every line that arrived while it was flushing as one
//!    batch (one lock, one `write`, one `fdatasync`), and each job continues only once its own line
//!    is on disk (`results_log::tests::concurrent_appends_share_flushes_and_each_line_is_written_once`). If an attempt fails (the
//!    flush can fail after the write went through, leaving the file's content unknown), every later
//!    attempt opens the file afresh and searches it for the task's line before writing; a line it
//!    finds is flushed again before it counts. A first delivery that stalls between steps 3 and 4
//!    while a redelivery logs the task (below) writes nothing: each writer reads the lines others
//!    appended since its own last write and drops a line whose task is among them (`results_log`).
//! 5. **delete the upload**, 6. **XACK + XDEL** (the stream only holds live entries), 7. **record
//!    `logged_at`** (asynchronous commit). A redelivered task that is finished and marked only
//!    deletes the file and acks; a finished task without the mark (a crash before step 7, or the
//!    mark lost) is re-enqueued by the sweeper and takes the log-search path below.
//!
//! A quick job (`quick.rs`: at most 1 MiB, MD5 alone, nothing expected; its first delivery only)
//! hashes first and does steps 1 and 3 in one statement, `WHERE status='queued'` and the row is
//! what the job said; anything else (a missing file, a cancel, another worker's claim) sends it
//! through the steps above. Its worker dying before that statement leaves the row `queued` and
//! the entry pending: the takeover's claim counts that try as an attempt too.
//!
//! Rotation (`LOG_MAX_BYTES`, SIGHUP) renames the locked file to `<LOG_FILE>.<UTC timestamp>` under
//! both locks; a writer that waited for the lock checks that the file it locked is still the one at
//! `LOG_FILE` (same inode) and otherwise locks the new one, so no line goes to a rotated file after
//! its rotation. The log search goes on into the rotated files, newest first, while a file does not
//! reach back to the task's `finished_at`.
//!
//! Recovery: a worker that dies leaves its entry pending; another worker's `XAUTOCLAIM` (past
//! `CLAIM_IDLE_MS`) redelivers it. Redis scans at most 10 × COUNT pending entries per call, so each
//! worker follows the cursor Redis returns across calls and rounds, wrapping at the end: a dead
//! worker's entry behind any number of live workers' entries is reached within a round or two. If the row is still `processing` with an expired lease, the
//! new worker claims it and starts over. If the row is finished but `logged_at` is null, the crash
//! came between steps 3 and 7: the new worker searches the log backwards, under the lock, as far as
//! the row's `finished_at` (less 5 minutes of clock skew allowance between hosts), and appends only if
//! the task has no line. Lines are appended under the lock in time order, so the search is short.
//! A task whose attempts (its claims, and a quick try a takeover found unrecorded) pass
//! `MAX_DELIVERIES` is marked `failed`, logged once, copied to
//! `<JOBS_STREAM>:dead` and acknowledged; the copy is made by a script that also sets a marker key
//! (`<JOBS_STREAM>:dead:lettered:<task id>`, kept 7 days), so a retry or a crash and redelivery
//! never adds a second copy. A missing or unreadable file ends the task `failed` with a
//! clear error on the first attempt.
//!
//! The sweeper (every `SWEEP_INTERVAL_MS`, one worker at a time through a Redis `SET NX PX` turn)
//! lists unlogged tasks that are `queued` for longer than an interval, `processing` past their lease,
//! or finished but unlogged for longer than an interval, and XADDs those whose id is not in the
//! stream. This covers an api XADD that failed (Redis down at upload time) and a Redis that lost its
//! data; a worker that reads `NOGROUP` recreates the group from `0` with `MKSTREAM`.
//!
//! Proved by (all in `integration-tests/tests/it/`, run by the test command):
//!
//! | guarantee | test |
//! |---|---|
//! | a dead worker's job is finished by another | `faults::a_worker_killed_mid_hash_has_its_job_finished_by_another` |
//! | a crash at any step (after claim, hash, result commit, log append, before XACK) leaves one result and one line | `faults::a_worker_killed_at_any_step_boundary_leaves_one_result_and_one_line` (crash points from the `fault-injection` build `md5-worker-faulty`) |
//! | a stalled worker replaced past its lease records nothing | `faults::a_stalled_worker_that_wakes_after_a_takeover_records_nothing` |
//! | Redis losing its data (FLUSHALL, restart without persistence) loses no task | `faults::redis_flushall_in_the_middle_of_a_load_loses_nothing`, `faults::a_redis_restart_without_persistence_mid_load_loses_nothing` |
//! | Redis down at upload time: 202, and the job runs when it is back | `faults::uploads_while_redis_is_down_get_202_and_run_once_it_is_back` |
//! | Postgres crashing: 503 promptly, accepted uploads all finish | `faults::postgres_crashing_mid_load_loses_no_accepted_upload` |
//! | poison jobs end `failed` after `MAX_DELIVERIES`, dead-lettered | `faults::a_job_that_crashes_every_worker_is_failed_after_max_deliveries_and_dead_lettered` |
//! | a job given up, then crashed on before its result, is dead-lettered once | `exactly_once::a_job_given_up_then_crashed_on_is_dead_lettered_once` |
//! | a worker stalled between its commit and its log line while a redelivery logged the task adds no second line | `exactly_once::a_worker_stalled_between_its_commit_and_its_log_line_adds_none_after_a_redelivery_logged_it` (fault `FAULT_PAUSE_AFTER_COMMIT_MS`), `results_log::tests::a_first_delivery_appending_after_a_redelivery_logged_its_task_writes_nothing` |
//! | a flush that fails after its write leaves one line, not two | `exactly_once::a_flush_that_fails_after_the_write_still_leaves_one_line` (fault `FAULT_FAIL_FLUSH_ONCE`) |
//! | a dead worker's entry behind 150 live ones is taken over within 3 × `CLAIM_IDLE_MS` | `exactly_once::a_dead_workers_entry_behind_many_live_ones_is_taken_over_within_three_idle_times` |
//! | rotation by size and by SIGHUP, during kills, keeps one line per task across the files | `exactly_once::rotation_by_size_and_by_sighup_during_kills_keeps_one_line_per_task_across_files`, `results_log::tests::the_search_goes_on_into_rotated_files_and_rotation_keeps_every_line` |
//! | a SIGHUP (logrotate's) to a worker still starting does not kill it; it rotates once running | `faults::a_sighup_while_the_worker_waits_for_postgres_rotates_once_it_runs_instead_of_killing_it` |
//! | every MD5 path the CPU has equals md-5, files joining and leaving lanes mid-flight | `lanes::tests::every_path_equals_md5_for_messages_fed_in_random_slices` (property test), `lanes::tests::files_arriving_while_others_hash_refill_the_lanes_and_each_gets_its_md5`, `lanes::a_worker_forced_onto_each_path_hashes_more_files_than_lanes_and_reports_them` |
//! | a client that leaves between its last byte and the 202 leaves no row without its file | `hostile::uploads_whose_client_leaves_after_the_last_byte_end_done_or_leave_nothing` |
//! | jobs and uploads at the same step share one statement, each answered as if alone (a task listed twice, a task another worker holds) | `batching::a_backlog_is_claimed_recorded_marked_and_acknowledged_in_shared_statements`, `batching::concurrent_uploads_share_the_folder_fsync_the_insert_and_the_xadd`, `batching::a_shared_statement_answers_each_job_as_if_it_ran_alone` |
//! | one `Idempotency-Key`, one task: repeats (sequential and concurrent) get the original and store nothing; another file is 422; a repeat mid-upload 409; a failed upload frees the key; an expired key is reusable | `idempotency::*` |
//! | a client whose answers are lost, or whose api is killed and restarted mid-run, makes one task per file | `client::uploads_whose_answers_are_lost_are_retried_under_their_key_and_make_one_task_each`, `client::an_api_killed_and_restarted_mid_run_costs_no_file_a_second_task` |
//! | a quick job records its claim and result only while its row is `queued` and what the job said (not resized, cancelled, held by another, nor asking other digests); a takeover's claim counts the quick try | `batching::a_quick_job_is_claimed_by_its_result_only_while_its_row_is_what_the_job_said`, `faults::a_job_that_crashes_every_worker_is_failed_after_max_deliveries_and_dead_lettered` |
//! | a missing file ends `failed` on the first attempt | `v1::a_file_deleted_before_its_job_runs_ends_failed_without_looping` |
//! | SIGTERM loses nothing and exits 0 (worker and api) | `faults::sigterm_during_a_load_loses_no_job_and_exits_0` |
//! | all of it at once | `faults::a_soak_under_random_kills_redis_loss_and_postgres_crashes_loses_nothing` (2,000 uploads) |
//! | the lock keeps concurrent writers' lines whole | `log_writers::*` (with a lock-less control the check catches) |
//! | torn tail cut; an already-logged task not logged again | unit tests in `worker/src/results_log/tests.rs` |
//!
//! Each fault test runs its own Postgres (`initdb`, as the `postgres` user when root) and Redis on
//! free ports, the api and workers as processes, and ends with one checker
//! (`integration-tests/src/fault.rs`, `FaultEnv::check`) that prints lost / wrong / duplicated /
//! unlogged / stuck / pending / stray-file counts, all of which must be 0.

pub mod batches;
pub mod config;
pub mod context;
pub mod direct_read;
pub mod fault;
pub mod follow;
pub mod hash;
pub mod job;
pub mod lanes;
pub mod maintenance;
pub mod marks;
pub mod progress;
pub mod quick;
pub mod read_loop;
pub mod results_log;
pub mod running;
pub mod stream;
pub mod volume;
pub mod webhooks;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::Semaphore;

use batches::Batches;
pub use config::Config;
use context::JobContext;
use maintenance::Maintenance;
use maintenance::cancellations::StopCancelled;
pub use maintenance::log_rotation::Hangups;
use maintenance::log_rotation::RotateOnHangup;
use maintenance::metrics_server::MetricsServer;
use maintenance::sweeper::Sweeper;
use results_log::ResultsLog;
use stream::Jobs;

/// The runtime a worker process runs on: one thread for every job's bookkeeping (reads from the
/// stream, statements, acknowledgements, the log's group commits), while the work that takes a
/// core has threads of its own: reads and hashes of files over 64 KiB (`crate::volume`, the
/// lanes' threads, a follower's reads), the log's appends (`results_log`), blocking file calls.
/// A job's bookkeeping is a few round trips, each a wake-up; on one thread, a task woken by
/// another runs where it was woken instead of waking a second runtime thread. With a runtime
/// thread a core (tokio's default), on 2 cores at full speed with 1 KiB files, the workers took
/// 0.20–0.21 ms of CPU a job against 0.16–0.20 ms (median 0.18) on one thread, and made 15
/// voluntary context switches a job against 9 (BENCHMARKS.md, issue 36, step 18). Replicas are
/// how the service scales past what one such thread carries.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

/// Runs the worker until `shutdown` completes, then stops reading, lets in-flight jobs finish
/// for at most `SHUTDOWN_GRACE_SECONDS`, and returns. Jobs still running then stay pending in
/// the group and are taken over by another worker. Every SIGHUP `hangups` heard rotates the
/// results log.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    hangups: Hangups,
) -> anyhow::Result<()> {
    let consumer = config.consumer();
    // One shutdown token for the whole worker, watching the signal from the start: a SIGTERM
    // while Postgres is not up yet ends the start-up, too.
    let stop = shared::telemetry::watch_shutdown(shutdown);
    // Before waiting for anything: a forced MD5_SIMD this CPU cannot run fails the start at once.
    let engine = lanes::Engine::select(config.md5_simd).map_err(anyhow::Error::msg)?;
    if !shared::db::run_migrations_unless_stopped(&config.database, "md5-worker", &stop).await? {
        return Ok(());
    }
    let concurrency = config.concurrency();
    // Install the recorder before any job records a metric.
    let _ = shared::telemetry::metrics();
    // Jobs share their statements (`batches`), so the connections a process needs do not grow
    // with its concurrency: `DB_POOL_SIZE` in all (at least 2), split between the two pools.
    let (durable_size, bookkeeping_size) = split_pool_size(config.database.db_pool_size);
    let pool = shared::db::build_pool(&config.database.with_pool_size(durable_size), "md5-worker")?;
    let bookkeeping =
        shared::db::build_bookkeeping_pool(&config.database.with_pool_size(bookkeeping_size), "md5-worker")?;
    let block = Duration::from_millis(config.read_block_ms);
    let jobs = Jobs::new(&config.redis.redis_url, &config.stream, consumer.clone(), block)?;
    let log = ResultsLog::open(&config.log_file)
        .with_context(|| format!("cannot create the folder of LOG_FILE {}", config.log_file.display()))?
        .with_max_bytes(config.log_max_bytes);
    #[cfg(feature = "fault-injection")]
    if config.fault_fail_flush_once {
        log.fail_next_flush();
    }
    let batches = Batches::spawn(&pool, &bookkeeping, &jobs.commands(), &consumer, config.claim_idle());
    let marks = marks::Marks::spawn(bookkeeping.clone());
    let hash_threads = std::thread::available_parallelism().map_or(2, usize::from);
    let lanes = lanes::Lanes::start(engine, hash_threads).context("cannot start the MD5 threads")?;
    tracing::info!(
        md5.path = engine.path().name(),
        md5.lanes = engine.lanes(),
        md5.files_per_thread = engine.width(),
        md5.threads = hash_threads,
        "MD5 lanes ready"
    );
    metrics::gauge!("md5_lanes", "path" => engine.path().name()).set(engine.lanes() as f64);
    metrics::gauge!("md5_lanes_in_use").set(0.0);
    // The counters an alert watches are shown from the start, at zero: a rate or an increase
    // then sees their first events (a series that appears at 1 shows no increase).
    for status in ["done", "failed"] {
        metrics::counter!("md5_tasks_finished_total", "status" => status).absolute(0);
    }
    for outcome in ["delivered", "failed", "gave_up", "gone"] {
        metrics::counter!("md5_webhook_attempts_total", "outcome" => outcome).absolute(0);
    }
    for counter in ["md5_jobs_dead_lettered_total", "md5_log_flushes_total", "md5_hashed_bytes_total"] {
        metrics::counter!(counter).absolute(0);
    }
    let ctx = Arc::new(JobContext {
        config: config.clone(),
        pool,
        bookkeeping,
        jobs: jobs.commands(),
        batches,
        marks,
        hashing: Arc::new(Semaphore::new(hash_threads)),
        following: Arc::new(Semaphore::new(crate::follow::most_followed(config.concurrency()))),
        lanes,
        running: running::RunningHashes::default(),
        log,
        volume: volume::Volume::new(&config.storage.upload_dir),
        consumer: consumer.clone(),
        shutdown: stop.clone(),
    });
    let metrics_server = match config.metrics_addr {
        Some(addr) => Some(MetricsServer::bind(addr).await?),
        None => None,
    };
    tracing::info!(consumer = %consumer, concurrency, stream = %jobs.stream, group = %jobs.group, "md5-worker started");
    let mut maintenance = Maintenance::new(stop.clone());
    // Cancellations and expiries from Postgres, so that such a task's hash stops wherever it runs.
    let (events, listener) = shared::events::TaskEvents::listen(
        config.database.database_url.clone(),
        shared::events::Channels::Stops,
    );
    maintenance.start(listener);
    maintenance.start(StopCancelled::new(ctx.clone(), &events));
    maintenance.start(Sweeper { ctx: ctx.clone() });
    maintenance.start(RotateOnHangup { log: ctx.log.clone(), hangups });
    if let Some(server) = metrics_server {
        maintenance.start(server);
    }
    let retry_schedule: Vec<Duration> =
        config.webhook_retry_schedule.iter().map(|s| Duration::from_secs(*s)).collect();
    if let Some(webhooks) = webhooks::DeliverWebhooks::new(
        &config.webhook_urls,
        &config.webhook_secret,
        &retry_schedule,
        ctx.pool.clone(),
    )? {
        maintenance.start(webhooks);
    }

    let mut running = read_loop::run(ctx.clone(), jobs).await?;

    let grace = Duration::from_secs(config.shutdown_grace_seconds);
    tracing::info!(jobs.in_flight = running.len(), "stopping: finishing in-flight jobs");
    let drained = tokio::time::timeout(grace, async { while running.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            jobs.in_flight = running.len(),
            "grace period over; unfinished jobs are left to other workers"
        );
        running.abort_all();
    }
    ctx.marks.close().await;
    maintenance.stop().await;
    tracing::info!("md5-worker stopped");
    Ok(())
}

/// The durable and the bookkeeping pool's sizes for `DB_POOL_SIZE` connections in all: half
/// each, at least one each.
fn split_pool_size(total: u32) -> (u32, u32) {
    let durable = (total / 2).max(1);
    (durable, total.saturating_sub(durable).max(1))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_worker_runtime_has_one_thread_and_blocking_work_does_not_hold_it() {
        let runtime = super::runtime().unwrap();
        assert_eq!(runtime.handle().runtime_flavor(), tokio::runtime::RuntimeFlavor::CurrentThread);
        let caller = std::thread::current().id();
        runtime.block_on(async move {
            let release = std::sync::Arc::new(std::sync::Barrier::new(2));
            let held = release.clone();
            let blocking = tokio::task::spawn_blocking(move || {
                held.wait();
                std::thread::current().id()
            });
            // The runtime's one thread (the caller's) runs other tasks while the blocking call
            // waits, held until after they ran.
            let task = tokio::spawn(async { std::thread::current().id() }).await.unwrap();
            assert_eq!(task, caller);
            release.wait();
            assert_ne!(blocking.await.unwrap(), caller);
        });
    }
}
