//! Resumable uploads, whatever the protocol: one upload's life from creation through appends to
//! completion (its task `queued`), expiry or termination. [`tus`] and [`ietf`] map their
//! headers and statuses onto these operations; the routes live in `routes/uploads.rs`.
//!
//! **States** (the task's status, and the `md5_uploads` row while it is open):
//! `uploading` (row: durable length, declared length, expiry) → `queued` once the last byte is
//! durable (row deleted in the same transaction), then as any task; or → `expired` (the janitor,
//! [`expiry`]) or `cancelled` (a `DELETE`), with the file removed and no log line.
//!
//! **Who may touch the file**: only the holder of its lock ([`crate::storage::resumable`]): an
//! append, a termination, the expiry janitor; once queued, the worker that hashes it (which
//! removes it, as for every upload). An append records the durable length in Postgres only after
//! `fdatasync`, so an offset once answered never goes backwards; bytes past the recorded length
//! (an api killed mid-append) are cut off by the next append.

pub mod checksum;
mod errors;
pub mod expiry;
pub mod headers;
pub mod ietf;
pub mod tus;

use std::time::{Duration, Instant};

use axum::body::Body;
use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use uuid::Uuid;

use crate::body::{self, FormHead};
use crate::client_id::ClientId;
use crate::error::ApiError;
use crate::follow::Announcer;
use crate::intake;
use crate::keys::Requester;
use crate::state::AppState;
use crate::storage::resumable::{LockError, UploadLock};
use checksum::Checksum;
pub use errors::{UploadError, UploadState};
use shared::models::{NewTask, UploadRow};
use shared::{Task, TaskStatus, uploads};

/// A long append records its durable length at least this often (so an api killed mid-append
/// loses at most this much of the client's work)…
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);
/// …or every this many bytes, whichever comes first.
pub const CHECKPOINT_BYTES: u64 = 256 * 1024 * 1024;

/// A new upload, as a creation request describes it.
pub struct NewUpload {
    /// The declared length; `None` when deferred.
    pub length: Option<u64>,
    /// tus `Upload-Metadata` as sent.
    pub metadata: Option<String>,
    /// The file name, sanitized.
    pub file_name: String,
    /// The `x-request-id` of the creation.
    pub request_id: Option<String>,
    /// Its client (for the per-client bounds on open uploads) and the key it belongs to.
    pub who: Requester,
    /// The digests its task asks for and expects.
    pub digests: shared::DigestRequest,
}

/// When an append ends the upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// When the upload reaches its declared length (tus).
    AtLength,
    /// As the request says (the IETF draft's `Upload-Complete`): `true` makes this append the
    /// last, whatever length it reaches; `false` still completes an upload that reaches its
    /// declared length.
    Declared(bool),
}

/// An append: the body and what the request says about it.
pub struct Append {
    /// `Upload-Offset`.
    pub offset: u64,
    /// The upload's length, if the request states it.
    pub length: Option<u64>,
    /// When the upload ends.
    pub completion: Completion,
    /// `Upload-Checksum`, if any.
    pub checksum: Option<Checksum>,
    /// The bytes.
    pub body: Body,
    /// Whether the client waits for `100 Continue` before sending them (see [`body::refuse`]).
    pub expects_continue: bool,
    /// The client, for upload slots.
    pub client: Option<ClientId>,
    /// The `x-request-id`.
    pub request_id: Option<String>,
}

/// What an append left.
#[derive(Debug)]
pub struct Appended {
    /// The upload's durable length now.
    pub offset: u64,
    /// Its declared length, if known.
    pub length: Option<u64>,
    /// `Some` (the queued task) when this append completed the upload.
    pub completed: Option<Task>,
    /// When the upload expires, while open.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Creates an upload: its empty file and its `uploading` task; returns the task, the row, and
/// the file's lock (for a creation that carries the first bytes).
pub async fn create(state: &AppState, new: NewUpload) -> Result<(Task, UploadRow, UploadLock), UploadError> {
    let limit = state.config.max_upload_bytes;
    if new.length.is_some_and(|length| length > limit) {
        return Err(ApiError::payload_too_large(limit).into());
    }
    intake::admit_creation(state, new.who.client)?;
    let quotas = state.keys.quotas(new.who.client);
    let bytes_limit = quotas.open_upload_bytes;
    // A deferred length counts as the largest it may become (as `uploads::count_open` counts it).
    let counted = new.length.unwrap_or(state.config.max_upload_bytes);
    if new.who.client.is_some() && counted > bytes_limit {
        return Err(ApiError::payload_too_large_for_client(counted, bytes_limit).into());
    }
    let client = new.who.client.map(|client| client.to_string());
    state.storage.check_free_space()?;
    let task_id = Uuid::now_v7();
    let lock = state.storage.create_upload_file(task_id).await?;
    let length = new.length.map(i64::try_from).transpose().map_err(ApiError::internal)?;
    let expiry = state.config.upload_expiry();
    let created = state
        .db
        .write(async |conn| {
            let admitted = intake::admit_resumable(conn, &state.config, client.as_deref(), counted, &quotas);
            if let Some(refused) = admitted.await? {
                return Ok(Err(refused));
            }
            let task = NewTask {
                task_id,
                file_name: &new.file_name,
                size_bytes: length.unwrap_or(0),
                request_id: new.request_id.as_deref(),
                algorithms: new.digests.algorithm_names(),
                expected: new.digests.expected_json(),
                owner: new.who.scope.owner,
            };
            uploads::create(conn, &task, length, new.metadata.as_deref(), client.as_deref(), expiry)
                .await
                .map(Ok)
        })
        .await;
    match created {
        Ok(Err(refused)) => {
            // No place: nothing was inserted, and the file must not stay either.
            let _ = lock.remove().await;
            Err(refused.into())
        }
        Ok(Ok((task, upload))) => {
            metrics::counter!("md5_resumable_uploads_total", "event" => "created").increment(1);
            tracing::info!(task.id = %task_id, upload.length = ?new.length, "resumable upload created");
            Ok((task, upload, lock))
        }
        Err(err @ crate::database::DbError::CommitUnknown(_)) => {
            // The rows may exist: the file stays until that is settled.
            let state = state.clone();
            tokio::spawn(async move {
                if !intake::settle(&state, task_id).await {
                    let _ = lock.remove().await;
                }
            });
            Err(ApiError::commit_unknown(err).into())
        }
        Err(err) => {
            // No row: the file must not stay either.
            let _ = lock.remove().await;
            Err(err.into())
        }
    }
}

/// Where upload `task_id` stands.
pub async fn state(state: &AppState, task_id: Uuid) -> Result<UploadState, UploadError> {
    let found = state.db.run(async |conn| uploads::find(conn, task_id).await).await?;
    classify(found)
}

fn classify(found: Option<(Task, Option<UploadRow>)>) -> Result<UploadState, UploadError> {
    let (task, upload) = found.ok_or(UploadError::NotFound)?;
    match (task.status, upload) {
        (TaskStatus::Uploading, Some(upload)) => Ok(UploadState::Open { task, upload }),
        (TaskStatus::Expired | TaskStatus::Cancelled, _) => Err(UploadError::Gone(task.status)),
        (TaskStatus::Uploading, None) => Err(UploadError::Api(ApiError::internal(anyhow::anyhow!(
            "task {} is uploading but has no upload row",
            task.task_id
        )))),
        _ => Ok(UploadState::Complete { task }),
    }
}

/// Takes the upload's lock, telling a missing file of a finished upload from a busy one.
async fn lock(state: &AppState, task_id: Uuid) -> Result<UploadLock, UploadError> {
    match state.storage.lock_upload(task_id).await {
        Ok(lock) => Ok(lock),
        Err(LockError::Busy) => Err(UploadError::Busy),
        Err(LockError::Missing) => match self::state(state, task_id).await? {
            // Completed and hashed (the worker removed it), or never stored here.
            UploadState::Complete { task } => {
                Err(UploadError::Completed { length: u64::try_from(task.size_bytes).unwrap_or(0) })
            }
            UploadState::Open { .. } => Err(UploadError::Api(ApiError::internal(anyhow::anyhow!(
                "the file of open upload {task_id} is missing from UPLOAD_DIR"
            )))),
        },
        Err(LockError::Storage(err)) => Err(err.into()),
    }
}

/// Appends `append`'s body to upload `task_id` (holding `held`, the lock a creation took, or
/// taking it). The append runs to its end in a task of its own: a client that goes away
/// mid-body still gets what it sent recorded, up to the last durable byte.
pub async fn append(
    state: &AppState,
    task_id: Uuid,
    held: Option<UploadLock>,
    append: Append,
) -> Result<Appended, UploadError> {
    let locked = async {
        let slot = intake::admit(state, append.client)?;
        let lock = match held {
            Some(lock) => lock,
            None => lock(state, task_id).await?,
        };
        Ok::<_, UploadError>((slot, lock))
    };
    let (_slot, lock) = match locked.await {
        Ok(locked) => locked,
        Err(err) => {
            body::refuse(append.body, append.expects_continue, DRAIN_BYTES).await;
            return Err(err);
        }
    };
    let state = state.clone();
    tokio::spawn(async move { append_locked(&state, lock, append).await })
        .await
        .map_err(|err| UploadError::Api(ApiError::internal(anyhow::Error::new(err).context("append task"))))?
}

/// Most bytes of a refused append's body read (and dropped) before the answer, so that a small
/// request gets its answer rather than a connection reset (a socket closed with unread bytes
/// is reset).
const DRAIN_BYTES: usize = 64 * 1024;

async fn append_locked(state: &AppState, lock: UploadLock, append: Append) -> Result<Appended, UploadError> {
    let (length, offset, algorithms) = match check_append(state, &lock, append.offset, append.length).await {
        Ok(checked) => checked,
        Err(err) => {
            body::refuse(append.body, append.expects_continue, DRAIN_BYTES).await;
            return Err(err);
        }
    };
    let task_id = lock.task_id();
    let limit = state.config.max_upload_bytes;

    let mut writer = lock.writer_at(&state.storage, offset).await?;
    // Each recorded length is announced, so a large upload is hashed as it arrives.
    let mut follow = Announcer::new(state, task_id, append.request_id.clone(), &algorithms, length, false);
    let mut hasher = append.checksum.as_ref().map(Checksum::hasher);
    let body =
        body::guard(append.body.into_data_stream(), state.config.body_bounds(), FormHead::new(u64::MAX));
    let mut body = std::pin::pin!(body);
    let mut received = offset;
    let mut recorded = offset;
    let mut checkpoint_at = Instant::now() + CHECKPOINT_INTERVAL;
    let read: Result<(), UploadError> = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(crate::form::body_error)?;
            let after = received + chunk.len() as u64;
            match length {
                Some(length) if after > length => {
                    return Err(UploadError::InconsistentLength(format!(
                        "the body runs past the upload's length of {length} bytes"
                    )));
                }
                None if after > limit => return Err(ApiError::payload_too_large(limit).into()),
                _ => {}
            }
            writer.write(&chunk).await?;
            // Flushed beside the writes, so that the flush ending this append has only its last
            // bytes left. Not announced: bytes count (for a worker too) only once recorded, as
            // a failed append is cut back to the recorded length.
            drop(writer.checkpoint(shared::follow::ANNOUNCE_EVERY_BYTES));
            if let Some(hasher) = &mut hasher {
                hasher.update(&chunk);
            }
            received = after;
            // A checksummed body counts whole or not at all: no checkpoints for it.
            if hasher.is_none()
                && (received - recorded >= CHECKPOINT_BYTES || Instant::now() >= checkpoint_at)
            {
                writer.sync().await?;
                record(state, task_id, received, length).await?;
                recorded = received;
                follow.announce(recorded).await;
                checkpoint_at = Instant::now() + CHECKPOINT_INTERVAL;
            }
        }
        Ok(())
    }
    .await;

    if let Err(err) = read {
        // Keep what arrived, up to the last durable byte (not for a checksummed body, which
        // counts whole or not at all, nor a body that ran past its length).
        if hasher.is_none()
            && received > recorded
            && !matches!(err, UploadError::InconsistentLength(_))
            && writer.sync().await.is_ok()
            && record(state, task_id, received, length).await.is_ok()
        {
            recorded = received;
            follow.announce(recorded).await;
        }
        cut_back(&lock, writer, recorded).await;
        return Err(err);
    }
    if let (Some(checksum), Some(hasher)) = (&append.checksum, hasher)
        && !checksum.matches(hasher)
    {
        metrics::counter!("md5_resumable_uploads_total", "event" => "checksum_mismatch").increment(1);
        cut_back(&lock, writer, recorded).await;
        return Err(UploadError::ChecksumMismatch);
    }
    writer.sync().await?;
    let complete = match append.completion {
        Completion::AtLength => length == Some(received),
        Completion::Declared(complete) => {
            if complete && length.is_some_and(|length| length != received) {
                record(state, task_id, received, length).await?;
                return Err(UploadError::InconsistentLength(format!(
                    "the upload was declared complete at {received} bytes, but its length is {} bytes",
                    length.unwrap_or(0)
                )));
            }
            // A known length reached completes the upload too: some clients (tus-js-client reading
            // a stream) send their last bytes with `Upload-Complete: ?0`, their length declared.
            complete || length == Some(received)
        }
    };
    if !complete {
        let row = record(state, task_id, received, length).await?;
        follow.announce(received).await;
        return Ok(Appended { offset: received, length, completed: None, expires_at: Some(row.expires_at) });
    }
    let task = intake::complete_resumable(state, task_id, received, append.request_id, follow).await?;
    let task = task.ok_or_else(|| {
        ApiError::internal(anyhow::anyhow!("upload {task_id} was no longer uploading at its completion"))
    })?;
    drop(lock);
    Ok(Appended { offset: received, length: Some(received), completed: Some(task), expires_at: None })
}

/// After a failed append: the file is cut back to `recorded`, its durable length in Postgres,
/// at once (on a full disk, bytes that count for nothing must not keep the space until the next
/// append or the expiry).
async fn cut_back(lock: &UploadLock, writer: crate::storage::PartWriter, recorded: u64) {
    writer.abandon().await;
    if let Err(err) = lock.cut_to(recorded).await {
        tracing::warn!(task.id = %lock.task_id(), error = %err, "cannot cut a failed append's bytes off");
    }
}

/// What an append may do before its body is read: the upload is open, the request's offset is
/// its, the length (recorded or given) is consistent and within the limit. Returns the length,
/// if known, the offset and the digests the task asks for.
async fn check_append(
    state: &AppState,
    lock: &UploadLock,
    provided: u64,
    given_length: Option<u64>,
) -> Result<(Option<u64>, u64, Vec<shared::Algorithm>), UploadError> {
    let task_id = lock.task_id();
    let found = state.db.run(async |conn| uploads::find(conn, task_id).await).await?;
    let (upload, algorithms) = match classify(found)? {
        UploadState::Open { upload, task } => (upload, task.algorithms()),
        UploadState::Complete { task } => {
            return Err(UploadError::Completed { length: u64::try_from(task.size_bytes).unwrap_or(0) });
        }
    };
    let offset = u64::try_from(upload.received_bytes).map_err(ApiError::internal)?;
    if provided != offset {
        return Err(UploadError::OffsetMismatch { expected: offset, provided });
    }
    let recorded_length = upload.upload_length.map(u64::try_from).transpose().map_err(ApiError::internal)?;
    let length = match (recorded_length, given_length) {
        (Some(recorded), Some(given)) if recorded != given => {
            return Err(UploadError::InconsistentLength(format!(
                "the upload's length is {recorded} bytes; this request says {given}"
            )));
        }
        (_, Some(given)) if given < offset => {
            return Err(UploadError::InconsistentLength(format!(
                "the upload already holds {offset} bytes; this request says its length is {given}"
            )));
        }
        (recorded, given) => recorded.or(given),
    };
    let limit = state.config.max_upload_bytes;
    if length.is_some_and(|length| length > limit) {
        return Err(ApiError::payload_too_large(limit).into());
    }
    Ok((length, offset, algorithms))
}

/// Records the durable length (and the length, once known) and renews the expiry.
async fn record(
    state: &AppState,
    task_id: Uuid,
    received: u64,
    length: Option<u64>,
) -> Result<UploadRow, UploadError> {
    let received = i64::try_from(received).map_err(ApiError::internal)?;
    let length = length.map(i64::try_from).transpose().map_err(ApiError::internal)?;
    let expiry = state.config.upload_expiry();
    let row = state
        .db
        .run(async |conn| uploads::record_append(conn, task_id, received, length, expiry).await)
        .await?;
    row.ok_or_else(|| {
        UploadError::Api(ApiError::internal(anyhow::anyhow!(
            "upload {task_id} closed while its lock was held"
        )))
    })
}

/// Terminates an open upload: its task ends `cancelled`, its file and row go.
pub async fn terminate(state: &AppState, task_id: Uuid) -> Result<(), UploadError> {
    let lock = lock(state, task_id).await?;
    match self::state(state, task_id).await? {
        UploadState::Complete { task } => {
            return Err(UploadError::Completed { length: u64::try_from(task.size_bytes).unwrap_or(0) });
        }
        UploadState::Open { .. } => {}
    }
    end(state, lock, TaskStatus::Cancelled, "the upload was terminated by its client", false).await?;
    metrics::counter!("md5_resumable_uploads_total", "event" => "terminated").increment(1);
    tracing::info!(task.id = %task_id, "resumable upload terminated");
    Ok(())
}

/// Ends the locked upload as `status` (if it is still uploading and, with `only_if_expired`,
/// past its time), then removes its file and row. Returns whether the upload is now ended.
async fn end(
    state: &AppState,
    lock: UploadLock,
    status: TaskStatus,
    error: &str,
    only_if_expired: bool,
) -> Result<bool, UploadError> {
    let task_id = lock.task_id();
    // A transaction: a terminated upload's webhook event commits with its end.
    state.db.write(async |conn| uploads::end(conn, task_id, status, error, only_if_expired).await).await?;
    // Whoever ended it (this call, or an earlier one that died before cleaning up), the file and
    // the row go once the task is no longer uploading.
    let task = state.db.run(async |conn| shared::queries::find_task(conn, task_id).await).await?;
    if !task.is_some_and(|task| matches!(task.status, TaskStatus::Expired | TaskStatus::Cancelled)) {
        return Ok(false);
    }
    lock.remove().await?;
    crate::follow::abort(&state.queue, task_id).await;
    state.db.run(async |conn| uploads::forget(conn, task_id).await).await?;
    Ok(true)
}
