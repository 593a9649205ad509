//! Fault-test environment: private Postgres and Redis on free ports (never the shared ones),
//! `md5-api` and `md5-worker` as real processes, real signals, and the checker every scenario
//! ends with.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use diesel::{QueryDsl as _, SelectableHelper as _};
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use rustix::process::{Pid, Signal};
use serde_json::Value;
use shared::{Task, TaskStatus};
use uuid::Uuid;

use crate::{eventually, list_files, read_all_logs, sibling_binary};

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

fn is_root() -> bool {
    rustix::process::getuid().is_root()
}

/// Runs a Postgres server binary, as the `postgres` user when we are root (the server refuses root).
fn pg_command(binary: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.arg("-u").arg("postgres").arg("--").arg(binary);
        command
    } else {
        Command::new(binary)
    }
}

fn run(mut command: Command, what: &str) -> anyhow::Result<()> {
    let output = command.stdin(Stdio::null()).output().with_context(|| format!("cannot run {what}"))?;
    anyhow::ensure!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// A Postgres cluster of the test's own, in a temporary folder, on a free port.
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: PathBuf,
    durable: bool,
    /// Its port.
    pub port: u16,
}

impl PrivatePostgres {
    /// `initdb`, start, and create the `md5` database; `fsync` off (fault tests kill the server,
    /// never the machine).
    pub fn start_new(root: &Path) -> anyhow::Result<Self> {
        Self::start_new_with(root, false)
    }

    /// As [`PrivatePostgres::start_new`]; `durable` keeps Postgres's default `fsync=on`, as the
    /// benchmark must.
    pub fn start_new_with(root: &Path, durable: bool) -> anyhow::Result<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .context("no /usr/lib/postgresql: install the server with `apt-get install postgresql`")?
            .flatten()
            .map(|entry| entry.path().join("bin"))
            .filter(|bin| bin.join("initdb").exists())
            .max()
            .context("no initdb under /usr/lib/postgresql/*/bin: `apt-get install postgresql`")?;
        let dir = root.join("pg");
        std::fs::create_dir_all(&dir)?;
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("-R").arg("postgres").arg(root);
                    c
                },
                "chown",
            )?;
        }
        let mut initdb = pg_command(&bin.join("initdb"));
        initdb.arg("-D").arg(&dir).arg("-U").arg("postgres").arg("--auth=trust").arg("--no-sync");
        run(initdb, "initdb")?;
        let pg = PrivatePostgres { bin, dir, durable, port: free_port() };
        pg.start()?;
        let mut createdb = pg_command(&pg.bin.join("createdb"));
        createdb
            .arg("-h")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(pg.port.to_string())
            .arg("-U")
            .arg("postgres")
            .arg("md5");
        run(createdb, "createdb")?;
        Ok(pg)
    }

    /// The `md5` database's URL.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/md5", self.port)
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) -> anyhow::Result<()> {
        let mut start = pg_command(&self.bin.join("pg_ctl"));
        start
            .arg("-D")
            .arg(&self.dir)
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .arg("-w")
            .arg("-o")
            // fsync off unless durable: the fault tests kill the server, never the machine.
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync={}",
                self.port,
                self.dir.display(),
                if self.durable { "on" } else { "off" }
            ))
            .arg("start");
        run(start, "pg_ctl start")
    }

    /// The postmaster's process id, while the server runs (from `postmaster.pid`).
    pub fn pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.dir.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// `pg_ctl stop -m immediate`: the server dies as in a crash.
    pub fn stop_immediate(&self) -> anyhow::Result<()> {
        let mut stop = pg_command(&self.bin.join("pg_ctl"));
        stop.arg("-D").arg(&self.dir).arg("-m").arg("immediate").arg("stop");
        run(stop, "pg_ctl stop")
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.stop_immediate();
    }
}

/// A Redis of the test's own, without persistence, on a free port.
pub struct PrivateRedis {
    /// Its port.
    pub port: u16,
    child: std::sync::Mutex<Option<Child>>,
    extra: Vec<String>,
}

impl PrivateRedis {
    /// Starts `redis-server --save ''` on a free port.
    pub fn start_new() -> anyhow::Result<Self> {
        Self::start_new_with(&["--appendonly", "no"])
    }

    /// As [`PrivateRedis::start_new`], with these persistence arguments instead.
    pub fn start_new_with(persistence: &[&str]) -> anyhow::Result<Self> {
        let redis = PrivateRedis {
            port: free_port(),
            child: std::sync::Mutex::new(None),
            extra: persistence.iter().map(|s| (*s).to_owned()).collect(),
        };
        redis.start()?;
        Ok(redis)
    }

    /// The URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on its port and waits for PING.
    pub fn start(&self) -> anyhow::Result<()> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(&self.extra)
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start redis-server: `apt-get install redis-server`")?;
        *self.child.lock().expect("redis child lock") = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        anyhow::bail!("redis-server did not start on port {}", self.port)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().expect("redis child lock").as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL): everything in it is gone.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().expect("redis child lock").take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `FLUSHALL`.
    pub async fn flushall(&self) -> anyhow::Result<()> {
        let client = redis::Client::open(self.url())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await?;
        Ok(())
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

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
    settings: Vec<(String, String)>,
}

impl FaultEnv {
    /// Starts private services and the api; `settings` are extra environment variables for
    /// every process (they win over the defaults here).
    pub async fn start(settings: &[(&str, &str)]) -> anyhow::Result<Self> {
        let root = std::env::temp_dir().join(format!("md5-fault-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&root)?;
        let pg = PrivatePostgres::start_new(&root)?;
        let redis = PrivateRedis::start_new()?;
        let upload_dir = root.join("uploads");
        let log_file = root.join("log").join("md5.log");
        let api_port = free_port();
        let mut all: Vec<(String, String)> = [
            ("DATABASE_URL", pg.url()),
            ("REDIS_URL", redis.url()),
            ("UPLOAD_DIR", upload_dir.display().to_string()),
            ("LOG_FILE", log_file.display().to_string()),
            ("BIND_ADDR", format!("127.0.0.1:{api_port}")),
            ("CLAIM_IDLE_MS", "1500".into()),
            ("SWEEP_INTERVAL_MS", "1000".into()),
            ("READ_BLOCK_MS", "300".into()),
            ("DB_TIMEOUT_MS", "1000".into()),
            ("MIN_FREE_BYTES", "0".into()),
            ("WORKER_CONCURRENCY", "2".into()),
            ("SHUTDOWN_GRACE_SECONDS", "20".into()),
            ("RUST_LOG", "info".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (key, value) in settings {
            all.retain(|(k, _)| k != key);
            all.push(((*key).to_owned(), (*value).to_owned()));
        }
        let mut env = FaultEnv {
            pg,
            redis,
            upload_dir,
            log_file,
            api_url: format!("http://127.0.0.1:{api_port}"),
            client: reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?,
            api: None,
            workers: std::sync::Mutex::new(Vec::new()),
            settings: all,
            root,
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

    fn command(
        &self,
        binary: &Path,
        name: &str,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<(Command, PathBuf)> {
        let stderr_path = self.root.join(format!("{name}.log"));
        let stderr = std::fs::File::create(&stderr_path)?;
        let mut command = Command::new(binary);
        command.env_clear().envs(self.settings.iter().map(|(k, v)| (k, v)));
        command.envs(extra.iter().copied());
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        Ok((command, stderr_path))
    }

    /// Starts the api process.
    pub fn start_api(&mut self) -> anyhow::Result<()> {
        let (mut command, _) = self.command(&sibling_binary("md5-api")?, "api", &[])?;
        self.api = Some(command.spawn()?);
        Ok(())
    }

    /// Starts a worker process (the fault-injection build) with extra settings; returns its index.
    pub fn spawn_worker(&self, extra: &[(&str, &str)]) -> anyhow::Result<usize> {
        let mut workers = self.workers.lock().expect("workers lock");
        let index = workers.len();
        let binary = sibling_binary("md5-worker-faulty")?;
        let (mut command, stderr) = self.command(&binary, &format!("worker-{index}"), extra)?;
        workers.push(WorkerProcess { child: command.spawn()?, stderr });
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
            202 => Some(response.json::<Value>().await.ok()?["id"].as_str()?.to_owned()),
            503 => None,
            other => {
                panic!("unexpected upload status {other}: {}", response.text().await.unwrap_or_default())
            }
        }
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

    async fn pending(&self) -> anyhow::Result<usize> {
        let client = redis::Client::open(self.redis.url())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let group = self.setting("JOBS_GROUP").unwrap_or("md5-workers");
        let stream = self.setting("JOBS_STREAM").unwrap_or("md5:jobs");
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

    fn setting(&self, key: &str) -> Option<&str> {
        self.settings.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
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
        let _ = self.pg.stop_immediate();
        self.redis.kill();
        if std::env::var_os("KEEP_FAULT_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}
