//! Sending a file: one streamed POST under an `Idempotency-Key`, or a resumable tus upload that
//! goes on from the service's offset.

use super::*;

impl Service {
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
            .send_with(self)
            .await?;
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
        let started = Instant::now();
        let url = self.retrying(|| self.create_upload(path, length, ask), retry).await?;
        let mut offset = 0;
        let mut failures = 0;
        let mut backoff = FIRST_BACKOFF;
        while offset < length || length == 0 {
            // `--timeout` bounds the whole file, its upload included.
            if started.elapsed() > self.timeout {
                return Err(Failure::Permanent(format!(
                    "the upload did not complete within --timeout ({} s; {offset} of {length} bytes kept)",
                    self.timeout.as_secs()
                )));
            }
            restart_at(offset);
            let appended = match self.append(path, &url, offset, length, sent.clone()).await {
                Ok(now) if now > length => {
                    return Err(Failure::Permanent(format!(
                        "the service at {} answered an offset of {now} bytes, past the file's {length}",
                        self.base
                    )));
                }
                // A successful PATCH carries the rest of the file: an answer that kept none of it
                // is a failure like any other, so a server that never advances cannot make the
                // client send the file forever.
                Ok(now) if now <= offset && length > 0 => Err(Failure::Transient {
                    message: format!(
                        "the service answered offset {now} after {} bytes sent from {offset}: none was kept",
                        length - offset
                    ),
                    retry_after: None,
                }),
                other => other,
            };
            match appended {
                Ok(now) => {
                    offset = now;
                    failures = 0;
                    backoff = FIRST_BACKOFF;
                }
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
            .send_with(self)
            .await?;
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
        let response = self.http.head(url).header("Tus-Resumable", "1.0.0").send_with(self).await?;
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
            .send_with(self)
            .await?;
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
}

/// The `Upload-Offset` of an answer.
fn upload_offset_header(headers: &HeaderMap, server: &str) -> Result<u64, Failure> {
    headers.get("upload-offset").and_then(|value| value.to_str().ok()?.parse().ok()).ok_or_else(|| {
        Failure::Permanent(format!("the service at {server} answered without a valid Upload-Offset"))
    })
}
