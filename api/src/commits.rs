//! The api's group commits: uploads whose bodies end together share one `fsync` of the upload
//! folder and one durable INSERT (the XADDs are pipelined in `queue.rs`).
//!
//! Each upload still answers 202 only after its own file is renamed and the folder flushed, and
//! after the statement carrying its row has committed; a batch only means that those waits are
//! shared. See `shared::batch`.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use diesel_async::AsyncConnection as _;
use shared::batch::Batcher;
use shared::db::Pool;
use shared::models::NewTask;
use shared::{Task, queries};
use uuid::Uuid;

use crate::error::ApiError;

/// Most uploads one rename-and-fsync or one INSERT carries.
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
}

/// Why a batched step failed, kept apart so each upload gets the status it would have had alone.
#[derive(Debug, Clone)]
enum Failure {
    /// The database is unreachable: 503.
    Unavailable,
    /// Anything else: 500, with this cause.
    Internal(String),
    /// A file-system error of this kind.
    Io(io::ErrorKind, String),
    /// The upload's `Idempotency-Key` reservation ran out and another upload took the key.
    KeyTakenOver,
}

impl From<Failure> for ApiError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Unavailable => {
                ApiError::Unavailable("the database is unreachable; try again shortly".into())
            }
            Failure::Internal(cause) => ApiError::Internal(anyhow::anyhow!(cause)),
            Failure::Io(kind, message) => crate::upload::io_error(io::Error::new(kind, message)),
            Failure::KeyTakenOver => ApiError::Conflict(
                "another upload with this Idempotency-Key took it over while this one was stalled".into(),
            ),
        }
    }
}

/// The batchers; cheap to clone.
#[derive(Clone)]
pub struct Commits {
    renames: Batcher<(PathBuf, PathBuf), Result<(), Failure>>,
    inserts: Batcher<PendingTask, Result<Task, Failure>>,
}

impl Commits {
    /// Spawns the batchers for uploads into `upload_dir`, committing rows through `pool`.
    pub fn spawn(upload_dir: &Path, pool: &Pool) -> Self {
        let upload_dir = upload_dir.to_owned();
        let renames = Batcher::spawn("rename", MAX_BATCH, move |moves: Vec<(PathBuf, PathBuf)>| {
            let upload_dir = upload_dir.clone();
            async move {
                let done =
                    tokio::task::spawn_blocking(move || rename_all_and_sync(&upload_dir, &moves)).await?;
                Ok(done)
            }
        });
        let pool = pool.clone();
        let inserts = Batcher::spawn("insert", MAX_BATCH, move |pending: Vec<PendingTask>| {
            let pool = pool.clone();
            async move { Ok(insert_all(&pool, &pending).await) }
        });
        Commits { renames, inserts }
    }

    /// Renames a finished partial file to its final name and makes the rename durable (one
    /// folder `fsync` for every rename of the batch).
    pub async fn rename(&self, partial: PathBuf, stored: PathBuf) -> Result<(), ApiError> {
        self.renames.call((partial, stored)).await.map_err(ApiError::Internal)?.map_err(ApiError::from)
    }

    /// Inserts the row, durably, and returns it as committed.
    pub async fn insert(&self, task: PendingTask) -> Result<Task, ApiError> {
        self.inserts.call(task).await.map_err(ApiError::Internal)?.map_err(ApiError::from)
    }
}

fn rename_all_and_sync(upload_dir: &Path, moves: &[(PathBuf, PathBuf)]) -> Vec<Result<(), Failure>> {
    let mut done: Vec<Result<(), Failure>> = moves
        .iter()
        .map(|(from, to)| std::fs::rename(from, to).map_err(|err| Failure::Io(err.kind(), err.to_string())))
        .collect();
    if done.iter().any(Result::is_ok) {
        let synced = std::fs::File::open(upload_dir).and_then(|dir| dir.sync_all());
        if let Err(err) = synced {
            let failure = Failure::Io(err.kind(), format!("cannot flush the upload folder: {err}"));
            for result in done.iter_mut().filter(|result| result.is_ok()) {
                *result = Err(failure.clone());
            }
        }
    }
    done
}

async fn insert_all(pool: &Pool, pending: &[PendingTask]) -> Vec<Result<Task, Failure>> {
    let rows = async {
        let mut conn = pool.get().await.map_err(|_| Failure::Unavailable)?;
        let keyed: Vec<(&str, Uuid, &str, i64)> = pending
            .iter()
            .filter_map(|task| {
                let key = task.idempotency_key.as_deref()?;
                Some((key, task.task_id, task.file_name.as_str(), task.size_bytes))
            })
            .collect();
        let inserted = if keyed.is_empty() {
            queries::insert_tasks(&mut conn, &new_tasks(pending, &HashSet::new())).await
        } else {
            // Keys and rows commit together: a key is completed only with its task's row, and a
            // task whose key was taken over is not inserted.
            conn.transaction::<_, diesel::result::Error, _>(async |conn| {
                let completed: HashSet<String> =
                    queries::complete_keys(conn, &keyed).await?.into_iter().collect();
                let lost: HashSet<Uuid> = pending
                    .iter()
                    .filter(|task| task.idempotency_key.as_ref().is_some_and(|key| !completed.contains(key)))
                    .map(|task| task.task_id)
                    .collect();
                let new = new_tasks(pending, &lost);
                if new.is_empty() { Ok(Vec::new()) } else { queries::insert_tasks(conn, &new).await }
            })
            .await
        };
        // Classified as a lone upload's error would be (`From<diesel::result::Error> for ApiError`).
        inserted.map_err(|err| match ApiError::from(err) {
            ApiError::Unavailable(_) => Failure::Unavailable,
            ApiError::Internal(cause) => Failure::Internal(format!("cannot insert the task: {cause:#}")),
            other => Failure::Internal(format!("cannot insert the task: {other}")),
        })
    }
    .await;
    match rows {
        Ok(rows) => {
            let mut rows: HashMap<Uuid, Task> = rows.into_iter().map(|row| (row.task_id, row)).collect();
            pending
                .iter()
                .map(|task| match rows.remove(&task.task_id) {
                    Some(row) => Ok(row),
                    None if task.idempotency_key.is_some() => Err(Failure::KeyTakenOver),
                    None => Err(Failure::Internal("the inserted row was not returned".into())),
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
        })
        .collect()
}
