//! A real `md5-api` process on a fresh database of the shared Postgres, for tests that measure
//! the process itself (its memory, its file descriptors, its limits) or kill it, while a hostile
//! client attacks it and a normal client checks it still serves.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use uuid::Uuid;

use crate::database::TestDatabase;
use crate::eventually;
use crate::launcher::{Launch, ServiceConfig, free_port};

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
    /// What the process was started with.
    pub config: api::Config,
    stderr_path: PathBuf,
    child: Option<Child>,
    wrapper: Vec<String>,
    _database: TestDatabase,
}

impl ApiProcess {
    /// Starts the api with test defaults, then whatever `change` sets.
    pub async fn start(change: impl FnOnce(&mut api::Config)) -> anyhow::Result<Self> {
        ApiProcess::start_wrapped(&[], change).await
    }

    /// Starts the api under `wrapper` (e.g. `prlimit --nofile=256:4096`).
    pub async fn start_wrapped(
        wrapper: &[&str],
        change: impl FnOnce(&mut api::Config),
    ) -> anyhow::Result<Self> {
        let database = TestDatabase::create().await?;
        let id = Uuid::new_v4().simple().to_string();
        let root = std::env::temp_dir().join(format!("md5-api-{id}"));
        let services = ServiceConfig::new(&database.url, &crate::redis_url(), &root, free_port())
            .with_stream(&format!("test:{id}:jobs"), &format!("test-{id}"));
        let mut config = services.api;
        config.database.db_pool_size = 8;
        change(&mut config);
        let upload_dir = config.storage.upload_dir.clone();
        std::fs::create_dir_all(&upload_dir)?;
        let addr = config.bind_addr;
        let mut api = ApiProcess {
            base_url: format!("http://{addr}"),
            addr,
            client: reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?,
            stderr_path: root.join("api.log"),
            root,
            upload_dir,
            config,
            child: None,
            wrapper: wrapper.iter().map(|s| (*s).to_owned()).collect(),
            _database: database,
        };
        api.spawn()?;
        api.wait_healthy().await?;
        Ok(api)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let wrapper: Vec<&str> = self.wrapper.iter().map(String::as_str).collect();
        let launch = Launch::api(&self.config).wrapped(&wrapper).stderr_to(&self.stderr_path);
        self.child = Some(launch.spawn()?);
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

    /// CPU time (user + system) the process has used so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        crate::procfs::ProcessStat::of(self.pid()).map_or(0.0, |stat| stat.cpu_seconds())
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

    /// Uploads a small file (10 bytes of `seed`) and returns its task's id. With no worker
    /// running, the task stays `queued`.
    pub async fn task_id_of_upload(&self, seed: u64) -> String {
        let url = format!("{}/api/v1/hashes", self.base_url);
        let part = reqwest::multipart::Part::bytes(crate::random_bytes(10, seed));
        let response = crate::post_file(&self.client, &url, "f", part).await.expect("the upload's answer");
        let task: serde_json::Value = response.json().await.expect("a task");
        task["id"].as_str().expect("an id").to_owned()
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
