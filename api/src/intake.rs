//! One intake for every upload protocol (tusd's `StoreComposer` is the model): one-shot uploads
//! (`crate::upload`), tus and the IETF draft (`crate::resumable`) all pass through here, and a
//! protocol only maps its headers and statuses onto it.
//!
//! - **Admission**, before a byte of a body is stored: an upload slot for the client
//!   ([`admit`]: global (503) and within the client's quota (`crate::quotas`, 429)), room on the volume (507 under
//!   `MIN_FREE_BYTES`), and for a new resumable upload a place among the open ones, counted
//!   atomically with its creation ([`admit_resumable`]).
//! - **Completion**, once the file is durable: the row that makes it a `queued` task and its job
//!   on the stream ([`commit_one_shot`] for a stored one-shot body, [`complete_resumable`] for an
//!   upload whose last byte arrived). Nothing else in the api creates a queued task or XADDs an
//!   ordinary job (`crate::follow` adds the follow job of a large upload still arriving).

use std::time::Duration;

use uuid::Uuid;

use crate::client_id::ClientId;
use crate::commits::PendingTask;
use crate::error::ApiError;
use crate::follow::Announcer;
use crate::idempotency::Reservation;
use crate::quotas::{Quota, Quotas};
use crate::slots::{ClientSlot, SlotRefusal};
use crate::state::AppState;
use crate::storage::PartFile;
use shared::{JobMessage, Task, uploads};

/// Admits one upload request of `client`: an upload slot (held while the returned value lives),
/// and room on the volume.
pub fn admit(state: &AppState, client: Option<ClientId>) -> Result<ClientSlot, ApiError> {
    let quota = state.keys.quotas(client).uploads;
    let slot = state.upload_slots.try_acquire(client, quota).map_err(|refusal| match refusal {
        SlotRefusal::Full => ApiError::unavailable("too many uploads in progress; try again shortly"),
        SlotRefusal::ClientFull => ApiError::over_quota(
            Quota::Uploads,
            format!("this client streams {quota} uploads already, its quota; finish one, then try again"),
            Duration::from_secs(crate::error::RETRY_AFTER_SECONDS),
        ),
    })?;
    state.storage.check_free_space()?;
    Ok(slot)
}

/// Admits the creation of a task (a one-shot upload, or a resumable upload's creation) within
/// its client's rate.
pub fn admit_creation(state: &AppState, client: Option<ClientId>) -> Result<(), ApiError> {
    let quota = state.keys.quotas(client).tasks_per_minute;
    state.creation_rate.try_take(client, quota).map_err(|wait| {
        ApiError::over_quota(
            Quota::TasksPerMinute,
            format!("this client creates tasks faster than its quota of {quota} a minute; slow down"),
            wait,
        )
    })
}

/// Admits a new resumable upload of `client` counting `length` bytes, in the transaction that
/// creates it (`conn`): a place among the open uploads, in all and within the client's quotas
/// (open uploads, and bytes they declare), counted under a lock every creation takes, so
/// concurrent creations on any replica cannot pass a limit together. `Some` refusal when there
/// is none (the transaction then inserts nothing).
pub async fn admit_resumable(
    conn: &mut diesel_async::AsyncPgConnection,
    config: &crate::Config,
    client: Option<&str>,
    length: u64,
    quotas: &Quotas,
) -> diesel::QueryResult<Option<ApiError>> {
    let deferred_as = i64::try_from(config.max_upload_bytes).unwrap_or(i64::MAX);
    let counted = uploads::count_open(conn, client, deferred_as).await?;
    let (open, own) = (counted.all, counted.own);
    let retry = Duration::from_secs(crate::error::RETRY_AFTER_SECONDS);
    if open >= i64::from(config.max_open_uploads) {
        return Ok(Some(ApiError::unavailable(
            "too many unfinished resumable uploads; finish or terminate one, or try again later",
        )));
    }
    if client.is_some() && own >= i64::from(quotas.open_uploads) {
        return Ok(Some(ApiError::over_quota(
            Quota::OpenUploads,
            format!(
                "this client has {own} unfinished resumable uploads, its quota; finish or terminate one first"
            ),
            retry,
        )));
    }
    let held = u64::try_from(counted.own_bytes).unwrap_or(0);
    let limit = quotas.open_upload_bytes;
    if client.is_some() && held.saturating_add(length) > limit {
        return Ok(Some(ApiError::over_quota(
            Quota::OpenUploadBytes,
            format!(
                "this client's unfinished resumable uploads hold {held} of its {limit} bytes \
                 (declared lengths), too few for {length} more; finish or terminate one first"
            ),
            retry,
        )));
    }
    Ok(None)
}

/// A one-shot body stored in its durable partial file, ready to commit.
pub struct StoredUpload {
    /// The partial file, removed unless the row commits.
    pub part: PartFile,
    /// The task's id, chosen when the upload began.
    pub task_id: Uuid,
    /// The client's file name, sanitized.
    pub file_name: String,
    /// Its size in bytes.
    pub size: u64,
    /// The request's `x-request-id`.
    pub request_id: Option<String>,
    /// The `Idempotency-Key` reserved for it, completed with the row.
    pub reservation: Option<Reservation>,
    /// The digests the task asks for and expects.
    pub digests: shared::DigestRequest,
    /// The API key it belongs to (see `crate::keys`).
    pub owner: Option<i64>,
    /// Its announcements to a worker hashing it as it arrived (see `crate::follow`).
    pub follow: Box<Announcer>,
}

/// Completes a one-shot upload: renames its durable part file to its final name, commits the
/// row (completing its idempotency key in the same transaction) and enqueues the job.
pub async fn commit_one_shot(state: AppState, upload: StoredUpload) -> Result<Task, ApiError> {
    let StoredUpload { mut part, task_id, file_name, size, request_id, reservation, digests, owner, follow } =
        upload;
    state.storage.promote(&mut part).await?;
    let inserted = state
        .commits
        .insert(PendingTask {
            task_id,
            file_name,
            size_bytes: i64::try_from(size).map_err(ApiError::internal)?,
            request_id: request_id.clone(),
            idempotency_key: reservation.as_ref().map(|reservation| reservation.key().to_owned()),
            digests,
            owner,
        })
        .await;
    let task = match inserted {
        Ok(task) => task,
        Err(err) if err.commit_unknown() => {
            // The row may exist: its file and its key's reservation stay until that is settled.
            let state = state.clone();
            tokio::spawn(async move {
                if settle(&state, task_id).await {
                    part.keep();
                    if let Some(reservation) = reservation {
                        reservation.completed();
                    }
                    // Its row unread: an ordinary job, not a quick one.
                    enqueue(&state, task_id, size, false, request_id, Some(*follow)).await;
                }
                // Else `part` and `reservation` go: the file is removed, the key released.
            });
            return Err(err.into());
        }
        Err(err) => return Err(err.into()),
    };
    part.keep();
    if let Some(reservation) = reservation {
        reservation.completed();
    }
    // Before the job exists, so that every change of the task comes after.
    state.feed.inserted(task_id, task.owner);
    enqueue(&state, task_id, size, task.md5_alone(), request_id, Some(*follow)).await;
    Ok(task)
}

/// Completes resumable upload `task_id`, whose `size` bytes are durable: its upload row goes and
/// its task becomes `queued` (one transaction), then its job is enqueued (or its follower told).
/// `None` when the upload was no longer open (expired or terminated meanwhile): nothing is
/// enqueued.
pub async fn complete_resumable(
    state: &AppState,
    task_id: Uuid,
    size: u64,
    request_id: Option<String>,
    follow: Announcer,
) -> Result<Option<Task>, ApiError> {
    let size_bytes = i64::try_from(size).map_err(ApiError::internal)?;
    let task = state.db.write(async |conn| uploads::complete(conn, task_id, size_bytes).await).await?;
    if let Some(task) = &task {
        metrics::counter!("md5_resumable_uploads_total", "event" => "completed").increment(1);
        enqueue(state, task_id, size, task.md5_alone(), request_id, Some(follow)).await;
    }
    Ok(task)
}

/// Settles the row of task `task_id` after its `COMMIT` went unanswered
/// (`shared::queries::settle_insert`), asking every second until Postgres answers: true if the
/// task exists.
pub async fn settle(state: &AppState, task_id: Uuid) -> bool {
    loop {
        match state.db.write(async |conn| shared::queries::settle_insert(conn, task_id).await).await {
            Ok(exists) => {
                tracing::warn!(task.id = %task_id, task.exists = exists, "settled a task whose commit went unanswered");
                return exists;
            }
            Err(err) => {
                tracing::warn!(task.id = %task_id, error = %err, "cannot settle a task whose commit went unanswered yet");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

/// Announces a committed, `queued` task of `size` bytes to the workers: to the worker that
/// followed its upload if one takes it (`follow`), else with a job (quick where it may be:
/// `md5_alone` is the row's `Task::md5_alone`). A failed XADD is logged,
/// not returned: the row is committed, and the sweeper enqueues it once Redis answers.
async fn enqueue(
    state: &AppState,
    task_id: Uuid,
    size: u64,
    md5_alone: bool,
    request_id: Option<String>,
    follow: Option<Announcer>,
) {
    metrics::counter!("md5_uploads_total").increment(1);
    metrics::counter!("md5_upload_bytes_total").increment(size);
    tracing::info!(task.id = %task_id, upload.size_bytes = size, "upload stored");
    if let Some(follow) = follow
        && follow.complete(size).await
    {
        return;
    }
    let job = JobMessage::stored(task_id, request_id, size, md5_alone);
    if let Err(err) = state.queue.enqueue(&job).await {
        let err = anyhow::Error::new(err);
        tracing::warn!(task.id = %task_id, error = format!("{err:#}"), "cannot enqueue job; the sweeper will retry");
    }
}
