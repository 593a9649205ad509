//! `md5-worker` configuration: every setting is a flag and an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use shared::config::{DatabaseArgs, RedisArgs, StorageArgs, StreamArgs, TelemetryArgs};

use crate::lanes::Md5Simd;

/// Default results log.
pub const DEFAULT_LOG_FILE: &str = "./data/log/md5.log";

/// The worker's whole configuration, parsed once at start.
#[derive(Debug, Clone, Parser, serde::Serialize)]
#[command(
    name = "md5-worker",
    version,
    about = "Hashes uploads for the MD5 service: reads jobs from the Redis consumer group, records each \
             result in Postgres and appends one line per task to the shared results log"
)]
pub struct Config {
    /// The shared results log (JSON Lines); its folder must be shared by every worker.
    #[arg(long, env = "LOG_FILE", default_value = DEFAULT_LOG_FILE)]
    pub log_file: PathBuf,

    /// Rotate LOG_FILE (to `<LOG_FILE>.<UTC timestamp>`, in the same folder) before an append
    /// would make it larger than this many bytes (unset: never; SIGHUP rotates on demand).
    #[arg(long, env = "LOG_MAX_BYTES", value_parser = clap::value_parser!(u64).range(1024..))]
    pub log_max_bytes: Option<u64>,

    /// Keep the stored file after its task is finished (default: delete it).
    #[arg(long, env = "KEEP_UPLOADS", default_value_t = false, action = clap::ArgAction::Set)]
    pub keep_uploads: bool,

    /// Jobs this process holds at once. Jobs at the same step share one statement, so more in
    /// flight costs less per job; hashes still run one per CPU, whatever this is.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub worker_concurrency: u32,

    /// Which MD5 code hashes the files that need MD5 alone: `auto` (AVX-512's 16 lanes, else
    /// AVX2's 8, else scalar), or `avx512`, `avx2`, `scalar` to force one (refused at start if
    /// the CPU lacks it). Many large files then hash side by side in the SIMD lanes.
    #[arg(long, env = "MD5_SIMD", value_enum, default_value_t = Md5Simd::Auto)]
    pub md5_simd: Md5Simd,

    /// A pending job idle this long (its worker dead, no heartbeat) is taken over by another worker; also the lease length.
    #[arg(long, env = "CLAIM_IDLE_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
    pub claim_idle_ms: u64,

    /// After this many deliveries a job is marked failed and moved to the dead-letter stream.
    #[arg(long, env = "MAX_DELIVERIES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_deliveries: u32,

    /// How often the sweeper looks for tasks that lost their stream entry; also how long a task
    /// may sit queued without one before it is re-enqueued.
    #[arg(long, env = "SWEEP_INTERVAL_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
    pub sweep_interval_ms: u64,

    /// How long XREADGROUP blocks waiting for new jobs, in milliseconds.
    #[arg(long, env = "READ_BLOCK_MS", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub read_block_ms: u64,

    /// Seconds in-flight jobs get to finish after SIGTERM; unfinished ones are handed back to the group.
    #[arg(long, env = "SHUTDOWN_GRACE_SECONDS", default_value_t = 30)]
    pub shutdown_grace_seconds: u64,

    /// Consumer name in the group (default: host-pid-random, unique per process).
    #[arg(long, env = "CONSUMER_NAME")]
    pub consumer_name: Option<String>,

    /// Send a signed webhook (Standard Webhooks 1.0) for every task that ends `done`, `failed`
    /// or `cancelled` to each of these URLs (comma-separated; `http://` only: put a TLS proxy in
    /// front of an `https://` receiver). Operator-configured only: no request can add one.
    #[arg(long, env = "WEBHOOK_URLS", value_delimiter = ',', value_parser = parse_webhook_url, requires = "webhook_secret")]
    pub webhook_urls: Vec<String>,

    /// The webhook signing secrets, `whsec_<base64>` (comma-separated; each signs every message,
    /// so a receiver can move from one to the next). Required with WEBHOOK_URLS.
    #[arg(long, env = "WEBHOOK_SECRET", value_delimiter = ',', value_parser = crate::webhooks::signing::WebhookSecret::parse, requires = "webhook_urls")]
    #[serde(skip)]
    pub webhook_secret: Vec<crate::webhooks::signing::WebhookSecret>,

    /// Seconds between a failed webhook delivery and the next attempt, one number per retry
    /// (comma-separated; the default is the Standard Webhooks schedule: 5 s, 5 min, 30 min, 2 h,
    /// 5 h, 10 h, 10 h). A `Retry-After` longer than the step is honoured (up to a day).
    #[arg(long, env = "WEBHOOK_RETRY_SCHEDULE", value_delimiter = ',', default_value = "5,300,1800,7200,18000,36000,36000", value_parser = clap::value_parser!(u64).range(0..=604_800))]
    pub webhook_retry_schedule: Vec<u64>,

    /// Where the worker serves Prometheus `/metrics` (unset: no listener).
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Test builds only: abort the process at this step of a job (`after_claim`, `after_hash`,
    /// `after_commit`, `after_log`, `before_ack`, `before_mark`), as `kill -9` would. A quick
    /// job's first try, which claims with its result, passes `after_claim` before its hash.
    #[cfg(feature = "fault-injection")]
    #[arg(long, env = "FAULT_CRASH_AT", hide = true)]
    pub fault_crash_at: Option<String>,

    /// Test builds only: make the first results-log flush fail after its write went through, as
    /// an EIO or ENOSPC at `fdatasync` time would.
    #[cfg(feature = "fault-injection")]
    #[arg(long, env = "FAULT_FAIL_FLUSH_ONCE", hide = true, default_value_t = false, action = clap::ArgAction::Set)]
    pub fault_fail_flush_once: bool,

    /// Test builds only: a job waits this long between committing its result and appending its
    /// log line, as a worker that stalls there would.
    #[cfg(feature = "fault-injection")]
    #[arg(long, env = "FAULT_PAUSE_AFTER_COMMIT_MS", hide = true)]
    pub fault_pause_after_commit_ms: Option<u64>,

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
    /// Jobs held at once.
    pub fn concurrency(&self) -> usize {
        self.worker_concurrency as usize
    }

    /// The claim idle time, also the lease a worker holds on a task.
    pub fn claim_idle(&self) -> Duration {
        Duration::from_millis(self.claim_idle_ms)
    }

    /// The sweep interval.
    pub fn sweep_interval(&self) -> Duration {
        Duration::from_millis(self.sweep_interval_ms)
    }

    /// This process's consumer name.
    pub fn consumer(&self) -> String {
        self.consumer_name.clone().unwrap_or_else(|| {
            let host = rustix::system::uname().nodename().to_string_lossy().into_owned();
            let pid = std::process::id();
            let nonce = &uuid::Uuid::new_v4().simple().to_string()[..6];
            format!("{host}-{pid}-{nonce}")
        })
    }
}

/// A webhook URL: `http://host[:port]/path`, without credentials.
fn parse_webhook_url(raw: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(raw.trim()).map_err(|err| format!("{raw:?} is not a URL: {err}"))?;
    match url.scheme() {
        "http" => {}
        "https" => {
            return Err(format!(
                "{raw:?}: this build sends webhooks over http:// only; put a TLS-terminating proxy in front of the receiver"
            ));
        }
        other => return Err(format!("{raw:?}: unsupported scheme {other:?}; use http://")),
    }
    if url.host_str().is_none() || !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{raw:?}: a webhook URL needs a host and no credentials"));
    }
    Ok(url.to_string())
}
