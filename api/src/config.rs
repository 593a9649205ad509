//! `md5-api` configuration: every setting is a flag and an environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use crate::body::BodyBounds;
use crate::quotas::{QuotaOverrides, Quotas};
use shared::config::{DatabaseArgs, RedisArgs, StorageArgs, StreamArgs, TelemetryArgs};

/// Event streams one client address may hold unless `MAX_EVENT_STREAMS_PER_CLIENT` says.
pub const DEFAULT_EVENT_STREAMS_PER_CLIENT: u32 = 256;
/// Default listen address.
pub const DEFAULT_BIND_ADDR: &str = "127.0.0.1:9000";
/// Default upload limit: 10 GiB.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 10 * 1024 * 1024 * 1024;

/// The api's whole configuration, parsed once at start.
#[derive(Debug, Clone, Parser, serde::Serialize)]
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

    /// A key shared by every client that presents it (one client for the per-client bounds):
    /// when set, every /api/ and /hashes route needs `Authorization: Bearer <key>` (this one, or
    /// one of `md5-api keys create`). An empty value counts as unset, and the api warns at start.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Uploads of at least this many bytes (declared, or once received) are hashed while they
    /// arrive: a worker reads each part as soon as it is written and flushed. 0 turns it off.
    #[arg(long, env = "HASH_WHILE_UPLOADING_ABOVE_BYTES", default_value_t = shared::follow::FOLLOW_ABOVE_BYTES)]
    pub hash_while_uploading_above_bytes: u64,

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

    /// Most event streams (`GET /api/v1/hashes/{id}/events`) open at once; more get 503 with
    /// Retry-After. Each holds a connection (HTTP/1) or a stream (HTTP/2) too: MAX_CONNECTIONS
    /// bounds those.
    #[arg(long, env = "MAX_EVENT_STREAMS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_event_streams: u32,

    /// Most event streams open at once from one client address (default: 256, at most
    /// MAX_EVENT_STREAMS); more get 503. A browser page follows only its unfinished tasks.
    #[arg(long, env = "MAX_EVENT_STREAMS_PER_CLIENT", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_event_streams_per_client: Option<u32>,

    /// Tasks (uploads and resumable uploads created) one client may create per second, a
    /// second's worth at once; more get 429 with Retry-After. Kept by each api process. 0: no
    /// bound.
    #[arg(long, env = "MAX_TASKS_PER_CLIENT_PER_SECOND", default_value_t = 100)]
    pub max_tasks_per_client_per_second: u32,

    /// Most `?wait=` long-polls one client holds at once; a further one is answered at once, as
    /// without `?wait=`. (When every connection is taken, a long-polling connection can also be
    /// closed to make room, its long-polls answered at once.)
    #[arg(long, env = "MAX_LONG_POLLS_PER_CLIENT", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_long_polls_per_client: u32,

    /// Most uploads streamed at once from one client address (default: three quarters of
    /// MAX_CONCURRENT_UPLOADS, so one client never holds every slot); more get 503.
    #[arg(long, env = "MAX_UPLOADS_PER_CLIENT", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_uploads_per_client: Option<u32>,

    /// Slowest accepted upload, in bytes per second averaged over UPLOAD_RATE_WINDOW_SECONDS; a
    /// slower body is cut with 408 and cleaned up (0 disables the check).
    #[arg(long, env = "MIN_UPLOAD_BYTES_PER_SECOND", default_value_t = 1024)]
    pub min_upload_bytes_per_second: u64,

    /// The window, in seconds, over which MIN_UPLOAD_BYTES_PER_SECOND is measured.
    #[arg(long, env = "UPLOAD_RATE_WINDOW_SECONDS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub upload_rate_window_seconds: u64,

    /// Most open client connections; further connections wait in the listen backlog until one
    /// closes. Lowered at start to fit the process's open-file limit.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Put `GET /metrics` behind `API_KEY` too (off by default, as Prometheus scrapers expect an
    /// open endpoint; the counts it shows are read from Postgres at most every 15 s either way).
    #[arg(long, env = "METRICS_REQUIRE_AUTH", default_value_t = false, action = clap::ArgAction::Set)]
    pub metrics_require_auth: bool,

    /// Minimum average size of an upload's body chunks (HTTP/1.1 chunks, HTTP/2 DATA frames,
    /// whatever each read delivers), measured over every 1024 chunks; below it the upload is cut
    /// with 400, so that tiny chunks cannot cost the api a hundred times the CPU per byte. 0
    /// disables the check.
    #[arg(long, env = "MIN_UPLOAD_CHUNK_BYTES", default_value_t = 256)]
    pub min_upload_chunk_bytes: u64,

    /// Close a connection (HTTP/1 keep-alive or HTTP/2) that has had no request running and no
    /// body bytes moving for this long; HTTP/2 pings do not count. When every connection slot is
    /// taken, the longest-idle connection (idle at least a second) is closed for a new one.
    #[arg(long, env = "IDLE_TIMEOUT_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub idle_timeout_seconds: u64,

    /// Reverse proxies (addresses or CIDRs, comma-separated) whose `Forwarded` or
    /// `X-Forwarded-For` header names the client's address, read right to left past these hops;
    /// from any other peer those headers are ignored. Empty: none.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',', value_parser = crate::forwarded::parse_trusted)]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// A command instead of serving (`md5-api keys --help`).
    #[command(subcommand)]
    #[serde(skip)]
    pub command: Option<Command>,

    /// Seconds an `Idempotency-Key` of `POST /api/v1/hashes` names its task: a repeat within
    /// this window gets the original task; after it the key may be used for a new upload.
    #[arg(long, env = "IDEMPOTENCY_TTL_SECONDS", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub idempotency_ttl_seconds: u64,

    /// Seconds a resumable upload (`/api/v1/uploads`) may live from its creation, whatever
    /// arrives: then, unless complete, it expires (its file is removed, its task ends `expired`).
    #[arg(long, env = "UPLOAD_EXPIRY_SECONDS", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub upload_expiry_seconds: u64,

    /// Seconds a task that ended (`done` or `failed` with its log line written, `cancelled`,
    /// `expired`) is kept after its upload began; then it is forgotten as `DELETE` forgets it
    /// (row, digests, idempotency key). 0 keeps every task forever.
    #[arg(long, env = "TASK_RETENTION_SECONDS", default_value_t = 2_592_000)]
    pub task_retention_seconds: u64,

    /// Seconds a resumable upload may go without an append before it expires (each append
    /// renews it, up to UPLOAD_EXPIRY_SECONDS). Announced in `Upload-Expires` (tus) and
    /// `Upload-Limit: max-age` (the IETF draft).
    #[arg(long, env = "UPLOAD_IDLE_SECONDS", default_value_t = 3_600, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub upload_idle_seconds: u64,

    /// Bytes one client may hold in unfinished resumable uploads, counted by their declared
    /// lengths (a deferred length counts as MAX_UPLOAD_BYTES); default: a quarter of the upload
    /// volume's size. A creation that would pass it gets 503, or 413 if its length alone does.
    #[arg(long, env = "MAX_OPEN_UPLOAD_BYTES_PER_CLIENT", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_open_upload_bytes_per_client: Option<u64>,

    /// Most resumable uploads open at once (created, not yet complete, expired or terminated),
    /// across every api sharing the database; a creation past it gets 503.
    #[arg(long, env = "MAX_OPEN_UPLOADS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub max_open_uploads: u32,

    /// Most resumable uploads one client address may have open at once (default: three quarters
    /// of MAX_OPEN_UPLOADS, so one client never takes every place); a creation past it gets 503.
    #[arg(long, env = "MAX_OPEN_UPLOADS_PER_CLIENT", value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub max_open_uploads_per_client: Option<u32>,

    /// Digests every task computes unless its upload chooses (the help text, `digests_help`,
    /// names every algorithm of the registry).
    #[arg(long, env = "DIGESTS", default_value = "md5", help = digests_help(), long_help = digests_help())]
    pub digests: shared::digest::AlgorithmList,

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
    /// The bounds every upload body is read under.
    pub fn body_bounds(&self) -> BodyBounds {
        BodyBounds {
            idle: Duration::from_secs(self.body_idle_timeout_seconds),
            min_bytes_per_second: self.min_upload_bytes_per_second,
            rate_window: Duration::from_secs(self.upload_rate_window_seconds),
            min_chunk_bytes: self.min_upload_chunk_bytes,
        }
    }

    /// How long an `Idempotency-Key` names its task.
    pub fn idempotency_ttl(&self) -> Duration {
        Duration::from_secs(self.idempotency_ttl_seconds)
    }

    /// How long a resumable upload lives: without an append, and in all.
    pub fn upload_expiry(&self) -> shared::uploads::Expiry {
        shared::uploads::Expiry {
            idle: Duration::from_secs(self.upload_idle_seconds.min(self.upload_expiry_seconds)),
            lifetime: Duration::from_secs(self.upload_expiry_seconds),
        }
    }

    /// The API key, if authentication is on: an empty `API_KEY` means none.
    pub fn api_key(&self) -> Option<&str> {
        self.api_key.as_deref().filter(|key| !key.is_empty())
    }

    /// Resumable uploads one client address may have open at once.
    pub fn open_uploads_per_client(&self) -> u32 {
        self.max_open_uploads_per_client
            .unwrap_or_else(|| (self.max_open_uploads * 3 / 4).max(1))
            .min(self.max_open_uploads)
    }

    /// Event streams one client address may hold open at once.
    pub fn event_streams_per_client(&self) -> u32 {
        self.max_event_streams_per_client
            .unwrap_or(DEFAULT_EVENT_STREAMS_PER_CLIENT)
            .min(self.max_event_streams)
    }

    /// The settings' per-client quotas (`volume_bytes`: the upload volume's size, whose quarter
    /// is the default of `MAX_OPEN_UPLOAD_BYTES_PER_CLIENT`).
    pub fn quotas(&self, volume_bytes: u64) -> Quotas {
        Quotas {
            uploads: self.uploads_per_client(),
            open_uploads: self.open_uploads_per_client(),
            open_upload_bytes: self.max_open_upload_bytes_per_client.unwrap_or(volume_bytes / 4),
            tasks_per_minute: self.max_tasks_per_client_per_second.saturating_mul(60),
            event_streams: self.event_streams_per_client(),
            long_polls: self.max_long_polls_per_client,
        }
    }

    /// Uploads one client address may stream at once.
    pub fn uploads_per_client(&self) -> u32 {
        self.max_uploads_per_client
            .unwrap_or_else(|| (self.max_concurrent_uploads * 3 / 4).max(1))
            .min(self.max_concurrent_uploads)
    }
}

/// `DIGESTS`' help, naming every algorithm of the registry.
fn digests_help() -> String {
    format!(
        "Digests every task computes unless its upload chooses with `?digests=`: comma-separated names among {} \
         (MD5 is computed always). Each one costs the workers CPU for every byte uploaded",
        shared::Algorithm::names()
    )
}

/// What `md5-api` does instead of serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Create, list, change or revoke API keys (once a key exists, every API request needs one).
    #[command(subcommand)]
    Keys(KeysCommand),
}

/// `md5-api keys …`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum KeysCommand {
    /// Creates a key and prints it, once: only its SHA-256 is stored. Quotas not given take the
    /// api's per-client settings.
    Create {
        /// Its name (letters, digits, `.`, `_`, `-`; up to 64): in logs, `keys list`, webhook events.
        #[arg(long)]
        name: String,
        /// The key sees every client's tasks (for operators).
        #[arg(long)]
        admin: bool,
        /// Its own quotas.
        #[command(flatten)]
        quotas: QuotaOverrides,
    },
    /// Lists the keys: name, created, last used, revoked, admin, own quotas (never the key).
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Changes a live key's quotas (those not given stay); the replicas apply them within a second.
    Update {
        /// The key's name.
        name: String,
        /// Its own quotas.
        #[command(flatten)]
        quotas: QuotaOverrides,
    },
    /// Revokes a key: every replica refuses it within a second; its tasks stay its own.
    Revoke {
        /// The key's name.
        name: String,
    },
}
