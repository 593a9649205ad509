//! The command line: every option is a flag, the service's address and key also environment
//! variables.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::algorithms::Algorithm;

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
        got to. Files are streamed, never read into memory. `-a sha256` (repeatable) prints other \
        digests, as sha256sum does; `md5-client check SUMS` verifies files against a sum file like \
        `md5sum -c`, the service comparing each file with the digest the sum file expects.\n\n\
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
    /// Upload files and print their MD5s (or other digests, -a) as md5sum (sha256sum, …) does.
    Hash(HashArgs),
    /// Check files against a sum file as `md5sum -c` does: each file is uploaded with the digest
    /// the sum file expects, and the service says whether it matches.
    Check(CheckArgs),
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

    /// The digests to print (the help text, `algorithms_help`, names every one the service has).
    #[arg(short = 'a', long = "algorithm", value_name = "ALG", value_parser = crate::algorithms::parse,
          help = algorithms_help(), long_help = algorithms_help())]
    pub algorithms: Vec<Algorithm>,

    /// BSD-style lines, `SHA256 (path) = <hex>`, as `sha256sum --tag` prints them.
    #[arg(long)]
    pub tag: bool,

    /// How files are sent.
    #[command(flatten)]
    pub sending: Sending,

    /// One JSON object per file instead of md5sum lines: `{"path", "id", "status", "md5",
    /// "digests", "size_bytes", "error"}`, status `done`, or `error` (no md5, the reason in `error`).
    #[arg(long)]
    pub json: bool,

    /// Same as `--progress none`.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// `md5-client check`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Sum files as md5sum, sha1sum, sha256sum or sha512sum write them (`<hex>  <path>`, or
    /// `--tag` lines); `-` reads standard input. Paths are taken from where you run it.
    #[arg(required = true, value_name = "SUMFILE")]
    pub sum_files: Vec<PathBuf>,

    /// The algorithm of every line without a tag (default: from the digest's length, as the
    /// coreutils tools would: 32 md5, 40 sha1, 64 sha256, 128 sha512).
    #[arg(short = 'a', long = "algorithm", value_name = "ALG", value_parser = crate::algorithms::parse)]
    pub algorithm: Option<Algorithm>,

    /// Print nothing for files that match (only FAILED lines and warnings).
    #[arg(long)]
    pub quiet: bool,

    /// How files are sent.
    #[command(flatten)]
    pub sending: Sending,
}

/// How `hash` and `check` send files.
#[derive(Debug, Clone, Args)]
pub struct Sending {
    /// Files uploaded at once.
    #[arg(short = 'j', long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub jobs: u32,

    /// Progress on stderr: bars when stdout and stderr are terminals, else a plain line every
    /// few seconds (`auto`); or always `bars`, `lines`, or `none`.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,

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

/// `hash -a`'s help, naming every algorithm the service computes.
fn algorithms_help() -> String {
    format!(
        "The digest to print: one of {} (md5 by default); the service's names (sha-256, …) work too. \
         Repeat it for several: one line per file and algorithm, in the order given, all from one upload.",
        crate::algorithms::command_line_names()
    )
}
