//! The janitor of `UPLOAD_DIR`: removes the partial files of uploads whose api died mid-body.
//!
//! Its rule: a live upload receives bytes at least every `BODY_IDLE_TIMEOUT_SECONDS` (else it
//! is cut) and writes them at least every [`PART_TOUCH_INTERVAL`], so a partial file untouched
//! for twice that long belongs to no live upload. Every api sharing the volume must use the same
//! `BODY_IDLE_TIMEOUT_SECONDS`. A resumable upload, which may pause between requests, is never
//! a `.part` file: its file has its final name and its own rule (`crate::resumable::expiry`).

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use shared::maintenance::Service;
use tokio_util::sync::CancellationToken;

use super::PART_TOUCH_INTERVAL;

/// Longest pause between two looks for partial files of uploads that died with their api.
const JANITOR_INTERVAL: Duration = Duration::from_secs(60);

/// Age past which a partial file belongs to an upload that is no longer alive, for bodies cut
/// after `idle` without a byte.
pub fn stale_part_age(idle: Duration) -> Duration {
    2 * (idle + PART_TOUCH_INTERVAL)
}

/// Removes partial files (`.<id>.part`) older than `older_than` from `upload_dir`: what an api
/// killed mid-upload leaves behind. Safe beside other apis' live uploads (see [`stale_part_age`]).
/// Returns how many it removed.
pub fn remove_stale_parts(upload_dir: &Path, older_than: Duration) -> io::Result<usize> {
    let stale = aged_files(upload_dir, older_than, |name| name.starts_with('.') && name.ends_with(".part"))?;
    Ok(stale.iter().filter(|name| std::fs::remove_file(upload_dir.join(name)).is_ok()).count())
}

/// The names of `upload_dir`'s files that `wanted` accepts and that were last modified more than
/// `older_than` ago.
pub fn aged_files(
    upload_dir: &Path,
    older_than: Duration,
    wanted: impl Fn(&str) -> bool,
) -> io::Result<Vec<String>> {
    let now = SystemTime::now();
    let mut aged = Vec::new();
    for entry in std::fs::read_dir(upload_dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else { continue };
        if !wanted(&name) {
            continue;
        }
        let Ok(modified) = entry.metadata().and_then(|meta| meta.modified()) else { continue };
        if now.duration_since(modified).is_ok_and(|age| age > older_than) {
            aged.push(name);
        }
    }
    Ok(aged)
}

/// Runs [`remove_stale_parts`] at start, then every [`stale_part_age`] (at most every
/// [`JANITOR_INTERVAL`]), as a maintenance service.
pub struct Janitor {
    upload_dir: PathBuf,
    older_than: Duration,
}

impl Janitor {
    /// The janitor of `upload_dir`, for bodies cut after `idle` without a byte.
    pub fn new(upload_dir: PathBuf, idle: Duration) -> Self {
        Janitor { upload_dir, older_than: stale_part_age(idle) }
    }
}

impl Service for Janitor {
    fn name(&self) -> &'static str {
        "janitor of partial files"
    }

    async fn run(self, stop: CancellationToken) {
        let interval = self.older_than.min(JANITOR_INTERVAL);
        loop {
            let (dir, older_than) = (self.upload_dir.clone(), self.older_than);
            match tokio::task::spawn_blocking(move || remove_stale_parts(&dir, older_than)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(removed)) => {
                    tracing::info!(files.removed = removed, "removed partial files of dead uploads")
                }
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "cannot scan UPLOAD_DIR for stale partial files")
                }
                Err(err) => tracing::warn!(error = %err, "stale partial file scan panicked"),
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}
