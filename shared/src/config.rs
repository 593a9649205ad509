//! Configuration pieces both binaries flatten into their own clap `Config`.
//!
//! Every setting is a `--flag` and an environment variable with the same meaning; `--help`
//! lists them with their defaults.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// Default Postgres URL.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/md5";
/// Default Redis URL.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Default stream key.
pub const DEFAULT_JOBS_STREAM: &str = "md5:jobs";
/// Default consumer group.
pub const DEFAULT_JOBS_GROUP: &str = "md5-workers";
/// Default folder for uploads, shared between the api and the workers.
pub const DEFAULT_UPLOAD_DIR: &str = "./data/uploads";

/// Where Postgres is and how the pool talks to it.
#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct DatabaseArgs {
    /// Postgres URL; the source of truth for every task.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,

    /// Most Postgres connections this process's pools open (each process adds one `LISTEN`
    /// connection; a worker splits them between its two pools, at least one each).
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_pool_size: u32,

    /// Milliseconds to wait for a Postgres connection (connecting, or a free one from the pool)
    /// before giving up; the api then answers 503.
    #[arg(long, env = "DB_TIMEOUT_MS", default_value_t = 3000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub db_timeout_ms: u64,
}

impl DatabaseArgs {
    /// The wait for a connection as a `Duration`.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.db_timeout_ms)
    }

    /// The same settings for a pool of `size` connections.
    pub fn with_pool_size(&self, size: u32) -> Self {
        DatabaseArgs { db_pool_size: size, ..self.clone() }
    }
}

/// Where Redis is.
#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct RedisArgs {
    /// Redis URL; the transport for jobs, never the only copy of one.
    #[arg(long, env = "REDIS_URL", default_value = DEFAULT_REDIS_URL)]
    pub redis_url: String,
}

/// The stream and consumer group jobs travel through.
#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct StreamArgs {
    /// Redis stream key the api adds jobs to.
    #[arg(long, env = "JOBS_STREAM", default_value = DEFAULT_JOBS_STREAM)]
    pub jobs_stream: String,

    /// Consumer group all workers read the stream as.
    #[arg(long, env = "JOBS_GROUP", default_value = DEFAULT_JOBS_GROUP)]
    pub jobs_group: String,
}

impl StreamArgs {
    /// The dead-letter stream for jobs that failed `MAX_DELIVERIES` times.
    pub fn dead_letter_stream(&self) -> String {
        format!("{}:dead", self.jobs_stream)
    }
}

/// The folder uploads are stored in.
#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct StorageArgs {
    /// Folder for uploaded files, shared by the api and every worker.
    #[arg(long, env = "UPLOAD_DIR", default_value = DEFAULT_UPLOAD_DIR)]
    pub upload_dir: PathBuf,
}

/// Output format of the process's own logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// How the process logs.
#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct TelemetryArgs {
    /// Tracing filter, e.g. `info` or `worker=debug,info`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_filter: String,

    /// `text` or `json` (one JSON object per line).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The path an upload is stored under: the task id, never anything the client chose.
pub fn upload_path(upload_dir: &std::path::Path, task_id: uuid::Uuid) -> PathBuf {
    upload_dir.join(task_id.to_string())
}
