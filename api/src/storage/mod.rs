//! Upload storage: how an upload's bytes reach `UPLOAD_DIR` durably, and who may remove them.
//!
//! An upload is written to its partial file `.<task id>.part` ([`PartFile`], through two write
//! buffers on blocking threads), flushed to disk, then renamed to its final name (the task id)
//! in a batch with other uploads' renames that share one folder `fsync` ([`Storage::promote`]).
//! A partial file is removed unless its owner [keeps](PartFile::keep) it, and what an api killed
//! mid-upload leaves behind is removed by the [`janitor`].
//!
//! **This module knows nothing about HTTP, multipart or Postgres**: every upload protocol (one
//! request, or several that each append a part) stores its bytes through it.

pub mod direct;
pub mod janitor;
pub mod resumable;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use direct::{DirectMode, WriteBuffer};
use shared::batch::{BatchError, Batcher};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Size of each of the two write buffers of an upload (one filling, one being written) when the
/// large-buffer budget is spent.
pub const WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// Size of each of the two write buffers of an upload that got a share of the budget: 16× fewer
/// hand-offs to a blocking thread than [`WRITE_BUFFER_BYTES`] (one per MiB instead of per 64 KiB).
pub const LARGE_WRITE_BUFFER_BYTES: usize = 1024 * 1024;
/// Size of each of the two write buffers of an upload that finds the whole budget free, no other
/// upload holding large buffers: a direct write of 2 MiB keeps the device busier than one of
/// 1 MiB, and a single upload has no other upload's writes beside its own to do that (`dd` of
/// 1 GiB with direct writes on the benchmark's host: 0.55 s in 2 MiB blocks, 0.75 s in 1 MiB
/// ones; beside a direct reader 0.74–0.78 s against 1.09–1.12; BENCHMARKS.md, step 17).
pub const SOLE_WRITE_BUFFER_BYTES: usize = 2 * LARGE_WRITE_BUFFER_BYTES;
/// Memory the uploads in flight may hold in large buffers together: an upload alone writes in
/// 2 MiB blocks (half the budget), the next ones in 1 MiB blocks while the budget lasts, the
/// others in 64 KiB ones, so 64 uploads hold at most 8 MiB + 61 × 128 KiB = 15.6 MiB of
/// buffers. (16 MiB took the api to 64.5 MiB under the benchmark's attacks with 64 uploads in
/// flight.)
pub const LARGE_BUFFER_BUDGET_BYTES: usize = 8 * 1024 * 1024;
/// A live upload writes to its partial file at least this often (when bytes arrive at all), so
/// the age of a partial file tells whether its upload is still alive (see [`janitor`]).
pub const PART_TOUCH_INTERVAL: Duration = Duration::from_secs(5);
/// Most renames one folder `fsync` carries.
const MAX_RENAME_BATCH: usize = 256;

/// Why storing an upload failed: the file-system error (its kind tells a full volume from a
/// read-only one) and what was being done.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// A file-system call failed.
    #[error("{action}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The error, shared by every upload of a batch.
        #[source]
        source: Arc<io::Error>,
    },
    /// A blocking write or the rename batch did not complete.
    #[error("the upload's {0} did not complete")]
    Task(&'static str, #[source] Arc<dyn std::error::Error + Send + Sync>),
}

impl StorageError {
    fn io(action: &'static str, err: io::Error) -> Self {
        StorageError::Io { action, source: Arc::new(err) }
    }

    /// The kind of the file-system error (`Other` when the failure was not one).
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            StorageError::Io { source, .. } => source.kind(),
            StorageError::Task(..) => io::ErrorKind::Other,
        }
    }

    /// The file-system error itself, for a message that names it.
    pub fn io_error(&self) -> &dyn std::error::Error {
        match self {
            StorageError::Io { source, .. } => &**source,
            StorageError::Task(_, source) => &**source,
        }
    }
}

/// The upload folder and its rename batcher; cheap to clone.
#[derive(Clone)]
pub struct Storage {
    dir: PathBuf,
    min_free_bytes: u64,
    /// Permits of [`LARGE_WRITE_BUFFER_BYTES`]: two per upload that writes in 1 MiB blocks, four
    /// for one in 2 MiB blocks.
    large_buffers: Arc<Semaphore>,
    /// Resumable uploads locked by this process (see [`resumable`]).
    locked: resumable::Locked,
    renames: Batcher<(PathBuf, PathBuf), Result<(), StorageError>>,
}

impl Storage {
    /// Storage in `dir`, refusing new uploads when less than `min_free_bytes` are free.
    pub fn new(dir: &Path, min_free_bytes: u64) -> Self {
        let folder = dir.to_owned();
        let renames = Batcher::spawn("rename", MAX_RENAME_BATCH, move |moves: Vec<(PathBuf, PathBuf)>| {
            let folder = folder.clone();
            async move { Ok(tokio::task::spawn_blocking(move || rename_all_and_sync(&folder, &moves)).await?) }
        });
        Storage {
            dir: dir.to_owned(),
            min_free_bytes,
            renames,
            large_buffers: Arc::new(Semaphore::new(LARGE_BUFFER_BUDGET_BYTES / LARGE_WRITE_BUFFER_BYTES)),
            locked: resumable::Locked::default(),
        }
    }

    /// Removes the stored upload of a task just cancelled (a missing file is fine: a worker may
    /// have removed it). A worker still hashing it reads on from its open descriptor.
    pub async fn remove_cancelled(&self, task_id: uuid::Uuid) {
        match tokio::fs::remove_file(shared::config::upload_path(&self.dir, task_id)).await {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(task.id = %task_id, error = %err, "cannot delete a cancelled task's upload")
            }
        }
    }

    /// The size of the upload volume (`u64::MAX` if it cannot be read).
    pub fn volume_bytes(&self) -> u64 {
        rustix::fs::statvfs(&self.dir).map_or(u64::MAX, |stats| stats.f_blocks.saturating_mul(stats.f_frsize))
    }

    /// The bytes of the upload volume this process may still use (`f_bavail`).
    pub fn free_bytes(&self) -> io::Result<u64> {
        let stats = rustix::fs::statvfs(&self.dir)?;
        Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
    }

    /// Fails with [`io::ErrorKind::StorageFull`] when the folder has less than the reserve free.
    pub fn check_free_space(&self) -> Result<(), StorageError> {
        if self.min_free_bytes == 0 {
            return Ok(());
        }
        let free = self.free_bytes().map_err(|err| StorageError::io("cannot stat UPLOAD_DIR", err))?;
        if free < self.min_free_bytes {
            return Err(StorageError::io(
                "the upload volume is below its free-space reserve",
                io::Error::new(io::ErrorKind::StorageFull, format!("{free} bytes free")),
            ));
        }
        Ok(())
    }

    /// A writer into the partial file of a new upload for `task_id` (created on its first write).
    pub fn create(&self, task_id: Uuid) -> PartWriter {
        let part = PartFile {
            partial: self.dir.join(format!(".{task_id}.part")),
            stored: shared::config::upload_path(&self.dir, task_id),
            file: None,
            in_flight: None,
            kept: false,
            written: 0,
            flush_handle: None,
            direct: DirectMode::Off,
        };
        PartWriter::new(part, self.buffer_grant())
    }

    /// Write buffers from the budget: two of [`SOLE_WRITE_BUFFER_BYTES`] when no other upload
    /// holds any, else two of [`LARGE_WRITE_BUFFER_BYTES`] if it has room for them, else small
    /// ones.
    fn buffer_grant(&self) -> BufferGrant {
        const PERMITS: usize = LARGE_BUFFER_BUDGET_BYTES / LARGE_WRITE_BUFFER_BYTES;
        let sole = 2 * (SOLE_WRITE_BUFFER_BYTES / LARGE_WRITE_BUFFER_BYTES);
        if self.large_buffers.available_permits() == PERMITS
            && let Ok(permit) = self.large_buffers.clone().try_acquire_many_owned(sole as u32)
        {
            return BufferGrant { block: SOLE_WRITE_BUFFER_BYTES, _permit: Some(permit) };
        }
        match self.large_buffers.clone().try_acquire_many_owned(2) {
            Ok(permit) => BufferGrant { block: LARGE_WRITE_BUFFER_BYTES, _permit: Some(permit) },
            Err(_) => BufferGrant { block: WRITE_BUFFER_BYTES, _permit: None },
        }
    }

    /// Renames `part`'s finished, flushed file to its final name and makes the rename durable,
    /// in a batch with other uploads' renames (one folder `fsync` for all).
    pub async fn promote(&self, part: &mut PartFile) -> Result<(), StorageError> {
        part.wait().await?;
        part.file = None;
        let done = self.renames.call((part.partial.clone(), part.stored.clone())).await;
        done.map_err(|err: BatchError| StorageError::Task("rename", Arc::new(err)))?
    }
}

fn rename_all_and_sync(upload_dir: &Path, moves: &[(PathBuf, PathBuf)]) -> Vec<Result<(), StorageError>> {
    let mut done: Vec<Result<(), StorageError>> = moves
        .iter()
        .map(|(from, to)| {
            std::fs::rename(from, to).map_err(|err| StorageError::io("cannot rename the upload", err))
        })
        .collect();
    if done.iter().any(Result::is_ok) {
        let synced = std::fs::File::open(upload_dir).and_then(|dir| dir.sync_all());
        if let Err(err) = synced {
            let failure = StorageError::io("cannot flush the upload folder", err);
            for result in done.iter_mut().filter(|result| result.is_ok()) {
                *result = Err(failure.clone());
            }
        }
    }
    done
}

/// What a blocking write gives back: the file to write to next, the emptied buffer, and whether
/// the file was left in direct mode.
type WriteDone = (std::fs::File, WriteBuffer, DirectMode);

/// The files of one upload in progress, and the blocking write in flight; removed unless
/// [`PartFile::keep`] was called. This covers errors, panics and a client that disconnects
/// (the handler future is dropped): a write still running on a blocking thread is awaited
/// before the files are removed, so it cannot recreate one afterwards.
pub struct PartFile {
    partial: PathBuf,
    stored: PathBuf,
    file: Option<std::fs::File>,
    in_flight: Option<JoinHandle<io::Result<WriteDone>>>,
    kept: bool,
    /// Bytes whose write completed.
    written: u64,
    /// A second handle on the file, for flushes that run beside the writes.
    flush_handle: Option<Arc<std::fs::File>>,
    /// Whether whole blocks go past the page cache (see [`direct`]).
    direct: DirectMode,
}

impl PartFile {
    /// Waits for the previous write, then starts writing `buffer` (creating the file on the
    /// first call) and gives back the previous write's buffer, emptied, to fill next. With
    /// `last`, also waits for this write and flushes the file to disk.
    /// Every write but the last may go past the page cache, when it is a whole aligned block.
    pub async fn write(&mut self, buffer: WriteBuffer, last: bool) -> Result<WriteBuffer, StorageError> {
        let spare = self.wait().await?;
        let file = self.file.take();
        let partial = self.partial.clone();
        let (offset, mode) = (self.written, self.direct);
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            let mut file = match file {
                Some(file) => file,
                None => std::fs::OpenOptions::new().write(true).create_new(true).open(&partial)?,
            };
            let mode = direct::write_block(&mut file, &buffer, offset, !last, mode)?;
            if last {
                file.sync_data()?;
            }
            Ok((file, buffer, mode))
        }));
        if last {
            self.wait().await?;
        }
        Ok(spare
            .map(|mut spare| {
                spare.clear();
                spare
            })
            .unwrap_or_default())
    }

    /// Waits for the write in flight, if any; returns its buffer.
    async fn wait(&mut self) -> Result<Option<WriteBuffer>, StorageError> {
        let Some(in_flight) = self.in_flight.as_mut() else { return Ok(None) };
        let result = in_flight.await;
        self.in_flight = None;
        let (file, buffer, mode) = result
            .map_err(|err| StorageError::Task("write", Arc::new(err)))?
            .map_err(|err| StorageError::io("cannot write the upload", err))?;
        self.written += buffer.len() as u64;
        self.direct = mode;
        if self.flush_handle.is_none() {
            self.flush_handle = file.try_clone().ok().map(Arc::new);
        }
        self.file = Some(file);
        Ok(Some(buffer))
    }

    /// Keeps the files: their upload is committed.
    pub fn keep(&mut self) {
        self.kept = true;
    }
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let names = [std::mem::take(&mut self.partial), std::mem::take(&mut self.stored)];
        let remove = move || {
            for name in &names {
                let _ = std::fs::remove_file(name);
            }
        };
        match (self.in_flight.take(), tokio::runtime::Handle::try_current()) {
            (Some(in_flight), Ok(runtime)) => {
                runtime.spawn(async move {
                    let _ = in_flight.await;
                    remove();
                });
            }
            _ => remove(),
        }
    }
}

/// The size of an upload's two write buffers, and its share of the large-buffer budget.
struct BufferGrant {
    block: usize,
    _permit: Option<OwnedSemaphorePermit>,
}

/// A [`PartFile`] written through its two buffers: chunks of any size go in, whole buffers go
/// out to a blocking thread while the next fills, and [`PartWriter::finish`] makes every byte
/// durable.
pub struct PartWriter {
    part: PartFile,
    buffer: WriteBuffer,
    grant: BufferGrant,
    last_write: Instant,
    /// Whether a flush runs beside the writes.
    flushing: Arc<std::sync::atomic::AtomicBool>,
    /// The length the last flush began at.
    flush_started: u64,
}

impl PartWriter {
    /// Writes into `part` from its first byte.
    fn new(part: PartFile, grant: BufferGrant) -> Self {
        PartWriter {
            part,
            buffer: WriteBuffer::default(),
            grant,
            last_write: Instant::now(),
            flushing: Arc::default(),
            flush_started: 0,
        }
    }

    /// Bytes written to the file so far (not counting what is buffered or being written).
    pub fn written(&self) -> u64 {
        self.part.written
    }

    /// Flushes the file in the background, beside the writes, once at least `every` bytes were
    /// written since the last flush began and none is running: the flush gives the length it
    /// made durable (every byte before it is on disk, and visible to another host over a network
    /// filesystem).
    pub fn checkpoint(&mut self, every: u64) -> Option<JoinHandle<io::Result<u64>>> {
        use std::sync::atomic::Ordering;
        let written = self.part.written;
        if self.flushing.load(Ordering::Acquire) || written < self.flush_started + every {
            return None;
        }
        let handle = self.part.flush_handle.clone()?;
        self.flushing.store(true, Ordering::Release);
        self.flush_started = written;
        let flushing = self.flushing.clone();
        Some(tokio::task::spawn_blocking(move || {
            let flushed = handle.sync_data().map(|()| written);
            flushing.store(false, Ordering::Release);
            flushed
        }))
    }

    /// Adds `chunk`, writing each buffer as it fills (and at least every
    /// [`PART_TOUCH_INTERVAL`] while bytes arrive, so the janitor sees the upload is alive).
    pub async fn write(&mut self, mut chunk: &[u8]) -> Result<(), StorageError> {
        while !chunk.is_empty() {
            let take = chunk.len().min(self.grant.block - self.buffer.len());
            if self.buffer.capacity() < self.buffer.len() + take {
                // A buffer grows (doubling) up to its block as bytes come: a small upload
                // allocates what it holds, not two blocks. At its block it is made aligned,
                // so that it can be written past the page cache (see `direct`).
                let want = (self.buffer.capacity() * 2).max(self.buffer.len() + take).min(self.grant.block);
                if want == self.grant.block {
                    self.buffer = WriteBuffer::aligned(want, self.buffer.as_slice());
                } else {
                    self.buffer.reserve_exact(want);
                }
            }
            self.buffer.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if self.buffer.len() == self.grant.block || self.last_write.elapsed() >= PART_TOUCH_INTERVAL {
                let full = std::mem::take(&mut self.buffer);
                self.buffer = self.part.write(full, false).await?;
                self.last_write = Instant::now();
            }
        }
        Ok(())
    }

    /// Writes what is buffered and flushes the file to disk (`fdatasync`): the promise outlives
    /// a crash of this host, because the bytes are on disk before the row exists.
    pub async fn finish(mut self) -> Result<PartFile, StorageError> {
        self.sync().await?;
        Ok(self.part)
    }

    /// Gives up: waits for the write in flight, if any, and drops what is buffered.
    pub async fn abandon(mut self) {
        let _ = self.part.wait().await;
    }

    /// Writes what is buffered and flushes the file to disk; writing may go on afterwards.
    pub async fn sync(&mut self) -> Result<(), StorageError> {
        let last = std::mem::take(&mut self.buffer);
        self.buffer = self.part.write(last, true).await?;
        self.last_write = Instant::now();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1 KiB upload holds about 1 KiB of buffer, not two blocks; a large one grows its buffer
    /// to one block and no further, a 2 MiB one when it is alone on the budget, 1 MiB or 64 KiB
    /// beside others; the bytes reach the file either way.
    #[tokio::test]
    async fn write_buffers_grow_with_the_bytes_up_to_their_block() {
        let dir = std::env::temp_dir().join(format!("md5-api-buffers-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let storage = Storage::new(&dir, 0);

        let small_bytes = vec![7u8; 1024];
        let mut small = storage.create(Uuid::new_v4());
        small.write(&small_bytes).await.unwrap();
        assert!(small.buffer.capacity() < 4096, "a 1 KiB upload holds {} bytes", small.buffer.capacity());
        small.sync().await.unwrap();
        assert!(small.buffer.capacity() < 4096, "after its flush, {} bytes", small.buffer.capacity());
        let small = small.finish().await.unwrap();
        assert_eq!(std::fs::read(&small.partial).unwrap(), small_bytes);

        let mut large = storage.create(Uuid::new_v4());
        assert_eq!(large.grant.block, SOLE_WRITE_BUFFER_BYTES, "alone on a fresh budget");
        let large_bytes: Vec<u8> = (0..3 * SOLE_WRITE_BUFFER_BYTES + 5000).map(|n| (n % 251) as u8).collect();
        for chunk in large_bytes.chunks(16 * 1024) {
            large.write(chunk).await.unwrap();
            assert!(
                large.buffer.capacity() <= SOLE_WRITE_BUFFER_BYTES + direct::DIRECT_ALIGN,
                "{}",
                large.buffer.capacity()
            );
        }
        // Beside it, the budget's other half goes in 1 MiB blocks, then the rest is small.
        let beside: Vec<PartWriter> = (0..3).map(|_| storage.create(Uuid::new_v4())).collect();
        let blocks: Vec<usize> = beside.iter().map(|writer| writer.grant.block).collect();
        assert_eq!(blocks, [LARGE_WRITE_BUFFER_BYTES, LARGE_WRITE_BUFFER_BYTES, WRITE_BUFFER_BYTES]);
        drop(beside);
        let large = large.finish().await.unwrap();
        assert_eq!(std::fs::read(&large.partial).unwrap(), large_bytes);

        drop((small, large));
        std::fs::remove_dir(&dir).expect("the unkept partial files were removed");
    }
}
