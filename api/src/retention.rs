//! Retention: tasks that ended for good are forgotten `TASK_RETENTION_SECONDS` after their
//! upload began, as `DELETE` forgets them (`queries::forget_tasks`), and so are their webhook
//! deliveries once delivered or given up, so the tables stay bounded by the retention times the
//! rate. The results log, append-only, is the permanent record.
//!
//! Task ids are UUIDv7, ordered by creation: the tasks due are a range at the start of the
//! primary key, taken [`BATCH`] at a time (each batch one short statement that locks only its
//! own rows), so a purge costs the same per row at any table size and never holds a lock a
//! request waits on for long. Every api runs it; replicas at the same time only repeat each
//! other's work.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::database::{Database, DbError};
use shared::maintenance::Service;
use shared::queries;

/// Tasks forgotten per statement.
pub const BATCH: i64 = 500;
/// A purge pauses this many times as long as each batch took: it takes at most a quarter of the
/// time of one connection (and of a core) from the requests.
pub const PAUSE_PER_BATCH_TIME: u32 = 3;
/// The longest pause between two looks for tasks due.
const MAX_PERIOD: Duration = Duration::from_secs(60);

/// The smallest UUIDv7 of the millisecond `at`: every task created before `at` has a smaller id.
pub fn first_id_at(at: SystemTime) -> Uuid {
    let millis = at.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis()) as u64;
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    bytes[6] = 0x70;
    bytes[8] = 0x80;
    Uuid::from_bytes(bytes)
}

/// Forgets one batch of what was created before `before` and has ended: up to [`BATCH`] tasks
/// and [`BATCH`] delivered or given-up webhook deliveries, in one short transaction. Returns the
/// larger count found due of the two (a batch that found [`BATCH`] may have left more) and the
/// tasks forgotten.
pub async fn forget_batch(db: &Database, before: Uuid) -> Result<(usize, usize), DbError> {
    db.write(async |conn| {
        let due = queries::tasks_to_forget(conn, before, BATCH).await?;
        let gone = queries::forget_tasks(conn, &due).await?.len();
        let deliveries = shared::webhooks::forget_deliveries(conn, before, BATCH).await?;
        Ok((due.len().max(deliveries), gone))
    })
    .await
}

/// The retention service of one api.
pub struct Retention {
    /// Where the tasks are.
    pub db: Database,
    /// How long a task is kept after its upload began (`TASK_RETENTION_SECONDS`, not zero).
    pub keep: Duration,
}

impl Service for Retention {
    fn name(&self) -> &'static str {
        "task retention"
    }

    async fn run(self, stop: CancellationToken) {
        // Looked at four times per retention period, between once a second and once a minute.
        let period = (self.keep / 4).clamp(Duration::from_secs(1), MAX_PERIOD);
        loop {
            // A period after the start first: a starting api has more urgent work.
            tokio::select! {
                () = tokio::time::sleep(period) => {}
                () = stop.cancelled() => return,
            }
            let before = first_id_at(SystemTime::now() - self.keep);
            match forget_due(&self.db, before, &stop).await {
                Ok(0) => {}
                Ok(gone) => tracing::debug!(tasks.forgotten = gone, "forgot tasks past their retention"),
                Err(err) => {
                    let err = anyhow::Error::new(err);
                    tracing::warn!(error = format!("{err:#}"), "cannot forget tasks past their retention");
                }
            }
        }
    }
}

/// Forgets everything due before `before`, batch after batch, each followed by a pause
/// [`PAUSE_PER_BATCH_TIME`] times as long as the batch took, so that a backlog never takes more
/// than a share of the database's time from the requests arriving meanwhile; until a batch finds
/// less than a full one, or `stop`. The tasks forgotten.
pub async fn forget_due(db: &Database, before: Uuid, stop: &CancellationToken) -> Result<usize, DbError> {
    let mut forgotten = 0;
    loop {
        let started = tokio::time::Instant::now();
        let (due, gone) = forget_batch(db, before).await?;
        forgotten += gone;
        if gone > 0 {
            metrics::counter!("md5_tasks_forgotten_total", "by" => "retention").increment(gone as u64);
        }
        if due < BATCH as usize || stop.is_cancelled() {
            return Ok(forgotten);
        }
        tokio::select! {
            () = tokio::time::sleep(started.elapsed() * PAUSE_PER_BATCH_TIME) => {}
            () = stop.cancelled() => return Ok(forgotten),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_id_of_a_millisecond_is_below_every_id_drawn_after_it() {
        let at = SystemTime::now();
        let first = first_id_at(at);
        assert_eq!(first.get_version_num(), 7);
        let later = Uuid::now_v7();
        assert!(first <= later);
        assert!(first_id_at(at - Duration::from_secs(1)) < first);
        assert!(first_id_at(SystemTime::now() + Duration::from_secs(1)) > later);
    }
}
