//! Test harness: a [`TestApp`] runs `md5-api` and workers through their library entry points
//! (the same code the binaries run) against real Postgres and Redis, with a fresh database,
//! stream, upload folder and log per test.
//!
//! Postgres and Redis are the local ones unless `TEST_DATABASE_URL` (a URL of a database the
//! tests may create databases from) and `TEST_REDIS_URL` say otherwise.

pub mod api_process;
pub mod attacks;
pub mod database;
pub mod fault;
pub mod h2_attacks;
pub mod launcher;
pub mod lying_server;
pub mod pg_proxy;
pub mod private_services;
pub mod procfs;
pub mod proxy;

pub use database::{admin_database_url, redis_url};

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use serde_json::Value;
use shared::LogLine;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The one upload request of the tests and the benchmark: `POST url` with a multipart form whose
/// single part, `file`, is `part` named `file_name`.
pub async fn post_file(
    client: &reqwest::Client,
    url: &str,
    file_name: &str,
    part: reqwest::multipart::Part,
) -> reqwest::Result<reqwest::Response> {
    let form = reqwest::multipart::Form::new().part("file", part.file_name(file_name.to_owned()));
    client.post(url).multipart(form).send().await
}

/// Options for [`TestApp::spawn`]: the real configurations of the api and of each in-process
/// worker, as the binaries parse them (environment included), with test defaults. `spawn` then
/// points them at the test's own database, stream, folder and log.
#[derive(Debug, Clone)]
pub struct TestOptions {
    /// Workers run inside the test process.
    pub in_process_workers: usize,
    /// The api's settings.
    pub api: api::Config,
    /// Each in-process worker's settings.
    pub worker: worker::Config,
}

impl Default for TestOptions {
    fn default() -> Self {
        let mut api = api::Config::parse_from(["md5-api"]);
        api.max_upload_bytes = 64 * 1024 * 1024;
        api.min_free_bytes = 0;
        // Every test client shares 127.0.0.1: no creation rate (its own test sets one).
        api.max_tasks_per_client_per_second = 0;
        api.database.db_pool_size = 8;
        let mut worker = worker::Config::parse_from(["md5-worker"]);
        worker.worker_concurrency = 4;
        worker.read_block_ms = 500;
        TestOptions { in_process_workers: 1, api, worker }
    }
}

impl TestOptions {
    /// No worker inside the test process.
    pub fn no_workers(mut self) -> Self {
        self.in_process_workers = 0;
        self
    }

    /// Changes the api's settings.
    pub fn api(mut self, change: impl FnOnce(&mut api::Config)) -> Self {
        change(&mut self.api);
        self
    }

    /// Changes each in-process worker's settings.
    pub fn worker(mut self, change: impl FnOnce(&mut worker::Config)) -> Self {
        change(&mut self.worker);
        self
    }
}

/// A running api (and workers) on a private database, stream and folder.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// HTTP client.
    pub client: reqwest::Client,
    /// The test's own database.
    pub database_url: String,
    /// Dropped (with the database) after everything else of the test.
    _database: database::TestDatabase,
    /// Redis.
    pub redis_url: String,
    /// The test's own stream.
    pub stream: String,
    /// The test's own consumer group.
    pub group: String,
    /// Root of the test's files.
    pub root: PathBuf,
    /// `UPLOAD_DIR`.
    pub upload_dir: PathBuf,
    /// `LOG_FILE`.
    pub log_file: PathBuf,
    api_stop: CancellationToken,
    worker_stop: CancellationToken,
    api_task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    worker_tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    worker_processes: Vec<std::process::Child>,
}

impl TestApp {
    /// Creates the database and folders and starts the api and `options.in_process_workers` workers.
    pub async fn spawn(options: TestOptions) -> anyhow::Result<TestApp> {
        let id = Uuid::new_v4().simple().to_string();
        let database = database::TestDatabase::create().await?;
        let root = std::env::temp_dir().join(format!("md5-it-{id}"));
        let upload_dir = root.join("uploads");
        let log_file = root.join("log").join("md5.log");
        std::fs::create_dir_all(&upload_dir)?;
        let mut app = TestApp {
            base_url: String::new(),
            client: reqwest::Client::builder().timeout(Duration::from_secs(120)).build()?,
            database_url: database.url.clone(),
            _database: database,
            redis_url: redis_url(),
            stream: format!("test:{id}:jobs"),
            group: format!("test-{id}"),
            root,
            upload_dir,
            log_file,
            api_stop: CancellationToken::new(),
            worker_stop: CancellationToken::new(),
            api_task: None,
            worker_tasks: Vec::new(),
            worker_processes: Vec::new(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        app.base_url = format!("http://{}", listener.local_addr()?);
        let config = app.api_config(&options);
        let stop = app.api_stop.clone();
        app.api_task = Some(tokio::spawn(api::run(config, listener, async move { stop.cancelled().await })));
        app.wait_ready().await?;
        for _ in 0..options.in_process_workers {
            let config = app.own_worker_config(options.worker.clone());
            app.start_worker_with(config);
        }
        Ok(app)
    }

    /// `options.api` pointed at this test's database, Redis, stream and folder.
    pub fn api_config(&self, options: &TestOptions) -> api::Config {
        let mut config = options.api.clone();
        config.bind_addr = "127.0.0.1:0".parse().expect("valid address");
        config.database.database_url = self.database_url.clone();
        config.redis.redis_url = self.redis_url.clone();
        config.stream.jobs_stream = self.stream.clone();
        config.stream.jobs_group = self.group.clone();
        config.storage.upload_dir = self.upload_dir.clone();
        config
    }

    /// The test defaults' worker configuration with `concurrency`, pointed at this test's
    /// database, Redis, stream, folder and log.
    pub fn worker_config(&self, concurrency: u32) -> worker::Config {
        self.own_worker_config(TestOptions::default().worker(|c| c.worker_concurrency = concurrency).worker)
    }

    fn own_worker_config(&self, mut config: worker::Config) -> worker::Config {
        config.log_file = self.log_file.clone();
        config.database.database_url = self.database_url.clone();
        config.redis.redis_url = self.redis_url.clone();
        config.stream.jobs_stream = self.stream.clone();
        config.stream.jobs_group = self.group.clone();
        config.storage.upload_dir = self.upload_dir.clone();
        config
    }

    /// Starts one more worker inside the test process.
    pub fn start_in_process_worker(&mut self, concurrency: u32) {
        let config = self.worker_config(concurrency);
        self.start_worker_with(config);
    }

    /// Starts a worker inside the test process with this configuration.
    pub fn start_worker_with(&mut self, config: worker::Config) {
        let stop = self.worker_stop.clone();
        self.worker_tasks.push(tokio::spawn(worker::run(
            config,
            async move { stop.cancelled().await },
            worker::Hangups::listen(),
        )));
    }

    /// Starts a `md5-worker` process (from the release or debug build next to this test).
    pub fn start_worker_process(&mut self, concurrency: u32) -> anyhow::Result<()> {
        self.start_worker_process_with(concurrency, &[])
    }

    /// [`TestApp::start_worker_process`] with these environment variables added.
    pub fn start_worker_process_with(
        &mut self,
        concurrency: u32,
        env: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let binary = sibling_binary("md5-worker")?;
        let child = std::process::Command::new(binary)
            .env("DATABASE_URL", &self.database_url)
            .env("REDIS_URL", &self.redis_url)
            .env("JOBS_STREAM", &self.stream)
            .env("JOBS_GROUP", &self.group)
            .env("UPLOAD_DIR", &self.upload_dir)
            .env("LOG_FILE", &self.log_file)
            .env("WORKER_CONCURRENCY", concurrency.to_string())
            .env("READ_BLOCK_MS", "500")
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .spawn()?;
        self.worker_processes.push(child);
        Ok(())
    }

    /// Process ids of the worker processes started so far.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.worker_processes.iter().map(std::process::Child::id).collect()
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        eventually(Duration::from_secs(30), "the api to answer /healthz", || async {
            let response = self.client.get(format!("{}/healthz", self.base_url)).send().await.ok()?;
            response.status().is_success().then_some(())
        })
        .await
    }

    /// `POST /api/v1/hashes` with one `file` part.
    pub async fn upload(&self, file_name: &str, bytes: Vec<u8>) -> reqwest::Response {
        self.upload_to("/api/v1/hashes", file_name, bytes).await
    }

    /// A multipart upload to `path`.
    pub async fn upload_to(&self, path: &str, file_name: &str, bytes: Vec<u8>) -> reqwest::Response {
        let url = format!("{}{path}", self.base_url);
        post_file(&self.client, &url, file_name, reqwest::multipart::Part::bytes(bytes))
            .await
            .expect("the api answers")
    }

    /// `GET /api/v1/hashes/{id}?wait=S` as JSON.
    pub async fn task(&self, id: &str, wait_seconds: u64) -> Value {
        self.client
            .get(format!("{}/api/v1/hashes/{id}?wait={wait_seconds}", self.base_url))
            .send()
            .await
            .expect("the api answers")
            .json()
            .await
            .expect("a JSON task")
    }

    /// Waits until the task is finished and returns it.
    pub async fn wait_finished(&self, id: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let task = self.task(id, 10).await;
            if matches!(task["status"].as_str(), Some("done" | "failed")) {
                return task;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task {id} did not finish in {timeout:?}: {task}"
            );
        }
    }

    /// Files in the upload folder (stored uploads and partial ones).
    pub fn upload_files(&self) -> Vec<PathBuf> {
        list_files(&self.upload_dir)
    }

    /// A connection to the test's database.
    pub async fn db(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.database_url).await.expect("test database reachable")
    }

    /// Number of rows in `md5_tasks`.
    pub async fn row_count(&self) -> i64 {
        use diesel::QueryDsl as _;
        use shared::schema::md5_tasks::dsl::md5_tasks;
        md5_tasks.count().get_result(&mut self.db().await).await.expect("count rows")
    }

    /// Every line of the results log, parsed; panics on a line that is not a well-formed JSON object.
    pub fn log_lines(&self) -> Vec<LogLine> {
        read_log(&self.log_file).expect("well-formed log")
    }

    /// Pending entries of the group.
    pub async fn pending_count(&self) -> anyhow::Result<i64> {
        let client = redis::Client::open(self.redis_url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let reply: redis::Value =
            redis::cmd("XPENDING").arg(&self.stream).arg(&self.group).query_async(&mut conn).await?;
        match reply {
            redis::Value::Array(items) => match items.as_slice() {
                [redis::Value::Int(n), ..] => Ok(*n),
                other => anyhow::bail!("unexpected XPENDING reply {other:?}"),
            },
            other => anyhow::bail!("unexpected XPENDING reply {other:?}"),
        }
    }

    /// Stops the api and the workers.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    /// Stops the worker processes started so far (SIGTERM, as an operator's restart would).
    pub fn stop_worker_processes(&mut self) {
        for mut child in self.worker_processes.drain(..) {
            stop_process(&mut child);
        }
    }

    async fn shutdown(&mut self) {
        self.worker_stop.cancel();
        self.api_stop.cancel();
        for task in self.worker_tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(40), task).await;
        }
        if let Some(task) = self.api_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(40), task).await;
        }
        for mut child in self.worker_processes.drain(..) {
            stop_process(&mut child);
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.worker_stop.cancel();
        self.api_stop.cancel();
        for mut child in self.worker_processes.drain(..) {
            stop_process(&mut child);
        }
        let _ = std::fs::remove_dir_all(&self.root);
        // The database goes with `_database`, after this.
    }
}

/// Sends SIGTERM and waits for the process, killing it after 30 s.
pub fn stop_process(child: &mut std::process::Child) {
    let pid = rustix::process::Pid::from_child(child);
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Polls `check` every 20 ms until it returns `Some`, failing after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Parses a results log: every line must be a complete JSON object with the log-line fields.
pub fn read_log(path: &Path) -> anyhow::Result<Vec<LogLine>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err.into()),
    };
    anyhow::ensure!(text.is_empty() || text.ends_with('\n'), "the log's last line is torn");
    text.lines()
        .enumerate()
        .map(|(n, line)| {
            serde_json::from_str::<LogLine>(line)
                .with_context(|| format!("log line {} is not a well-formed log line: {line:?}", n + 1))
        })
        .collect()
}

/// Every line of the results log at `path` and of its rotated files (`<path>.<timestamp>`),
/// oldest file first.
pub fn read_all_logs(path: &Path) -> anyhow::Result<Vec<LogLine>> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
    let mut rotated: Vec<PathBuf> = std::fs::read_dir(path.parent().unwrap_or(Path::new(".")))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{name}.")))
                })
                .collect()
        })
        .unwrap_or_default();
    rotated.sort();
    let mut lines = Vec::new();
    for file in rotated.iter().chain(std::iter::once(&path.to_path_buf())) {
        lines.extend(read_log(file)?);
    }
    Ok(lines)
}

/// The MD5 of `bytes` in hex.
pub fn md5_hex(bytes: &[u8]) -> String {
    use md5::Digest as _;
    hex::encode(md5::Md5::digest(bytes))
}

/// Pseudo-random bytes (deterministic per seed, fast).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Files under `dir`, recursively (but the api's `.readyz-*` probes).
pub fn list_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                files.extend(list_files(&path));
            } else if !entry.file_name().to_string_lossy().starts_with(".readyz-") {
                // Not the api's readiness probe, which lives for a moment every few seconds.
                files.push(path);
            }
        }
    }
    files
}

/// A binary of this workspace built in the same profile as the running program: next to it
/// (a binary in `target/<profile>/`) or one folder up (a test in `target/<profile>/deps/`).
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let here = exe.parent().context("the running program has no folder")?;
    let candidates = [Some(here), here.parent()];
    candidates.into_iter().flatten().map(|dir| dir.join(name)).find(|path| path.exists()).with_context(|| {
        let build = if name == "md5-worker-faulty" {
            "cargo build --release --workspace --bin md5-worker-faulty --features worker/fault-injection"
        } else {
            "cargo build --release --bins"
        };
        format!(
            "{name} is missing next to {}: build it first with `{build}` (the README's test command does)",
            exe.display()
        )
    })
}
