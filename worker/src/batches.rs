//! The worker's group commits: every job's claim, result and acknowledgement goes through a
//! [`Batcher`], so jobs that reach the same step together share one statement, one commit and
//! one round trip. (The log line's own group commit is in `results_log`, the "logged" marks'
//! in `marks`.)
//!
//! The statements are the conditional updates of `shared::queries`, so batching changes no
//! outcome: a job gets exactly the answer it would have had alone.

use std::collections::HashMap;
use std::time::Duration;

use shared::Task;
use shared::batch::Batcher;
use shared::db::{Pool, connection, planned_once};
use shared::queries::{self, Completion};
use uuid::Uuid;

use crate::stream::JobsHandle;

/// Most requests one statement carries.
const MAX_BATCH: usize = 256;

/// One batcher per step of a job.
pub struct Batches {
    /// Claims (bookkeeping pool) of a task and whether its delivery was taken over: the claimed
    /// row, or `None` if the task is not claimable.
    pub claim: Batcher<(Uuid, bool), Option<Task>>,
    /// Results (durable pool): the finished row, or `None` if this worker does not hold the task
    /// (lost it, or, unclaimed, never had it).
    pub complete: Batcher<Completion, Option<Task>>,
    /// XACK + XDEL of stream entries.
    pub ack: Batcher<String, ()>,
}

impl Batches {
    /// Spawns the batchers for consumer `worker`.
    pub fn spawn(pool: &Pool, bookkeeping: &Pool, jobs: &JobsHandle, worker: &str, lease: Duration) -> Self {
        let claim = {
            let (pool, worker) = (bookkeeping.clone(), worker.to_owned());
            Batcher::spawn("claim", MAX_BATCH, move |claims: Vec<(Uuid, bool)>| {
                let (pool, worker) = (pool.clone(), worker.clone());
                async move {
                    let mut conn = connection(&pool).await?;
                    let ids: Vec<Uuid> = claims.iter().map(|(id, _)| *id).collect();
                    let taken_over: Vec<Uuid> =
                        claims.iter().filter(|(_, taken_over)| *taken_over).map(|(id, _)| *id).collect();
                    let rows = queries::claim_tasks(&mut conn, &ids, &taken_over, &worker, lease).await?;
                    Ok(answer_each(&ids, rows))
                }
            })
        };
        let complete = {
            let (pool, worker) = (pool.clone(), worker.to_owned());
            Batcher::spawn("complete", MAX_BATCH, move |completions: Vec<Completion>| {
                let (pool, worker) = (pool.clone(), worker.clone());
                async move {
                    let mut conn = connection(&pool).await?;
                    // One transaction: the results and their webhook events commit together.
                    let (worker, completions) = (&worker, &completions);
                    let rows = planned_once(&mut conn, async |conn| {
                        queries::complete_tasks(conn, worker, completions).await
                    })
                    .await?;
                    let ids: Vec<Uuid> = completions.iter().map(|completion| completion.task_id).collect();
                    Ok(answer_each(&ids, rows))
                }
            })
        };
        let ack = {
            let jobs = jobs.clone();
            Batcher::spawn("ack", MAX_BATCH, move |entries: Vec<String>| {
                let jobs = jobs.clone();
                async move {
                    jobs.ack_all(&entries).await?;
                    Ok(vec![(); entries.len()])
                }
            })
        };
        Batches { claim, complete, ack }
    }
}

/// Gives each returned row to the first request for its task; every other request (a task not
/// updated, or the same task asked for twice in one batch) gets `None`.
fn answer_each(ids: &[Uuid], rows: Vec<Task>) -> Vec<Option<Task>> {
    let mut rows: HashMap<Uuid, Task> = rows.into_iter().map(|row| (row.task_id, row)).collect();
    ids.iter().map(|id| rows.remove(id)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(task_id: Uuid) -> Task {
        Task {
            task_id,
            status: shared::TaskStatus::Processing,
            result: None,
            file_name: "f".into(),
            size_bytes: 1,
            error: None,
            attempts: 1,
            created_at: chrono::Utc::now(),
            started_at: None,
            finished_at: None,
            logged_at: None,
            worker: None,
            lease_until: None,
            request_id: None,
            algorithms: Vec::new(),
            expected: None,
            digests: None,
            owner: None,
        }
    }

    #[test]
    fn a_row_goes_to_the_first_request_for_its_task_only() {
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let answers = answer_each(&[a, b, a, c], vec![row(c), row(a)]);
        let ids: Vec<Option<Uuid>> = answers.iter().map(|t| t.as_ref().map(|t| t.task_id)).collect();
        assert_eq!(ids, vec![Some(a), None, None, Some(c)]);
    }
}
