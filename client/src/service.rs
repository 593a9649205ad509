//! The service's v1 API as the client uses it: a streamed upload with an `Idempotency-Key`, the
//! task by id with `?wait=`, and retries of transient failures.

use std::path::Path;
use std::time::Duration;

use futures_util::TryStreamExt as _;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use tokio_util::io::ReaderStream;

/// Bytes read from a file per chunk of the upload body.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// First wait before a retry; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait between two tries (a longer `Retry-After` is honoured, up to [`MAX_RETRY_AFTER`]).
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Seconds one `GET …?wait=` asks the service to hold the request.
const WAIT_SECONDS: u64 = 30;

/// Told of each retry: the transient failure and how long the client waits before trying again.
pub type Retry<'a> = &'a (dyn Fn(&str, Duration) + Sync);

/// The task object of the v1 API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task {
    /// The promise id.
    pub id: String,
    /// `queued`, `processing`, `done` or `failed`.
    pub status: String,
    /// The MD5 once `done`.
    pub md5: Option<String>,
    /// The file name the service stored.
    pub file_name: String,
    /// Size of the upload.
    pub size_bytes: u64,
    /// Why the task failed.
    pub error: Option<String>,
}

impl Task {
    /// True for `done` and `failed`.
    pub fn is_finished(&self) -> bool {
        matches!(self.status.as_str(), "done" | "failed")
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
}

impl Service {
    /// A client of the service at `base` (http://host:port), authenticating with `api_key`.
    pub fn new(base: &str, api_key: Option<&str>, retries: u32) -> anyhow::Result<Self> {
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
        Ok(Service { http, base, retries })
    }

    /// Uploads `path` under `key` (retried with the same key), calling `sent` with each chunk's
    /// size as it goes, `restart` before each try and `retry` with the reason and the wait
    /// before each retry; returns the task the service created (or, for a repeat, already had).
    pub async fn upload(
        &self,
        path: &Path,
        key: &str,
        sent: impl Fn(u64) + Clone + Send + Sync + 'static,
        restart: impl Fn(),
        retry: Retry<'_>,
    ) -> Result<Task, Failure> {
        let attempt = || {
            restart();
            self.upload_once(path, key, sent.clone())
        };
        self.retrying(attempt, retry).await
    }

    async fn upload_once(
        &self,
        path: &Path,
        key: &str,
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
        let response = self
            .http
            .post(format!("{}/api/v1/hashes", self.base))
            .header("Idempotency-Key", key)
            .multipart(form)
            .send()
            .await
            .map_err(request_failure)?;
        match response.status() {
            StatusCode::ACCEPTED => response.json().await.map_err(request_failure),
            _ => Err(refusal(response).await),
        }
    }

    /// Waits for the task to finish (re-asking every [`WAIT_SECONDS`]), retrying transient failures.
    pub async fn wait_finished(&self, id: &str, retry: Retry<'_>) -> Result<Task, Failure> {
        loop {
            let task = self.task(id, WAIT_SECONDS as f64, retry).await?;
            if task.is_finished() {
                return Ok(task);
            }
        }
    }

    /// The task `id`, held up to `wait` seconds until it is finished; transient failures retried.
    pub async fn task(&self, id: &str, wait: f64, retry: Retry<'_>) -> Result<Task, Failure> {
        let json = self.task_json(id, wait, retry).await?;
        serde_json::from_value(json).map_err(|err| Failure::Permanent(format!("unexpected answer: {err}")))
    }

    /// [`Service::task`] as the service's JSON object.
    pub async fn task_json(
        &self,
        id: &str,
        wait: f64,
        retry: Retry<'_>,
    ) -> Result<serde_json::Value, Failure> {
        let attempt = || async {
            let response = self.http.get(self.task_url(id, wait)?).send().await.map_err(request_failure)?;
            match response.status() {
                StatusCode::OK => response.json().await.map_err(request_failure),
                _ => Err(refusal(response).await),
            }
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

/// A non-success answer: the problem document's detail, transient for 409, 503 and 507.
async fn refusal(response: reqwest::Response) -> Failure {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok()?.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = response.text().await.unwrap_or_default();
    let detail = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|problem| problem["detail"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.chars().take(200).collect());
    let message = format!("the service answered {status}: {detail}");
    match status {
        StatusCode::CONFLICT | StatusCode::SERVICE_UNAVAILABLE | StatusCode::INSUFFICIENT_STORAGE => {
            Failure::Transient { message, retry_after }
        }
        _ => Failure::Permanent(message),
    }
}

/// `wait` plus up to a quarter more, so clients that failed together do not retry together.
fn jitter(wait: Duration) -> Duration {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    wait + wait.mul_f64(f64::from(nanos % 1000) / 4000.0)
}
