//! Receiving a one-shot upload, top to bottom: check what can be refused before the body is read
//! (the limit here, admission in `intake`), store the form's `file` part (or the bare body) in
//! `storage`, hand the durable file to `intake` (row and job), answer.
//!
//! Nothing is ever held in memory beyond two write buffers and the bounded read-ahead of the
//! body (see [`crate::body`]), and nothing is left behind by a rejected or broken upload: its
//! [`PartFile`] is removed unless the row was committed.

use axum::body::Body;
use axum::http::HeaderMap;
use futures_util::StreamExt as _;
use uuid::Uuid;

use crate::body::{self, FormHead};
use crate::client_id::ClientId;
use crate::error::ApiError;
use crate::follow::Announcer;
pub use crate::form::Parts;
use crate::form::{self, FORM_HEAD_BYTES, FormPart, MULTIPART_OVERHEAD_BYTES, UploadBody};
use crate::idempotency::{self, Begin, IdempotencyKey, Reservation};
use crate::intake::{self, StoredUpload};
use crate::state::AppState;
use crate::storage::{PartFile, PartWriter};

use shared::Task;
use shared::models::IdempotencyRecord;

/// An upload request as a handler received it.
pub struct UploadRequest<'a> {
    /// The request's headers.
    pub headers: &'a HeaderMap,
    /// The request body: a multipart form, or (where `raw` allows it) the file itself.
    pub body: Body,
    /// Whether the body may be the bare file (`application/octet-stream`).
    pub raw: bool,
    /// The `x-request-id`, carried into the task and the worker's log.
    pub request_id: Option<&'a str>,
    /// The client, used to share upload slots fairly between clients.
    pub client: Option<ClientId>,
    /// Which form parts besides `file` are allowed.
    pub parts: Parts,
    /// The `Idempotency-Key`, if the route takes one and the client sent it.
    pub key: Option<IdempotencyKey>,
    /// The digests the task asks for and expects.
    pub digests: shared::DigestRequest,
    /// The API key it belongs to (see `crate::keys`): its `Idempotency-Key` is its own.
    pub owner: Option<i64>,
}

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
/// With an idempotency key, a repeat of the key's upload (same file name and size) reads the
/// body without storing it and gets the original task (see [`crate::idempotency`]).
pub async fn receive(state: &AppState, request: UploadRequest<'_>) -> Result<Upload, ApiError> {
    let limit = state.config.max_upload_bytes;
    let body_kind = form::upload_body(request.headers, request.raw)?;
    let overhead = match body_kind {
        UploadBody::Form(_) => MULTIPART_OVERHEAD_BYTES,
        UploadBody::Raw { .. } => 0,
    };
    let expects_continue = body::expects_continue(request.headers);
    if form::content_length(request.headers).is_some_and(|length| length > limit.saturating_add(overhead)) {
        body::refuse(request.body, expects_continue, REFUSED_DRAIN_BYTES).await;
        return Err(ApiError::payload_too_large(limit));
    }
    if let Err(refused) = intake::admit_creation(state, request.client) {
        body::refuse(request.body, expects_continue, REFUSED_DRAIN_BYTES).await;
        return Err(refused);
    }
    let _slot = intake::admit(state, request.client)?;
    let task_id = Uuid::now_v7();
    let key = request.key.map(|key| key.scoped(request.owner));
    let request_id = request.request_id.map(str::to_owned);
    let follow = Announcer::new(
        state,
        task_id,
        request_id.clone(),
        &request.digests.algorithms,
        form::content_length(request.headers),
        true,
    );
    let destination = open_destination(state, task_id, key, follow).await?;

    let (file_name, size, received) = match body_kind {
        UploadBody::Form(boundary) => {
            read_form(state, request.body, boundary, request.parts, destination).await?
        }
        UploadBody::Raw { file_name } => {
            let (size, received) = read_raw(state, request.body, destination).await?;
            (file_name, size, received)
        }
    };
    let (part, reservation, follow) = match received {
        Received::Stored(part, reservation, follow) => (part, reservation, follow),
        Received::Counted(original) => return replay(state, &original, &file_name, size).await,
    };

    // The body is complete and durable. From here on the client going away must not matter:
    // the rename, the row and the XADD run to the end in a task of their own, so a row is
    // never committed while its file is being removed.
    let stored = StoredUpload {
        part,
        task_id,
        file_name,
        size,
        request_id,
        reservation,
        follow,
        digests: request.digests,
        owner: request.owner,
    };
    let task = tokio::spawn(intake::commit_one_shot(state.clone(), stored))
        .await
        .map_err(|err| ApiError::internal(anyhow::Error::new(err).context("upload commit task")))??;
    Ok(Upload { task, replayed: false })
}

/// Where an upload's `file` part goes.
enum Destination {
    /// To its partial file, under the key's reservation if it has a key, its flushed bytes
    /// announced to a worker once it is large.
    Store(PartWriter, Option<Reservation>, Box<Announcer>),
    /// Nowhere: a repeat of a completed key's upload is only counted, to compare with the original.
    Count(IdempotencyRecord),
}

/// What the `file` part became.
enum Received {
    /// A durable partial file, ready to commit.
    Stored(PartFile, Option<Reservation>, Box<Announcer>),
    /// Nothing: the part was a repeat of this key's original upload.
    Counted(IdempotencyRecord),
}

/// Decides where the part goes, failing before a byte of the body is read if Postgres is down:
/// the client learns at once (a key's reservation is a query, which tells the same).
async fn open_destination(
    state: &AppState,
    task_id: Uuid,
    key: Option<IdempotencyKey>,
    follow: Announcer,
) -> Result<Destination, ApiError> {
    let Some(key) = key else {
        state.db.check_available().await?;
        return Ok(Destination::Store(state.storage.create(task_id), None, Box::new(follow)));
    };
    match idempotency::begin(&state.db, key, task_id, state.config.idempotency_ttl()).await? {
        Begin::Reserved(reservation) => {
            Ok(Destination::Store(state.storage.create(task_id), Some(reservation), Box::new(follow)))
        }
        Begin::Completed(record) => Ok(Destination::Count(record)),
        Begin::InProgress => Err(ApiError::idempotency_key_in_use()),
    }
}

/// Reads the form to its end, sending its one `file` part to `destination`; returns the part's
/// sanitized file name, its size and what it became.
///
/// Every byte of the body counts: the file part against the limit, the whole body against the
/// limit plus the same allowance for boundaries and headers as `Content-Length` gets.
async fn read_form(
    state: &AppState,
    body: Body,
    boundary: String,
    parts: Parts,
    mut destination: Destination,
) -> Result<(String, u64, Received), ApiError> {
    let limit = state.config.max_upload_bytes;
    let head = FormHead::new(FORM_HEAD_BYTES);
    let body = body::guard(body.into_data_stream(), state.config.body_bounds(), head.clone());
    let constraints = multer::Constraints::new()
        .size_limit(multer::SizeLimit::new().whole_stream(limit.saturating_add(MULTIPART_OVERHEAD_BYTES)));
    let mut multipart = multer::Multipart::with_constraints(body, boundary, constraints);
    let mut file_part = None;
    loop {
        head.open();
        let Some(field) = multipart.next_field().await.map_err(|err| form::multipart_error(err, limit))?
        else {
            break;
        };
        head.close();
        let disposition = FormPart::parse(field.headers())?;
        if !parts.is_file_part(&disposition)? {
            // Skipped: the next `next_field` reads past its data (bounded by the whole-body limit).
            continue;
        }
        if file_part.is_some() {
            return Err(ApiError::bad_request("only one part named \"file\" is accepted"));
        }
        let file_name = form::sanitize_file_name(disposition.file_name.as_deref());
        let size = match &mut destination {
            Destination::Store(writer, _, follow) => store_part(field, writer, follow, limit).await?,
            Destination::Count(_) => count_part(field, limit).await?,
        };
        file_part = Some((file_name, size));
    }
    let (file_name, size) = file_part.ok_or_else(ApiError::missing_file_part)?;
    Ok((file_name, size, destination.finish().await?))
}

/// Most bytes of a body over the limit read (and dropped) after the refusal, so that a client
/// still sending a little more than the limit gets its 413 rather than a connection reset.
const REFUSED_DRAIN_BYTES: usize = 1024 * 1024;

/// Reads a bare-file body to its end into `destination`; returns its size and what it became.
async fn read_raw(
    state: &AppState,
    body: Body,
    mut destination: Destination,
) -> Result<(u64, Received), ApiError> {
    let limit = state.config.max_upload_bytes;
    let body = body::guard(body.into_data_stream(), state.config.body_bounds(), FormHead::new(u64::MAX));
    let mut body = std::pin::pin!(body);
    let mut size: u64 = 0;
    loop {
        let next = match &mut destination {
            Destination::Store(writer, _, follow) => next_or_pause(body.next(), writer, follow).await?,
            Destination::Count(_) => body.next().await,
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(form::body_error)?;
        size += chunk.len() as u64;
        if size > limit {
            body::drain(&mut body, REFUSED_DRAIN_BYTES).await;
            return Err(ApiError::payload_too_large(limit));
        }
        if let Destination::Store(writer, _, follow) = &mut destination {
            writer.write(&chunk).await?;
            follow.after_write(writer).await?;
        }
    }
    Ok((size, destination.finish().await?))
}

impl Destination {
    /// What the part became once the body ended: a durable partial file, or a count.
    async fn finish(self) -> Result<Received, ApiError> {
        Ok(match self {
            Destination::Store(writer, reservation, follow) => {
                Received::Stored(writer.finish().await?, reservation, follow)
            }
            Destination::Count(original) => Received::Counted(original),
        })
    }
}

/// Streams one part into its partial file, failing with 413 as soon as it passes `limit` bytes.
async fn store_part(
    mut field: multer::Field<'_>,
    writer: &mut PartWriter,
    follow: &mut Announcer,
    limit: u64,
) -> Result<u64, ApiError> {
    let mut size: u64 = 0;
    while let Some(chunk) = next_or_pause(field.chunk(), writer, follow)
        .await?
        .map_err(|err| form::multipart_error(err, limit))?
    {
        size += chunk.len() as u64;
        if size > limit {
            return Err(ApiError::payload_too_large(limit));
        }
        writer.write(&chunk).await?;
        follow.after_write(writer).await?;
    }
    Ok(size)
}

/// How long the body of an upload hashed while it arrives may pause before what it sent is
/// flushed and announced (a worker is waiting for it).
const PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// The body's next piece; if it keeps the upload waiting past [`PAUSE`] while a worker follows
/// it, what was sent is first flushed and announced.
async fn next_or_pause<T>(
    next: impl std::future::Future<Output = T>,
    writer: &mut PartWriter,
    follow: &mut Announcer,
) -> Result<T, ApiError> {
    let mut next = std::pin::pin!(next);
    if follow.following() {
        match tokio::time::timeout(PAUSE, &mut next).await {
            Ok(item) => return Ok(item),
            Err(_) => follow.paused(writer).await?,
        }
    }
    Ok(next.await)
}

/// Reads one part to its end without storing it (a repeated upload), failing with 413 as soon
/// as it passes `limit` bytes; returns its size.
async fn count_part(mut field: multer::Field<'_>, limit: u64) -> Result<u64, ApiError> {
    let mut size: u64 = 0;
    while let Some(chunk) = field.chunk().await.map_err(|err| form::multipart_error(err, limit))? {
        size += chunk.len() as u64;
        if size > limit {
            return Err(ApiError::payload_too_large(limit));
        }
    }
    Ok(size)
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
        return Err(ApiError::idempotency_key_reused(format!(
            "this Idempotency-Key was used for a different upload ({:?}, {} bytes; this one is {file_name:?}, \
             {size} bytes): use a new key for a new upload",
            original.file_name.as_deref().unwrap_or(""),
            original.size_bytes.unwrap_or(0),
        )));
    }
    let task = state.db.run(async |conn| shared::queries::find_task(conn, original.task_id).await).await?;
    let task = task.ok_or_else(|| {
        ApiError::internal(anyhow::anyhow!(
            "idempotency key names task {} which has no row",
            original.task_id
        ))
    })?;
    tracing::info!(task.id = %task.task_id, "upload repeated with its Idempotency-Key; answered with the original task");
    Ok(Upload { task, replayed: true })
}
