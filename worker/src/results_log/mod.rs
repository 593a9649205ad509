//! The shared results log: one JSON line per finished task, appended under an exclusive lock.
//!
//! Writers on every host are serialized by a POSIX `fcntl` lock (the `file-lock` crate), which
//! works on NFS and shared container volumes. That lock belongs to the process, and closing any
//! handle to the file releases it, so writers inside one process are serialized by a mutex
//! around the whole open-lock-write-unlock sequence, and all reading is done through the locked
//! handle.
//!
//! Appends are group-committed: each handle has one writer thread, which takes every append that
//! arrived while it was busy as one batch, under one lock, with one `write` and one `fdatasync`,
//! and answers each caller only once the batch is on disk.
//!
//! A task has at most one line, even when two deliveries of it append at once (its first one,
//! just past its result's commit, and a redelivery that found the result committed and the line
//! missing): before writing, the writer reads the lines other writers appended since its own last
//! write (or, when it does not know where that was, the lines back to the batch's oldest
//! `finished_at`), and drops a line whose task is among them; an append that searches writes its
//! line only if the task has none.

mod scan;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use file_lock::{FileLock, FileOptions};
use shared::LogLine;
use uuid::Uuid;

use scan::{Scan, Search, ids_after, ids_since_in, repair_torn_tail, search_since_in};

/// Clock skew tolerated between hosts when searching the log back to a task's `finished_at`.
pub const CLOCK_SKEW_ALLOWANCE: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// How long the writer remembers a task whose line a searching append wrote: a first delivery
/// of the same task in this process that appends later (without searching) writes nothing.
const REMEMBER_SEARCHED_FOR: Duration = Duration::from_secs(3600);

/// Serializes appends inside this process. It is one lock for the whole process, not one per
/// handle: the fcntl lock is the process's, so two handles (even on different log files that
/// are the same file under two paths) must never hold it at once.
static IN_PROCESS: Mutex<()> = Mutex::new(());

/// Handle on the results log, shared by every job of a process (clones share the writer).
#[derive(Clone, Debug)]
pub struct ResultsLog {
    file: LogFile,
    writer: std::sync::mpsc::Sender<Request>,
}

/// The file itself: every operation on it runs under both locks.
#[derive(Clone, Debug)]
struct LogFile {
    path: PathBuf,
    /// Rotate before an append would make the file larger than this (`LOG_MAX_BYTES`; 0: never).
    max_bytes: Arc<AtomicU64>,
    /// Fault injection: the next flush fails after its write (test builds only).
    #[cfg(feature = "fault-injection")]
    fail_next_flush: Arc<std::sync::atomic::AtomicBool>,
    /// Batches written (each one `write` and one `fdatasync`).
    flushes: Arc<AtomicU64>,
}

/// One append waiting for the writer thread.
#[derive(Debug)]
struct Request {
    text: String,
    task_id: Uuid,
    /// When the task's result was committed: no line of it can be older (less the skew allowance).
    finished_at: DateTime<Utc>,
    /// Search the log for a line of the task before writing.
    search: bool,
    reply: tokio::sync::oneshot::Sender<io::Result<Appended>>,
}

/// What the writer thread knows of the file from its own writes.
#[derive(Debug, Default)]
struct WriterState {
    /// The file (device, inode) this writer last wrote to, and its length right after.
    last_write: Option<(u64, u64, u64)>,
    /// Tasks whose line a searching append wrote, and when.
    searched: HashMap<Uuid, Instant>,
}

/// What [`ResultsLog::append`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// The line was written and flushed to disk.
    Written,
    /// The task already had a line (a crash came between appending and recording it); nothing written.
    AlreadyPresent,
}

impl ResultsLog {
    /// A log at `path`; its folder is created if missing. Starts the writer thread, which ends
    /// when the last handle is dropped.
    pub fn open(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = LogFile {
            path: path.to_owned(),
            max_bytes: Arc::default(),
            #[cfg(feature = "fault-injection")]
            fail_next_flush: Arc::default(),
            flushes: Arc::default(),
        };
        let (writer, requests) = std::sync::mpsc::channel::<Request>();
        let thread_file = file.clone();
        std::thread::Builder::new().name("results-log".into()).spawn(move || {
            let mut state = WriterState::default();
            while let Ok(first) = requests.recv() {
                let mut batch = vec![first];
                batch.extend(requests.try_iter());
                match thread_file.append_batch(&mut state, &batch) {
                    Ok(outcomes) => {
                        for (request, outcome) in batch.into_iter().zip(outcomes) {
                            let _ = request.reply.send(Ok(outcome));
                        }
                    }
                    Err(err) => {
                        for request in batch {
                            let _ = request.reply.send(Err(io::Error::new(err.kind(), err.to_string())));
                        }
                    }
                }
            }
        })?;
        Ok(ResultsLog { file, writer })
    }

    /// Rotates the log whenever an append would take it past `max_bytes`.
    pub fn with_max_bytes(self, max_bytes: Option<u64>) -> Self {
        self.file.max_bytes.store(max_bytes.unwrap_or(0), Ordering::Relaxed);
        self
    }

    /// Test builds only: the next flush fails after its write went through.
    #[cfg(feature = "fault-injection")]
    pub fn fail_next_flush(&self) {
        self.file.fail_next_flush.store(true, Ordering::SeqCst);
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// Appends `line` with the other lines of its batch in one write call and flushes it to
    /// disk, under both locks; returns once it is on disk.
    ///
    /// A torn last line left by a crash mid-write is cut off first. With `search`, the log is
    /// first searched backwards (as far as `finished_at`, less [`CLOCK_SKEW_ALLOWANCE`], into the
    /// rotated files if need be) for a line of the same task, and nothing is written if one is
    /// there: this is how a redelivered task whose row says "finished, not yet logged", or an
    /// append retried after a failed flush, avoids a second line. Without `search`, the line is
    /// still not written if another writer appended one for the task meanwhile (see the module's
    /// documentation).
    pub async fn append(
        &self,
        line: &LogLine,
        finished_at: DateTime<Utc>,
        search: bool,
    ) -> io::Result<Appended> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request =
            Request { text: line.to_json_line(), task_id: line.task_id, finished_at, search, reply };
        self.writer.send(request).map_err(|_| io::Error::other("the results-log writer stopped"))?;
        answer.await.map_err(|_| io::Error::other("the results-log writer stopped"))?
    }

    /// Rotates the log now (on SIGHUP), under both locks: renames it to
    /// `<LOG_FILE>.<UTC timestamp>`; the next append starts a new file. An empty log is left alone.
    pub async fn rotate(&self) -> io::Result<Option<PathBuf>> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || {
            let _in_process = IN_PROCESS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let lock = file.lock_current()?;
            if lock.file.metadata()?.len() == 0 {
                return Ok(None);
            }
            file.rename_away().map(Some)
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Rotated files of this log, newest first.
    #[cfg(test)]
    fn rotated_files(&self) -> io::Result<Vec<PathBuf>> {
        self.file.rotated_files()
    }
}

impl LogFile {
    /// Opens and locks the file now at `path`. A writer that waited for the lock while another
    /// rotated the file holds the lock of the renamed file: it lets go and locks the new one.
    fn lock_current(&self) -> io::Result<FileLock> {
        loop {
            let options = FileOptions::new().read(true).append(true).create(true);
            let lock = FileLock::lock(&self.path, true, options)?;
            let locked = lock.file.metadata()?;
            match std::fs::metadata(&self.path) {
                Ok(now) if now.ino() == locked.ino() && now.dev() == locked.dev() => return Ok(lock),
                _ => continue,
            }
        }
    }

    /// Renames the (locked) log to a timestamped name in the same folder and flushes the folder.
    fn rename_away(&self) -> io::Result<PathBuf> {
        let stamp = Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
        let mut rotated = PathBuf::from(format!("{}.{stamp}", self.path.display()));
        let mut n = 1;
        while rotated.exists() {
            rotated = PathBuf::from(format!("{}.{stamp}-{n}", self.path.display()));
            n += 1;
        }
        std::fs::rename(&self.path, &rotated)?;
        if let Some(dir) = self.path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        tracing::info!(log.rotated_to = %rotated.display(), "results log rotated");
        Ok(rotated)
    }

    /// Rotated files of this log, newest first.
    fn rotated_files(&self) -> io::Result<Vec<PathBuf>> {
        let (Some(dir), Some(name)) = (self.path.parent(), self.path.file_name().and_then(|n| n.to_str()))
        else {
            return Ok(Vec::new());
        };
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        let prefix = format!("{name}.");
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .filter(|entry| {
                entry.file_name().to_str().and_then(|n| n.strip_prefix(&prefix)).is_some_and(|stamp| {
                    stamp.len() >= 20
                        && stamp.as_bytes()[..8].iter().all(u8::is_ascii_digit)
                        && stamp.as_bytes()[8] == b'T'
                })
            })
            .map(|entry| entry.path())
            .collect();
        // The timestamps sort as text.
        files.sort();
        files.reverse();
        Ok(files)
    }

    /// Whether the task has a line written at or after `since` (less the skew allowance), in
    /// the locked file or, while that does not reach back far enough, in the rotated ones (other
    /// files than the locked one: opening and closing them keeps the lock).
    fn has_line(&self, locked: &File, task_id: Uuid, since: DateTime<Utc>) -> io::Result<bool> {
        let since = since - CLOCK_SKEW_ALLOWANCE;
        let mut found = search_since_in(locked, task_id, since)?;
        if found == Search::ReachedStart {
            for rotated in self.rotated_files()? {
                found = search_since_in(&File::open(&rotated)?, task_id, since)?;
                if found != Search::ReachedStart {
                    break;
                }
            }
        }
        Ok(found == Search::Found)
    }

    /// Task ids of the lines in the locked file (and, back to `since`, the rotated ones) written
    /// at or after `since`, less the skew allowance.
    fn ids_since(&self, locked: &File, since: DateTime<Utc>) -> io::Result<HashSet<Uuid>> {
        let since = since - CLOCK_SKEW_ALLOWANCE;
        let mut ids = HashSet::new();
        if ids_since_in(locked, since, &mut ids)? == Scan::ReachedStart {
            for rotated in self.rotated_files()? {
                if ids_since_in(&File::open(&rotated)?, since, &mut ids)? != Scan::ReachedStart {
                    break;
                }
            }
        }
        Ok(ids)
    }

    /// Writes one batch under both locks: drops the lines whose task another writer logged
    /// since this one's last write (or, not knowing where that was, since the batch's oldest
    /// `finished_at`), searches where asked, then writes every line still to write in one
    /// `write`, then one `fdatasync` (also when nothing was written, since a found line may be
    /// one whose flush failed). The outcomes are in the batch's order.
    fn append_batch(&self, state: &mut WriterState, batch: &[Request]) -> io::Result<Vec<Appended>> {
        let _in_process = IN_PROCESS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut lock = self.lock_current()?;
        repair_torn_tail(&mut lock.file, &self.path)?;
        // Lines appended by others since our last write, if we know where that was.
        let mut logged: Option<HashSet<Uuid>> = None;
        let meta = lock.file.metadata()?;
        if let Some((dev, ino, end)) = state.last_write
            && (dev, ino) == (meta.dev(), meta.ino())
            && end <= meta.len()
        {
            let mut ids = HashSet::new();
            ids_after(&lock.file, end, &mut ids)?;
            logged = Some(ids);
        }
        let max = self.max_bytes.load(Ordering::Relaxed);
        let batch_bytes: u64 = batch.iter().map(|request| request.text.len() as u64).sum();
        if max > 0 && meta.len() > 0 && meta.len() + batch_bytes > max {
            self.rename_away()?;
            drop(lock);
            lock = self.lock_current()?;
            // Another process may have created and written the new file before we locked it.
            if let Some(ids) = logged.as_mut() {
                ids_after(&lock.file, 0, ids)?;
            }
        }
        let logged = match logged {
            Some(ids) => ids,
            None => {
                let oldest = batch.iter().map(|request| request.finished_at).min().unwrap_or_else(Utc::now);
                self.ids_since(&lock.file, oldest)?
            }
        };
        let now = Instant::now();
        state.searched.retain(|_, at| now.duration_since(*at) < REMEMBER_SEARCHED_FOR);
        let file = &mut lock.file;
        let mut out = String::with_capacity(batch_bytes as usize);
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut in_batch = HashSet::new();
        let mut searched = Vec::new();
        for request in batch {
            let present = logged.contains(&request.task_id)
                || state.searched.contains_key(&request.task_id)
                || !in_batch.insert(request.task_id)
                || (request.search && self.has_line(file, request.task_id, request.finished_at)?);
            if present {
                outcomes.push(Appended::AlreadyPresent);
                continue;
            }
            if request.search {
                searched.push(request.task_id);
            }
            out.push_str(&request.text);
            outcomes.push(Appended::Written);
        }
        file.write_all(out.as_bytes())?;
        #[cfg(feature = "fault-injection")]
        if self.fail_next_flush.swap(false, Ordering::SeqCst) {
            return Err(io::Error::other("fault injection: the flush failed after the write"));
        }
        let meta = file.metadata()?;
        state.last_write = Some((meta.dev(), meta.ino(), meta.len()));
        file.sync_data()?;
        state.searched.extend(searched.into_iter().map(|id| (id, now)));
        self.flushes.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("md5_log_flushes_total").increment(1);
        metrics::histogram!("md5_log_lines_per_flush").record(batch.len() as f64);
        Ok(outcomes)
        // The lock is released when `lock` drops, after the data is on disk.
    }
}

#[cfg(test)]
mod tests;
