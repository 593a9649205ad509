//! What Postgres did per job over a stretch of a run: commits, WAL records, bytes and flushes
//! (`pg_stat_database`, `pg_stat_wal`) and, where the server preloads `pg_stat_statements`
//! (the benchmark's private server does, where installed), each statement's calls per job.

use std::process::Command;

use anyhow::Context as _;

/// The counters at one moment.
pub(crate) struct PgCounts {
    commits: f64,
    wal_records: f64,
    wal_bytes: f64,
    wal_syncs: f64,
}

impl PgCounts {
    /// Resets the statement counts (where kept) and reads the other counters.
    pub(crate) fn start(url: &str) -> anyhow::Result<PgCounts> {
        let _ =
            psql(url, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset()");
        PgCounts::now(url)
    }

    fn now(url: &str) -> anyhow::Result<PgCounts> {
        // Statistics are sent at the end of each transaction, at most once a second per backend.
        let text = psql(
            url,
            "SELECT pg_stat_clear_snapshot(); \
             SELECT (SELECT sum(xact_commit) FROM pg_stat_database), wal_records, wal_bytes, wal_sync \
             FROM pg_stat_wal",
        )?;
        let line = text.lines().last().context("pg_stat_wal")?;
        let values: Vec<f64> = line.split('|').map(|v| v.trim().parse().unwrap_or(0.0)).collect();
        anyhow::ensure!(values.len() == 4, "unexpected pg_stat_wal line {line:?}");
        Ok(PgCounts {
            commits: values[0],
            wal_records: values[1],
            wal_bytes: values[2],
            wal_syncs: values[3],
        })
    }

    /// Per job since `self`, for `jobs` jobs: one line of counters, and the statements (calls
    /// per job, mean time) where counted, most called first.
    pub(crate) fn per_job(&self, url: &str, jobs: usize) -> anyhow::Result<(String, Vec<String>)> {
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let now = PgCounts::now(url)?;
        let n = jobs as f64;
        let summary = format!(
            "{:.1} commits, {:.1} WAL records, {:.0} B of WAL, {:.2} WAL flushes",
            (now.commits - self.commits) / n,
            (now.wal_records - self.wal_records) / n,
            (now.wal_bytes - self.wal_bytes) / n,
            (now.wal_syncs - self.wal_syncs) / n,
        );
        let statements = psql(
            url,
            &format!(
                "SELECT round(calls::numeric / {n}, 2), round(mean_exec_time::numeric, 3), \
                 round((total_exec_time / {n})::numeric, 4), \
                 left(regexp_replace(query, '\\s+', ' ', 'g'), 80) \
                 FROM pg_stat_statements WHERE calls >= {jobs} / 50 ORDER BY total_exec_time DESC LIMIT 20"
            ),
        )
        .map(|text| {
            text.lines()
                .filter(|line| !line.is_empty())
                .map(|line| {
                    let parts: Vec<&str> = line.splitn(4, '|').collect();
                    let part = |i: usize| parts.get(i).copied().unwrap_or("");
                    format!(
                        "{:>6} calls/job, {:>7} ms/call, {:>7} ms/job: {}",
                        part(0),
                        part(1),
                        part(2),
                        part(3)
                    )
                })
                .collect()
        })
        .unwrap_or_default();
        Ok((summary, statements))
    }
}

fn psql(url: &str, sql: &str) -> anyhow::Result<String> {
    let output = Command::new("psql").args([url, "-Atqc", sql]).output().context("psql")?;
    anyhow::ensure!(output.status.success(), "psql: {}", String::from_utf8_lossy(&output.stderr));
    Ok(String::from_utf8(output.stdout)?)
}
