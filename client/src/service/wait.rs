//! Waiting for a task: `?wait=` within the service's longest wait, polls with growing pauses for
//! a server that answers at once, progress while it hashes, and `--timeout` over it all.

use super::*;

impl Service {
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
                let response = self.http.get(self.task_url(id, wait)?).send_with(self).await?;
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
}
