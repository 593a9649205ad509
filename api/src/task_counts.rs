//! Tasks by status for `/metrics`, and when the oldest queued task was created, read from
//! Postgres at most once per [`TASK_COUNTS_MAX_AGE`], whatever the number of scrapers: counting
//! means a scan of the whole table, which at millions of rows must not run once per scrape.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shared::{TaskStatus, queries};

use crate::database::Database;

/// How old the counts a scrape shows may be.
pub const TASK_COUNTS_MAX_AGE: Duration = Duration::from_secs(15);

/// The cached counts; cheap to clone.
#[derive(Clone)]
pub struct TaskCounts {
    db: Database,
    cache: Arc<Mutex<Cache>>,
}

/// What a refresh reads.
#[derive(Clone, Debug)]
pub struct Counts {
    /// Tasks by status (statuses without tasks left out).
    pub by_status: Vec<(TaskStatus, i64)>,
    /// When the oldest task still queued was created.
    pub oldest_queued: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Default)]
struct Cache {
    counts: Option<Counts>,
    refreshed: Option<Instant>,
    refreshing: bool,
}

impl TaskCounts {
    /// Counts read through `db`.
    pub fn new(db: Database) -> Self {
        TaskCounts { db, cache: Arc::default() }
    }

    /// The counts, at most [`TASK_COUNTS_MAX_AGE`] old (plus one query's time): the first call
    /// waits for them; later ones start one refresh in the background when they are stale and
    /// answer with what is cached. `None` while they could never be read.
    pub async fn current(&self) -> Option<Counts> {
        let (stale, first) = {
            let mut cache = self.cache.lock().expect("task counts lock");
            let stale =
                !cache.refreshing && cache.refreshed.is_none_or(|at| at.elapsed() >= TASK_COUNTS_MAX_AGE);
            if stale {
                cache.refreshing = true;
            }
            (stale, cache.counts.is_none())
        };
        if stale {
            let refresh = self.clone().refresh();
            if first {
                refresh.await;
            } else {
                tokio::spawn(refresh);
            }
        }
        self.cache.lock().expect("task counts lock").counts.clone()
    }

    async fn refresh(self) {
        metrics::counter!("md5_task_counts_queries_total").increment(1);
        let counted = self
            .db
            .run(async |conn| {
                let by_status = queries::count_by_status(conn).await?;
                let oldest_queued = oldest_queued(conn).await?;
                Ok(Counts { by_status, oldest_queued })
            })
            .await;
        let mut cache = self.cache.lock().expect("task counts lock");
        cache.refreshing = false;
        match counted {
            Ok(counts) => {
                cache.counts = Some(counts);
                cache.refreshed = Some(Instant::now());
            }
            Err(err) => {
                // Tried again by the next scrape after the interval, not by every scrape.
                cache.refreshed = Some(Instant::now());
                let err = anyhow::Error::new(err);
                tracing::warn!(error = format!("{err:#}"), "cannot count tasks for /metrics");
            }
        }
    }
}

/// When the oldest queued task was created: a walk of the index of unlogged tasks (queued ones
/// are unlogged) from its oldest entry to the first queued one.
async fn oldest_queued(
    conn: &mut diesel_async::AsyncPgConnection,
) -> diesel::QueryResult<Option<chrono::DateTime<chrono::Utc>>> {
    use diesel::{ExpressionMethods as _, QueryDsl as _};
    use diesel_async::RunQueryDsl as _;
    use shared::schema::md5_tasks::dsl;
    dsl::md5_tasks
        .filter(dsl::logged_at.is_null())
        .filter(dsl::status.eq(TaskStatus::Queued))
        .select(diesel::dsl::min(dsl::created_at))
        .get_result(conn)
        .await
}
