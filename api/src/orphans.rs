//! Files in `UPLOAD_DIR` that no task owns, and their removal.
//!
//! An upload's file gets its final name (the task id) before its task's row is committed: a
//! one-shot upload is renamed, then its row inserted; a resumable upload's file is created, then
//! its row. An api killed between the two leaves a file that no row names, and so does one
//! killed after forgetting a task but before removing its file. Nothing else would ever remove
//! such a file, so [`Orphans`] does: a file named like a task id, unmodified for [`ORPHAN_AGE`],
//! whose task does not exist. A row is committed within `DB_TIMEOUT_MS` of its file's last write
//! or never (a commit left unanswered is settled by `intake::settle`, never retried), so no row
//! appears for a file that old. The file of a task forgotten by retention goes too (with
//! `KEEP_UPLOADS`): a forgotten task keeps no file, as after `DELETE`.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use shared::maintenance::Service;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::database::Database;
use crate::storage::janitor::aged_files;

/// Age (since its last write) from which a file no task owns is removed.
pub const ORPHAN_AGE: Duration = Duration::from_secs(3600);

/// Pause between two sweeps; the first runs at start.
const SWEEP_INTERVAL: Duration = Duration::from_secs(15 * 60);

/// Task ids looked up per statement.
const IDS_PER_QUERY: usize = 1000;

/// The task ids that name files of `upload_dir` unmodified for `older_than` (a name must be a
/// task id as the api writes it: a partial file `.<id>.part` or any other name is not one).
pub fn aged_task_files(upload_dir: &Path, older_than: Duration) -> io::Result<Vec<Uuid>> {
    let task_id = |name: &str| Uuid::try_parse(name).ok().filter(|id| id.to_string() == name);
    let aged = aged_files(upload_dir, older_than, |name| task_id(name).is_some())?;
    Ok(aged.iter().filter_map(|name| task_id(name)).collect())
}

/// Removes the files of `upload_dir` unmodified for `older_than` whose task does not exist;
/// returns how many it removed.
pub async fn sweep(upload_dir: &Path, db: &Database, older_than: Duration) -> anyhow::Result<usize> {
    let dir = upload_dir.to_owned();
    let aged = tokio::task::spawn_blocking(move || aged_task_files(&dir, older_than)).await??;
    let mut removed = 0;
    for chunk in aged.chunks(IDS_PER_QUERY) {
        let ids = chunk.to_vec();
        let existing: HashSet<Uuid> = db
            .run(async |conn| shared::queries::existing_tasks(conn, &ids).await)
            .await?
            .into_iter()
            .collect();
        let orphans: Vec<PathBuf> = chunk
            .iter()
            .filter(|id| !existing.contains(id))
            .map(|id| shared::config::upload_path(upload_dir, *id))
            .collect();
        removed += tokio::task::spawn_blocking(move || {
            orphans.iter().filter(|path| std::fs::remove_file(path).is_ok()).count()
        })
        .await?;
    }
    Ok(removed)
}

/// Runs [`sweep`] at start, then every [`SWEEP_INTERVAL`], as a maintenance service.
pub struct Orphans {
    /// The upload folder.
    pub upload_dir: PathBuf,
    /// Where the tasks are.
    pub db: Database,
}

impl Service for Orphans {
    fn name(&self) -> &'static str {
        "sweeper of files no task owns"
    }

    async fn run(self, stop: CancellationToken) {
        loop {
            match sweep(&self.upload_dir, &self.db, ORPHAN_AGE).await {
                Ok(0) => {}
                Ok(removed) => {
                    metrics::counter!("md5_orphan_files_removed_total").increment(removed as u64);
                    tracing::warn!(files.removed = removed, "removed files that no task owns")
                }
                Err(err) => tracing::warn!(error = %err, "cannot sweep UPLOAD_DIR for files no task owns"),
            }
            tokio::select! {
                () = tokio::time::sleep(SWEEP_INTERVAL) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}
