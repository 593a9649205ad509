//! The hashes this worker runs now, each with its progress and a way to stop it: a cancelled
//! task's hash stops wherever it runs (the SIMD lanes drop its file before their next round; a
//! hashing thread checks between 64 KiB buffers).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// One running hash: bytes hashed so far, and whether it should stop.
#[derive(Debug, Default)]
pub struct HashProgress {
    bytes: AtomicU64,
    stop: CancellationToken,
}

impl HashProgress {
    /// Records that `bytes` of the file have been hashed in all.
    pub fn set(&self, bytes: u64) {
        self.bytes.store(bytes, Ordering::Relaxed);
    }

    /// Adds `bytes` hashed.
    pub fn add(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes hashed so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Asks the hash to stop.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// True once [`HashProgress::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Completes once [`HashProgress::stop`] was called.
    pub async fn stopped(&self) {
        self.stop.cancelled().await;
    }

    /// The error a stopped hash ends with.
    pub fn stopped_error() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::Interrupted, "the hash was stopped")
    }
}

/// The running hashes by task; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct RunningHashes {
    inner: Arc<Mutex<HashMap<Uuid, Arc<HashProgress>>>>,
}

/// A hash's place in [`RunningHashes`]; leaves it on drop.
pub struct Registered {
    running: RunningHashes,
    task_id: Uuid,
    /// Its progress, shared with the code hashing it.
    pub progress: Arc<HashProgress>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.running.inner.lock().expect("running hashes lock").remove(&self.task_id);
    }
}

impl RunningHashes {
    /// Registers a hash of `task_id` (a second one for the same task replaces the first's entry).
    pub fn register(&self, task_id: Uuid) -> Registered {
        let progress = Arc::new(HashProgress::default());
        self.inner.lock().expect("running hashes lock").insert(task_id, progress.clone());
        Registered { running: self.clone(), task_id, progress }
    }

    /// Stops the hash of `task_id`, if one runs here; true if it did.
    pub fn stop(&self, task_id: Uuid) -> bool {
        match self.inner.lock().expect("running hashes lock").get(&task_id) {
            Some(progress) => {
                progress.stop();
                true
            }
            None => false,
        }
    }

    /// The tasks being hashed now.
    pub fn task_ids(&self) -> Vec<Uuid> {
        self.inner.lock().expect("running hashes lock").keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registered_hash_can_be_stopped_until_it_ends() {
        let running = RunningHashes::default();
        let id = Uuid::now_v7();
        let hash = running.register(id);
        hash.progress.add(10);
        hash.progress.set(64);
        assert_eq!(hash.progress.bytes(), 64);
        assert_eq!(running.task_ids(), vec![id]);
        assert!(running.stop(id));
        assert!(hash.progress.is_stopped());
        drop(hash);
        assert!(!running.stop(id), "an ended hash is no longer running");
        assert!(running.task_ids().is_empty());
    }
}
