//! A real `md5-api` process on a fresh database of the shared Postgres, for tests that measure
//! the process itself (its memory, its file descriptors, its limits) or kill it, while a hostile
//! client attacks it and a normal client checks it still serves.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use uuid::Uuid;

use crate::fault::free_port;
use crate::{admin_database_url, eventually, redis_url, replace_database, sibling_binary};

/// A database created for one test and dropped with it.
pub struct TestDatabase {
    /// Its URL.
    pub url: String,
    name: String,
}

impl TestDatabase {
    /// Creates an empty database on the test Postgres.
    pub async fn create() -> anyhow::Result<Self> {
        let name = format!("md5_test_{}", &Uuid::new_v4().simple().to_string()[..16]);
        let admin = admin_database_url();
        let mut conn = AsyncPgConnection::establish(&admin).await.with_context(|| {
            format!("cannot reach Postgres at {admin} (start it, or set TEST_DATABASE_URL)")
        })?;
        diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
        Ok(TestDatabase { url: replace_database(&admin, &name), name })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin = admin_database_url();
        // Async I/O on a thread of its own, so Drop works inside or outside a runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let mut conn = AsyncPgConnection::establish(&admin).await.ok()?;
                diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        })
        .join();
    }
}

/// A running `md5-api` process (no workers).
pub struct ApiProcess {
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// Its listen address.
    pub addr: SocketAddr,
    /// A client with a 60 s timeout.
    pub client: reqwest::Client,
    /// Root of the test's files.
    pub root: PathBuf,
    /// `UPLOAD_DIR`.
    pub upload_dir: PathBuf,
    stderr_path: PathBuf,
    child: Option<Child>,
    env: Vec<(String, String)>,
    wrapper: Vec<String>,
    _database: TestDatabase,
}

impl ApiProcess {
    /// Starts the api with test defaults overridden by `settings`.
    pub async fn start(settings: &[(&str, &str)]) -> anyhow::Result<Self> {
        ApiProcess::start_wrapped(&[], settings).await
    }

    /// Starts the api under `wrapper` (e.g. `prlimit --nofile=256:4096`).
    pub async fn start_wrapped(wrapper: &[&str], settings: &[(&str, &str)]) -> anyhow::Result<Self> {
        let database = TestDatabase::create().await?;
        let id = Uuid::new_v4().simple().to_string();
        let root = std::env::temp_dir().join(format!("md5-api-{id}"));
        let upload_dir = root.join("uploads");
        std::fs::create_dir_all(&upload_dir)?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let mut env: Vec<(String, String)> = [
            ("DATABASE_URL", database.url.clone()),
            ("REDIS_URL", redis_url()),
            ("JOBS_STREAM", format!("test:{id}:jobs")),
            ("JOBS_GROUP", format!("test-{id}")),
            ("UPLOAD_DIR", upload_dir.display().to_string()),
            ("BIND_ADDR", addr.to_string()),
            ("MIN_FREE_BYTES", "0".to_owned()),
            ("DB_POOL_SIZE", "8".to_owned()),
            ("RUST_LOG", "info".to_owned()),
            ("PATH", std::env::var("PATH").unwrap_or_default()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (key, value) in settings {
            env.retain(|(k, _)| k != key);
            env.push(((*key).to_owned(), (*value).to_owned()));
        }
        let mut api = ApiProcess {
            base_url: format!("http://{addr}"),
            addr,
            client: reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?,
            stderr_path: root.join("api.log"),
            root,
            upload_dir,
            child: None,
            env,
            wrapper: wrapper.iter().map(|s| (*s).to_owned()).collect(),
            _database: database,
        };
        api.spawn()?;
        api.wait_healthy().await?;
        Ok(api)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let binary = sibling_binary("md5-api")?;
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(&self.stderr_path)?;
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&binary);
                command
            }
            None => Command::new(&binary),
        };
        command.env_clear().envs(self.env.iter().map(|(k, v)| (k, v)));
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        self.child = Some(command.spawn().context("start md5-api")?);
        Ok(())
    }

    async fn wait_healthy(&self) -> anyhow::Result<()> {
        let client = self.client.clone();
        let url = format!("{}/healthz", self.base_url);
        eventually(Duration::from_secs(30), "the api process to answer /healthz", || async {
            client.get(&url).send().await.ok()?.status().is_success().then_some(())
        })
        .await
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again (after [`ApiProcess::kill`]) and waits for it to answer.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()?;
        self.wait_healthy().await
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in MiB.
    pub fn memory_mib(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }

    /// The process's peak resident memory so far, in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        self.memory_mib("VmHWM")
    }

    /// Open file descriptors of the process.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, Iterator::count)
    }

    /// What the process has logged so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// A client whose connections come from `local` (any address of 127.0.0.0/8), so a test can
    /// be a different client than its attacker.
    pub fn client_from(&self, local: IpAddr) -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .local_address(local)
            .build()
            .expect("a client")
    }

    /// Uploads `bytes` as `name` with `client`; returns the status.
    pub async fn upload_with(&self, client: &reqwest::Client, name: &str, bytes: Vec<u8>) -> u16 {
        let url = format!("{}/api/v1/hashes", self.base_url);
        let response = crate::post_file(client, &url, name, reqwest::multipart::Part::bytes(bytes)).await;
        response.map_or(0, |r| r.status().as_u16())
    }

    /// True when `/healthz` answers 200 within 5 s.
    pub async fn healthy(&self, client: &reqwest::Client) -> bool {
        let request = client.get(format!("{}/healthz", self.base_url)).timeout(Duration::from_secs(5)).send();
        matches!(request.await, Ok(response) if response.status() == 200)
    }

    /// Files in `UPLOAD_DIR`, hidden ones included.
    pub fn upload_files(&self) -> Vec<PathBuf> {
        crate::list_files(&self.upload_dir)
    }

    /// The URL of the api's database.
    pub fn database_url(&self) -> &str {
        &self._database.url
    }

    /// The test's files.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
