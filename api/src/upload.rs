//! Receiving an upload: stream the `file` part to a temporary file in `UPLOAD_DIR`, counting
//! bytes against the limit, rename it to the task id, commit the row, enqueue the job.
//!
//! Nothing is ever held in memory beyond two 128 KiB write buffers and the bounded read-ahead of
//! the body (see [`crate::body`]), and nothing is left behind by a rejected or broken upload:
//! [`UploadFiles`] removes the files unless the row was committed.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::http::{HeaderMap, header};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::body::{self, BodyLimit, FormHead};
use crate::commits::{Commits, PendingTask};
use crate::error::ApiError;
use crate::idempotency::{self, Begin, IdempotencyKey, Reservation};
use crate::slots::SlotRefusal;
use crate::state::AppState;
use shared::models::IdempotencyRecord;
use shared::{JobMessage, Task};

/// Slack allowed between `Content-Length` and the file size for multipart boundaries and part headers.
const MULTIPART_OVERHEAD_BYTES: u64 = 64 * 1024;
/// Size of each of the two write buffers of an upload (one filling, one being written).
const WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// Most bytes the multipart parser may read while it looks for a part: the preamble before the
/// first boundary, a part's headers, and the read-ahead of the chunk that ends them (an HTTP/2
/// client may have a whole 256 KiB stream window queued).
pub const FORM_HEAD_BYTES: u64 = 512 * 1024;
/// Most bytes of one part's headers.
pub const PART_HEADERS_BYTES: usize = 8 * 1024;
/// A live upload writes to its partial file at least this often (when bytes arrive at all), so
/// the age of a partial file tells whether its upload is still alive.
const PART_TOUCH_INTERVAL: Duration = Duration::from_secs(5);
/// Longest pause between two looks for partial files of uploads that died with their api.
const JANITOR_INTERVAL: Duration = Duration::from_secs(60);
/// Longest stored file name, in characters.
const MAX_FILE_NAME_CHARS: usize = 255;

/// An accepted upload.
#[derive(Debug)]
pub struct Upload {
    /// Its committed, enqueued task.
    pub task: Task,
    /// True when the request repeated an earlier one's `Idempotency-Key`: `task` is that
    /// request's task, and nothing was stored this time.
    pub replayed: bool,
}

/// Stores an upload and returns its committed, enqueued task.
///
/// `client` is the peer address, used to share upload slots fairly between clients. With
/// [`Parts::Lenient`] form parts other than `file` are skipped (as the older service did);
/// with [`Parts::Strict`] they are refused. With an idempotency `key`, a repeat of the key's
/// upload (same file name and size) reads the body without storing it and gets the original
/// task (see [`crate::idempotency`]).
pub async fn receive(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    request_id: Option<&str>,
    client: Option<IpAddr>,
    parts: Parts,
    key: Option<IdempotencyKey>,
) -> Result<Upload, ApiError> {
    let limit = state.config.max_upload_bytes;
    let boundary = multipart_boundary(headers)?;
    if let Some(length) = content_length(headers)
        && length > limit.saturating_add(MULTIPART_OVERHEAD_BYTES)
    {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let _slot = state.upload_slots.try_acquire(client).map_err(|refusal| {
        ApiError::Unavailable(match refusal {
            SlotRefusal::Full => "too many uploads in progress; try again shortly".into(),
            SlotRefusal::ClientFull => {
                "this client has too many uploads in progress; finish one, then try again".into()
            }
        })
    })?;
    let upload_dir = &state.config.storage.upload_dir;
    check_free_space(upload_dir, state.config.min_free_bytes)?;
    let task_id = Uuid::now_v7();
    // Fail before reading a byte of the body if Postgres is down: the client learns at once (a
    // key's reservation is a query, which tells the same).
    let mut destination = match key {
        None => {
            drop(state.pool.get().await?);
            Destination::Store(UploadFiles::new(upload_dir, task_id), None)
        }
        Some(key) => {
            match idempotency::begin(&state.pool, key, task_id, state.config.idempotency_ttl()).await? {
                Begin::Reserved(reservation) => {
                    Destination::Store(UploadFiles::new(upload_dir, task_id), Some(reservation))
                }
                Begin::Completed(record) => Destination::Replay(record),
                Begin::InProgress => {
                    return Err(ApiError::Conflict(
                    "an upload with this Idempotency-Key is still in progress; try again when it has finished".into(),
                ));
                }
            }
        }
    };
    // Every byte of the body counts: the file part against the limit, the whole body against
    // the limit plus the same allowance for boundaries and headers as `Content-Length` gets.
    let head = FormHead::new(FORM_HEAD_BYTES);
    let body = body::guard(body.into_data_stream(), state.config.body_bounds(), head.clone());
    let constraints = multer::Constraints::new()
        .size_limit(multer::SizeLimit::new().whole_stream(limit.saturating_add(MULTIPART_OVERHEAD_BYTES)));
    let mut multipart = multer::Multipart::with_constraints(body, boundary, constraints);
    let mut stored = None;
    loop {
        head.open();
        let Some(field) = multipart.next_field().await.map_err(|err| multipart_error(err, limit))? else {
            break;
        };
        head.close();
        let disposition = FormPart::parse(field.headers())?;
        if disposition.name.as_deref() != Some("file")
            && parts == Parts::Lenient
            && disposition.name.as_deref().is_some_and(is_plain_part_name)
        {
            // Skipped: the next `next_field` reads past its data (bounded by the whole-body limit).
            continue;
        }
        if disposition.name.as_deref() != Some("file") {
            let name = disposition.name.unwrap_or_default().chars().take(100).collect::<String>();
            return Err(ApiError::BadRequest(format!(
                "unexpected form part {name:?}: the form takes one part, named \"file\""
            )));
        }
        if stored.is_some() {
            return Err(ApiError::BadRequest("only one part named \"file\" is accepted".into()));
        }
        let file_name = sanitize_file_name(disposition.file_name.as_deref());
        let size = match &mut destination {
            Destination::Store(files, _) => write_part(field, files, limit).await?,
            Destination::Replay(_) => count_part(field, limit).await?,
        };
        stored = Some((file_name, size));
    }
    let (file_name, size) = stored.ok_or(ApiError::MissingFilePart)?;
    let (files, reservation) = match destination {
        Destination::Store(files, reservation) => (files, reservation),
        Destination::Replay(original) => return replay(state, &original, &file_name, size).await,
    };

    // The body is complete and durable. From here on the client going away must not matter:
    // the rename, the row and the XADD run to the end in a task of their own, so a row is
    // never committed while its file is being removed.
    let upload =
        Stored { files, task_id, file_name, size, request_id: request_id.map(str::to_owned), reservation };
    let finish = tokio::spawn(commit(state.clone(), upload));
    let task = finish
        .await
        .map_err(|err| ApiError::Internal(anyhow::Error::new(err).context("upload commit task")))??;
    Ok(Upload { task, replayed: false })
}

/// Where an upload's `file` part goes.
enum Destination {
    /// To its partial file, under the key's reservation if it has a key.
    Store(UploadFiles, Option<Reservation>),
    /// Nowhere: a repeat of a completed key's upload is only counted, to compare with the original.
    Replay(IdempotencyRecord),
}

/// The answer to a repeat of a completed key: its original task if the request is the same
/// (file name and size), 422 if not.
async fn replay(
    state: &AppState,
    original: &IdempotencyRecord,
    file_name: &str,
    size: u64,
) -> Result<Upload, ApiError> {
    let same = original.file_name.as_deref() == Some(file_name)
        && original.size_bytes.and_then(|bytes| u64::try_from(bytes).ok()) == Some(size);
    if !same {
        metrics::counter!("md5_idempotency_keys_total", "outcome" => "mismatch").increment(1);
        return Err(ApiError::Unprocessable(format!(
            "this Idempotency-Key was used for a different upload ({:?}, {} bytes; this one is {file_name:?}, \
             {size} bytes): use a new key for a new upload",
            original.file_name.as_deref().unwrap_or(""),
            original.size_bytes.unwrap_or(0),
        )));
    }
    let mut conn = state.pool.get().await?;
    let task = shared::queries::find_task(&mut conn, original.task_id).await?.ok_or_else(|| {
        ApiError::Internal(anyhow::anyhow!(
            "idempotency key names task {} which has no row",
            original.task_id
        ))
    })?;
    tracing::info!(task.id = %task.task_id, "upload repeated with its Idempotency-Key; answered with the original task");
    Ok(Upload { task, replayed: true })
}

/// A part name the compatibility form skips: 1 to 100 of `A-Z a-z 0-9 _ . -` (the pattern its
/// OpenAPI schema states); anything else is refused.
fn is_plain_part_name(name: &str) -> bool {
    (1..=100).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// What an upload form may hold besides its `file` part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parts {
    /// Nothing: any other part is a 400 (the v1 API).
    Strict,
    /// Other parts with plain names are skipped (the compatibility routes, as FastAPI did).
    Lenient,
}

/// A body stored in its partial file, ready to commit.
struct Stored {
    files: UploadFiles,
    task_id: Uuid,
    file_name: String,
    size: u64,
    request_id: Option<String>,
    reservation: Option<Reservation>,
}

/// Renames the durable part file to its final name, commits the row (completing its
/// idempotency key in the same transaction) and enqueues the job.
async fn commit(state: AppState, upload: Stored) -> Result<Task, ApiError> {
    let Stored { mut files, task_id, file_name, size, request_id, reservation } = upload;
    files.promote(&state.commits).await?;
    let task = state
        .commits
        .insert(PendingTask {
            task_id,
            file_name,
            size_bytes: i64::try_from(size).map_err(|err| ApiError::Internal(err.into()))?,
            request_id: request_id.clone(),
            idempotency_key: reservation.as_ref().map(|reservation| reservation.key().to_owned()),
        })
        .await?;
    files.keep();
    if let Some(reservation) = reservation {
        reservation.completed();
    }
    metrics::counter!("md5_uploads_total").increment(1);
    metrics::counter!("md5_upload_bytes_total").increment(size);
    tracing::info!(task.id = %task_id, upload.size_bytes = size, "upload stored");

    let job = JobMessage { task_id, request_id };
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
        // Logged once, at WARN, by `error::log_failures`.
        return Err(ApiError::InsufficientStorage);
    }
    Ok(())
}

/// Streams one part into the partial file, failing with 413 as soon as it passes `limit` bytes.
///
/// Chunks are gathered into a buffer of [`WRITE_BUFFER_BYTES`] and written on a blocking thread
/// while the next buffer fills (two buffers per upload, nothing more); a small part is created,
/// written and flushed in one blocking call.
async fn write_part(
    mut field: multer::Field<'_>,
    files: &mut UploadFiles,
    limit: u64,
) -> Result<u64, ApiError> {
    let mut buffer = Vec::with_capacity(WRITE_BUFFER_BYTES);
    let mut size: u64 = 0;
    let mut last_write = Instant::now();
    while let Some(chunk) = field.chunk().await.map_err(|err| multipart_error(err, limit))? {
        size += chunk.len() as u64;
        if size > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        let mut chunk = &chunk[..];
        while !chunk.is_empty() {
            let take = chunk.len().min(WRITE_BUFFER_BYTES - buffer.len());
            buffer.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            // A slow upload still touches its file now and then: see `remove_stale_parts`.
            if buffer.len() == WRITE_BUFFER_BYTES || last_write.elapsed() >= PART_TOUCH_INTERVAL {
                buffer = files.write(buffer, false).await?;
                last_write = Instant::now();
            }
        }
    }
    // The promise outlives a crash of this host: the bytes are on disk before the row exists.
    files.write(buffer, true).await?;
    Ok(size)
}

/// Reads one part to its end without storing it (a repeated upload), failing with 413 as soon
/// as it passes `limit` bytes; returns its size.
async fn count_part(mut field: multer::Field<'_>, limit: u64) -> Result<u64, ApiError> {
    let mut size: u64 = 0;
    while let Some(chunk) = field.chunk().await.map_err(|err| multipart_error(err, limit))? {
        size += chunk.len() as u64;
        if size > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
    }
    Ok(size)
}

pub(crate) fn io_error(err: io::Error) -> ApiError {
    match err.kind() {
        io::ErrorKind::StorageFull => ApiError::InsufficientStorage,
        io::ErrorKind::ReadOnlyFilesystem | io::ErrorKind::PermissionDenied => {
            ApiError::Unavailable(format!("the upload volume is not writable: {err}"))
        }
        _ => ApiError::Internal(anyhow::Error::new(err).context("cannot write the upload")),
    }
}

fn multipart_error(err: multer::Error, limit: u64) -> ApiError {
    if let Some(cut) = BodyLimit::find(&err) {
        return match cut {
            BodyLimit::FormHeadTooLarge(_) => {
                ApiError::BadRequest(format!("malformed multipart body: {cut}"))
            }
            BodyLimit::Idle(_) | BodyLimit::TooSlow { .. } => ApiError::RequestTimeout(cut.to_string()),
        };
    }
    match err {
        multer::Error::StreamSizeExceeded { .. } | multer::Error::FieldSizeExceeded { .. } => {
            ApiError::PayloadTooLarge { limit }
        }
        multer::Error::StreamReadFailed(cause) => {
            ApiError::BadRequest(format!("the upload was interrupted: {cause}"))
        }
        other => ApiError::BadRequest(format!("malformed multipart body: {other}")),
    }
}

/// Age past which a partial file belongs to an upload that is no longer alive: a live upload
/// receives bytes at least every `idle` and writes them at least every [`PART_TOUCH_INTERVAL`].
/// Every api sharing the volume must use the same `BODY_IDLE_TIMEOUT_SECONDS`.
pub fn stale_part_age(idle: Duration) -> Duration {
    2 * (idle + PART_TOUCH_INTERVAL)
}

/// Removes partial files (`.<id>.part`) older than `older_than` from `upload_dir`: what an api
/// killed mid-upload leaves behind. Safe beside other apis' live uploads (see [`stale_part_age`]).
/// Returns how many it removed.
pub fn remove_stale_parts(upload_dir: &Path, older_than: Duration) -> io::Result<usize> {
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in std::fs::read_dir(upload_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !(name.starts_with('.') && name.ends_with(".part")) {
            continue;
        }
        let Ok(modified) = entry.metadata().and_then(|meta| meta.modified()) else { continue };
        if now.duration_since(modified).is_ok_and(|age| age > older_than)
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Runs [`remove_stale_parts`] now, then every [`stale_part_age`] (at most every
/// [`JANITOR_INTERVAL`]) until `stop`.
pub fn spawn_part_janitor(upload_dir: PathBuf, idle: Duration, stop: tokio_util::sync::CancellationToken) {
    let older_than = stale_part_age(idle);
    let interval = older_than.min(JANITOR_INTERVAL);
    tokio::spawn(async move {
        loop {
            let dir = upload_dir.clone();
            match tokio::task::spawn_blocking(move || remove_stale_parts(&dir, older_than)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(removed)) => {
                    tracing::info!(files.removed = removed, "removed partial files of dead uploads")
                }
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "cannot scan UPLOAD_DIR for stale partial files")
                }
                Err(err) => tracing::warn!(error = %err, "stale partial file scan panicked"),
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = stop.cancelled() => return,
            }
        }
    });
}

/// What a part's `Content-Disposition` says, read as RFC 7578 and RFC 6266 ask: parameter names
/// in any case, quoted or bare values, and `filename*=UTF-8''…` (RFC 5987) before `filename`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FormPart {
    /// The `name` parameter.
    pub name: Option<String>,
    /// The file name, decoded.
    pub file_name: Option<String>,
}

impl FormPart {
    /// Parses a part's headers; 400 when they are larger than [`PART_HEADERS_BYTES`].
    pub fn parse(headers: &HeaderMap) -> Result<FormPart, ApiError> {
        let header_bytes: usize =
            headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
        if header_bytes > PART_HEADERS_BYTES {
            return Err(ApiError::BadRequest(format!(
                "malformed multipart body: the part's headers exceed {PART_HEADERS_BYTES} bytes"
            )));
        }
        Ok(headers
            .get(header::CONTENT_DISPOSITION)
            .map(|value| FormPart::parse_disposition(value.as_bytes()))
            .unwrap_or_default())
    }

    /// Parses one `Content-Disposition` value.
    pub fn parse_disposition(value: &[u8]) -> FormPart {
        let value = String::from_utf8_lossy(value);
        let mut part = FormPart::default();
        let mut extended_name = None;
        for param in split_params(&value).into_iter().skip(1) {
            let Some((key, raw)) = param.split_once('=') else { continue };
            let key = key.trim().to_ascii_lowercase();
            let raw = raw.trim();
            match key.as_str() {
                "name" => part.name = Some(unquote(raw)),
                "filename" => part.file_name = Some(unquote(raw)),
                "filename*" => extended_name = decode_extended(raw),
                _ => {}
            }
        }
        if extended_name.is_some() {
            part.file_name = extended_name;
        }
        part
    }
}

/// Splits on `;` outside quoted strings.
fn split_params(value: &str) -> Vec<&str> {
    let mut params = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => {
                params.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    params.push(&value[start..]);
    params
}

fn unquote(raw: &str) -> String {
    match raw.strip_prefix('"') {
        Some(inner) => {
            let inner = inner.strip_suffix('"').unwrap_or(inner);
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    out.extend(chars.next());
                } else {
                    out.push(c);
                }
            }
            out
        }
        None => raw.to_owned(),
    }
}

/// `charset'language'percent-encoded` (RFC 5987); UTF-8 and ISO-8859-1, as the RFC requires.
fn decode_extended(raw: &str) -> Option<String> {
    let mut pieces = raw.splitn(3, '\'');
    let charset = pieces.next()?.trim();
    let _language = pieces.next()?;
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(pieces.next()?).collect();
    if charset.eq_ignore_ascii_case("utf-8") {
        Some(String::from_utf8_lossy(&bytes).into_owned())
    } else if charset.eq_ignore_ascii_case("iso-8859-1") {
        Some(bytes.iter().map(|&b| char::from(b)).collect())
    } else {
        None
    }
}

/// Characters that change how a name displays without being visible themselves: bidirectional
/// overrides and isolates (which can make `invoice\u{202E}fdp.exe` read as `invoiceexe.pdf`),
/// zero-width characters, the byte-order mark and the Unicode line and paragraph separators.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}' | '\u{180B}'..='\u{180F}'
        | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{3164}'
        | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF0}'..='\u{FFFB}')
}

/// The client's file name as display data: last path component, no control or invisible
/// formatting characters, at most 255 characters; `upload` when nothing is left.
pub fn sanitize_file_name(raw: Option<&str>) -> String {
    let raw = raw.unwrap_or("");
    let last = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String =
        last.chars().filter(|&c| !c.is_control() && !is_invisible(c)).take(MAX_FILE_NAME_CHARS).collect();
    let cleaned = cleaned.trim();
    if cleaned.is_empty() || cleaned == "." || cleaned == ".." {
        "upload".to_owned()
    } else {
        cleaned.to_owned()
    }
}

/// What a blocking write gives back: the file to write to next, and the emptied buffer.
type WriteDone = (std::fs::File, Vec<u8>);

/// The files of one upload in progress, and the blocking write in flight; removed unless
/// [`UploadFiles::keep`] was called. This covers errors, panics and a client that disconnects
/// (the handler future is dropped): a write still running on a blocking thread is awaited
/// before the files are removed, so it cannot recreate one afterwards.
struct UploadFiles {
    partial: PathBuf,
    stored: PathBuf,
    file: Option<std::fs::File>,
    in_flight: Option<JoinHandle<io::Result<WriteDone>>>,
    kept: bool,
}

impl UploadFiles {
    fn new(upload_dir: &Path, task_id: Uuid) -> Self {
        UploadFiles {
            partial: upload_dir.join(format!(".{task_id}.part")),
            stored: shared::config::upload_path(upload_dir, task_id),
            file: None,
            in_flight: None,
            kept: false,
        }
    }

    /// Waits for the previous write, then starts writing `buffer` (creating the file on the
    /// first call) and gives back the previous write's buffer, emptied, to fill next. With
    /// `last`, also waits for this write and flushes the file to disk.
    async fn write(&mut self, buffer: Vec<u8>, last: bool) -> Result<Vec<u8>, ApiError> {
        let spare = self.wait().await?;
        let file = self.file.take();
        let partial = self.partial.clone();
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            use std::io::Write as _;
            let mut file = match file {
                Some(file) => file,
                None => std::fs::OpenOptions::new().write(true).create_new(true).open(&partial)?,
            };
            file.write_all(&buffer)?;
            if last {
                file.sync_data()?;
            }
            Ok((file, buffer))
        }));
        if last {
            self.wait().await?;
        }
        Ok(spare
            .map(|mut spare| {
                spare.clear();
                spare
            })
            .unwrap_or_else(|| Vec::with_capacity(WRITE_BUFFER_BYTES)))
    }

    /// Waits for the write in flight, if any; returns its buffer.
    async fn wait(&mut self) -> Result<Option<Vec<u8>>, ApiError> {
        let Some(in_flight) = self.in_flight.as_mut() else { return Ok(None) };
        let result = in_flight.await;
        self.in_flight = None;
        let (file, buffer) = result
            .map_err(|err| ApiError::Internal(anyhow::Error::new(err).context("upload write task")))?
            .map_err(io_error)?;
        self.file = Some(file);
        Ok(Some(buffer))
    }

    /// Renames the finished partial file to its final name and makes the rename durable, in
    /// a batch with other uploads' renames (one folder `fsync` for all).
    async fn promote(&mut self, commits: &Commits) -> Result<(), ApiError> {
        self.wait().await?;
        self.file = None;
        commits.rename(self.partial.clone(), self.stored.clone()).await
    }

    fn keep(&mut self) {
        self.kept = true;
    }
}

impl Drop for UploadFiles {
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

    #[test]
    fn file_names_lose_invisible_and_bidirectional_characters() {
        assert_eq!(sanitize_file_name(Some("invoice\u{202E}fdp.exe")), "invoicefdp.exe");
        assert_eq!(
            sanitize_file_name(Some("a\u{200B}b\u{200C}c\u{200D}d\u{FEFF}e\u{2028}f\u{2029}g.txt")),
            "abcdefg.txt"
        );
        assert_eq!(sanitize_file_name(Some("\u{2066}x\u{2069}.pdf")), "x.pdf");
        assert_eq!(sanitize_file_name(Some("résumé 你好.pdf")), "résumé 你好.pdf");
    }

    #[test]
    fn content_disposition_parameters_are_case_insensitive_and_filename_star_wins() {
        let part = FormPart::parse_disposition(b"form-data; NAME=\"file\"; FileName=\"a;b.txt\"");
        assert_eq!(part, FormPart { name: Some("file".into()), file_name: Some("a;b.txt".into()) });
        let part = FormPart::parse_disposition(
            b"form-data; name=\"file\"; filename=\"fallback.txt\"; filename*=UTF-8''%E2%82%AC%20rates.txt",
        );
        assert_eq!(part.file_name.as_deref(), Some("\u{20AC} rates.txt"));
        let part = FormPart::parse_disposition(b"form-data; name=file; filename*=iso-8859-1'en'caf%E9.txt");
        assert_eq!(part.file_name.as_deref(), Some("caf\u{e9}.txt"));
        let part = FormPart::parse_disposition(b"form-data; name=\"fi\\\"le\"");
        assert_eq!(part.name.as_deref(), Some("fi\"le"));
        assert_eq!(FormPart::parse_disposition(b"form-data; filename=x").name, None);
    }
}
