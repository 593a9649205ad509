//! Receiving an upload: stream the `file` part to a temporary file in `UPLOAD_DIR`, counting
//! bytes against the limit, rename it to the task id, commit the row, enqueue the job.
//!
//! Nothing is ever held in memory beyond one write buffer, and nothing is left behind by a
//! rejected or broken upload: [`UploadFiles`] removes the files unless the row was committed.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use tokio::io::{AsyncWriteExt as _, BufWriter};
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;
use shared::models::NewTask;
use shared::{JobMessage, Task, queries};

/// Slack allowed between `Content-Length` and the file size for multipart boundaries and part headers.
const MULTIPART_OVERHEAD_BYTES: u64 = 64 * 1024;
/// Size of the write buffer between the socket and the file.
const WRITE_BUFFER_BYTES: usize = 1024 * 1024;
/// Longest stored file name, in characters.
const MAX_FILE_NAME_CHARS: usize = 255;

/// Stores an upload and returns its committed, enqueued task.
pub async fn receive(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    request_id: Option<&str>,
) -> Result<Task, ApiError> {
    let limit = state.config.max_upload_bytes;
    let boundary = multipart_boundary(headers)?;
    if let Some(length) = content_length(headers)
        && length > limit.saturating_add(MULTIPART_OVERHEAD_BYTES)
    {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let _slot = state
        .upload_slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Unavailable("too many uploads in progress; try again shortly".into()))?;
    let upload_dir = &state.config.storage.upload_dir;
    check_free_space(upload_dir, state.config.min_free_bytes)?;
    // Fail before reading a byte of the body if Postgres is down: the client learns at once.
    drop(state.pool.get().await?);

    let task_id = Uuid::now_v7();
    let mut files = UploadFiles::new(upload_dir, task_id);
    let body = idle_timeout(body.into_data_stream(), state.config.body_idle_timeout());
    let mut multipart = multer::Multipart::new(body, boundary);
    let mut stored = None;
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        if field.name() != Some("file") {
            let name = field.name().unwrap_or("").chars().take(100).collect::<String>();
            return Err(ApiError::BadRequest(format!(
                "unexpected form part {name:?}: the form takes one part, named \"file\""
            )));
        }
        if stored.is_some() {
            return Err(ApiError::BadRequest("only one part named \"file\" is accepted".into()));
        }
        let file_name = sanitize_file_name(field.file_name());
        let size = write_part(field, &files.partial, limit).await?;
        stored = Some((file_name, size));
    }
    let (file_name, size) =
        stored.ok_or_else(|| ApiError::BadRequest("the form has no part named \"file\"".into()))?;
    files.promote().await?;

    let new_task = NewTask {
        task_id,
        file_name: &file_name,
        size_bytes: i64::try_from(size).map_err(|err| ApiError::Internal(err.into()))?,
        request_id,
    };
    let task = {
        let mut conn = state.pool.get().await?;
        queries::insert_task(&mut conn, &new_task).await?
    };
    files.keep();
    metrics::counter!("md5_uploads_total").increment(1);
    metrics::counter!("md5_upload_bytes_total").increment(size);
    tracing::info!(task.id = %task_id, upload.size_bytes = size, "upload stored");

    let job = JobMessage { task_id, request_id: request_id.map(str::to_owned) };
    if let Err(err) = state.queue.enqueue(&job).await {
        // The row is committed: the sweeper enqueues it once Redis answers again.
        tracing::warn!(task.id = %task_id, error = %err, "cannot enqueue job; the sweeper will retry");
    }
    Ok(task)
}

/// The multipart boundary, or 415 for any other body type.
fn multipart_boundary(headers: &HeaderMap) -> Result<String, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .ok_or(ApiError::UnsupportedMediaType)?;
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("multipart/form-data") {
        return Err(ApiError::UnsupportedMediaType);
    }
    multer::parse_boundary(content_type)
        .map_err(|_| ApiError::BadRequest("the multipart Content-Type has no boundary".into()))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn check_free_space(upload_dir: &Path, reserve: u64) -> Result<(), ApiError> {
    if reserve == 0 {
        return Ok(());
    }
    let stats = rustix::fs::statvfs(upload_dir)
        .map_err(|err| ApiError::Internal(anyhow::anyhow!("statvfs {}: {err}", upload_dir.display())))?;
    let free = stats.f_bavail.saturating_mul(stats.f_frsize);
    if free < reserve {
        tracing::warn!(
            storage.free_bytes = free,
            storage.reserve_bytes = reserve,
            "upload volume nearly full"
        );
        return Err(ApiError::InsufficientStorage);
    }
    Ok(())
}

/// Streams one part to `path`, failing with 413 as soon as it passes `limit` bytes.
async fn write_part(mut field: multer::Field<'_>, path: &Path, limit: u64) -> Result<u64, ApiError> {
    let file =
        tokio::fs::OpenOptions::new().write(true).create_new(true).open(path).await.map_err(io_error)?;
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER_BYTES, file);
    let mut size: u64 = 0;
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        size += chunk.len() as u64;
        if size > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        writer.write_all(&chunk).await.map_err(io_error)?;
    }
    writer.flush().await.map_err(io_error)?;
    // The promise outlives a crash of this host: the bytes are on disk before the row exists.
    writer.into_inner().sync_data().await.map_err(io_error)?;
    Ok(size)
}

fn io_error(err: io::Error) -> ApiError {
    if err.kind() == io::ErrorKind::StorageFull {
        ApiError::InsufficientStorage
    } else {
        ApiError::Internal(anyhow::Error::new(err).context("cannot write the upload"))
    }
}

fn multipart_error(err: multer::Error) -> ApiError {
    match err {
        multer::Error::StreamReadFailed(cause) => {
            ApiError::BadRequest(format!("the upload was interrupted: {cause}"))
        }
        other => ApiError::BadRequest(format!("malformed multipart body: {other}")),
    }
}

/// Ends the body stream with an error when no bytes arrive for `idle`.
fn idle_timeout(
    body: impl Stream<Item = Result<Bytes, axum::Error>> + Send + Unpin + 'static,
    idle: Duration,
) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
    futures_util::stream::unfold(Some(body), move |body| async move {
        let mut body = body?;
        match tokio::time::timeout(idle, body.next()).await {
            Ok(Some(Ok(bytes))) => Some((Ok(bytes), Some(body))),
            Ok(Some(Err(err))) => Some((Err(io::Error::other(err)), None)),
            Ok(None) => None,
            Err(_) => Some((
                Err(io::Error::new(io::ErrorKind::TimedOut, format!("no data for {} s", idle.as_secs()))),
                None,
            )),
        }
    })
}

/// The client's file name as display data: last path component, no control characters,
/// at most 255 characters; `upload` when nothing is left.
pub fn sanitize_file_name(raw: Option<&str>) -> String {
    let raw = raw.unwrap_or("");
    let last = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last.chars().filter(|c| !c.is_control()).take(MAX_FILE_NAME_CHARS).collect();
    let cleaned = cleaned.trim();
    if cleaned.is_empty() || cleaned == "." || cleaned == ".." {
        "upload".to_owned()
    } else {
        cleaned.to_owned()
    }
}

/// The files of one upload in progress; removed on drop unless [`UploadFiles::keep`] was called,
/// which covers errors, panics and a client that disconnects (the handler future is dropped).
struct UploadFiles {
    partial: PathBuf,
    stored: PathBuf,
    upload_dir: PathBuf,
    kept: bool,
}

impl UploadFiles {
    fn new(upload_dir: &Path, task_id: Uuid) -> Self {
        UploadFiles {
            partial: upload_dir.join(format!(".{task_id}.part")),
            stored: shared::config::upload_path(upload_dir, task_id),
            upload_dir: upload_dir.to_owned(),
            kept: false,
        }
    }

    /// Renames the finished partial file to its final name and makes the rename durable.
    async fn promote(&self) -> Result<(), ApiError> {
        tokio::fs::rename(&self.partial, &self.stored).await.map_err(io_error)?;
        let dir = self.upload_dir.clone();
        tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
            .await
            .map_err(|err| ApiError::Internal(err.into()))?
            .map_err(io_error)
    }

    fn keep(&mut self) {
        self.kept = true;
    }
}

impl Drop for UploadFiles {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.partial);
            let _ = std::fs::remove_file(&self.stored);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_never_carry_a_path() {
        assert_eq!(sanitize_file_name(Some("../../etc/passwd")), "passwd");
        assert_eq!(sanitize_file_name(Some("C:\\Users\\me\\report.pdf")), "report.pdf");
        assert_eq!(sanitize_file_name(Some("a\nb\u{0}c.txt")), "abc.txt");
        assert_eq!(sanitize_file_name(Some("..")), "upload");
        assert_eq!(sanitize_file_name(None), "upload");
        assert_eq!(sanitize_file_name(Some(&"x".repeat(1000))).len(), 255);
    }
}
