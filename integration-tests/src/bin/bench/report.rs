//! The benchmark's table: one row per figure, with its same-run baseline, ratio and target.

use std::fmt::Write as _;
use std::time::Duration;

/// One row of the table.
pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) figure: String,
    pub(crate) baseline: String,
    pub(crate) ratio: String,
    pub(crate) target: String,
}

pub(crate) fn mb_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / 1e6 / took.as_secs_f64()
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

pub(crate) fn ratio(value: f64, baseline: f64) -> String {
    format!("{:.2}×", value / baseline)
}

pub(crate) fn table(rows: &[Row]) -> String {
    let mut out =
        String::from("| scenario | figure | baseline (same run) | ratio | target |\n|---|---|---|---|---|\n");
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            row.scenario, row.figure, row.baseline, row.ratio, row.target
        );
    }
    out
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0))
        })
        .unwrap_or(0);
    format!("{cores} cores ({cpu}), {:.0} GiB RAM", memory as f64 / (1 << 20) as f64)
}
