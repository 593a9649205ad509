//! The shared results log: one JSON line per finished task, appended under an exclusive lock.
//!
//! Writers on every host are serialized by a POSIX `fcntl` lock (the `file-lock` crate), which
//! works on NFS and shared container volumes. That lock belongs to the process, and closing any
//! handle to the file releases it, so writers inside one process are serialized by a mutex
//! around the whole open-lock-write-unlock sequence, and all reading is done through the locked
//! handle.

use std::fs::File;
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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

/// Handle on the results log, shared by every job of a process.
#[derive(Clone, Debug)]
pub struct ResultsLog {
    path: PathBuf,
    /// Rotate before an append would make the file larger than this (`LOG_MAX_BYTES`).
    max_bytes: Option<u64>,
    /// Fault injection: the next flush fails after its write (test builds only).
    #[cfg(feature = "fault-injection")]
    fail_next_flush: std::sync::Arc<std::sync::atomic::AtomicBool>,
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
    /// A log at `path`; its folder is created if missing.
    pub fn open(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        Ok(ResultsLog {
            path: path.to_owned(),
            max_bytes: None,
            #[cfg(feature = "fault-injection")]
            fail_next_flush: Default::default(),
        })
    }

    /// Test builds only: the next flush fails after its write went through.
    #[cfg(feature = "fault-injection")]
    pub fn fail_next_flush(&self) {
        self.fail_next_flush.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rotates the log whenever an append would take it past `max_bytes`.
    pub fn with_max_bytes(mut self, max_bytes: Option<u64>) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Rotates the log now (on SIGHUP), under both locks: renames it to
    /// `<LOG_FILE>.<UTC timestamp>`; the next append starts a new file. An empty log is left alone.
    pub async fn rotate(&self) -> io::Result<Option<PathBuf>> {
        let log = self.clone();
        tokio::task::spawn_blocking(move || {
            let _in_process = IN_PROCESS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let lock = log.lock_current()?;
            if lock.file.metadata()?.len() == 0 {
                return Ok(None);
            }
            log.rename_away().map(Some)
        })
        .await
        .map_err(io::Error::other)?
    }

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

    /// Appends `line` with one write call and flushes it to disk, under both locks.
    ///
    /// A torn last line left by a crash mid-write is cut off first. With `search_since`, the log
    /// is first searched backwards (as far as that time, less [`CLOCK_SKEW_ALLOWANCE`]) for a line
    /// of the same task, and nothing is written if one is there: this is how a redelivered task
    /// whose row says "finished, not yet logged" avoids a second line.
    pub async fn append(&self, line: &LogLine, search_since: Option<DateTime<Utc>>) -> io::Result<Appended> {
        let log = self.clone();
        let text = line.to_json_line();
        let task_id = line.task_id;
        tokio::task::spawn_blocking(move || log.append_blocking(&text, task_id, search_since))
            .await
            .map_err(io::Error::other)?
    }

    fn append_blocking(
        &self,
        text: &str,
        task_id: Uuid,
        search_since: Option<DateTime<Utc>>,
    ) -> io::Result<Appended> {
        let _in_process = IN_PROCESS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut lock = self.lock_current()?;
        repair_torn_tail(&mut lock.file, &self.path)?;
        if let Some(max) = self.max_bytes {
            let len = lock.file.metadata()?.len();
            if len > 0 && len + text.len() as u64 > max {
                self.rename_away()?;
                drop(lock);
                lock = self.lock_current()?;
            }
        }
        let file = &mut lock.file;
        if let Some(since) = search_since {
            let since = since - CLOCK_SKEW_ALLOWANCE;
            let mut found = search_since_in(file, task_id, since)?;
            // The current file does not reach back far enough: go on into the rotated ones.
            // They are other files than the locked one, so opening and closing them keeps the lock.
            if found == Search::ReachedStart {
                for rotated in self.rotated_files()? {
                    found = search_since_in(&File::open(&rotated)?, task_id, since)?;
                    if found != Search::ReachedStart {
                        break;
                    }
                }
            }
            if found == Search::Found {
                // The line may be one whose flush failed: flush again before it counts as written.
                file.sync_data()?;
                return Ok(Appended::AlreadyPresent);
            }
        }
        file.write_all(text.as_bytes())?;
        #[cfg(feature = "fault-injection")]
        if self.fail_next_flush.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(io::Error::other("fault injection: the flush failed after the write"));
        }
        file.sync_data()?;
        Ok(Appended::Written)
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
            if line.timestamp().is_some_and(|ts| ts < since) {
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
            ts: ts.into(),
            task_id,
            status: TaskStatus::Done,
            md5: Some("d41d8cd98f00b204e9800998ecf8427e".into()),
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
}
