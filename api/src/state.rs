//! The state every handler shares: one `Arc`, so that the clones axum makes of it for every
//! handler and middleware of a request cost one atomic increment each.

use std::sync::Arc;

use crate::commits::Commits;
use crate::config::Config;
use crate::database::Database;
use crate::queue::JobQueue;
use crate::slots::ClientSlots;
use crate::storage::Storage;
use crate::task_counts::TaskCounts;
use crate::task_feed::TaskFeed;

/// Shared handler state; its parts are reached through `Deref` ([`Shared`]).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// The state holding `shared`.
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct Shared {
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
    /// Status changes and progress of every task, pushed by Postgres: wakes `?wait=` requests,
    /// feeds event streams, and holds the progress `GET` shows.
    pub feed: TaskFeed,
    /// One slot per upload being streamed: `MAX_CONCURRENT_UPLOADS` in all,
    /// `MAX_UPLOADS_PER_CLIENT` per client address.
    pub upload_slots: ClientSlots,
    /// One slot per open event stream: `MAX_EVENT_STREAMS` in all,
    /// `MAX_EVENT_STREAMS_PER_CLIENT` per client address.
    pub event_streams: ClientSlots,
    /// Tasks created per second, per client.
    pub creation_rate: std::sync::Arc<crate::creation_rate::CreationRate>,
    /// The API keys, and each client's quotas.
    pub keys: crate::keys::Keys,
    /// `?wait=` long-polls held (only the per-client share is bounded here; connections bound the total).
    pub long_polls: ClientSlots,
}
