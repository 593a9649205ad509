//! `md5-worker`: reads jobs from the Redis consumer group, hashes uploads, records results in
//! Postgres and appends one line per task to the shared results log.
//!
//! It never speaks HTTP to clients and never writes an upload: that is the api's job.
//! **Only this crate reads the stream.**

pub mod batches;
pub mod config;
pub mod context;
pub mod fault;
pub mod hash;
pub mod job;
pub mod lanes;
pub mod maintenance;
pub mod read_loop;
pub mod results_log;
pub mod running;
pub mod stream;
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
    let ctx = Arc::new(JobContext {
        config: config.clone(),
        pool,
        bookkeeping,
        jobs: jobs.commands(),
        batches,
        hashing: Arc::new(Semaphore::new(hash_threads)),
        lanes,
        running: running::RunningHashes::default(),
        log,
        consumer: consumer.clone(),
        shutdown: stop.clone(),
    });
    let metrics_server = match config.metrics_addr {
        Some(addr) => Some(MetricsServer::bind(addr).await?),
        None => None,
    };
    tracing::info!(consumer = %consumer, concurrency, stream = %jobs.stream, group = %jobs.group, "md5-worker started");
    let mut maintenance = Maintenance::new(stop.clone());
    // Status changes from Postgres, so that a cancelled task's hash stops wherever it runs.
    let (events, listener) = shared::events::TaskEvents::listen(
        config.database.database_url.clone(),
        shared::events::Channels::Changes,
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
