//! The command line: every option is a flag, the service's address and key also environment
//! variables.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Default address of the service (`md5-api`'s default `BIND_ADDR`).
pub const DEFAULT_URL: &str = "http://127.0.0.1:9000";

/// The whole command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "md5-client",
    version,
    about = "Hash files with the MD5 service, like md5sum",
    long_about = "Hash files with the MD5 service, like md5sum.\n\n\
        `md5-client hash` uploads files (folders with -r) to the service, waits for their results and \
        prints `<md5>  <path>` lines that `md5sum -c` verifies. Every upload carries an Idempotency-Key: \
        when a connection drops or the service answers 503/507/409, the file is sent again with the same \
        key, so a retried file never becomes two tasks. Files of 64 MiB and more (--resume-threshold) are \
        sent resumably: after a dropped connection or an api restart they go on from where the service \
        got to. Files are streamed, never read into memory.\n\n\
        Exit status: 0 when every file was hashed, 1 when any failed (the reason is on stderr), 2 for a \
        usage error."
)]
pub struct Cli {
    /// Base URL of the service (http only; put a TLS proxy in front for https).
    #[arg(long, env = "MD5_URL", default_value = DEFAULT_URL, global = true)]
    pub url: String,

    /// Bearer key, when the service runs with API_KEY.
    #[arg(long, env = "MD5_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,

    /// How many times a request is tried again after a transient failure (connection refused or
    /// reset, 409, 503, 507) before the file counts as failed; waits grow from 0.25 s to 5 s.
    #[arg(long, default_value_t = 10, global = true)]
    pub retries: u32,

    /// Longest time, in seconds, to wait for one task to finish after its upload; a task still
    /// unfinished then counts as failed.
    #[arg(long, default_value_t = 3600, global = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Upload files and print their MD5s as md5sum does.
    Hash(HashArgs),
    /// Print the state of tasks by id.
    Status(StatusArgs),
}

/// `md5-client hash`.
#[derive(Debug, Clone, Args)]
pub struct HashArgs {
    /// Files to hash (folders too, with -r).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,

    /// Hash the files in folders and their subfolders (symbolic links are not followed).
    #[arg(short = 'r', long)]
    pub recursive: bool,

    /// Files uploaded at once.
    #[arg(short = 'j', long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub jobs: u32,

    /// One JSON object per file instead of md5sum lines: `{"path", "id", "status", "md5",
    /// "size_bytes", "error"}`, status `done`, or `error` (no md5, the reason in `error`).
    #[arg(long)]
    pub json: bool,

    /// Progress on stderr: bars when stdout and stderr are terminals, else a plain line every
    /// few seconds (`auto`); or always `bars`, `lines`, or `none`.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,

    /// Same as `--progress none`.
    #[arg(short = 'q', long)]
    pub quiet: bool,

    /// Files of at least this many bytes are sent resumably (tus on /api/v1/uploads): after a
    /// dropped connection or an api restart the upload goes on from the service's offset
    /// instead of starting again.
    #[arg(long, default_value_t = 64 * 1024 * 1024, value_name = "BYTES")]
    pub resume_threshold: u64,

    /// Send every file in one request (POST /api/v1/hashes), whatever its size.
    #[arg(long)]
    pub no_resume: bool,
}

/// `md5-client status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Task ids (as `hash --json` prints them, or as the api answered an upload).
    #[arg(required = true)]
    pub ids: Vec<String>,

    /// Wait up to this many seconds (at most the service's MAX_WAIT_SECONDS, 60 by default) for
    /// each task to finish.
    #[arg(long, default_value_t = 0.0)]
    pub wait: f64,

    /// Print each task as the service's JSON object.
    #[arg(long)]
    pub json: bool,
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// Bars on a terminal, plain lines otherwise.
    Auto,
    /// Bars per file and in total: bytes, rate, time left.
    Bars,
    /// A plain line every few seconds and a summary at the end.
    Lines,
    /// Nothing.
    None,
}
