//! The `md5_tasks` row and its status enum.

use std::io::Write;

use chrono::{DateTime, Utc};
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::prelude::*;
use diesel::serialize::{self, IsNull, Output, ToSql};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::md5_hex::Md5Hex;
use crate::schema::{md5_idempotency_keys, md5_tasks, md5_uploads, sql_types};

/// Where a task is in its life: `queued` → `processing` → `done` or `failed`; a resumable upload's
/// task is `uploading` first, and ends `expired` or `cancelled` if it never completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, AsExpression, FromSqlRow, Serialize, Deserialize)]
#[diesel(sql_type = sql_types::TaskStatus)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// A resumable upload still receiving bytes; not queued yet.
    Uploading,
    /// Stored and waiting for a worker.
    Queued,
    /// A worker holds it under a lease.
    Processing,
    /// Hashed; `result` holds the MD5.
    Done,
    /// Could not be hashed; `error` says why.
    Failed,
    /// A resumable upload abandoned before its last byte: its file is gone, it gets no log line.
    Expired,
    /// A resumable upload terminated by its client: its file is gone, it gets no log line.
    Cancelled,
}

impl TaskStatus {
    /// The Postgres enum label.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Uploading => "uploading",
            TaskStatus::Queued => "queued",
            TaskStatus::Processing => "processing",
            TaskStatus::Done => "done",
            TaskStatus::Failed => "failed",
            TaskStatus::Expired => "expired",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    /// The status with this Postgres enum label.
    pub fn parse(label: &str) -> Option<TaskStatus> {
        TaskStatus::ALL.into_iter().find(|status| status.as_str() == label)
    }

    /// True for `done`, `failed`, `expired` and `cancelled`: nothing will change the task any more.
    pub fn is_finished(self) -> bool {
        matches!(self, TaskStatus::Done | TaskStatus::Failed | TaskStatus::Expired | TaskStatus::Cancelled)
    }

    /// `expired` or `cancelled`: finished with no result, so no log line and nothing to hash.
    pub fn ends_without_result(self) -> bool {
        matches!(self, TaskStatus::Expired | TaskStatus::Cancelled)
    }

    /// Every status, in the order of a task's life.
    pub const ALL: [TaskStatus; 7] = [
        TaskStatus::Uploading,
        TaskStatus::Queued,
        TaskStatus::Processing,
        TaskStatus::Done,
        TaskStatus::Failed,
        TaskStatus::Expired,
        TaskStatus::Cancelled,
    ];
}

impl ToSql<sql_types::TaskStatus, Pg> for TaskStatus {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        out.write_all(self.as_str().as_bytes())?;
        Ok(IsNull::No)
    }
}

impl FromSql<sql_types::TaskStatus, Pg> for TaskStatus {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        match bytes.as_bytes() {
            b"uploading" => Ok(TaskStatus::Uploading),
            b"queued" => Ok(TaskStatus::Queued),
            b"processing" => Ok(TaskStatus::Processing),
            b"done" => Ok(TaskStatus::Done),
            b"failed" => Ok(TaskStatus::Failed),
            b"expired" => Ok(TaskStatus::Expired),
            b"cancelled" => Ok(TaskStatus::Cancelled),
            other => Err(format!("unknown task_status {:?}", String::from_utf8_lossy(other)).into()),
        }
    }
}

/// One row of `md5_tasks`.
#[derive(Debug, Clone, PartialEq, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = md5_tasks, check_for_backend(Pg))]
pub struct Task {
    /// The promise id handed to the client.
    pub task_id: Uuid,
    /// Where the task is in its life.
    pub status: TaskStatus,
    /// The MD5, once `done`.
    pub result: Option<Md5Hex>,
    /// The client's file name, sanitized; display data only.
    pub file_name: String,
    /// Size of the stored upload.
    pub size_bytes: i64,
    /// Why the task failed, once `failed`.
    pub error: Option<String>,
    /// How many times a worker has claimed the task.
    pub attempts: i32,
    /// When the upload was committed.
    pub created_at: DateTime<Utc>,
    /// When a worker last claimed the task.
    pub started_at: Option<DateTime<Utc>>,
    /// When the result was committed.
    pub finished_at: Option<DateTime<Utc>>,
    /// When the task's line was known to be in the results log.
    pub logged_at: Option<DateTime<Utc>>,
    /// Consumer name of the worker that holds, or last held, the task.
    pub worker: Option<String>,
    /// Until when that worker's claim holds.
    pub lease_until: Option<DateTime<Utc>>,
    /// The `x-request-id` of the upload request.
    pub request_id: Option<String>,
    /// The algorithms to compute besides MD5, by name (see [`Task::algorithms`]).
    pub algorithms: Vec<String>,
    /// The client's expected digests, `{"<algorithm>": "<hex>"}` (see [`Task::expected`]).
    pub expected: Option<serde_json::Value>,
    /// The computed digests besides MD5, once `done` (see [`Task::digests`]).
    pub digests: Option<serde_json::Value>,
    /// The API key (`md5_api_keys.key_id`) whose client created the task; `None` for an
    /// anonymous client's or the shared `API_KEY`'s.
    pub owner: Option<i64>,
}

impl Task {
    /// The file's digests, once `done`: the `result` column's MD5 and the `digests` column's others.
    pub fn digests(&self) -> Option<crate::Digests> {
        let mut digests = crate::Digests::md5_only(self.result.clone()?);
        digests.others = crate::digest::from_column(self.digests.as_ref());
        digests.others.remove(&crate::Algorithm::Md5);
        Some(digests)
    }

    /// The algorithms the worker computes besides MD5 (names this build does not know are skipped).
    pub fn algorithms(&self) -> Vec<crate::Algorithm> {
        self.algorithms.iter().filter_map(|name| crate::Algorithm::from_name(name)).collect()
    }

    /// The digests the client expects.
    pub fn expected(&self) -> std::collections::BTreeMap<crate::Algorithm, String> {
        crate::digest::from_column(self.expected.as_ref())
    }

    /// True when the task computes MD5 alone and expects no digest: what a quick job's row must
    /// be (`crate::queries::complete_tasks` checks the same columns for an unclaimed result).
    pub fn md5_alone(&self) -> bool {
        self.algorithms.is_empty() && self.expected.is_none()
    }
}

/// The values the api inserts for a new upload.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = md5_tasks, check_for_backend(Pg))]
pub struct NewTask<'a> {
    /// The promise id, generated by the api before the upload is stored.
    pub task_id: Uuid,
    /// The sanitized client file name.
    pub file_name: &'a str,
    /// Size of the stored upload.
    pub size_bytes: i64,
    /// The `x-request-id` of the upload request.
    pub request_id: Option<&'a str>,
    /// The algorithms to compute besides MD5 ([`crate::DigestRequest::algorithm_names`]).
    pub algorithms: Vec<String>,
    /// The client's expected digests ([`crate::DigestRequest::expected_json`]).
    pub expected: Option<serde_json::Value>,
    /// The API key whose client uploads it ([`Task::owner`]).
    pub owner: Option<i64>,
}

/// One row of `md5_idempotency_keys`: what an `Idempotency-Key` of the v1 upload names.
#[derive(Debug, Clone, PartialEq, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = md5_idempotency_keys, check_for_backend(Pg))]
pub struct IdempotencyRecord {
    /// The client's key.
    pub key: String,
    /// The task the key's upload creates (while reserved) or created.
    pub task_id: Uuid,
    /// The sanitized file name of that upload, once completed.
    pub file_name: Option<String>,
    /// Its size, once completed.
    pub size_bytes: Option<i64>,
    /// When the key's window began: its reservation, then its upload's completion; it may be used
    /// for another upload `IDEMPOTENCY_TTL_SECONDS` later.
    pub created_at: DateTime<Utc>,
    /// Set while the first upload with the key is still streaming.
    pub reserved_until: Option<DateTime<Utc>>,
}

/// One row of `md5_uploads`: a resumable upload still receiving bytes.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = md5_uploads, check_for_backend(Pg))]
pub struct UploadRow {
    /// Its task's id (the task is `uploading`).
    pub task_id: Uuid,
    /// The declared length; `None` while the client defers it.
    pub upload_length: Option<i64>,
    /// The durable length of its file: the offset the next append must start at.
    pub received_bytes: i64,
    /// tus `Upload-Metadata` as the client sent it.
    pub metadata: Option<String>,
    /// The client that created it (an IPv4 address or an IPv6 /64), for the per-client bounds.
    pub client: Option<String>,
    /// When it expires unless an append renews it (never past its whole life's end).
    pub expires_at: DateTime<Utc>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}
