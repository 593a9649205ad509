//! The state every handler shares: cheap to clone, everything behind `Arc`s.

use std::sync::Arc;

use crate::commits::Commits;
use crate::config::Config;
use crate::database::Database;
use crate::notify::FinishedTasks;
use crate::queue::JobQueue;
use crate::slots::UploadSlots;
use crate::storage::Storage;
use crate::task_counts::TaskCounts;

/// Shared handler state.
#[derive(Clone)]
pub struct AppState {
    /// Settings, parsed once.
    pub config: Arc<Config>,
    /// Postgres, every use bounded by `DB_TIMEOUT_MS`.
    pub db: Database,
    /// Tasks by status for `/metrics`, cached.
    pub task_counts: TaskCounts,
    /// Where uploads are stored: partial files, and their batched durable renames.
    pub storage: Storage,
    /// The group commit of finished uploads' rows.
    pub commits: Commits,
    /// Where uploads are announced to the workers.
    pub queue: JobQueue,
    /// Wakes `?wait=` requests when a task finishes.
    pub finished: FinishedTasks,
    /// One slot per upload being streamed: `MAX_CONCURRENT_UPLOADS` in all,
    /// `MAX_UPLOADS_PER_CLIENT` per client address.
    pub upload_slots: UploadSlots,
}
