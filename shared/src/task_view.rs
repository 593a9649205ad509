//! The task object of the v1 API: what `GET /api/v1/hashes/{id}` answers, what an event
//! stream's `status` event carries, and a webhook event's `data` (one type serialized once;
//! `crate::webhooks` stores what it wrote).

use serde::Serialize;
use uuid::Uuid;

use crate::models::UploadRow;
use crate::{Digests, Task, TaskStatus};

/// The task object of the v1 API.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TaskView {
    /// The promise id.
    pub id: Uuid,
    /// `uploading` (a resumable upload still receiving bytes), `queued`, `processing`, `done`,
    /// `failed`, `expired` (a resumable upload abandoned) or `cancelled` (one terminated).
    #[schema(schema_with = status_schema)]
    pub status: TaskStatus,
    /// The MD5 once `done`: 32 lowercase hex digits.
    #[schema(value_type = Option<String>, pattern = "^[0-9a-f]{32}$", example = "5d41402abc4b2a76b9719d911017c592")]
    pub md5: Option<crate::Md5Hex>,
    /// Every digest of the file once `done`, algorithm → lowercase hex: `md5` and those the
    /// upload chose (`?digests=`, else the server's DIGESTS) or sent an expected value for.
    #[schema(value_type = Option<std::collections::HashMap<String, String>>,
        example = json!({"md5": "5d41402abc4b2a76b9719d911017c592", "sha-256": "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"}))]
    #[serde(serialize_with = "digest_object")]
    pub digests: Option<Digests>,
    /// The client's file name, sanitized.
    pub file_name: String,
    /// Size of the upload (while `uploading`, its declared length, 0 if deferred).
    pub size_bytes: i64,
    /// While `uploading`: the bytes received and durable so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_received: Option<i64>,
    /// While `processing`: how far the hash has come (bytes hashed as its worker last announced,
    /// about every half second; 0 until the first announcement).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<HashingProgress>,
    /// Why the task failed (or `cancelled by the client`).
    pub error: Option<String>,
    /// How many times a worker took the task.
    pub attempts: i32,
    /// When the upload was accepted (a resumable upload: created, then completed).
    #[serde(serialize_with = "crate::time::millis::serialize")]
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// When a worker last started on it.
    #[serde(serialize_with = "crate::time::option_millis::serialize")]
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When the result was recorded.
    #[serde(serialize_with = "crate::time::option_millis::serialize")]
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// How far a running hash has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct HashingProgress {
    /// Bytes of the file hashed so far.
    #[schema(example = 1073741824)]
    pub bytes_hashed: u64,
    /// The file's size.
    #[schema(example = 2147483648_i64)]
    pub size_bytes: i64,
}

impl TaskView {
    /// The view with its `progress` (`bytes_hashed` as its worker last announced, none yet
    /// counting as 0), when the task is `processing`, or `uploading` and hashed as it arrives.
    pub fn with_progress(mut self, bytes_hashed: Option<u64>) -> Self {
        let hashing_upload = self.status == TaskStatus::Uploading && bytes_hashed.is_some();
        if self.status == TaskStatus::Processing || hashing_upload {
            let bytes_hashed = bytes_hashed.unwrap_or(0).min(self.size_bytes.max(0) as u64);
            self.progress = Some(HashingProgress { bytes_hashed, size_bytes: self.size_bytes });
        }
        self
    }
}

fn digest_object<S: serde::Serializer>(digests: &Option<Digests>, serializer: S) -> Result<S::Ok, S::Error> {
    match digests {
        Some(digests) => digests.as_object().serialize(serializer),
        None => serializer.serialize_none(),
    }
}

fn status_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(TaskStatus::ALL.map(TaskStatus::as_str)))
        .build()
}

impl From<Task> for TaskView {
    fn from(task: Task) -> Self {
        TaskView::from((task, None))
    }
}

impl From<(Task, Option<UploadRow>)> for TaskView {
    fn from((task, upload): (Task, Option<UploadRow>)) -> Self {
        TaskView {
            digests: task.digests(),
            id: task.task_id,
            status: task.status,
            md5: task.result,
            file_name: task.file_name,
            size_bytes: task.size_bytes,
            bytes_received: upload.map(|upload| upload.received_bytes),
            progress: None,
            error: task.error,
            attempts: task.attempts,
            created_at: task.created_at,
            started_at: task.started_at,
            finished_at: task.finished_at,
        }
    }
}
