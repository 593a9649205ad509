//! Every query the api and the workers run, each taking the connection first (those of
//! idempotency keys in `keys.rs`).
//!
//! State changes are conditional updates, so a duplicate or late delivery of a job is a no-op
//! rather than a second result.

use diesel::dsl::now;
use diesel::prelude::*;
use diesel::sql_types::Timestamptz;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use std::time::Duration;
use uuid::Uuid;

use crate::digest::Digests;
use crate::models::{NewTask, Task, TaskStatus};
use crate::prepared::{bind, prepared};
use crate::schema::md5_tasks::dsl;
use crate::time::interval;

mod keys;
pub use keys::{complete_keys, extend_key_reservation, purge_keys, release_key, reserve_key};

/// The result a worker records for a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Hashed.
    Done {
        /// The file's digests.
        digests: Digests,
    },
    /// Could not be hashed, for this reason.
    Failed {
        /// A message for the client.
        error: String,
    },
}

impl Outcome {
    /// The status this outcome leaves the task in.
    pub fn status(&self) -> TaskStatus {
        match self {
            Outcome::Done { .. } => TaskStatus::Done,
            Outcome::Failed { .. } => TaskStatus::Failed,
        }
    }
}

/// A result to record: for a task the worker claimed, or for a quick job's task it hashed
/// without claiming (`crate::job::JobMessage::quick`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The task.
    pub task_id: Uuid,
    /// Its outcome.
    pub outcome: Outcome,
    /// `Some(size)` for a task not claimed: recorded (and counted as an attempt) only while the
    /// task is still `queued`, of `size` bytes, computing MD5 alone and expecting no digest.
    pub unclaimed: Option<i64>,
}

impl Completion {
    /// The outcome of a task the worker claimed.
    pub fn claimed(task_id: Uuid, outcome: Outcome) -> Self {
        Completion { task_id, outcome, unclaimed: None }
    }

    /// The digests of a quick job's `size` bytes, hashed before any claim.
    pub fn unclaimed(task_id: Uuid, digests: Digests, size: i64) -> Self {
        Completion { task_id, outcome: Outcome::Done { digests }, unclaimed: Some(size) }
    }
}

/// Inserts new `queued` tasks in one statement (so one commit) and returns the committed rows,
/// in no order.
pub async fn insert_tasks(conn: &mut AsyncPgConnection, new: &[NewTask<'_>]) -> QueryResult<Vec<Task>> {
    diesel::insert_into(dsl::md5_tasks).values(new).returning(Task::as_returning()).get_results(conn).await
}

/// Loads a task by id; `None` if there is no such task.
pub async fn find_task(conn: &mut AsyncPgConnection, task_id: Uuid) -> QueryResult<Option<Task>> {
    dsl::md5_tasks.find(task_id).select(Task::as_select()).first(conn).await.optional()
}

/// Claims tasks for `worker` until `lease` from now, in one statement: each `queued` task, and
/// each `processing` one whose previous holder let its lease pass. Returns the rows it claimed,
/// in no order; a task not returned is not claimable (finished, held by a live worker, or
/// unknown), which makes duplicate deliveries no-ops. Each claim counts an attempt; a task still
/// `queued` whose delivery was `taken_over` counts one more: a worker received it before and
/// never recorded anything (it died, or crashed on a quick job's hash, which claims nothing).
pub async fn claim_tasks(
    conn: &mut AsyncPgConnection,
    task_ids: &[Uuid],
    taken_over: &[Uuid],
    worker: &str,
    lease: Duration,
) -> QueryResult<Vec<Task>> {
    use diesel::sql_types::{Array, Interval, Text};
    prepared(
        "UPDATE md5_tasks SET status = 'processing', \
             attempts = attempts + 1 + (status = 'queued' AND task_id = ANY($1))::int, \
             started_at = now(), worker = $2, lease_until = now() + $3 \
         WHERE task_id = ANY($4) \
           AND (status = 'queued' OR (status = 'processing' AND lease_until < now())) \
         RETURNING *",
        (
            bind::<Array<diesel::sql_types::Uuid>, _>(taken_over),
            bind::<Text, _>(worker),
            bind::<Interval, _>(interval(lease)),
            bind::<Array<diesel::sql_types::Uuid>, _>(task_ids),
        ),
    )
    .load(conn)
    .await
}

/// Extends `worker`'s lease on a task it is still processing; false if the lease was lost.
pub async fn extend_lease(
    conn: &mut AsyncPgConnection,
    task_id: Uuid,
    worker: &str,
    lease: Duration,
) -> QueryResult<bool> {
    use diesel::sql_types::{Interval, Text};
    let updated = prepared(
        "UPDATE md5_tasks SET lease_until = now() + $1 \
         WHERE task_id = $2 AND status = 'processing' AND worker = $3",
        (
            bind::<Interval, _>(interval(lease)),
            bind::<diesel::sql_types::Uuid, _>(task_id),
            bind::<Text, _>(worker),
        ),
    )
    .execute(conn)
    .await?;
    Ok(updated == 1)
}

/// Records `worker`'s outcomes, in one statement (so one commit): of tasks it holds, and of quick
/// jobs' tasks still `queued` ([`Completion::unclaimed`], which this claims in the same update).
/// Returns the rows it updated, in no order; a task not returned records nothing, because the
/// worker does not hold it (its lease passed and another worker took it over; or, unclaimed, it
/// was cancelled, claimed by another, or is not what its job said). A task listed twice is
/// updated once. A `done` task's digests (MD5 and the others) are indexed for
/// [`find_by_digest`] by the same statement. Run it in a transaction: the tasks' webhook events
/// ([`crate::webhooks::write_events`]) are written with it and must commit with it.
pub async fn complete_tasks(
    conn: &mut AsyncPgConnection,
    worker: &str,
    completions: &[Completion],
) -> QueryResult<Vec<Task>> {
    use diesel::sql_types::{Array, BigInt, Nullable, Text};
    let mut ids = Vec::with_capacity(completions.len());
    let mut statuses = Vec::with_capacity(completions.len());
    let mut results = Vec::with_capacity(completions.len());
    let mut errors = Vec::with_capacity(completions.len());
    let mut others = Vec::with_capacity(completions.len());
    let mut unclaimed = Vec::with_capacity(completions.len());
    for Completion { task_id, outcome, unclaimed: size } in completions {
        ids.push(*task_id);
        statuses.push(outcome.status().as_str());
        let (md5, error, digests) = match outcome {
            Outcome::Done { digests } => (
                Some(digests.md5.as_str()),
                None,
                (!digests.others.is_empty())
                    .then(|| serde_json::to_string(&digests.others).expect("a map of strings")),
            ),
            Outcome::Failed { error } => (None, Some(error.as_str()), None),
        };
        results.push(md5);
        errors.push(error);
        others.push(digests);
        unclaimed.push(*size);
    }
    // In SET, `t.status` is the row's status before the update.
    let finished = prepared(
        "WITH w AS (SELECT $1::text AS worker), \
         updated AS ( \
             UPDATE md5_tasks AS t \
             SET status = v.status::task_status, result = v.result, error = v.error, \
                 digests = v.digests::jsonb, finished_at = now(), lease_until = NULL, \
                 attempts = t.attempts + (t.status = 'queued')::int, \
                 started_at = CASE WHEN t.status = 'queued' THEN now() ELSE t.started_at END, \
                 worker = w.worker \
             FROM w, unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[]) \
                  AS v(task_id, status, result, error, digests, unclaimed) \
             WHERE t.task_id = v.task_id \
               AND CASE WHEN v.unclaimed IS NULL THEN t.status = 'processing' AND t.worker = w.worker \
                        ELSE t.status = 'queued' AND t.size_bytes = v.unclaimed \
                             AND t.algorithms = '{}' AND t.expected IS NULL END \
             RETURNING t.*), \
         indexed AS ( \
             INSERT INTO md5_task_digests (algorithm, digest, finished_at, task_id) \
             SELECT 'md5', decode(u.result, 'hex'), u.finished_at, u.task_id \
             FROM updated AS u WHERE u.status = 'done' \
             UNION ALL \
             SELECT d.key, decode(d.value, 'hex'), u.finished_at, u.task_id \
             FROM updated AS u, jsonb_each_text(u.digests) AS d WHERE u.status = 'done' \
             ON CONFLICT DO NOTHING) \
         SELECT * FROM updated",
        (
            bind::<Text, _>(worker),
            bind::<Array<diesel::sql_types::Uuid>, _>(ids),
            bind::<Array<Text>, _>(statuses),
            bind::<Array<Nullable<Text>>, _>(results),
            bind::<Array<Nullable<Text>>, _>(errors),
            bind::<Array<Nullable<Text>>, _>(others),
            bind::<Array<Nullable<BigInt>>, _>(unclaimed),
        ),
    )
    .load::<Task>(conn)
    .await?;
    crate::webhooks::write_events(conn, &finished).await?;
    Ok(finished)
}

/// Cancels a task that is `queued` or `processing`, in one conditional update: it ends
/// `cancelled` (its lease released, `finished_at` set). `None` if the task is in any other state,
/// or unknown. A worker's [`complete_tasks`] and this update serialize on the row: whichever
/// commits first decides, and the other changes nothing. Run it in a transaction: the task's
/// webhook event ([`crate::webhooks::write_events`]) is written with it and must commit with it.
pub async fn cancel_task(conn: &mut AsyncPgConnection, task_id: Uuid) -> QueryResult<Option<Task>> {
    let cancelled = diesel::update(
        dsl::md5_tasks.find(task_id).filter(dsl::status.eq_any([TaskStatus::Queued, TaskStatus::Processing])),
    )
    .set((
        dsl::status.eq(TaskStatus::Cancelled),
        dsl::error.eq("cancelled by the client"),
        dsl::finished_at.eq(now.into_sql::<Timestamptz>().nullable()),
        dsl::lease_until.eq(None::<chrono::DateTime<chrono::Utc>>),
    ))
    .returning(Task::as_returning())
    .get_result(conn)
    .await
    .optional()?;
    if let Some(task) = &cancelled {
        crate::webhooks::write_events(conn, std::slice::from_ref(task)).await?;
    }
    Ok(cancelled)
}

/// The id of a forgotten task.
#[derive(Debug, QueryableByName)]
struct ForgottenTask {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    task_id: Uuid,
}

/// Forgets the tasks of `task_ids` that have ended for good (`cancelled`, `expired`, or `done`
/// and `failed` once their log line is written): their rows, their upload rows, their digests
/// (found through the primary key, from the task's own digests) and their idempotency keys, in
/// one statement. Their webhook events already written stay, to be delivered. The ids it forgot.
pub async fn forget_tasks(conn: &mut AsyncPgConnection, task_ids: &[Uuid]) -> QueryResult<Vec<Uuid>> {
    use diesel::sql_types::Array;
    let forgotten = diesel::sql_query(
        "WITH gone AS ( \
             DELETE FROM md5_tasks AS t WHERE t.task_id = ANY($1) \
               AND (t.status IN ('cancelled', 'expired') \
                    OR (t.status IN ('done', 'failed') AND t.logged_at IS NOT NULL)) \
             RETURNING t.task_id, t.status, t.result, t.digests, t.finished_at), \
         digests AS ( \
             DELETE FROM md5_task_digests AS d \
             USING gone AS g, LATERAL ( \
                 SELECT 'md5'::text AS algorithm, decode(g.result, 'hex') AS digest WHERE g.result IS NOT NULL \
                 UNION ALL \
                 SELECT e.key, decode(e.value, 'hex') FROM jsonb_each_text(coalesce(g.digests, '{}'::jsonb)) AS e \
             ) AS v \
             WHERE g.status = 'done' AND d.algorithm = v.algorithm AND d.digest = v.digest \
               AND d.finished_at = g.finished_at AND d.task_id = g.task_id), \
         keys AS (DELETE FROM md5_idempotency_keys AS k USING gone AS g WHERE k.task_id = g.task_id) \
         SELECT task_id FROM gone",
    )
    .bind::<Array<diesel::sql_types::Uuid>, _>(task_ids)
    .load::<ForgottenTask>(conn)
    .await?;
    Ok(forgotten.into_iter().map(|task| task.task_id).collect())
}

/// Up to `limit` tasks created before `before` (a UUIDv7: ids order by creation) that have
/// ended for good, oldest first: what retention forgets next. A range scan of the primary key.
pub async fn tasks_to_forget(
    conn: &mut AsyncPgConnection,
    before: Uuid,
    limit: i64,
) -> QueryResult<Vec<Uuid>> {
    dsl::md5_tasks
        .filter(dsl::task_id.lt(before))
        .filter(
            dsl::status.eq_any([TaskStatus::Cancelled, TaskStatus::Expired]).or(dsl::status
                .eq_any([TaskStatus::Done, TaskStatus::Failed])
                .and(dsl::logged_at.is_not_null())),
        )
        .order(dsl::task_id)
        .select(dsl::task_id)
        .limit(limit)
        .load(conn)
        .await
}

/// Announces that `bytes` of the task's file are hashed, on
/// [`crate::db::TASK_PROGRESS_CHANNEL`]: a notification, no row written.
pub async fn announce_progress(conn: &mut AsyncPgConnection, task_id: Uuid, bytes: u64) -> QueryResult<()> {
    use diesel::sql_types::Text;
    diesel::sql_query("SELECT pg_notify($1, $2)")
        .bind::<Text, _>(crate::db::TASK_PROGRESS_CHANNEL)
        .bind::<Text, _>(crate::events::TaskEvent::progress_payload(task_id, bytes))
        .execute(conn)
        .await?;
    Ok(())
}

/// A done task found by the digest of its file.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct FoundTask {
    /// The task.
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub task_id: Uuid,
    /// Its file name.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub file_name: String,
    /// Its size.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub size_bytes: i64,
    /// When it was hashed.
    #[diesel(sql_type = Timestamptz)]
    pub finished_at: chrono::DateTime<chrono::Utc>,
}

/// Done tasks whose file had `digest` (raw bytes) under `algorithm`, newest first, at most
/// `limit`, starting after `after` (the `(finished_at, task_id)` of the last task of the page
/// before); with `owner`, only the tasks of that owner (`Some(None)`: those no key owns). One
/// backward range scan of `md5_task_digests`' primary key.
pub async fn find_by_digest(
    conn: &mut AsyncPgConnection,
    algorithm: crate::Algorithm,
    digest: &[u8],
    owner: Option<Option<i64>>,
    after: Option<(chrono::DateTime<chrono::Utc>, Uuid)>,
    limit: i64,
) -> QueryResult<Vec<FoundTask>> {
    use diesel::sql_types::{BigInt, Bytea, Nullable, Text};
    let (after_time, after_id) = after.unzip();
    diesel::sql_query(
        "SELECT t.task_id, t.file_name, t.size_bytes, d.finished_at \
         FROM md5_task_digests AS d JOIN md5_tasks AS t ON t.task_id = d.task_id \
         WHERE d.algorithm = $1 AND d.digest = $2 \
           AND ($3::timestamptz IS NULL OR (d.finished_at, d.task_id) < ($3, $4)) \
           AND ($6 OR t.owner IS NOT DISTINCT FROM $7) \
         ORDER BY d.finished_at DESC, d.task_id DESC \
         LIMIT $5",
    )
    .bind::<Text, _>(algorithm.name())
    .bind::<Bytea, _>(digest)
    .bind::<Nullable<Timestamptz>, _>(after_time)
    .bind::<Nullable<diesel::sql_types::Uuid>, _>(after_id)
    .bind::<BigInt, _>(limit)
    .bind::<diesel::sql_types::Bool, _>(owner.is_none())
    .bind::<Nullable<BigInt>, _>(owner.flatten())
    .load(conn)
    .await
}

/// Records that the tasks' lines are in the results log (a mark, once set, is never moved:
/// `coalesce` keeps it). The tasks are found by primary key alone: a condition on `logged_at`
/// (`logged_at IS NULL`) would let the planner read `md5_tasks_unlogged` instead, whose dead
/// entries (one for every task marked since the last vacuum) made each mark slower than the last
/// (measured: 1.2 ms for 14 tasks after 30,000 marks, 0.14 ms by primary key).
pub async fn mark_all_logged(conn: &mut AsyncPgConnection, task_ids: &[Uuid]) -> QueryResult<()> {
    use diesel::sql_types::Array;
    prepared(
        "UPDATE md5_tasks SET logged_at = coalesce(logged_at, now()) WHERE task_id = ANY($1)",
        (bind::<Array<diesel::sql_types::Uuid>, _>(task_ids),),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Ids of tasks that may have lost their stream entry: not yet logged, and either `queued`
/// for longer than `grace`, `processing` past their lease, or finished longer than `grace` ago.
/// Oldest first, at most `limit`.
pub async fn tasks_to_sweep(
    conn: &mut AsyncPgConnection,
    grace: Duration,
    limit: i64,
) -> QueryResult<Vec<Uuid>> {
    let cutoff = now.into_sql::<Timestamptz>() - interval(grace);
    dsl::md5_tasks
        .filter(dsl::logged_at.is_null())
        .filter(
            dsl::status
                .eq(TaskStatus::Queued)
                .and(dsl::created_at.lt(cutoff))
                .or(dsl::status
                    .eq(TaskStatus::Processing)
                    .and(dsl::lease_until.lt(now.into_sql::<Timestamptz>().nullable())))
                .or(dsl::status
                    .eq_any([TaskStatus::Done, TaskStatus::Failed])
                    .and(dsl::finished_at.lt(cutoff.nullable()))),
        )
        .order(dsl::created_at.asc())
        .limit(limit)
        .select(dsl::task_id)
        .load(conn)
        .await
}

/// Settles an insert of task `task_id` whose `COMMIT` went unanswered: true if the task's row
/// exists (that transaction committed), false if it never will. Run it in a transaction: it
/// inserts a placeholder row with the same id, which waits while that transaction is still open
/// and conflicts if it committed; a placeholder that goes in is deleted again before the commit,
/// so no row is left either way.
pub async fn settle_insert(conn: &mut AsyncPgConnection, task_id: Uuid) -> QueryResult<bool> {
    let placed = diesel::insert_into(dsl::md5_tasks)
        .values((
            dsl::task_id.eq(task_id),
            dsl::file_name.eq(""),
            dsl::size_bytes.eq(0_i64),
            dsl::status.eq(TaskStatus::Cancelled),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    if placed == 1 {
        diesel::delete(dsl::md5_tasks.find(task_id)).execute(conn).await?;
    }
    Ok(placed == 0)
}

/// Counts tasks by status (for metrics and tests).
pub async fn count_by_status(conn: &mut AsyncPgConnection) -> QueryResult<Vec<(TaskStatus, i64)>> {
    dsl::md5_tasks.group_by(dsl::status).select((dsl::status, diesel::dsl::count_star())).load(conn).await
}

/// Which of `ids` are tasks (a row exists, in any status).
pub async fn existing_tasks(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<Vec<Uuid>> {
    dsl::md5_tasks.filter(dsl::task_id.eq_any(ids)).select(dsl::task_id).load(conn).await
}
