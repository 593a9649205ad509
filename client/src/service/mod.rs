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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt as _;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap, RETRY_AFTER};

use tokio_util::io::ReaderStream;

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

mod upload;
mod wait;
mod wire;

pub use wire::{Ask, HashingProgress, Task};

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
    /// Whether the service has answered anything in this run: until it has, a failure to reach
    /// it is given up after [`UNREACHABLE_AFTER`] (a typo in `--url`, a service not started).
    answered: Arc<AtomicBool>,
}

/// How long a service that has never answered in this run is tried before the client says it
/// is not reachable (retries after it has answered follow `--retries`).
const UNREACHABLE_AFTER: Duration = Duration::from_secs(8);

/// Sending a request through the [`Service`], which notes that it answered.
trait SendWith {
    /// Sends the request; any answer (whatever its status) marks `service` as reached.
    async fn send_with(self, service: &Service) -> Result<reqwest::Response, Failure>;
}

impl SendWith for reqwest::RequestBuilder {
    async fn send_with(self, service: &Service) -> Result<reqwest::Response, Failure> {
        let response = self.send().await.map_err(request_failure)?;
        service.answered.store(true, Ordering::Relaxed);
        Ok(response)
    }
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
            .connect_timeout(Duration::from_secs(5))
            // Longer than the longest `?wait=`; a dead server never holds the client forever.
            .read_timeout(Duration::from_secs(WAIT_SECONDS * 3))
            .build()?;
        Ok(Service {
            http,
            base,
            retries,
            timeout,
            wait_seconds: Arc::new(AtomicU64::new(WAIT_SECONDS)),
            answered: Arc::default(),
        })
    }
    /// Runs `attempt` until it succeeds, fails for good, or fails transiently `retries + 1` times.
    async fn retrying<T, F, Fut>(&self, mut attempt: F, retry: Retry<'_>) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut backoff = FIRST_BACKOFF;
        let mut tries = 0;
        let started = Instant::now();
        loop {
            match attempt().await {
                Err(Failure::Transient { message, retry_after }) => {
                    tries += 1;
                    if tries > self.retries {
                        return Err(Failure::Permanent(format!("{message} (gave up after {tries} tries)")));
                    }
                    let wait =
                        jitter(retry_after.map_or(backoff, |asked| asked.min(MAX_RETRY_AFTER).max(backoff)));
                    if !self.answered.load(Ordering::Relaxed) && started.elapsed() + wait > UNREACHABLE_AFTER
                    {
                        return Err(Failure::Permanent(format!(
                            "the service is not reachable at {} (is it running, and is --url right?): {message}",
                            self.base
                        )));
                    }
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
        | StatusCode::TOO_MANY_REQUESTS
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
