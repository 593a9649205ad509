//! The service's v1 API as the client uses it: a streamed upload with an `Idempotency-Key`, a
//! resumable upload (tus 1.0.0) for large files, the task by id with `?wait=`, and retries of
//! transient failures.
//!
//! The client trusts its server no more than it must: every answer is read up to
//! [`MAX_ANSWER_BYTES`], every task is checked before it is used (a known status; a `done` task
//! has an MD5 of 32 lowercase hex digits), a server that answers at once whatever `?wait=` says
//! is polled with growing pauses, and no task is waited for longer than `--timeout`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt as _;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use tokio_util::io::ReaderStream;

use crate::algorithms::Algorithm;

/// Bytes read from a file per chunk of the upload body.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// First wait before a retry; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait between two tries (a longer `Retry-After` is honoured, up to [`MAX_RETRY_AFTER`]).
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// How often a task whose hash reports progress is asked again.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Seconds one `GET …?wait=` asks the service to hold the request, unless the service says its
/// longest wait is shorter (a 400 with `max_wait_seconds`).
const WAIT_SECONDS: u64 = 30;
/// Longest answer the client reads: a task or a problem is well under 1 KiB.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Told of each retry: the transient failure and how long the client waits before trying again.
pub type Retry<'a> = &'a (dyn Fn(&str, Duration) + Sync);

/// The task object of the v1 API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task {
    /// The promise id.
    pub id: String,
    /// `queued`, `processing`, `done` or `failed` (and, from newer services, `uploading`,
    /// `expired` or `cancelled`).
    pub status: String,
    /// The MD5 once `done`.
    pub md5: Option<String>,
    /// The file name the service stored.
    pub file_name: String,
    /// Size of the upload.
    pub size_bytes: u64,
    /// Why the task failed.
    pub error: Option<String>,
    /// Every digest once `done`, by the service's algorithm names (older services: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digests: Option<std::collections::BTreeMap<String, String>>,
    /// While `processing`, how far the hash has come (older services: none).
    #[serde(default, skip_serializing)]
    pub progress: Option<HashingProgress>,
}

/// How far a running hash has come, as the service last heard from its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct HashingProgress {
    /// Bytes hashed so far.
    pub bytes_hashed: u64,
    /// The file's size.
    pub size_bytes: u64,
}

impl Task {
    /// The task's `algorithm` digest if it is one (its length, lowercase hex): the MD5 field for
    /// MD5, else the `digests` object's.
    pub fn digest(&self, algorithm: Algorithm) -> Option<&str> {
        let hex = match algorithm {
            Algorithm::Md5 => self.md5.as_deref(),
            other => self.digests.as_ref()?.get(other.name()).map(String::as_str),
        }?;
        algorithm.is_digest(hex).then_some(hex)
    }
}

/// What one upload asks of its digests.
#[derive(Debug, Clone, Default)]
pub struct Ask {
    /// Algorithms to compute besides MD5 (`?digests=`).
    pub algorithms: Vec<Algorithm>,
    /// The digest the file must have (`Repr-Digest`), lowercase hex: the service fails the task
    /// if it differs.
    pub expected: Option<(Algorithm, String)>,
}

impl Ask {
    /// A POST to `url` with this ask's `?digests=` (the names need no escaping) and
    /// `Repr-Digest`.
    fn post(&self, http: &reqwest::Client, url: String) -> reqwest::RequestBuilder {
        use base64::Engine as _;
        let mut names: Vec<&str> = self.algorithms.iter().map(|algorithm| algorithm.name()).collect();
        names.retain(|name| *name != "md5");
        names.sort_unstable();
        names.dedup();
        let url = if names.is_empty() { url } else { format!("{url}?digests={}", names.join(",")) };
        let mut request = http.post(url);
        if let Some((algorithm, hex)) = &self.expected {
            let bytes: Vec<u8> = (0..hex.len() / 2)
                .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
                .collect();
            let value =
                format!("{}=:{}:", algorithm.name(), base64::engine::general_purpose::STANDARD.encode(bytes));
            request = request.header("Repr-Digest", value);
        }
        request
    }
}

/// Statuses of a task still on its way.
const PENDING_STATUSES: &[&str] = &["queued", "processing", "uploading"];
/// Statuses of a task that ended without a result.
const FAILED_STATUSES: &[&str] = &["failed", "expired", "cancelled"];

impl Task {
    /// True once the task has ended, with a result or without.
    pub fn is_finished(&self) -> bool {
        !PENDING_STATUSES.contains(&self.status.as_str())
    }

    /// The task if it is one the client can use: a known status, and for `done` an MD5 of 32
    /// lowercase hex digits (anything else could print a line `md5sum -c` would misread).
    fn checked(self, server: &str) -> Result<Task, Failure> {
        let status = self.status.as_str();
        if status == "done" {
            let valid = self.md5.as_deref().is_some_and(|md5| {
                md5.len() == 32 && md5.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            });
            if !valid {
                return Err(Failure::Permanent(format!(
                    "the service at {server} answered `done` without a valid MD5 (32 lowercase hex digits): {}",
                    crate::shown(
                        &format!("{:?}", self.md5.as_deref().unwrap_or("null"))
                            .chars()
                            .take(80)
                            .collect::<String>()
                    )
                )));
            }
        } else if !PENDING_STATUSES.contains(&status) && !FAILED_STATUSES.contains(&status) {
            return Err(Failure::Permanent(format!(
                "the service at {server} answered an unknown status {}",
                crate::shown(&format!("{:?}", status.chars().take(40).collect::<String>()))
            )));
        }
        Ok(self)
    }
}

/// Why a request did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Worth trying again with the same key: connection refused, reset or timed out; 409, 503, 507.
    #[error("{message}")]
    Transient {
        /// What happened.
        message: String,
        /// What the service asked the client to wait, if it said.
        retry_after: Option<Duration>,
    },
    /// Trying again cannot help: a 4xx, a file that cannot be read, an unexpected answer.
    #[error("{0}")]
    Permanent(String),
}

/// The service at one base URL.
#[derive(Clone)]
pub struct Service {
    http: reqwest::Client,
    base: String,
    retries: u32,
    /// Longest time a task is waited for.
    timeout: Duration,
    /// Seconds one `?wait=` asks for: [`WAIT_SECONDS`], or the service's longest wait once known.
    wait_seconds: Arc<AtomicU64>,
}

impl Service {
    /// A client of the service at `base` (http://host:port), authenticating with `api_key`,
    /// waiting at most `timeout` for a task to finish.
    pub fn new(base: &str, api_key: Option<&str>, retries: u32, timeout: Duration) -> anyhow::Result<Self> {
        let base = base.trim_end_matches('/').to_owned();
        let url = reqwest::Url::parse(&base)
            .map_err(|err| anyhow::anyhow!("--url {base:?} is not a URL: {err}"))?;
        anyhow::ensure!(
            url.scheme() == "http",
            "--url {base:?}: this client speaks plain http (put a TLS proxy in front of it for https)"
        );
        let mut headers = HeaderMap::new();
        if let Some(key) = api_key.filter(|key| !key.is_empty()) {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| anyhow::anyhow!("the API key holds characters a header cannot carry"))?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!("md5-client/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            // Longer than the longest `?wait=`; a dead server never holds the client forever.
            .read_timeout(Duration::from_secs(WAIT_SECONDS * 3))
            .build()?;
        Ok(Service { http, base, retries, timeout, wait_seconds: Arc::new(AtomicU64::new(WAIT_SECONDS)) })
    }

    /// Uploads `path` under `key` (retried with the same key), calling `sent` with each chunk's
    /// size as it goes, `restart` before each try and `retry` with the reason and the wait
    /// before each retry; returns the task the service created (or, for a repeat, already had).
    pub async fn upload(
        &self,
        path: &Path,
        key: &str,
        ask: &Ask,
        sent: impl Fn(u64) + Clone + Send + Sync + 'static,
        restart: impl Fn(),
        retry: Retry<'_>,
    ) -> Result<Task, Failure> {
        let attempt = || {
            restart();
            self.upload_once(path, key, ask, sent.clone())
        };
        self.retrying(attempt, retry).await
    }

    async fn upload_once(
        &self,
        path: &Path,
        key: &str,
        ask: &Ask,
        sent: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<Task, Failure> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|err| Failure::Permanent(format!("cannot open: {err}")))?;
        let length =
            file.metadata().await.map_err(|err| Failure::Permanent(format!("cannot read: {err}")))?.len();
        let chunks = ReaderStream::with_capacity(file, READ_CHUNK_BYTES)
            .inspect_ok(move |chunk| sent(chunk.len() as u64));
        // Display data for the service; a control character would break the part's header line.
        let name: String = path.file_name().map_or_else(
            || "upload".into(),
            |name| name.to_string_lossy().chars().filter(|c| !c.is_control()).collect(),
        );
        let part = reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(chunks), length)
            .file_name(name)
            .mime_str("application/octet-stream")
            .map_err(|err| Failure::Permanent(err.to_string()))?;
        let form = reqwest::multipart::Form::new().part("file", part);
        let response = ask
            .post(&self.http, format!("{}/api/v1/hashes", self.base))
            .header("Idempotency-Key", key)
            .multipart(form)
            .send()
            .await
            .map_err(request_failure)?;
        match response.status() {
            StatusCode::ACCEPTED => {
                let task: Task = parse(&read_answer(response, &self.base).await?, &self.base)?;
                task.checked(&self.base)
            }
            _ => Err(refusal(response, &self.base).await.0),
        }
    }

    /// Uploads `path` resumably (tus 1.0.0 on `/api/v1/uploads`): creates the upload, then sends
    /// the file from the service's offset, and after a dropped connection or an api restart asks
    /// the service where it got to (`HEAD`) and goes on from there. Gives up after `retries`
    /// failures in a row that moved nothing forward. Returns the task (its id is the upload's).
    pub async fn upload_resumable(
        &self,
        path: &Path,
        ask: &Ask,
        sent: impl Fn(u64) + Clone + Send + Sync + 'static,
        restart_at: impl Fn(u64),
        retry: Retry<'_>,
    ) -> Result<Task, Failure> {
        let length = tokio::fs::metadata(path)
            .await
            .map_err(|err| Failure::Permanent(format!("cannot read: {err}")))?
            .len();
        let url = self.retrying(|| self.create_upload(path, length, ask), retry).await?;
        let mut offset = 0;
        let mut failures = 0;
        let mut backoff = FIRST_BACKOFF;
        while offset < length || length == 0 {
            restart_at(offset);
            match self.append(path, &url, offset, length, sent.clone()).await {
                Ok(now) => offset = now,
                Err(Failure::Transient { message, retry_after }) => {
                    failures += 1;
                    if failures > self.retries {
                        return Err(Failure::Permanent(format!(
                            "{message} (gave up after {failures} tries)"
                        )));
                    }
                    let wait =
                        jitter(retry_after.map_or(backoff, |asked| asked.min(MAX_RETRY_AFTER).max(backoff)));
                    retry(&format!("{message}; will resume from the service's offset"), wait);
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    let resumed = self.retrying(|| self.upload_offset(&url), retry).await?;
                    if resumed > offset {
                        // Progress was kept: the next failure starts a new count.
                        failures = 0;
                        backoff = FIRST_BACKOFF;
                    }
                    offset = resumed;
                }
                Err(failure) => return Err(failure),
            }
            if length == 0 {
                break;
            }
        }
        let id = url.rsplit('/').next().unwrap_or_default().to_owned();
        self.task(&id, 0.0, retry).await
    }

    /// `POST /api/v1/uploads`: the new upload's URL.
    async fn create_upload(&self, path: &Path, length: u64, ask: &Ask) -> Result<String, Failure> {
        use base64::Engine as _;
        let name: String = path.file_name().map_or_else(
            || "upload".into(),
            |name| name.to_string_lossy().chars().filter(|c| !c.is_control()).collect(),
        );
        let metadata = format!("filename {}", base64::engine::general_purpose::STANDARD.encode(name));
        let response = ask
            .post(&self.http, format!("{}/api/v1/uploads", self.base))
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Length", length)
            .header("Upload-Metadata", metadata)
            .send()
            .await
            .map_err(request_failure)?;
        if response.status() != StatusCode::CREATED {
            return Err(refusal(response, &self.base).await.0);
        }
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|value| value.to_str().ok())
            .filter(|location| location.starts_with("/api/v1/uploads/") && location.len() < 100)
            .map(str::to_owned)
            .ok_or_else(|| {
                Failure::Permanent(format!(
                    "the service at {} created an upload without a usable Location",
                    self.base
                ))
            })?;
        Ok(format!("{}{location}", self.base))
    }

    /// `HEAD` of the upload: the offset the service has durably.
    async fn upload_offset(&self, url: &str) -> Result<u64, Failure> {
        let response =
            self.http.head(url).header("Tus-Resumable", "1.0.0").send().await.map_err(request_failure)?;
        if response.status() != StatusCode::OK {
            return Err(refusal(response, &self.base).await.0);
        }
        upload_offset_header(response.headers(), &self.base)
    }

    /// One `PATCH` carrying the file from `offset` to its end; the new offset.
    async fn append(
        &self,
        path: &Path,
        url: &str,
        offset: u64,
        length: u64,
        sent: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<u64, Failure> {
        use tokio::io::AsyncSeekExt as _;
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|err| Failure::Permanent(format!("cannot open: {err}")))?;
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|err| Failure::Permanent(format!("cannot read: {err}")))?;
        let chunks = ReaderStream::with_capacity(file, READ_CHUNK_BYTES)
            .inspect_ok(move |chunk| sent(chunk.len() as u64));
        let response = self
            .http
            .patch(url)
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Offset", offset)
            .header(reqwest::header::CONTENT_TYPE, "application/offset+octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, length - offset)
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .map_err(request_failure)?;
        match response.status() {
            StatusCode::NO_CONTENT => upload_offset_header(response.headers(), &self.base),
            // Another request still holds the upload (the service has not yet seen the last one end).
            StatusCode::LOCKED => Err(Failure::Transient {
                message: "the upload is still locked by an earlier request".into(),
                retry_after: None,
            }),
            _ => Err(refusal(response, &self.base).await.0),
        }
    }

    /// Waits for the task to finish (re-asking with `?wait=`), retrying transient failures, for
    /// at most the client's timeout. A service that answers "not yet" sooner than it was asked to
    /// wait is asked again after a pause that grows from 0.25 s to 5 s, not at once.
    pub async fn wait_finished(&self, id: &str, retry: Retry<'_>) -> Result<Task, Failure> {
        self.wait_loop(id, retry, None).await
    }

    /// [`Service::wait_finished`], telling `hashing` how far the hash has come: the task is asked
    /// for every [`PROGRESS_EVERY`] instead of with one long wait, unless the service shows that
    /// it reports no progress (an older one: `processing` without `progress`).
    pub async fn wait_finished_showing(
        &self,
        id: &str,
        retry: Retry<'_>,
        hashing: impl Fn(HashingProgress),
    ) -> Result<Task, Failure> {
        self.wait_loop(id, retry, Some(&hashing)).await
    }

    /// Asks for the task until it is finished: with long waits, or, when `hashing` is given and
    /// the service reports progress, every [`PROGRESS_EVERY`].
    async fn wait_loop(
        &self,
        id: &str,
        retry: Retry<'_>,
        hashing: Option<&dyn Fn(HashingProgress)>,
    ) -> Result<Task, Failure> {
        let started = Instant::now();
        let mut pause = FIRST_BACKOFF;
        let mut reports_progress = hashing.is_some();
        loop {
            let asked = Instant::now();
            let mut wait = self.wait_seconds.load(Ordering::Relaxed) as f64;
            if reports_progress {
                wait = wait.min(PROGRESS_EVERY.as_secs_f64());
            }
            let task = self.task(id, wait, retry).await?;
            if task.is_finished() {
                return Ok(task);
            }
            if task.status == "processing" {
                match (task.progress, hashing) {
                    (Some(progress), Some(hashing)) => hashing(progress),
                    _ => reports_progress = false,
                }
            }
            if started.elapsed() >= self.timeout {
                return Err(Failure::Permanent(format!(
                    "not finished after {} s (--timeout); the task is {id}",
                    self.timeout.as_secs()
                )));
            }
            if asked.elapsed() < Duration::from_secs_f64(wait.max(1.0)) {
                tokio::time::sleep(jitter(pause)).await;
                pause = (pause * 2).min(MAX_BACKOFF);
            } else {
                pause = FIRST_BACKOFF;
            }
        }
    }

    /// The task `id`, held up to `wait` seconds until it is finished; transient failures retried.
    pub async fn task(&self, id: &str, wait: f64, retry: Retry<'_>) -> Result<Task, Failure> {
        let json = self.task_json(id, wait, retry).await?;
        self.checked_task(json)
    }

    /// The task object `json` if the client can use it (see [`Task`]'s checks).
    pub fn checked_task(&self, json: serde_json::Value) -> Result<Task, Failure> {
        let task: Task = serde_json::from_value(json).map_err(|err| {
            Failure::Permanent(format!("the service at {} answered an unexpected task: {err}", self.base))
        })?;
        task.checked(&self.base)
    }

    /// [`Service::task`] as the service's JSON object.
    pub async fn task_json(
        &self,
        id: &str,
        wait: f64,
        retry: Retry<'_>,
    ) -> Result<serde_json::Value, Failure> {
        let attempt = || async {
            // Asked again at once, once, when the service says its longest wait is shorter.
            for _ in 0..2 {
                let wait = wait.min(self.wait_seconds.load(Ordering::Relaxed) as f64);
                let response =
                    self.http.get(self.task_url(id, wait)?).send().await.map_err(request_failure)?;
                match response.status() {
                    StatusCode::OK => return parse(&read_answer(response, &self.base).await?, &self.base),
                    _ => match refusal(response, &self.base).await {
                        (_, Some(max)) if (max as f64) < wait => {
                            self.wait_seconds.fetch_min(max, Ordering::Relaxed);
                        }
                        (failure, _) => return Err(failure),
                    },
                }
            }
            Err(Failure::Permanent(format!("the service at {} refuses every wait", self.base)))
        };
        self.retrying(attempt, retry).await
    }

    /// `…/api/v1/hashes/{id}?wait=S`, the id escaped as one path segment.
    fn task_url(&self, id: &str, wait: f64) -> Result<reqwest::Url, Failure> {
        let mut url = reqwest::Url::parse(&format!("{}/api/v1/hashes", self.base))
            .map_err(|err| Failure::Permanent(err.to_string()))?;
        url.path_segments_mut().map_err(|()| Failure::Permanent("--url cannot have a path".into()))?.push(id);
        url.query_pairs_mut().append_pair("wait", &wait.to_string());
        Ok(url)
    }

    /// Runs `attempt` until it succeeds, fails for good, or fails transiently `retries + 1` times.
    async fn retrying<T, F, Fut>(&self, mut attempt: F, retry: Retry<'_>) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut backoff = FIRST_BACKOFF;
        let mut tries = 0;
        loop {
            match attempt().await {
                Err(Failure::Transient { message, retry_after }) => {
                    tries += 1;
                    if tries > self.retries {
                        return Err(Failure::Permanent(format!("{message} (gave up after {tries} tries)")));
                    }
                    let wait =
                        jitter(retry_after.map_or(backoff, |asked| asked.min(MAX_RETRY_AFTER).max(backoff)));
                    retry(&message, wait);
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                other => return other,
            }
        }
    }
}

/// A failure to get any answer: transient unless the request itself could not be built.
fn request_failure(err: reqwest::Error) -> Failure {
    // The chain holds the cause (connection refused, reset…), the error itself only "error sending request".
    let mut message = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        message = format!("{message}: {cause}");
        source = cause.source();
    }
    if err.is_builder() {
        Failure::Permanent(message)
    } else {
        Failure::Transient { message, retry_after: None }
    }
}

/// The `Upload-Offset` of an answer.
fn upload_offset_header(headers: &HeaderMap, server: &str) -> Result<u64, Failure> {
    headers.get("upload-offset").and_then(|value| value.to_str().ok()?.parse().ok()).ok_or_else(|| {
        Failure::Permanent(format!("the service at {server} answered without a valid Upload-Offset"))
    })
}

/// The body of an answer, read up to [`MAX_ANSWER_BYTES`]: a server that sends more (or never
/// stops) gets an error, not the client's memory.
async fn read_answer(mut response: reqwest::Response, server: &str) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(request_failure)? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(Failure::Permanent(format!(
                "the service at {server} sent an answer larger than {} KiB; it was not read further",
                MAX_ANSWER_BYTES / 1024
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A JSON answer.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8], server: &str) -> Result<T, Failure> {
    serde_json::from_slice(body).map_err(|err| {
        Failure::Permanent(format!("the service at {server} answered something unexpected: {err}"))
    })
}

/// A non-success answer: the problem document's detail, transient for 409, 503 and 507; and the
/// service's longest wait, when the problem states it (`max_wait_seconds`).
async fn refusal(response: reqwest::Response, server: &str) -> (Failure, Option<u64>) {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok()?.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = match read_answer(response, server).await {
        Ok(body) => String::from_utf8_lossy(&body).into_owned(),
        Err(failure) => return (failure, None),
    };
    let problem = serde_json::from_str::<serde_json::Value>(&body).ok();
    let max_wait = problem.as_ref().and_then(|problem| problem["max_wait_seconds"].as_u64());
    let detail = problem
        .as_ref()
        .and_then(|problem| problem["detail"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.chars().take(200).collect());
    let message = format!("the service answered {status}: {}", crate::shown(&detail));
    let failure = match status {
        StatusCode::CONFLICT
        | StatusCode::LOCKED
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::INSUFFICIENT_STORAGE => Failure::Transient { message, retry_after },
        _ => Failure::Permanent(message),
    };
    (failure, max_wait)
}

/// `wait` plus up to a quarter more, so clients that failed together do not retry together.
fn jitter(wait: Duration) -> Duration {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    wait + wait.mul_f64(f64::from(nanos % 1000) / 4000.0)
}
