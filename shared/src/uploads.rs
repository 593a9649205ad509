//! Queries of resumable uploads (`md5_uploads` beside its `uploading` task); the api runs them.
//!
//! An upload's row lives while it receives bytes: created with its task, renewed by every append,
//! deleted in the transaction that queues its task (complete), or after its task ends `expired` or
//! `cancelled`. Every change is conditional on the task still being `uploading`, so two replicas
//! racing (an append and the expiry, a completion and a termination) leave one outcome.

use diesel::dsl::now;
use diesel::prelude::*;
use diesel::sql_types::Timestamptz;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use std::time::Duration;
use uuid::Uuid;

use crate::models::{NewTask, Task, TaskStatus, UploadRow};
use crate::schema::md5_tasks::dsl as tasks;
use crate::schema::md5_uploads::dsl as uploads;
use crate::time::interval;

diesel::define_sql_function! {
    /// SQL's `LEAST` of two times: the earlier.
    fn least(a: Timestamptz, b: Timestamptz) -> Timestamptz;
}

/// How long an upload lives: each append renews `idle`, never past `lifetime` from its creation.
#[derive(Debug, Clone, Copy)]
pub struct Expiry {
    /// From the creation or the last append (`UPLOAD_IDLE_SECONDS`).
    pub idle: Duration,
    /// From the creation, whatever arrives (`UPLOAD_EXPIRY_SECONDS`).
    pub lifetime: Duration,
}

/// Creates an `uploading` task and its upload row, expiring as `expiry` says. Run it in a
/// transaction: both rows or neither.
pub async fn create(
    conn: &mut AsyncPgConnection,
    task: &NewTask<'_>,
    upload_length: Option<i64>,
    metadata: Option<&str>,
    client: Option<&str>,
    expiry: Expiry,
) -> QueryResult<(Task, UploadRow)> {
    let task: Task = diesel::insert_into(tasks::md5_tasks)
        .values((task, tasks::status.eq(TaskStatus::Uploading)))
        .returning(Task::as_returning())
        .get_result(conn)
        .await?;
    let upload = diesel::insert_into(uploads::md5_uploads)
        .values((
            uploads::task_id.eq(task.task_id),
            uploads::upload_length.eq(upload_length),
            uploads::metadata.eq(metadata),
            uploads::client.eq(client),
            uploads::expires_at
                .eq(now.into_sql::<Timestamptz>() + interval(expiry.idle.min(expiry.lifetime))),
        ))
        .returning(UploadRow::as_returning())
        .get_result(conn)
        .await?;
    Ok((task, upload))
}

/// The advisory lock that serializes creations of resumable uploads (between counting the open
/// ones and inserting a new one), held until the creating transaction ends.
const CREATION_LOCK_KEY: i64 = 0x6d64_355f_7570_6c64;

/// A task and, while it is `uploading`, its upload row; `None` if there is no such task.
pub async fn find(
    conn: &mut AsyncPgConnection,
    task_id: Uuid,
) -> QueryResult<Option<(Task, Option<UploadRow>)>> {
    tasks::md5_tasks
        .left_join(uploads::md5_uploads)
        .filter(tasks::task_id.eq(task_id))
        .select((Task::as_select(), Option::<UploadRow>::as_select()))
        .first(conn)
        .await
        .optional()
}

/// As [`find`], for showing a task: one lookup of the task alone, and of its upload row only
/// where it can have one (`uploading`, or ended `expired` or `cancelled` before its row was
/// forgotten; queueing an upload deletes its row in the same transaction, so a `queued`,
/// `processing`, `done` or `failed` task has none). Every statement is planned for its values
/// (`crate::db`), and planning the join took twice the time of the lone lookup (measured:
/// BENCHMARKS.md, issue 36's step 5); `?wait=` reads a task about twice a job.
pub async fn find_shown(
    conn: &mut AsyncPgConnection,
    task_id: Uuid,
) -> QueryResult<Option<(Task, Option<UploadRow>)>> {
    let Some(task) = tasks::md5_tasks.find(task_id).select(Task::as_select()).first(conn).await.optional()?
    else {
        return Ok(None);
    };
    let upload = match task.status {
        TaskStatus::Queued | TaskStatus::Processing | TaskStatus::Done | TaskStatus::Failed => None,
        TaskStatus::Uploading | TaskStatus::Expired | TaskStatus::Cancelled => {
            uploads::md5_uploads.find(task_id).select(UploadRow::as_select()).first(conn).await.optional()?
        }
    };
    Ok(Some((task, upload)))
}

/// Records that the upload's file is durable up to `received` bytes, its length (`None` while
/// still deferred; the caller holds the upload's lock and passes the length it read or was just
/// told) and renews its expiry (never past its lifetime); `None` if the upload is no longer open
/// (completed, expired or terminated meanwhile).
pub async fn record_append(
    conn: &mut AsyncPgConnection,
    task_id: Uuid,
    received: i64,
    upload_length: Option<i64>,
    expiry: Expiry,
) -> QueryResult<Option<UploadRow>> {
    diesel::update(uploads::md5_uploads.find(task_id))
        .set((
            uploads::received_bytes.eq(received),
            uploads::upload_length.eq(upload_length),
            uploads::expires_at.eq(least(
                now.into_sql::<Timestamptz>() + interval(expiry.idle),
                uploads::created_at + interval(expiry.lifetime),
            )),
        ))
        .returning(UploadRow::as_returning())
        .get_result(conn)
        .await
        .optional()
}

/// Completes the upload of `size` bytes: its row goes and its task becomes `queued` (its
/// `created_at` the time of completion, when the upload was accepted whole). Run it in a
/// transaction. `None` if the task was no longer `uploading`.
pub async fn complete(conn: &mut AsyncPgConnection, task_id: Uuid, size: i64) -> QueryResult<Option<Task>> {
    diesel::delete(uploads::md5_uploads.find(task_id)).execute(conn).await?;
    diesel::update(tasks::md5_tasks.find(task_id).filter(tasks::status.eq(TaskStatus::Uploading)))
        .set((
            tasks::status.eq(TaskStatus::Queued),
            tasks::size_bytes.eq(size),
            tasks::created_at.eq(now.into_sql::<Timestamptz>()),
        ))
        .returning(Task::as_returning())
        .get_result(conn)
        .await
        .optional()
}

/// Ends an `uploading` task as `status` (`expired` or `cancelled`) with `error`; `None` if it was
/// no longer uploading. With `only_if_expired`, only once its upload's time has passed (the
/// janitor's check, in the same statement as the change). Run it in a transaction: a terminated
/// upload's task ends `cancelled` as a cancelled task does, and its webhook event
/// ([`crate::webhooks::write_events`]) is written with it and must commit with it (an `expired`
/// one raises none).
pub async fn end(
    conn: &mut AsyncPgConnection,
    task_id: Uuid,
    status: TaskStatus,
    error: &str,
    only_if_expired: bool,
) -> QueryResult<Option<Task>> {
    let expired = uploads::md5_uploads
        .filter(uploads::task_id.eq(task_id))
        .filter(uploads::expires_at.lt(now.into_sql::<Timestamptz>()));
    let target = tasks::md5_tasks.find(task_id).filter(tasks::status.eq(TaskStatus::Uploading));
    let changes = (
        tasks::status.eq(status),
        tasks::error.eq(error),
        tasks::finished_at.eq(now.into_sql::<Timestamptz>().nullable()),
    );
    let query = if only_if_expired {
        diesel::update(target.filter(diesel::dsl::exists(expired)))
            .set(changes)
            .returning(Task::as_returning())
            .get_result(conn)
            .await
    } else {
        diesel::update(target).set(changes).returning(Task::as_returning()).get_result(conn).await
    };
    let ended = query.optional()?;
    crate::webhooks::write_events(conn, ended.as_slice()).await?;
    Ok(ended)
}

/// Deletes the upload row of a task that ended (its file is gone).
pub async fn forget(conn: &mut AsyncPgConnection, task_id: Uuid) -> QueryResult<()> {
    diesel::delete(uploads::md5_uploads.find(task_id)).execute(conn).await?;
    Ok(())
}

/// Uploads whose time has passed (or whose task already ended and whose row remains): at most
/// `limit`, the longest expired first.
pub async fn expired(conn: &mut AsyncPgConnection, limit: i64) -> QueryResult<Vec<Uuid>> {
    uploads::md5_uploads
        .filter(uploads::expires_at.lt(now.into_sql::<Timestamptz>()))
        .order(uploads::expires_at.asc())
        .limit(limit)
        .select(uploads::task_id)
        .load(conn)
        .await
}

/// What is open: every upload, and `client`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenUploads {
    /// Uploads open.
    pub all: i64,
    /// Uploads open that `client` created.
    pub own: i64,
    /// Their declared lengths, summed (a deferred length counts as `deferred_as`).
    pub own_bytes: i64,
}

/// The client's share of what is open.
#[derive(QueryableByName)]
struct Share {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    uploads: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    bytes: i64,
}

/// What is open, every upload's and `client`'s. Run it in the transaction that creates the next
/// upload: it takes the creation lock, so the count holds until then.
pub async fn count_open(
    conn: &mut AsyncPgConnection,
    client: Option<&str>,
    deferred_as: i64,
) -> QueryResult<OpenUploads> {
    // Creations take this lock first, in their transaction: a count and the insert it allows are
    // never split by another creation, on any api replica.
    diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
        .bind::<diesel::sql_types::BigInt, _>(CREATION_LOCK_KEY)
        .execute(conn)
        .await?;
    let all: i64 = uploads::md5_uploads.count().get_result(conn).await?;
    let Some(client) = client else { return Ok(OpenUploads { all, own: 0, own_bytes: 0 }) };
    let share: Share = diesel::sql_query(
        "SELECT count(*) AS uploads, COALESCE(sum(COALESCE(upload_length, $2)), 0)::int8 AS bytes \
         FROM md5_uploads WHERE client = $1",
    )
    .bind::<diesel::sql_types::Text, _>(client)
    .bind::<diesel::sql_types::BigInt, _>(deferred_as)
    .get_result(conn)
    .await?;
    Ok(OpenUploads { all, own: share.uploads, own_bytes: share.bytes })
}
