//! Appends many lines to one results log, for the concurrent-writers test.
//!
//! `log-stress <log> <writer-name> <lines> locked` appends through the worker's `ResultsLog`
//! (fcntl lock, one write call per line). `unlocked` is the control: no lock, and each line
//! written in two halves, as a careless writer would; the test's checker must catch the damage.

use std::io::Write as _;

use shared::{LogLine, TaskStatus};

/// Appends many lines to one results log, for the concurrent-writers test
/// (`integration-tests/tests/it/log_writers.rs`).
#[derive(clap::Parser)]
struct Args {
    /// The results log to append to.
    log: std::path::PathBuf,
    /// The `worker` field of every line.
    writer: String,
    /// How many lines to append.
    lines: usize,
    /// `locked`: through the worker's `ResultsLog`; `unlocked`: the careless control, each line
    /// in two halves with no lock.
    #[arg(value_enum)]
    mode: Mode,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Mode {
    Locked,
    Unlocked,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Args { log: path, writer, lines, mode } = clap::Parser::parse();
    let log = worker::results_log::ResultsLog::open(&path)?;
    for _ in 0..lines {
        let line = LogLine {
            ts: chrono::Utc::now(),
            task_id: uuid::Uuid::now_v7(),
            status: TaskStatus::Done,
            digests: Some(shared::Digests::md5_only("d41d8cd98f00b204e9800998ecf8427e".parse().unwrap())),
            size_bytes: 0,
            worker: writer.clone(),
            error: None,
        };
        match mode {
            Mode::Locked => {
                log.append(&line, line.ts, false).await?;
            }
            Mode::Unlocked => {
                let text = line.to_json_line();
                let (head, tail) = text.as_bytes().split_at(text.len() / 2);
                let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
                file.write_all(head)?;
                std::thread::yield_now();
                file.write_all(tail)?;
            }
        }
    }
    Ok(())
}
