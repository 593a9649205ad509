//! The service under test: private durable Postgres and Redis, and `md5-api` and `md5-worker`
//! processes started from their typed configs by the tests' one launcher.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use anyhow::Context as _;
use diesel::{QueryDsl as _, SelectableHelper as _};
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use integration_tests::launcher::{Launch, ServiceConfig, free_port};
use integration_tests::private_services::{PrivatePostgres, PrivateRedis};
use integration_tests::{eventually, post_file};
use serde_json::Value;
use shared::{Task, TaskStatus};

use crate::procfs::{
    Cpu, Switches, children, kernel_thread_ticks, machine_ticks, process_ticks, switches_of,
};

/// A running service and a client for it.
pub(crate) struct Service {
    pub(crate) root: PathBuf,
    pub(crate) pg: PrivatePostgres,
    pub(crate) redis: PrivateRedis,
    pub(crate) api: Option<Child>,
    pub(crate) workers: Vec<Child>,
    pub(crate) api_url: String,
    pub(crate) client: reqwest::Client,
    pub(crate) config: ServiceConfig,
}

impl Service {
    /// A service with `workers` worker processes and the benchmark's settings.
    pub(crate) async fn start(root: &Path, workers: usize) -> anyhow::Result<Service> {
        Service::start_with(root, workers, |_| {}).await
    }

    /// [`Service::start`], then whatever `change` sets.
    pub(crate) async fn start_with(
        root: &Path,
        workers: usize,
        change: impl FnOnce(&mut ServiceConfig),
    ) -> anyhow::Result<Service> {
        std::fs::create_dir_all(root)?;
        let pg = PrivatePostgres::start_new_with(root, true)?;
        let redis = PrivateRedis::start_new_with(&[
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--dir",
            &root.display().to_string(),
        ])?;
        let mut config = ServiceConfig::new(&pg.url(), &redis.url(), root, free_port());
        config.api.max_concurrent_uploads = 256;
        config.api.telemetry.log_filter = "warn".into();
        config.worker.telemetry.log_filter = "warn".into();
        // BENCH_UPLOAD_DIR puts the uploads on another filesystem than the run's temporary folder.
        if let Some(dir) = std::env::var_os("BENCH_UPLOAD_DIR") {
            let dir = PathBuf::from(dir).join(root.file_name().context("root")?);
            config.api.storage.upload_dir = dir.clone();
            config.worker.storage.upload_dir = dir;
        }
        change(&mut config);
        let mut service = Service {
            root: root.to_owned(),
            pg,
            redis,
            api: None,
            workers: Vec::new(),
            api_url: format!("http://{}", config.api.bind_addr),
            // Idle connections are dropped after 1 s, before the api's shortest header timeout
            // here (2 s, scenario 5), which also ends a keep-alive connection idle that long: a
            // request never goes out on a connection the api is closing at that moment.
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .pool_idle_timeout(Duration::from_secs(1))
                .build()?,
            config,
        };
        service.api =
            Some(Launch::api(&service.config.api).stderr_to(&service.root.join("api.log")).spawn()?);
        for n in 0..workers {
            let log = service.root.join(format!("worker-{n}.log"));
            service.workers.push(Launch::worker(&service.config.worker).stderr_to(&log).spawn()?);
        }
        let client = service.client.clone();
        let ready = format!("{}/readyz", service.api_url);
        eventually(Duration::from_secs(30), "the api", || async {
            client.get(&ready).send().await.ok()?.status().is_success().then_some(())
        })
        .await?;
        Ok(service)
    }

    pub(crate) async fn upload_bytes(&self, bytes: Vec<u8>) -> anyhow::Result<String> {
        let url = format!("{}/api/v1/hashes", self.api_url);
        let response = post_file(&self.client, &url, "f.bin", reqwest::multipart::Part::bytes(bytes)).await?;
        anyhow::ensure!(response.status() == 202, "upload answered {}", response.status());
        Ok(response.json::<Value>().await?["id"].as_str().context("id")?.to_owned())
    }

    /// Streams a file from disk as the `file` part (never read into memory here either).
    pub(crate) async fn upload_file(&self, path: &Path) -> anyhow::Result<String> {
        let file = tokio::fs::File::open(path).await?;
        let length = file.metadata().await?.len();
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
        let part = reqwest::multipart::Part::stream_with_length(body, length);
        let url = format!("{}/api/v1/hashes", self.api_url);
        let response = post_file(&self.client, &url, "large.bin", part).await?;
        anyhow::ensure!(response.status() == 202, "upload answered {}", response.status());
        Ok(response.json::<Value>().await?["id"].as_str().context("id")?.to_owned())
    }

    /// Streams a file as the bare body of `POST /api/v1/hashes` (`application/octet-stream`).
    pub(crate) async fn upload_raw(&self, path: &Path) -> anyhow::Result<String> {
        self.upload_raw_with(path, "").await
    }

    /// [`Service::upload_raw`] to `POST /api/v1/hashes{query}`.
    pub(crate) async fn upload_raw_with(&self, path: &Path, query: &str) -> anyhow::Result<String> {
        let file = tokio::fs::File::open(path).await?;
        let length = file.metadata().await?.len();
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
        let response = self
            .client
            .post(format!("{}/api/v1/hashes{query}", self.api_url))
            .header("Content-Type", "application/octet-stream")
            .header("Content-Disposition", "attachment; filename=\"large.bin\"")
            .header("Content-Length", length)
            .body(body)
            .send()
            .await?;
        anyhow::ensure!(response.status() == 202, "raw upload answered {}", response.status());
        Ok(response.json::<Value>().await?["id"].as_str().context("id")?.to_owned())
    }

    /// [`Service::upload_raw`] sent at `bytes_per_second` (1 MiB pieces on schedule, a client
    /// slower than the hash); the task id once answered.
    pub(crate) async fn upload_raw_paced(
        &self,
        path: &Path,
        bytes_per_second: u64,
    ) -> anyhow::Result<String> {
        use futures_util::StreamExt as _;
        let file = tokio::fs::File::open(path).await?;
        let length = file.metadata().await?.len();
        let started = tokio::time::Instant::now();
        let mut sent = 0u64;
        let paced = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).then(move |piece| {
            let due = started + Duration::from_secs_f64(sent as f64 / bytes_per_second as f64);
            sent += piece.as_ref().map_or(0, |bytes| bytes.len() as u64);
            async move {
                tokio::time::sleep_until(due).await;
                piece
            }
        });
        let response = self
            .client
            .post(format!("{}/api/v1/hashes", self.api_url))
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", length)
            .body(reqwest::Body::wrap_stream(paced))
            .send()
            .await?;
        anyhow::ensure!(response.status() == 202, "raw upload answered {}", response.status());
        Ok(response.json::<Value>().await?["id"].as_str().context("id")?.to_owned())
    }

    /// Sends a file with tus 1.0.0 in `chunk`-byte `PATCH`es; the task id once the last is in.
    pub(crate) async fn upload_tus(&self, path: &Path, chunk: u64) -> anyhow::Result<String> {
        use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
        let length = tokio::fs::metadata(path).await?.len();
        let created = self
            .client
            .post(format!("{}/api/v1/uploads", self.api_url))
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Length", length)
            .send()
            .await?;
        anyhow::ensure!(created.status() == 201, "tus creation answered {}", created.status());
        let location = created.headers()["location"].to_str()?.to_owned();
        let url = format!("{}{location}", self.api_url);
        let mut offset = 0;
        while offset < length {
            let take = chunk.min(length - offset);
            let mut file = tokio::fs::File::open(path).await?;
            file.seek(std::io::SeekFrom::Start(offset)).await?;
            let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
                file.take(take),
                1 << 20,
            ));
            let answer = self
                .client
                .patch(&url)
                .header("Tus-Resumable", "1.0.0")
                .header("Upload-Offset", offset)
                .header("Content-Type", "application/offset+octet-stream")
                .header("Content-Length", take)
                .body(body)
                .send()
                .await?;
            anyhow::ensure!(answer.status() == 204, "tus append answered {}", answer.status());
            offset += take;
        }
        Ok(location.rsplit('/').next().context("upload id")?.to_owned())
    }

    /// Resets the api's peak resident memory (VmHWM), so the next reading covers what follows.
    pub(crate) fn reset_api_peak_rss(&self) -> anyhow::Result<()> {
        let pid = self.api.as_ref().context("api")?.id();
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5").context("reset VmHWM through clear_refs")
    }

    pub(crate) async fn wait_done(&self, id: &str) -> anyhow::Result<Value> {
        loop {
            let task: Value = self
                .client
                .get(format!("{}/api/v1/hashes/{id}?wait=60", self.api_url))
                .send()
                .await?
                .json()
                .await?;
            if task["status"] == "done" {
                return Ok(task);
            }
            anyhow::ensure!(task["status"] != "failed", "task failed: {task}");
        }
    }

    pub(crate) async fn rows(&self) -> anyhow::Result<Vec<Task>> {
        use shared::schema::md5_tasks::dsl;
        let mut conn = AsyncPgConnection::establish(&self.pg.url()).await?;
        Ok(dsl::md5_tasks.select(Task::as_select()).load(&mut conn).await?)
    }

    pub(crate) async fn done_count(&self) -> anyhow::Result<i64> {
        let mut conn = AsyncPgConnection::establish(&self.pg.url()).await?;
        let counts = shared::queries::count_by_status(&mut conn).await?;
        Ok(counts.iter().filter(|(s, _)| *s == TaskStatus::Done).map(|(_, n)| *n).sum())
    }

    pub(crate) fn pid(child: &Child) -> u32 {
        child.id()
    }

    /// CPU time used so far by each part of the system and by the whole machine.
    pub(crate) fn cpu(&self) -> Cpu {
        let postgres = self.pg.pid().map_or(0, |postmaster| {
            // The postmaster waits for its backends, so their CPU stays counted after they exit.
            let (own, waited) = process_ticks(postmaster);
            own + waited + children(postmaster).into_iter().map(|pid| process_ticks(pid).0).sum::<u64>()
        });
        let (machine, interrupts) = machine_ticks();
        Cpu {
            api: self.api.as_ref().map_or(0, |api| process_ticks(api.id()).0),
            workers: self.workers.iter().map(|worker| process_ticks(worker.id()).0).sum(),
            postgres,
            redis: self.redis.pid().map_or(0, |pid| process_ticks(pid).0),
            load: process_ticks(std::process::id()).0,
            kernel: kernel_thread_ticks(),
            interrupts,
            machine,
        }
    }

    /// Context switches so far of each part of the system (Postgres: every live process under
    /// the postmaster, the postmaster included).
    pub(crate) fn switches(&self) -> Switches {
        let postgres: Vec<u32> = self
            .pg
            .pid()
            .map(|postmaster| [vec![postmaster], children(postmaster)].concat())
            .unwrap_or_default();
        Switches {
            api: switches_of(self.api.as_ref().map(Child::id)),
            workers: switches_of(self.workers.iter().map(Child::id)),
            postgres: switches_of(postgres),
            redis: switches_of(self.redis.pid()),
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        for child in self.workers.iter_mut().chain(self.api.iter_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.pg.stop_immediate();
        self.redis.kill();
    }
}
