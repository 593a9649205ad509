//! What every job of a worker process shares, beside its configuration (as the api's
//! `AppState`).

use std::sync::Arc;

use shared::db::Pool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::batches::Batches;
use crate::config::Config;
use crate::lanes::Lanes;
use crate::marks::Marks;
use crate::results_log::ResultsLog;
use crate::running::RunningHashes;
use crate::stream::JobsHandle;
use crate::volume::Volume;

/// What every job of a worker process shares.
pub struct JobContext {
    /// Settings.
    pub config: Config,
    /// Postgres, for durable state: the result.
    pub pool: Pool,
    /// Postgres with asynchronous commit, for state rebuilt after a crash: claims, leases and
    /// the "logged" mark (see `shared::db::build_bookkeeping_pool`).
    pub bookkeeping: Pool,
    /// Redis commands.
    pub jobs: JobsHandle,
    /// The group commits of claims, results and acknowledgements.
    pub batches: Batches,
    /// The "logged" marks, written off the jobs' path.
    pub marks: Marks,
    /// Hashes running at once (one per CPU), whatever the number of jobs in flight.
    pub hashing: Arc<Semaphore>,
    /// Uploads this process follows at once (`crate::follow::most_followed`), so uploads still
    /// arriving never hold every job slot.
    pub following: Arc<Semaphore>,
    /// The multi-buffer MD5 threads, for large files that need MD5 alone.
    pub lanes: Lanes,
    /// The hashes running now, with their progress; a cancelled task's is stopped through it.
    pub running: RunningHashes,
    /// The results log.
    pub log: ResultsLog,
    /// The upload volume, for its small file operations.
    pub volume: Volume,
    /// This process's consumer name.
    pub consumer: String,
    /// Cancelled when the worker is shutting down: in-place retries stop early.
    pub shutdown: CancellationToken,
}
