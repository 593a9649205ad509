//! One line of the results log.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Algorithm, Digests, Md5Hex, Task, TaskStatus};

/// A results-log line: `{"ts", "task_id", "status", "md5", "size_bytes", "worker", "error"}`,
/// and last, only for a task hashed with more than MD5, `"digests": {"<algorithm>": "<hex>"}`
/// (the others; a reader of the older fields sees the same line as before).
///
/// Serialized with `serde_json`, so every string (the error text may quote a path or an OS
/// message) is escaped and a line never contains a raw newline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "Wire", from = "Wire")]
pub struct LogLine {
    /// When the line was written; RFC 3339 UTC with milliseconds in the file.
    pub ts: DateTime<Utc>,
    /// The task the line is about.
    pub task_id: Uuid,
    /// `done` or `failed`.
    pub status: TaskStatus,
    /// The file's digests, for `done` (written as the `md5` field, `null` for `failed`, and the
    /// `digests` field).
    pub digests: Option<Digests>,
    /// Size of the hashed upload.
    pub size_bytes: i64,
    /// Consumer name of the worker that wrote the line.
    pub worker: String,
    /// Why the task failed, for `failed`.
    pub error: Option<String>,
}

/// The line as it is in the file, field by field in this order.
#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(with = "crate::time::millis")]
    ts: DateTime<Utc>,
    task_id: Uuid,
    status: TaskStatus,
    md5: Option<Md5Hex>,
    size_bytes: i64,
    worker: String,
    error: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    digests: BTreeMap<Algorithm, String>,
}

impl From<LogLine> for Wire {
    fn from(line: LogLine) -> Self {
        let (md5, digests) = match line.digests {
            Some(digests) => (Some(digests.md5), digests.others),
            None => (None, BTreeMap::new()),
        };
        Wire {
            ts: line.ts,
            task_id: line.task_id,
            status: line.status,
            md5,
            size_bytes: line.size_bytes,
            worker: line.worker,
            error: line.error,
            digests,
        }
    }
}

impl From<Wire> for LogLine {
    fn from(wire: Wire) -> Self {
        LogLine {
            ts: wire.ts,
            task_id: wire.task_id,
            status: wire.status,
            digests: wire.md5.map(|md5| Digests { md5, others: wire.digests }),
            size_bytes: wire.size_bytes,
            worker: wire.worker,
            error: wire.error,
        }
    }
}

impl LogLine {
    /// The line for a finished task, written by `worker` at `now`.
    pub fn new(task: &Task, worker: &str, now: DateTime<Utc>) -> Self {
        LogLine {
            ts: now,
            task_id: task.task_id,
            status: task.status,
            digests: task.digests(),
            size_bytes: task.size_bytes,
            worker: worker.to_owned(),
            error: task.error.clone(),
        }
    }

    /// The line as written to the file: compact JSON followed by `\n`.
    pub fn to_json_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("a LogLine always serializes");
        line.push('\n');
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_has_the_spec_field_order_and_escapes_text() {
        let line = LogLine {
            ts: "2026-11-27T19:00:01.456789Z".parse().unwrap(),
            task_id: Uuid::nil(),
            status: TaskStatus::Failed,
            digests: None,
            size_bytes: 3,
            worker: "w1".into(),
            error: Some("bad\n\"name\"".into()),
        }
        .to_json_line();
        assert_eq!(
            line,
            "{\"ts\":\"2026-11-27T19:00:01.456Z\",\"task_id\":\"00000000-0000-0000-0000-000000000000\",\
             \"status\":\"failed\",\"md5\":null,\"size_bytes\":3,\"worker\":\"w1\",\
             \"error\":\"bad\\n\\\"name\\\"\"}\n"
        );
        assert_eq!(line.matches('\n').count(), 1);
        let back: LogLine = serde_json::from_str(&line).unwrap();
        assert_eq!(back.ts.to_rfc3339(), "2026-11-27T19:00:01.456+00:00", "milliseconds, read back");
        assert_eq!(back.digests, None);
    }

    #[test]
    fn a_done_line_carries_its_digests_as_the_md5_field() {
        let md5: crate::Md5Hex = "9e107d9d372bb6826bd81d3542a419d6".parse().unwrap();
        let line = LogLine {
            ts: "2026-11-27T19:00:01.456Z".parse().unwrap(),
            task_id: Uuid::nil(),
            status: TaskStatus::Done,
            digests: Some(Digests::md5_only(md5.clone())),
            size_bytes: 43,
            worker: "w1".into(),
            error: None,
        };
        let json = line.to_json_line();
        assert!(
            json.contains(
                "\"status\":\"done\",\"md5\":\"9e107d9d372bb6826bd81d3542a419d6\",\"size_bytes\":43"
            ),
            "{json}"
        );
        let back: LogLine = serde_json::from_str(&json).unwrap();
        assert_eq!(back.digests.map(|digests| digests.md5), Some(md5));
    }

    #[test]
    fn other_digests_come_last_and_only_when_there_are_some() {
        let md5: crate::Md5Hex = "9e107d9d372bb6826bd81d3542a419d6".parse().unwrap();
        let mut digests = Digests::md5_only(md5);
        digests.others.insert(Algorithm::Crc32c, "22620404".into());
        digests.others.insert(Algorithm::Sha256, "ab".repeat(32));
        let line = LogLine {
            ts: "2026-11-27T19:00:01.456Z".parse().unwrap(),
            task_id: Uuid::nil(),
            status: TaskStatus::Done,
            digests: Some(digests),
            size_bytes: 43,
            worker: "w1".into(),
            error: None,
        };
        let json = line.to_json_line();
        assert!(
            json.ends_with(&format!(
                "\"md5\":\"9e107d9d372bb6826bd81d3542a419d6\",\"size_bytes\":43,\"worker\":\"w1\",\"error\":null,\
                 \"digests\":{{\"sha-256\":\"{}\",\"crc32c\":\"22620404\"}}}}\n",
                "ab".repeat(32)
            )),
            "{json}"
        );
        let back: LogLine = serde_json::from_str(&json).unwrap();
        assert_eq!(back, line);
    }
}
