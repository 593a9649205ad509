//! Reading the locked log: the torn-tail repair, the backward search for a task's line, and the
//! task ids of the lines other writers appended since this process's last write.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Bytes read at a time when scanning the log.
const SCAN_CHUNK_BYTES: u64 = 64 * 1024;

/// The two fields of a line the scans need (the rest is not parsed).
#[derive(serde::Deserialize)]
struct Head {
    ts: DateTime<Utc>,
    task_id: Uuid,
}

/// Cuts off a last line that has no newline (a writer crashed mid-write; its task was never
/// acknowledged and will be logged again).
pub(super) fn repair_torn_tail(file: &mut File, path: &Path) -> io::Result<()> {
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

/// How a backward scan of one file ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scan {
    /// The visitor stopped it.
    Stopped,
    /// Every line was visited: an earlier (rotated) file may go on.
    ReachedStart,
}

/// Visits the lines of `file` from the last to the first (lines that are not a log line are
/// skipped) until `visit` breaks.
fn scan_back(file: &File, mut visit: impl FnMut(DateTime<Utc>, Uuid) -> ControlFlow<()>) -> io::Result<Scan> {
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
            let Ok(line) = serde_json::from_slice::<Head>(piece) else {
                continue;
            };
            if visit(line.ts, line.task_id).is_break() {
                return Ok(Scan::Stopped);
            }
        }
        carry = head;
        end = start;
    }
    Ok(Scan::ReachedStart)
}

/// What a backward search of one file found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Search {
    /// A line of the task.
    Found,
    /// No line of the task back to a line older than the limit.
    NotFound,
    /// No line of the task, and every line of the file is at or after the limit: an earlier
    /// (rotated) file may hold it.
    ReachedStart,
}

/// Searches `file` backwards for a line of `task_id`, down to the first line older than `since`.
pub(super) fn search_since_in(file: &File, task_id: Uuid, since: DateTime<Utc>) -> io::Result<Search> {
    let mut found = Search::NotFound;
    let scan = scan_back(file, |ts, id| {
        if id == task_id {
            found = Search::Found;
            return ControlFlow::Break(());
        }
        if ts < since { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    })?;
    Ok(if scan == Scan::ReachedStart { Search::ReachedStart } else { found })
}

/// Adds to `ids` the task of every line of `file` back to the first line older than `since`.
pub(super) fn ids_since_in(file: &File, since: DateTime<Utc>, ids: &mut HashSet<Uuid>) -> io::Result<Scan> {
    scan_back(file, |ts, id| {
        if ts < since {
            return ControlFlow::Break(());
        }
        ids.insert(id);
        ControlFlow::Continue(())
    })
}

/// Adds to `ids` the task of every line in `file`'s bytes from `from` to its end (`from` is the
/// start of a line: the end of an earlier write). Reads a chunk at a time.
pub(super) fn ids_after(file: &File, from: u64, ids: &mut HashSet<Uuid>) -> io::Result<()> {
    let len = file.metadata()?.len();
    let mut at = from;
    let mut pending: Vec<u8> = Vec::new();
    let mut buffer = vec![0u8; SCAN_CHUNK_BYTES as usize];
    while at < len {
        let chunk = &mut buffer[..(len - at).min(SCAN_CHUNK_BYTES) as usize];
        file.read_exact_at(chunk, at)?;
        at += chunk.len() as u64;
        pending.extend_from_slice(chunk);
        let complete = pending.iter().rposition(|&b| b == b'\n').map_or(0, |end| end + 1);
        for piece in pending[..complete].split(|&b| b == b'\n').filter(|p| !p.is_empty()) {
            if let Ok(line) = serde_json::from_slice::<Head>(piece) {
                ids.insert(line.task_id);
            }
        }
        pending.drain(..complete);
    }
    Ok(())
}
