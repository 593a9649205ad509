//! Tasks by status for `/metrics`, read from Postgres at most once per
//! [`TASK_COUNTS_MAX_AGE`], whatever the number of scrapers: counting means a scan of the whole
//! table, which at millions of rows must not run once per scrape.

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

#[derive(Default)]
struct Cache {
    counts: Option<Vec<(TaskStatus, i64)>>,
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
    pub async fn current(&self) -> Option<Vec<(TaskStatus, i64)>> {
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
        let counted = self.db.run(async |conn| queries::count_by_status(conn).await).await;
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
