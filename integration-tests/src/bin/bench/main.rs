//! The benchmark: the service against this machine's own limits, measured in the same run.
//!
//! `cargo run --release -p integration-tests --bin bench` (after `cargo build --release --bins`)
//! starts a private, durable Postgres and a Redis with AOF (`appendfsync everysec`), `md5-api`
//! and `md5-worker` processes, runs each scenario, prints one table (figure, baseline, ratio,
//! target) and writes it to BENCHMARKS.md. `--smoke` runs tiny sizes in seconds, checks that
//! every task finished with the right MD5, and writes nothing.

mod pg_counts;
mod procfs;
mod report;
mod scenarios;
mod service;
mod tools;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;

use report::{machine, table};
use scenarios::{
    digests::digests, hostile::hostile, large_file::large_file, many_files::many_files, memory::memory,
    retention::retention, scaling::scaling, small_files::small_files,
};
use tools::settle_disk;

/// What every scenario imports.
mod prelude {
    pub(crate) use std::collections::HashMap;
    pub(crate) use std::path::Path;
    pub(crate) use std::process::Command;
    pub(crate) use std::time::{Duration, Instant};

    pub(crate) use anyhow::Context as _;
    pub(crate) use futures_util::StreamExt as _;
    pub(crate) use integration_tests::{eventually, md5_hex, post_file, random_bytes, sibling_binary};
    pub(crate) use serde_json::Value;

    pub(crate) use crate::Sizes;
    pub(crate) use crate::procfs::peak_rss;
    pub(crate) use crate::report::{Row, mb_per_s, percentile, ratio};
    pub(crate) use crate::service::Service;
    pub(crate) use crate::tools::{
        best_of, send_over_loopback, time_command, write_random_file, write_random_file_seeded,
    };
}

#[derive(Clone, Copy)]
struct Sizes {
    hostile_in_flight: usize,
    hostile_upload: usize,
    hostile_body: usize,
    hostile_methods: usize,
    hostile_silent: usize,
    h2_idle: usize,
    h2_zero_window: usize,
    large: u64,
    memory: u64,
    small_count: usize,
    small_size: usize,
    clients: usize,
    fixed_rate: u64,
    fixed_seconds: u64,
    scaling_count: usize,
    lookup_rows: usize,
    /// Scenario 8: old finished tasks retention forgets.
    purge_rows: usize,
    lookups: usize,
    many_count: usize,
    many_size: u64,
}

const FULL: Sizes = Sizes {
    hostile_in_flight: 64,
    hostile_upload: 16 << 20,
    hostile_body: 256 << 20,
    hostile_methods: 3000,
    hostile_silent: 1000,
    h2_idle: 1000,
    h2_zero_window: 300,
    large: 1 << 30,
    memory: 2 << 30,
    small_count: 5000,
    small_size: 1024,
    clients: 32,
    fixed_rate: 500,
    fixed_seconds: 10,
    scaling_count: 2000,
    lookup_rows: 1_000_000,
    purge_rows: 2_000_000,
    lookups: 2000,
    many_count: 16,
    many_size: 256 << 20,
};

const SMOKE: Sizes = Sizes {
    hostile_in_flight: 8,
    hostile_upload: 1 << 20,
    hostile_body: 4 << 20,
    hostile_methods: 50,
    hostile_silent: 20,
    h2_idle: 20,
    h2_zero_window: 10,
    large: 8 << 20,
    memory: 16 << 20,
    small_count: 100,
    small_size: 1024,
    clients: 8,
    fixed_rate: 50,
    fixed_seconds: 1,
    scaling_count: 50,
    lookup_rows: 10_000,
    purge_rows: 10_000,
    lookups: 50,
    many_count: 4,
    many_size: 2 << 20,
};

/// The command line (`bench --help`).
#[derive(clap::Parser)]
#[command(
    about = "Measures md5-api and md5-worker against this machine's own limits, each baseline in the same run",
    long_about = "Measures md5-api and md5-worker against this machine's own limits, each baseline in the \
                  same run.\n\nStarts a private, durable Postgres and a Redis with AOF, the release binaries \
                  next to this one (`cargo build --release --bins` first), runs the scenarios, prints one \
                  table (figure, baseline, ratio, target) and, after a full run, writes it to BENCHMARKS.md \
                  (keeping its notes). A full run takes minutes: BENCHMARKS.md's header gives the last \
                  one's time.",
    after_help = "Environment:\n  BENCH_UPLOAD_DIR  a folder for the uploads, on another filesystem than the \
                  run's temporary folder\n                    (BENCHMARKS.md: a journaled ext4 for scenario \
                  2)"
)]
struct Args {
    /// Tiny sizes, in seconds: checks that every task finished with the right MD5 and writes nothing.
    #[arg(long)]
    smoke: bool,
    /// Runs scenario N alone (1-8), for profiling; writes nothing.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=8))]
    only: Option<u32>,
    /// Small files sent at full speed in scenario 2 (5,000; 100 with --smoke): a longer phase,
    /// whose jobs/s varies less from run to run, when comparing two builds.
    #[arg(long, value_name = "N", env = "BENCH_SMALL_COUNT", value_parser = clap::value_parser!(u32).range(1..))]
    small_count: Option<u32>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Args { smoke, only, small_count } = clap::Parser::parse();
    let wanted = |n: u32| only.is_none_or(|only| only == n);
    let mut sizes = if smoke { SMOKE } else { FULL };
    if let Some(count) = small_count {
        sizes.small_count = count as usize;
    }
    let sizes = &sizes;
    let root = std::env::temp_dir().join(format!("md5-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&root)?;
    let started = Instant::now();
    let mut rows = Vec::new();
    let result = async {
        if wanted(1) {
            large_file(&root, sizes, &mut rows).await.context("scenario 1, large file")?;
        }
        if wanted(2) {
            settle_disk()?;
            small_files(&root, sizes, &mut rows).await.context("scenario 2, many small files")?;
        }
        if wanted(3) {
            settle_disk()?;
            memory(&root, sizes, &mut rows).await.context("scenario 3, memory")?;
        }
        if wanted(4) {
            settle_disk()?;
            scaling(&root, sizes, &mut rows).await.context("scenario 4, scaling")?;
        }
        if wanted(5) {
            settle_disk()?;
            hostile(&root, sizes, &mut rows).await.context("scenario 5, hostile clients")?;
        }
        if wanted(6) {
            settle_disk()?;
            digests(&root, sizes, &mut rows).await.context("scenario 6, digests")?;
        }
        if wanted(7) {
            settle_disk()?;
            many_files(&root, sizes, &mut rows).await.context("scenario 7, many large files")?;
        }
        if wanted(8) {
            settle_disk()?;
            retention(&root, sizes, &mut rows).await.context("scenario 8, retention")?;
        }
        anyhow::Ok(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&root);
    result?;
    let table = table(&rows);
    println!("{table}");
    println!("finished in {:.0} s", started.elapsed().as_secs_f64());
    if only.is_some() {
        return Ok(());
    }
    if smoke {
        println!("bench smoke: every scenario ran and every task finished with the right MD5");
        return Ok(());
    }
    let command = "cargo build --release --bins && cargo run --release -p integration-tests --bin bench";
    let report = format!(
        "# Benchmarks\n\nMeasured by `{command}` on {} ({}), in {:.0} s. Every baseline was measured in the same run,\n\
         on the same machine and files. Postgres runs with its default durability (`fsync=on`,\n\
         `synchronous_commit=on`), Redis with AOF `appendfsync everysec`; uploads are `fdatasync`ed\n\
         and every log line is `fdatasync`ed before its job is acknowledged.\n\n{table}\n",
        machine(),
        chrono::Utc::now().format("%Y-%m-%d"),
        started.elapsed().as_secs_f64()
    );
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS.md");
    let existing = std::fs::read_to_string(&path).unwrap_or_default();
    let notes =
        existing.split_once("\n## Notes").map(|(_, notes)| format!("\n## Notes{notes}")).unwrap_or_default();
    std::fs::write(&path, format!("{report}{notes}"))?;
    println!("wrote {}", path.display());
    Ok(())
}
