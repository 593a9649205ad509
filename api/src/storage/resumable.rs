//! The file of a resumable upload: written in place at its final name (`UPLOAD_DIR/<task id>`),
//! appended to by one request at a time, and removed only by whoever holds its lock.
//!
//! **Its lock** is an exclusive `flock` on the file, taken without waiting, plus this process's
//! own set of locked uploads (on NFS `flock` is emulated with POSIX locks, which do not exclude
//! each other within one process). The kernel drops the `flock` when its holder dies, so an api
//! killed mid-append leaves nothing to wait for; every api sharing the volume sees the lock,
//! so two appends to one upload never interleave whichever replicas they reach.
//!
//! **Its length** on disk may run ahead of the durable length recorded in Postgres (an api
//! killed mid-append wrote bytes it never flushed): whoever takes the lock cuts the file back to
//! the recorded length before appending ([`UploadLock::writer_at`]).

use std::collections::HashSet;
use std::io::{self, Seek as _};
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use super::{PartFile, PartWriter, Storage, StorageError};

/// The uploads this process holds the lock of.
#[derive(Clone, Default)]
pub struct Locked(Arc<Mutex<HashSet<Uuid>>>);

/// Why an upload's lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another request (here or in another api) is appending to it, or removing it.
    #[error("another request is writing this upload")]
    Busy,
    /// Its file does not exist.
    #[error("the upload's file is missing")]
    Missing,
    /// The file system failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The exclusive right to append to, or remove, one resumable upload's file; released on drop.
pub struct UploadLock {
    task_id: Uuid,
    file: std::fs::File,
    path: std::path::PathBuf,
    locked: Locked,
}

impl Storage {
    /// Creates the empty file of a new resumable upload, durably (its folder entry is flushed),
    /// and returns its lock.
    pub async fn create_upload_file(&self, task_id: Uuid) -> Result<UploadLock, StorageError> {
        let path = shared::config::upload_path(&self.dir, task_id);
        let (dir, created) = (self.dir.clone(), path.clone());
        let locked = self.locked.clone();
        locked.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(task_id);
        let unlock = Unlock(locked.clone(), task_id);
        let file = tokio::task::spawn_blocking(move || -> io::Result<std::fs::File> {
            let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&created)?;
            rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)?;
            std::fs::File::open(&dir)?.sync_all()?;
            Ok(file)
        })
        .await
        .map_err(|err| StorageError::Task("create", Arc::new(err)))?
        .map_err(|err| StorageError::io("cannot create the upload's file", err))?;
        std::mem::forget(unlock);
        Ok(UploadLock { task_id, file, path, locked })
    }

    /// Takes the lock of `task_id`'s upload without waiting.
    pub async fn lock_upload(&self, task_id: Uuid) -> Result<UploadLock, LockError> {
        {
            let mut locked = self.locked.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if !locked.insert(task_id) {
                return Err(LockError::Busy);
            }
        }
        let unlock = Unlock(self.locked.clone(), task_id);
        let path = shared::config::upload_path(&self.dir, task_id);
        let opened = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || -> Result<std::fs::File, LockError> {
                let file = match std::fs::OpenOptions::new().read(true).write(true).open(&path) {
                    Ok(file) => file,
                    Err(err) if err.kind() == io::ErrorKind::NotFound => return Err(LockError::Missing),
                    Err(err) => return Err(StorageError::io("cannot open the upload's file", err).into()),
                };
                match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                    Ok(()) => Ok(file),
                    Err(rustix::io::Errno::WOULDBLOCK) => Err(LockError::Busy),
                    Err(err) => Err(StorageError::io("cannot lock the upload's file", err.into()).into()),
                }
            })
            .await
            .map_err(|err| LockError::Storage(StorageError::Task("lock", Arc::new(err))))?
        };
        let file = opened?;
        std::mem::forget(unlock);
        Ok(UploadLock { task_id, file, path, locked: self.locked.clone() })
    }
}

/// Removes the upload from this process's set if the lock is not taken after all (dropped on
/// an error; forgotten once the [`UploadLock`] owns the entry).
struct Unlock(Locked, Uuid);

impl Drop for Unlock {
    fn drop(&mut self) {
        self.0.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&self.1);
    }
}

impl UploadLock {
    /// The upload's id.
    pub fn task_id(&self) -> Uuid {
        self.task_id
    }

    /// A writer appending at `offset`, the upload's durable length: the file is first cut back
    /// to it (bytes past it were never recorded) and must not be shorter.
    pub async fn writer_at(&self, storage: &Storage, offset: u64) -> Result<PartWriter, StorageError> {
        let mut file =
            self.file.try_clone().map_err(|err| StorageError::io("cannot reopen the upload's file", err))?;
        let file = tokio::task::spawn_blocking(move || -> io::Result<std::fs::File> {
            let length = file.metadata()?.len();
            if length < offset {
                return Err(io::Error::other(format!(
                    "the upload's file holds {length} bytes, fewer than the {offset} recorded as durable"
                )));
            }
            if length > offset {
                file.set_len(offset)?;
            }
            file.seek(io::SeekFrom::Start(offset))?;
            // An append cut off mid-block may have left the shared file in direct mode.
            super::direct::clear_direct(&file)?;
            Ok(file)
        })
        .await
        .map_err(|err| StorageError::Task("truncate", Arc::new(err)))?
        .map_err(|err| StorageError::io("cannot prepare the upload's file for appending", err))?;
        let part = PartFile {
            partial: std::path::PathBuf::new(),
            stored: std::path::PathBuf::new(),
            file: Some(file),
            in_flight: None,
            kept: true,
            written: offset,
            flush_handle: None,
            direct: super::direct::DirectMode::Off,
        };
        Ok(PartWriter::new(part, storage.buffer_grant()))
    }

    /// Cuts the file back to `offset` (the durable length recorded), if it is longer: bytes past
    /// it count for nothing, and their space is given back at once.
    pub async fn cut_to(&self, offset: u64) -> Result<(), StorageError> {
        let file =
            self.file.try_clone().map_err(|err| StorageError::io("cannot reopen the upload's file", err))?;
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            if file.metadata()?.len() > offset {
                file.set_len(offset)?;
            }
            Ok(())
        })
        .await
        .map_err(|err| StorageError::Task("truncate", Arc::new(err)))?
        .map_err(|err| StorageError::io("cannot cut the upload's file back", err))
    }

    /// Removes the upload's file (an expired or terminated upload), then releases the lock.
    pub async fn remove(self) -> Result<(), StorageError> {
        let path = self.path.clone();
        let removed = tokio::task::spawn_blocking(move || match std::fs::remove_file(&path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        })
        .await
        .map_err(|err| StorageError::Task("remove", Arc::new(err)))?;
        drop(self);
        removed.map_err(|err| StorageError::io("cannot remove the upload's file", err))
    }
}

impl Drop for UploadLock {
    fn drop(&mut self) {
        // The flock goes with the file (and every clone of it) being closed.
        self.locked.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&self.task_id);
    }
}
