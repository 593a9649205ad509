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

    /// [`PgCounts::per_job`], its statements printed under `what`; the line of counters.
    pub(crate) fn print_per_job(&self, url: &str, jobs: usize, what: &str) -> anyhow::Result<String> {
        let (summary, statements) = self.per_job(url, jobs)?;
        println!("Postgres per job {what}: {summary}");
        for statement in &statements {
            println!("  {statement}");
        }
        Ok(summary)
    }

    /// Per job since `self`, for `jobs` jobs: one line of counters, and the statements (calls
    /// per job, mean time) where counted, most time first.
    fn per_job(&self, url: &str, jobs: usize) -> anyhow::Result<(String, Vec<String>)> {
        // Each backend reports its counts at most once a second, and an idle one up to 10 s
        // later: read until two readings a second apart agree (12 s at the most).
        let mut now = PgCounts::now(url)?;
        for _ in 0..12 {
            std::thread::sleep(std::time::Duration::from_secs(1));
            let next = PgCounts::now(url)?;
            let settled = next.commits == now.commits && next.wal_records == now.wal_records;
            now = next;
            if settled {
                break;
            }
        }
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
                 round((total_exec_time / {n})::numeric, 4), round((total_plan_time / {n})::numeric, 4), \
                 left(regexp_replace(query, '\\s+', ' ', 'g'), 80) \
                 FROM pg_stat_statements WHERE calls >= {jobs} / 50 ORDER BY total_exec_time DESC LIMIT 20"
            ),
        )
        .map(|text| {
            text.lines()
                .filter(|line| !line.is_empty())
                .map(|line| {
                    let parts: Vec<&str> = line.splitn(5, '|').collect();
                    let part = |i: usize| parts.get(i).copied().unwrap_or("");
                    format!(
                        "{:>6} calls/job, {:>7} ms/call, {:>7} ms/job, plan {:>7} ms/job: {}",
                        part(0),
                        part(1),
                        part(2),
                        part(3),
                        part(4)
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
