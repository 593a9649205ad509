//! The api's group commit of rows: uploads whose files became durable together share one
//! durable INSERT (their renames share one folder `fsync` in `storage`, their XADDs one
//! pipeline in `queue.rs`).
//!
//! Each upload still answers 202 only after the statement carrying its row has committed; a
//! batch only means that the wait is shared. See `shared::batch`.
//! **This module knows nothing about HTTP**: `crate::error` turns an [`InsertError`] into a problem.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::database::{Database, DbError};
use shared::batch::{BatchError, Batcher};
use shared::models::NewTask;
use shared::{Task, queries};
use uuid::Uuid;

/// Most uploads one INSERT carries.
const MAX_BATCH: usize = 256;

/// A row to insert, owned so it can wait in a batch.
#[derive(Debug, Clone)]
pub struct PendingTask {
    /// The promise id.
    pub task_id: Uuid,
    /// The sanitized client file name.
    pub file_name: String,
    /// Size of the stored upload.
    pub size_bytes: i64,
    /// The `x-request-id` of the upload request.
    pub request_id: Option<String>,
    /// The `Idempotency-Key` reserved for this task, completed in the same transaction.
    pub idempotency_key: Option<String>,
    /// The digests it asks for and expects.
    pub digests: shared::DigestRequest,
    /// The API key it belongs to (see `crate::keys`).
    pub owner: Option<i64>,
}

/// Why a row was not inserted; every upload of a failed batch gets the same error, its cause
/// shared (`Arc`) with its chain intact. `ApiError`'s `From` classifies it as a lone upload's
/// error would be.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InsertError {
    /// The INSERT (or its transaction) failed, or Postgres could not be reached in time.
    #[error("cannot insert the task")]
    Database(#[source] Arc<DbError>),
    /// The upload's `Idempotency-Key` reservation ran out and another upload took the key.
    #[error("the upload's Idempotency-Key was taken over by another upload")]
    KeyTakenOver,
    /// The statement succeeded but did not return this upload's row.
    #[error("the inserted row was not returned")]
    RowMissing,
    /// The batch itself failed.
    #[error("the insert batch did not complete")]
    Batch(#[source] BatchError),
}

impl InsertError {
    /// Whether the row's `COMMIT` went unanswered: it may exist or not.
    pub fn commit_unknown(&self) -> bool {
        matches!(self, InsertError::Database(db) if matches!(**db, DbError::CommitUnknown(_)))
    }
}

/// The insert batcher; cheap to clone.
#[derive(Clone)]
pub struct Commits {
    inserts: Batcher<PendingTask, Result<Task, InsertError>>,
}

impl Commits {
    /// Spawns the batcher committing rows through `pool`.
    pub fn spawn(db: &Database) -> Self {
        let db = db.clone();
        let inserts = Batcher::spawn("insert", MAX_BATCH, move |pending: Vec<PendingTask>| {
            let db = db.clone();
            async move { Ok(insert_all(&db, &pending).await) }
        });
        Commits { inserts }
    }

    /// Inserts the row, durably, and returns it as committed.
    pub async fn insert(&self, task: PendingTask) -> Result<Task, InsertError> {
        self.inserts.call(task).await.map_err(InsertError::Batch)?
    }
}

async fn insert_all(db: &Database, pending: &[PendingTask]) -> Vec<Result<Task, InsertError>> {
    // A transaction, so that a Postgres that stalls mid-INSERT commits nothing once this upload
    // has been answered 503 (see `Database::write`).
    let rows = db
        .write(async |conn| {
            let keyed: Vec<(&str, Uuid, &str, i64)> = pending
                .iter()
                .filter_map(|task| {
                    let key = task.idempotency_key.as_deref()?;
                    Some((key, task.task_id, task.file_name.as_str(), task.size_bytes))
                })
                .collect();
            if keyed.is_empty() {
                queries::insert_tasks(conn, &new_tasks(pending, &HashSet::new())).await
            } else {
                // Keys and rows commit together: a key is completed only with its task's row, and a
                // task whose key was taken over is not inserted.
                let completed: HashSet<String> =
                    queries::complete_keys(conn, &keyed).await?.into_iter().collect();
                let lost: HashSet<Uuid> = pending
                    .iter()
                    .filter(|task| task.idempotency_key.as_ref().is_some_and(|key| !completed.contains(key)))
                    .map(|task| task.task_id)
                    .collect();
                let new = new_tasks(pending, &lost);
                if new.is_empty() { Ok(Vec::new()) } else { queries::insert_tasks(conn, &new).await }
            }
        })
        .await
        .map_err(|err| InsertError::Database(Arc::new(err)));
    match rows {
        Ok(rows) => {
            let mut rows: HashMap<Uuid, Task> = rows.into_iter().map(|row| (row.task_id, row)).collect();
            pending
                .iter()
                .map(|task| match rows.remove(&task.task_id) {
                    Some(row) => Ok(row),
                    None if task.idempotency_key.is_some() => Err(InsertError::KeyTakenOver),
                    None => Err(InsertError::RowMissing),
                })
                .collect()
        }
        Err(failure) => vec![Err(failure); pending.len()],
    }
}

/// The rows of `pending`, but for the tasks in `skip`.
fn new_tasks<'a>(pending: &'a [PendingTask], skip: &HashSet<Uuid>) -> Vec<NewTask<'a>> {
    pending
        .iter()
        .filter(|task| !skip.contains(&task.task_id))
        .map(|task| NewTask {
            task_id: task.task_id,
            file_name: &task.file_name,
            size_bytes: task.size_bytes,
            request_id: task.request_id.as_deref(),
            algorithms: task.digests.algorithm_names(),
            expected: task.digests.expected_json(),
            owner: task.owner,
        })
        .collect()
}
