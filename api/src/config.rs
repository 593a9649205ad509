//! `md5-api` configuration: every setting is a flag and an environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use shared::config::{DatabaseArgs, RedisArgs, StorageArgs, StreamArgs, TelemetryArgs};

/// Default listen address.
pub const DEFAULT_BIND_ADDR: &str = "127.0.0.1:9000";
/// Default upload limit: 10 GiB.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 10 * 1024 * 1024 * 1024;

/// The api's whole configuration, parsed once at start.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "md5-api",
    version,
    about = "HTTP front of the MD5 service: streams uploads to UPLOAD_DIR, records a task in Postgres, \
             queues the job on a Redis stream and serves results, the web page and /docs"
)]
pub struct Config {
    /// Address to listen on (compose sets 0.0.0.0:9000).
    #[arg(long, env = "BIND_ADDR", default_value = DEFAULT_BIND_ADDR)]
    pub bind_addr: SocketAddr,

    /// Largest accepted upload in bytes; larger ones get 413 (checked from Content-Length and while streaming).
    #[arg(long, env = "MAX_UPLOAD_BYTES", default_value_t = DEFAULT_MAX_UPLOAD_BYTES, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_upload_bytes: u64,

    /// When set, every /api/ and /hashes route needs `Authorization: Bearer <key>`.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Refuse uploads with 507 while the upload volume has less free space than this many bytes.
    #[arg(long, env = "MIN_FREE_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub min_free_bytes: u64,

    /// Longest `?wait=` a client may ask for, in seconds.
    #[arg(long, env = "MAX_WAIT_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub max_wait_seconds: u64,

    /// Seconds a client may take to send its request headers before the connection is closed.
    #[arg(long, env = "HEADER_TIMEOUT_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_timeout_seconds: u64,

    /// Seconds an upload body may stall (no bytes arriving) before it is abandoned and cleaned up.
    #[arg(long, env = "BODY_IDLE_TIMEOUT_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub body_idle_timeout_seconds: u64,

    /// Most uploads streamed at once; further uploads get 503 with Retry-After.
    #[arg(long, env = "MAX_CONCURRENT_UPLOADS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_concurrent_uploads: u32,

    /// Seconds in-flight requests get to finish after SIGTERM before the api exits anyway.
    #[arg(long, env = "SHUTDOWN_GRACE_SECONDS", default_value_t = 30)]
    pub shutdown_grace_seconds: u64,

    #[command(flatten)]
    #[expect(missing_docs, reason = "documented on the flattened struct")]
    pub database: DatabaseArgs,

    #[command(flatten)]
    #[expect(missing_docs, reason = "documented on the flattened struct")]
    pub redis: RedisArgs,

    #[command(flatten)]
    #[expect(missing_docs, reason = "documented on the flattened struct")]
    pub stream: StreamArgs,

    #[command(flatten)]
    #[expect(missing_docs, reason = "documented on the flattened struct")]
    pub storage: StorageArgs,

    #[command(flatten)]
    #[expect(missing_docs, reason = "documented on the flattened struct")]
    pub telemetry: TelemetryArgs,
}

impl Config {
    /// The body idle timeout as a `Duration`.
    pub fn body_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.body_idle_timeout_seconds)
    }
}
