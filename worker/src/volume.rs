//! Where the upload volume's file operations run (a quick job's open, read and hash, a finished
//! task's unlink): [`Volume::on_file`] decides by the file's size and the volume's kind. Those of
//! a file of at most [`SMALL_FILE_BYTES`] on a local filesystem take microseconds (the file was
//! just written: it is in the page cache; one read from a disk if it is no longer there) and run
//! on the calling runtime thread, which saves each job two thread hand-offs (measured: five
//! context switches and a tenth of a millisecond of CPU a job at 500 uploads/s, BENCHMARKS.md).
//! On any other filesystem (a network one, where an `open` is a round trip to a server that may
//! hang) they run on a blocking thread, as every large file's operations do.
//!
//! Which one it is is read once from `statfs(2)` on `UPLOAD_DIR`, at the first operation that
//! finds the folder (the api may create it after the worker starts); until then, and for any
//! filesystem not known to be local, operations block a thread of their own.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Largest file whose read and hash, or unlink, is a small operation: about 0.1 ms of MD5, and
/// one extent to free. (Unlinking a large file frees its extents, which can take milliseconds.)
const SMALL_FILE_BYTES: u64 = 64 * 1024;

/// The upload volume, probed once.
pub struct Volume {
    dir: PathBuf,
    local: OnceLock<bool>,
}

impl Volume {
    /// The volume holding `dir`, not probed yet.
    pub fn new(dir: &Path) -> Self {
        Volume { dir: dir.to_owned(), local: OnceLock::new() }
    }

    /// Whether its small operations run on the calling thread: `statfs` of the folder, once it
    /// answers.
    pub fn is_local(&self) -> bool {
        if let Some(local) = self.local.get() {
            return *local;
        }
        let Ok(stats) = rustix::fs::statfs(&self.dir) else {
            return false;
        };
        #[allow(clippy::unnecessary_cast, reason = "f_type's width differs between targets")]
        let f_type = stats.f_type as u64;
        let local = shared::filesystems::is_local(f_type);
        if self.local.set(local).is_ok() {
            tracing::info!(
                upload_dir.local = local,
                upload_dir.fs_type = format!("{f_type:#x}"),
                "upload volume probed"
            );
        }
        local
    }

    /// Runs `operation`, an operation on a file of `size` bytes on this volume (its read and
    /// hash, or its unlink): on this thread when the volume is local and the file holds at most
    /// [`SMALL_FILE_BYTES`], else on a blocking thread.
    pub async fn on_file<T: Send + 'static>(
        &self,
        size: u64,
        operation: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        if size <= SMALL_FILE_BYTES && self.is_local() { operation() } else { self.blocking(operation).await }
    }

    /// Runs `operation` on a blocking thread, whatever the volume.
    pub async fn blocking<T: Send + 'static>(&self, operation: impl FnOnce() -> T + Send + 'static) -> T {
        match tokio::task::spawn_blocking(operation).await {
            Ok(done) => done,
            // A blocking task is never aborted: only a panic ends it early; it goes on here.
            Err(err) => std::panic::resume_unwind(err.into_panic()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_folder_is_probed_again_once_it_exists_and_only_a_small_file_s_operation_runs_inline() {
        let dir = std::env::temp_dir().join(format!("volume-{}", uuid::Uuid::new_v4()));
        let volume = Volume::new(&dir);
        assert!(!volume.is_local(), "a folder that does not exist yet is not known to be local");
        assert!(volume.local.get().is_none(), "and is not remembered");
        std::fs::create_dir(&dir).unwrap();
        let on_disk = rustix::fs::statfs(&dir).unwrap().f_type as u64;
        assert_eq!(volume.is_local(), shared::filesystems::is_local(on_disk));
        let here = std::thread::current().id();
        let small = volume.on_file(SMALL_FILE_BYTES, move || std::thread::current().id() == here).await;
        assert_eq!(
            small,
            shared::filesystems::is_local(on_disk),
            "a small file's operation runs here when the volume is local"
        );
        let large = volume.on_file(SMALL_FILE_BYTES + 1, move || std::thread::current().id() == here).await;
        assert!(!large, "a larger file's always runs on a blocking thread");
        std::fs::remove_dir(&dir).unwrap();
    }
}
