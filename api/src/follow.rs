//! The api's side of following an upload (the protocol is `shared::follow`): a large upload's
//! flushed bytes are announced as they land, so a worker hashes them while the rest arrives.
//!
//! Every call is best effort and bounded: an announcement Redis does not take leaves the worker
//! idle (it lets go, see `shared::follow::IDLE_RELEASE`), and a completion it does not take is
//! followed by an ordinary job, so a lost announcement costs time, never a result.

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionManager;
use shared::JobMessage;
use shared::follow::{self, ABORT_SCRIPT, ANNOUNCE_SCRIPT, COMPLETE_SCRIPT};
use uuid::Uuid;

use crate::queue::JobQueue;
use crate::state::AppState;
use crate::storage::{PartWriter, StorageError};

static ANNOUNCE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(ANNOUNCE_SCRIPT));
static COMPLETE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(COMPLETE_SCRIPT));
static ABORT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(ABORT_SCRIPT));

/// Bound on one announcement: the upload does not wait longer for Redis.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(1);

/// Where one upload's announcements go: cheap to clone into a flush's task.
#[derive(Clone)]
struct Keys {
    connection: ConnectionManager,
    stream: String,
    job: JobMessage,
    algorithms: String,
}

impl Keys {
    /// Runs [`ANNOUNCE_SCRIPT`] for `bytes`.
    async fn announce(&self, bytes: u64) -> Result<(), String> {
        let mut invocation = ANNOUNCE.prepare_invoke();
        invocation
            .key(follow::meta_key(&self.stream, self.job.task_id))
            .key(follow::bytes_key(&self.stream, self.job.task_id))
            .key(&self.stream)
            .arg(bytes)
            .arg(&self.algorithms)
            .arg(follow::TTL.as_secs());
        for (field, value) in self.job.to_fields() {
            invocation.arg(field).arg(value);
        }
        if self.invoke(&invocation).await? == 2 {
            metrics::counter!("md5_followed_uploads_total").increment(1);
        }
        Ok(())
    }

    /// Runs `script` on the upload's two keys with `args` then the TTL.
    async fn end(&self, script: &redis::Script, args: &[u64]) -> Result<i64, String> {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(follow::meta_key(&self.stream, self.job.task_id))
            .key(follow::bytes_key(&self.stream, self.job.task_id));
        for arg in args {
            invocation.arg(*arg);
        }
        invocation.arg(follow::TTL.as_secs());
        self.invoke(&invocation).await
    }

    /// One script call, bounded by [`ANNOUNCE_TIMEOUT`].
    async fn invoke(&self, invocation: &redis::ScriptInvocation<'_>) -> Result<i64, String> {
        let mut connection = self.connection.clone();
        match tokio::time::timeout(ANNOUNCE_TIMEOUT, invocation.invoke_async::<i64>(&mut connection)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err("timed out".to_owned()),
        }
    }

    /// Tells a follower the upload ended without completing.
    async fn abort(&self) {
        if self.end(&ABORT, &[]).await.is_err() {
            tracing::debug!(task.id = %self.job.task_id, "cannot announce an upload's end; its follower lets go once idle");
        }
    }
}

/// The announcements of one upload.
pub struct Announcer {
    keys: Keys,
    /// The upload's length, if declared.
    declared: Option<u64>,
    /// Announcing starts once the upload is known to be at least this large.
    threshold: u64,
    /// Announcing: the upload is large enough (and Redis answered so far).
    started: bool,
    /// An announcement failed: no more are sent, and the completion adds an ordinary job.
    broken: bool,
    /// Completed (or handed over): nothing to abort on drop.
    ended: bool,
    /// Whether dropping it unended tells the follower the upload is over (a one-shot upload);
    /// a resumable upload outlives a failed append.
    abort_on_drop: bool,
}

impl Announcer {
    /// The announcer of task `task_id`'s upload, of `declared` bytes if known; it announces
    /// nothing until the upload reaches `HASH_WHILE_UPLOADING_ABOVE_BYTES`.
    pub fn new(
        state: &AppState,
        task_id: Uuid,
        request_id: Option<String>,
        algorithms: &[shared::Algorithm],
        declared: Option<u64>,
        abort_on_drop: bool,
    ) -> Self {
        let (connection, stream) = state.queue.connection();
        let threshold = match state.config.hash_while_uploading_above_bytes {
            0 => u64::MAX,
            bytes => bytes,
        };
        Announcer {
            keys: Keys {
                connection,
                stream,
                job: JobMessage { follow: true, ..JobMessage::new(task_id, request_id) },
                algorithms: follow::algorithms_field(algorithms),
            },
            threshold,
            declared,
            started: false,
            broken: false,
            ended: false,
            abort_on_drop,
        }
    }

    /// Whether the upload is announced (large enough, and Redis took every announcement).
    pub fn following(&self) -> bool {
        self.started && !self.broken
    }

    /// After a write of a one-shot upload: starts announcing once the upload is known to be
    /// large, and starts a background flush of `writer` every
    /// `shared::follow::ANNOUNCE_EVERY_BYTES`, announced as soon as it finishes.
    pub async fn after_write(&mut self, writer: &mut PartWriter) -> Result<(), StorageError> {
        if self.broken || self.ended {
            return Ok(());
        }
        if !self.started {
            let known = self.declared.unwrap_or(0).max(writer.written());
            if known < self.threshold {
                return Ok(());
            }
            self.started = true;
            self.announce(0).await;
        }
        if let Some(flush) = writer.checkpoint(follow::ANNOUNCE_EVERY_BYTES) {
            let keys = self.keys.clone();
            tokio::spawn(async move {
                if let Ok(Ok(durable)) = flush.await {
                    let _ = keys.announce(durable).await;
                }
            });
        }
        Ok(())
    }

    /// The body paused: what it sent is written, flushed and announced now, so the worker is
    /// not left waiting on bytes that are already here.
    pub async fn paused(&mut self, writer: &mut PartWriter) -> Result<(), StorageError> {
        if self.following() && !self.ended {
            writer.sync().await?;
            self.announce(writer.written()).await;
        }
        Ok(())
    }

    /// Announces that the first `bytes` of the file are written and flushed (starting to
    /// announce if the upload is large enough).
    pub async fn announce(&mut self, bytes: u64) {
        if self.broken || self.ended {
            return;
        }
        if !self.started && self.declared.unwrap_or(0).max(bytes) < self.threshold {
            return;
        }
        self.started = true;
        if let Err(err) = self.keys.announce(bytes).await {
            self.break_off(&err);
        }
    }

    fn break_off(&mut self, err: &dyn std::fmt::Display) {
        tracing::warn!(task.id = %self.keys.job.task_id, error = %err, "cannot announce the upload's bytes; it will be hashed once stored");
        self.broken = true;
    }

    /// The upload is complete at `size` bytes, durable, its row committed: true when a follower
    /// takes the task (no ordinary job is needed), false when the caller must enqueue one.
    pub async fn complete(mut self, size: u64) -> bool {
        self.ended = true;
        // A resumable upload's earlier appends may have started a follower this append's
        // announcer never saw: any upload large enough asks.
        let large = self.declared.unwrap_or(0).max(size) >= self.threshold;
        if self.broken || !(self.started || large) {
            return false;
        }
        match self.keys.end(&COMPLETE, &[size]).await {
            Ok(taken) => taken == 1,
            Err(err) => {
                tracing::warn!(task.id = %self.keys.job.task_id, error = %err, "cannot announce the upload's completion; enqueueing its job");
                false
            }
        }
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        if self.ended || !self.started || self.broken || !self.abort_on_drop {
            return;
        }
        let keys = self.keys.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { keys.abort().await });
        }
    }
}

/// Tells a follower of resumable upload `task_id` that it ended without completing (expired or
/// terminated); nothing happens if it was never followed.
pub async fn abort(queue: &JobQueue, task_id: Uuid) {
    let (connection, stream) = queue.connection();
    let job = JobMessage { follow: true, ..JobMessage::new(task_id, None) };
    Keys { connection, stream, job, algorithms: String::new() }.abort().await;
}
