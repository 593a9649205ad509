//! Fault-test environment: private Postgres and Redis (`private_services`), `md5-api` and
//! `md5-worker` as real processes started from their typed configs (`launcher`), real signals,
//! and the checker every scenario ends with.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use diesel::{QueryDsl as _, SelectableHelper as _};
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use rustix::process::{Pid, Signal};
use serde_json::Value;
use shared::{Task, TaskStatus};
use uuid::Uuid;

use crate::launcher::{Launch, ServiceConfig, free_port};
use crate::private_services::{PrivatePostgres, PrivateRedis};
use crate::{eventually, list_files, read_all_logs};

/// What a task must end as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// `done` with this MD5.
    Done(String),
    /// `failed`, with an error containing this text.
    Failed(String),
}

/// A worker process and where its stderr goes.
pub struct WorkerProcess {
    /// The process.
    pub child: Child,
    /// Its stderr, for the scenario to read.
    pub stderr: PathBuf,
}

/// The checker's counts; every one must be 0.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Accepted uploads with no row, or not finished by the deadline.
    pub lost: usize,
    /// Finished with the wrong MD5 or status.
    pub wrong: usize,
    /// Tasks with more than one log line.
    pub duplicated: usize,
    /// Finished tasks with no log line.
    pub unlogged: usize,
    /// Log lines for tasks that were never accepted.
    pub unknown_lines: usize,
    /// Rows still `queued` or `processing`, or finished without their "logged" mark.
    pub stuck: usize,
    /// Pending entries in the group.
    pub pending: usize,
    /// Files left in `UPLOAD_DIR`.
    pub stray_files: usize,
}

impl Report {
    /// True when every count is 0.
    pub fn is_clean(&self) -> bool {
        *self == Report::default()
    }
}

/// Private Postgres and Redis, an api process and worker processes sharing one folder.
pub struct FaultEnv {
    /// Postgres.
    pub pg: PrivatePostgres,
    /// Redis.
    pub redis: PrivateRedis,
    /// Root folder.
    pub root: PathBuf,
    /// `UPLOAD_DIR`.
    pub upload_dir: PathBuf,
    /// `LOG_FILE`.
    pub log_file: PathBuf,
    /// `http://127.0.0.1:<port>`.
    pub api_url: String,
    /// HTTP client.
    pub client: reqwest::Client,
    /// The api process.
    pub api: Option<Child>,
    /// Worker processes, in start order.
    pub workers: std::sync::Mutex<Vec<WorkerProcess>>,
    /// The settings every process is started with.
    pub config: ServiceConfig,
    /// Uploads answered 202 so far (see [`FaultEnv::accepted`]).
    accepted: tokio::sync::watch::Sender<usize>,
}

impl FaultEnv {
    /// Starts private services and the api. The processes get the binaries' own defaults, short
    /// fault-test timings, and then whatever `change` sets.
    pub async fn start(change: impl FnOnce(&mut ServiceConfig)) -> anyhow::Result<Self> {
        let root = std::env::temp_dir().join(format!("md5-fault-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&root)?;
        let pg = PrivatePostgres::start_new(&root)?;
        let redis = PrivateRedis::start_new()?;
        let api_port = free_port();
        let mut config = ServiceConfig::new(&pg.url(), &redis.url(), &root, api_port);
        for database in [&mut config.api.database, &mut config.worker.database] {
            database.db_timeout_ms = 1000;
        }
        config.api.shutdown_grace_seconds = 20;
        config.worker.shutdown_grace_seconds = 20;
        config.worker.claim_idle_ms = 1500;
        config.worker.sweep_interval_ms = 1000;
        config.worker.read_block_ms = 300;
        config.worker.worker_concurrency = 2;
        change(&mut config);
        let mut env = FaultEnv {
            pg,
            redis,
            upload_dir: config.api.storage.upload_dir.clone(),
            log_file: config.worker.log_file.clone(),
            api_url: format!("http://{}", config.api.bind_addr),
            client: reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?,
            api: None,
            workers: std::sync::Mutex::new(Vec::new()),
            config,
            root,
            accepted: tokio::sync::watch::Sender::new(0),
        };
        env.start_api()?;
        let client = env.client.clone();
        let url = format!("{}/healthz", env.api_url);
        eventually(Duration::from_secs(30), "the api process to answer", || async {
            client.get(&url).send().await.ok()?.status().is_success().then_some(())
        })
        .await?;
        Ok(env)
    }

    /// Starts the api process.
    pub fn start_api(&mut self) -> anyhow::Result<()> {
        let launch = Launch::api(&self.config.api).stderr_to(&self.root.join("api.log"));
        self.api = Some(launch.spawn()?);
        Ok(())
    }

    /// Starts a worker process (the fault-injection build) with its crash `hooks`
    /// (`FAULT_CRASH_AT`, `FAULT_FAIL_FLUSH_ONCE`); returns its index.
    pub fn spawn_worker(&self, hooks: &[(&str, &str)]) -> anyhow::Result<usize> {
        let mut workers = self.workers.lock().expect("workers lock");
        let index = workers.len();
        let stderr = self.root.join(format!("worker-{index}.log"));
        let child = Launch::faulty_worker(&self.config.worker, hooks).stderr_to(&stderr).spawn()?;
        workers.push(WorkerProcess { child, stderr });
        Ok(index)
    }

    /// Sends `signal` to worker `index`.
    pub fn signal_worker(&self, index: usize, signal: Signal) {
        let workers = self.workers.lock().expect("workers lock");
        let pid = Pid::from_child(&workers[index].child);
        rustix::process::kill_process(pid, signal).expect("signal the worker");
    }

    /// `kill -9` worker `index` and reap it.
    pub fn kill_worker(&self, index: usize) {
        let mut workers = self.workers.lock().expect("workers lock");
        let child = &mut workers[index].child;
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Waits for worker `index` to exit and returns its exit code (`None`: killed by a signal).
    pub async fn wait_worker_exit(&self, index: usize, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.workers.lock().expect("workers lock")[index].child.try_wait()? {
                return Ok(status.code());
            }
            anyhow::ensure!(Instant::now() < deadline, "worker {index} did not exit within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The stderr of worker `index` so far.
    pub fn worker_output(&self, index: usize) -> String {
        let path = self.workers.lock().expect("workers lock")[index].stderr.clone();
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// Number of rows, if Postgres answers.
    pub async fn row_count(&self) -> Option<i64> {
        let mut conn = AsyncPgConnection::establish(&self.pg.url()).await.ok()?;
        let counts = shared::queries::count_by_status(&mut conn).await.ok()?;
        Some(counts.iter().map(|(_, n)| *n).sum())
    }

    /// Number of tasks `done`, if Postgres answers.
    pub async fn done_count(&self) -> Option<i64> {
        let mut conn = AsyncPgConnection::establish(&self.pg.url()).await.ok()?;
        let counts = shared::queries::count_by_status(&mut conn).await.ok()?;
        Some(counts.iter().filter(|(status, _)| *status == TaskStatus::Done).map(|(_, n)| *n).sum())
    }

    /// Uploads `bytes`: `Some(id)` on 202, `None` on 503 (Postgres down); anything else panics.
    pub async fn upload(&self, name: &str, bytes: Vec<u8>) -> Option<String> {
        let url = format!("{}/api/v1/hashes", self.api_url);
        let response =
            match crate::post_file(&self.client, &url, name, reqwest::multipart::Part::bytes(bytes)).await {
                Ok(response) => response,
                Err(err) => panic!("upload failed without an answer: {err}"),
            };
        match response.status().as_u16() {
            202 => {
                let id = response.json::<Value>().await.ok()?["id"].as_str()?.to_owned();
                self.accepted.send_modify(|accepted| *accepted += 1);
                Some(id)
            }
            503 => None,
            other => {
                panic!("unexpected upload status {other}: {}", response.text().await.unwrap_or_default())
            }
        }
    }

    /// Returns once `count` uploads (of this environment's, since it started) were answered 202:
    /// woken by the answer itself, so a fault set off by it lands while a fast load still runs,
    /// where polling the table could see the load end first.
    pub async fn accepted(&self, count: usize) {
        let mut accepted = self.accepted.subscribe();
        let _ = accepted.wait_for(|accepted| *accepted >= count).await;
    }

    /// The row of a task, if Postgres answers.
    pub async fn task(&self, id: &str) -> Option<Task> {
        let mut conn = AsyncPgConnection::establish(&self.pg.url()).await.ok()?;
        shared::queries::find_task(&mut conn, Uuid::parse_str(id).ok()?).await.ok()?
    }

    /// Waits (up to `timeout`) until every expected task is finished and logged, nothing is
    /// pending and no file is left, then counts what is wrong. Prints the report.
    pub async fn check(
        &self,
        scenario: &str,
        expected: &HashMap<String, Expect>,
        timeout: Duration,
    ) -> Report {
        let started = Instant::now();
        let settled = eventually(timeout, "every task finished and logged", || async {
            let report = self.count(expected).await.ok()?;
            report.is_clean().then_some(report)
        })
        .await;
        let report = match settled {
            Ok(report) => report,
            Err(_) => self.count(expected).await.expect("count the outcome"),
        };
        println!(
            "[{scenario}] tasks={} lost={} wrong={} duplicated={} unlogged={} unknown_lines={} stuck={} pending={} stray_files={} settled_in={:.1}s",
            expected.len(),
            report.lost,
            report.wrong,
            report.duplicated,
            report.unlogged,
            report.unknown_lines,
            report.stuck,
            report.pending,
            report.stray_files,
            started.elapsed().as_secs_f64()
        );
        report
    }

    async fn count(&self, expected: &HashMap<String, Expect>) -> anyhow::Result<Report> {
        use shared::schema::md5_tasks::dsl;
        let mut conn = AsyncPgConnection::establish(&self.pg.url()).await?;
        let rows: Vec<Task> = dsl::md5_tasks.select(Task::as_select()).load(&mut conn).await?;
        let rows: HashMap<String, Task> = rows.into_iter().map(|t| (t.task_id.to_string(), t)).collect();
        let lines = read_all_logs(&self.log_file)?;
        let mut per_task: HashMap<String, usize> = HashMap::new();
        for line in &lines {
            *per_task.entry(line.task_id.to_string()).or_default() += 1;
        }
        let mut report = Report::default();
        for (id, expect) in expected {
            match rows.get(id) {
                None => report.lost += 1,
                Some(row) => match (row.status, expect) {
                    (TaskStatus::Done, Expect::Done(md5))
                        if row.result.as_ref().map(shared::Md5Hex::as_str) == Some(md5.as_str()) => {}
                    (TaskStatus::Failed, Expect::Failed(text))
                        if row.error.as_deref().is_some_and(|e| e.contains(text.as_str())) => {}
                    (TaskStatus::Queued | TaskStatus::Processing, _) => report.lost += 1,
                    _ => report.wrong += 1,
                },
            }
        }
        // Every row counts, also one whose 202 never reached the client (the commit's answer was
        // lost when Postgres died): it too must be finished and logged exactly once.
        for (id, row) in &rows {
            match per_task.get(id).copied().unwrap_or(0) {
                0 if row.status.is_finished() => report.unlogged += 1,
                0 | 1 => {}
                _ => report.duplicated += 1,
            }
        }
        report.unknown_lines = per_task.keys().filter(|id| !rows.contains_key(*id)).count();
        // Settled means finished and recorded as logged (the mark may trail the line by a sweep).
        report.stuck = rows.values().filter(|t| !t.status.is_finished() || t.logged_at.is_none()).count();
        report.pending = self.pending().await.unwrap_or(usize::MAX);
        report.stray_files = list_files(&self.upload_dir).len();
        Ok(report)
    }

    /// Stream entries delivered to a worker and not acknowledged (none without a group).
    pub async fn pending(&self) -> anyhow::Result<usize> {
        let client = redis::Client::open(self.redis.url())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let group = &self.config.worker.stream.jobs_group;
        let stream = &self.config.worker.stream.jobs_stream;
        let reply: redis::RedisResult<redis::Value> =
            redis::cmd("XPENDING").arg(stream).arg(group).query_async(&mut conn).await;
        match reply {
            Ok(redis::Value::Array(items)) => match items.as_slice() {
                [redis::Value::Int(n), ..] => Ok(*n as usize),
                _ => anyhow::bail!("unexpected XPENDING reply"),
            },
            // No stream or group (Redis lost its data and nothing was added since): nothing pending.
            Err(err) if err.code() == Some("NOGROUP") => Ok(0),
            Ok(other) => anyhow::bail!("unexpected XPENDING reply {other:?}"),
            Err(err) => Err(err.into()),
        }
    }

    /// Uploads `count` small files from `clients` concurrent clients; returns what each must end as.
    pub async fn upload_many(&self, count: usize, clients: usize, seed: u64) -> HashMap<String, Expect> {
        use futures_util::StreamExt as _;
        futures_util::stream::iter(0..count)
            .map(|n| async move {
                let bytes = crate::random_bytes(256 + n % 2048, seed * 1_000_000 + n as u64);
                let md5 = crate::md5_hex(&bytes);
                self.upload(&format!("f{n}"), bytes).await.map(|id| (id, Expect::Done(md5)))
            })
            .buffer_unordered(clients)
            .filter_map(|accepted| async move { accepted })
            .collect()
            .await
    }
}

impl Drop for FaultEnv {
    fn drop(&mut self) {
        for worker in self.workers.get_mut().expect("workers lock").iter_mut() {
            let _ = worker.child.kill();
            let _ = worker.child.wait();
        }
        if let Some(api) = &mut self.api {
            let _ = api.kill();
            let _ = api.wait();
        }
        // Postgres and Redis stop in their own Drop; the folder goes after them.
        let root = self.root.clone();
        let _ = self.pg.resume();
        let _ = self.pg.stop_immediate();
        self.redis.kill();
        if std::env::var_os("KEEP_FAULT_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}
