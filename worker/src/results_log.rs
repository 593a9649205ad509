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

use std::fs::File;
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use file_lock::{FileLock, FileOptions};
use shared::LogLine;
use uuid::Uuid;

/// Clock skew tolerated between hosts when searching the log back to a task's `finished_at`.
pub const CLOCK_SKEW_ALLOWANCE: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// Bytes read at a time when scanning the log backwards.
const SCAN_CHUNK_BYTES: u64 = 64 * 1024;

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
    search_since: Option<DateTime<Utc>>,
    reply: tokio::sync::oneshot::Sender<io::Result<Appended>>,
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
            while let Ok(first) = requests.recv() {
                let mut batch = vec![first];
                batch.extend(requests.try_iter());
                match thread_file.append_batch(&batch) {
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
    /// A torn last line left by a crash mid-write is cut off first. With `search_since`, the log
    /// is first searched backwards (as far as that time, less [`CLOCK_SKEW_ALLOWANCE`], into the
    /// rotated files if need be) for a line of the same task, and nothing is written if one is
    /// there: this is how a redelivered task whose row says "finished, not yet logged", or an
    /// append retried after a failed flush, avoids a second line.
    pub async fn append(&self, line: &LogLine, search_since: Option<DateTime<Utc>>) -> io::Result<Appended> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request = Request { text: line.to_json_line(), task_id: line.task_id, search_since, reply };
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
        use std::os::unix::fs::MetadataExt as _;
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

    /// Writes one batch under both locks: searches where asked, then every line still to write
    /// in one `write`, then one `fdatasync` (also when every line was found, since a found line
    /// may be one whose flush failed). The outcomes are in the batch's order.
    fn append_batch(&self, batch: &[Request]) -> io::Result<Vec<Appended>> {
        let _in_process = IN_PROCESS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut lock = self.lock_current()?;
        repair_torn_tail(&mut lock.file, &self.path)?;
        let max = self.max_bytes.load(Ordering::Relaxed);
        let batch_bytes: u64 = batch.iter().map(|request| request.text.len() as u64).sum();
        let len = lock.file.metadata()?.len();
        if max > 0 && len > 0 && len + batch_bytes > max {
            self.rename_away()?;
            drop(lock);
            lock = self.lock_current()?;
        }
        let file = &mut lock.file;
        let mut out = String::with_capacity(batch_bytes as usize);
        let mut outcomes = Vec::with_capacity(batch.len());
        for request in batch {
            if let Some(since) = request.search_since
                && self.has_line(file, request.task_id, since)?
            {
                outcomes.push(Appended::AlreadyPresent);
                continue;
            }
            out.push_str(&request.text);
            outcomes.push(Appended::Written);
        }
        file.write_all(out.as_bytes())?;
        #[cfg(feature = "fault-injection")]
        if self.fail_next_flush.swap(false, Ordering::SeqCst) {
            return Err(io::Error::other("fault injection: the flush failed after the write"));
        }
        file.sync_data()?;
        self.flushes.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("md5_log_flushes_total").increment(1);
        metrics::histogram!("md5_log_lines_per_flush").record(batch.len() as f64);
        Ok(outcomes)
        // The lock is released when `lock` drops, after the data is on disk.
    }
}

/// Cuts off a last line that has no newline (a writer crashed mid-write; its task was never
/// acknowledged and will be logged again).
fn repair_torn_tail(file: &mut File, path: &Path) -> io::Result<()> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1)?;
    if last[0] == b'\n' {
        return Ok(());
    }
    let keep = last_newline_before(file, len)?.map_or(0, |at| at + 1);
    tracing::warn!(log.path = %path.display(), log.cut_bytes = len - keep, "cutting off a torn last line");
    file.set_len(keep)?;
    file.sync_data()
}

/// Offset of the last `\n` before `end`, if any.
fn last_newline_before(file: &File, end: u64) -> io::Result<Option<u64>> {
    let mut end = end;
    let mut buffer = vec![0u8; SCAN_CHUNK_BYTES as usize];
    while end > 0 {
        let start = end.saturating_sub(SCAN_CHUNK_BYTES);
        let chunk = &mut buffer[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(at) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(start + at as u64));
        }
        end = start;
    }
    Ok(None)
}

/// What a backward search of one file found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Search {
    /// A line of the task.
    Found,
    /// No line of the task back to a line older than the limit.
    NotFound,
    /// No line of the task, and every line of the file is at or after the limit: an earlier
    /// (rotated) file may hold it.
    ReachedStart,
}

/// Searches `file` backwards for a line of `task_id`, down to the first line older than `since`.
fn search_since_in(file: &File, task_id: Uuid, since: DateTime<Utc>) -> io::Result<Search> {
    let needle = task_id.to_string();
    let mut end = file.metadata()?.len();
    let mut carry: Vec<u8> = Vec::new();
    let mut buffer = vec![0u8; SCAN_CHUNK_BYTES as usize];
    while end > 0 {
        let start = end.saturating_sub(SCAN_CHUNK_BYTES);
        let chunk = &mut buffer[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        let mut joined = chunk.to_vec();
        joined.extend_from_slice(&carry);
        // The first piece may be the tail of a line that starts in an earlier chunk.
        let mut pieces: Vec<&[u8]> = joined.split(|&b| b == b'\n').collect();
        let head = if start > 0 { pieces.remove(0).to_vec() } else { Vec::new() };
        for piece in pieces.iter().rev().filter(|p| !p.is_empty()) {
            let Ok(line) = serde_json::from_slice::<LogLine>(piece) else {
                continue;
            };
            if line.task_id.to_string() == needle {
                return Ok(Search::Found);
            }
            if line.ts < since {
                return Ok(Search::NotFound);
            }
        }
        carry = head;
        end = start;
    }
    Ok(Search::ReachedStart)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::TaskStatus;

    fn line(task_id: Uuid, ts: &str) -> LogLine {
        LogLine {
            ts: chrono::DateTime::parse_from_rfc3339(ts).unwrap().with_timezone(&Utc),
            task_id,
            status: TaskStatus::Done,
            digests: Some(shared::Digests::md5_only("d41d8cd98f00b204e9800998ecf8427e".parse().unwrap())),
            size_bytes: 0,
            worker: "w".into(),
            error: None,
        }
    }

    fn temp_log(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("md5-log-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("md5.log")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn torn_tail_is_cut_before_the_next_append() {
        let path = temp_log("torn");
        let log = ResultsLog::open(&path).unwrap();
        let first = line(Uuid::now_v7(), "2026-11-27T19:00:00.000Z");
        log.append(&first, None).await.unwrap();
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"ts\":\"20").unwrap();
        let second = line(Uuid::now_v7(), "2026-11-27T19:00:01.000Z");
        log.append(&second, None).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}{}", first.to_json_line(), second.to_json_line()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_task_already_logged_is_not_logged_again() {
        let path = temp_log("dup");
        let log = ResultsLog::open(&path).unwrap();
        let task = Uuid::now_v7();
        let since = Utc::now();
        let ts = shared::time::format_millis(since);
        assert_eq!(log.append(&line(task, &ts), Some(since)).await.unwrap(), Appended::Written);
        // Many later lines push it into an earlier scan chunk.
        for _ in 0..2000 {
            log.append(&line(Uuid::now_v7(), &ts), None).await.unwrap();
        }
        assert_eq!(log.append(&line(task, &ts), Some(since)).await.unwrap(), Appended::AlreadyPresent);
        let other = Uuid::now_v7();
        assert_eq!(log.append(&line(other, &ts), Some(since)).await.unwrap(), Appended::Written);
    }

    #[tokio::test]
    async fn the_search_goes_on_into_rotated_files_and_rotation_keeps_every_line() {
        let path = temp_log("rotate");
        let log = ResultsLog::open(&path).unwrap().with_max_bytes(Some(2048));
        let since = Utc::now();
        let ts = shared::time::format_millis(since);
        let first = Uuid::now_v7();
        assert_eq!(log.append(&line(first, &ts), None).await.unwrap(), Appended::Written);
        let mut all = vec![first];
        for _ in 0..40 {
            let task = Uuid::now_v7();
            log.append(&line(task, &ts), None).await.unwrap();
            all.push(task);
        }
        assert!(log.rotate().await.unwrap().is_some(), "SIGHUP's rotation");
        let rotated = log.rotated_files().unwrap();
        assert!(rotated.len() >= 3, "rotated by size and on demand: {rotated:?}");
        // The first task's line is in the oldest rotated file; the current file is empty.
        assert_eq!(log.append(&line(first, &ts), Some(since)).await.unwrap(), Appended::AlreadyPresent);
        let mut lines = 0;
        for file in rotated.iter().chain(std::iter::once(&path)) {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            assert!(text.len() <= 2048, "{} is {} bytes", file.display(), text.len());
            lines += text.lines().count();
        }
        assert_eq!(lines, all.len(), "every line once, across the files");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_share_flushes_and_each_line_is_written_once() {
        let path = temp_log("group");
        let log = ResultsLog::open(&path).unwrap();
        let ts = shared::time::format_millis(Utc::now());
        let tasks: Vec<Uuid> = (0..64).map(|_| Uuid::now_v7()).collect();
        let appends: Vec<_> = tasks
            .iter()
            .map(|&task| {
                let (log, ts) = (log.clone(), ts.clone());
                tokio::spawn(async move { log.append(&line(task, &ts), None).await })
            })
            .collect();
        for append in appends {
            assert_eq!(append.await.unwrap().unwrap(), Appended::Written);
        }
        let flushes = log.file.flushes.load(Ordering::Relaxed);
        assert!(flushes < 32, "64 concurrent appends took {flushes} flushes");
        let text = std::fs::read_to_string(&path).unwrap();
        for task in &tasks {
            assert_eq!(text.matches(&task.to_string()).count(), 1);
        }
    }
}
