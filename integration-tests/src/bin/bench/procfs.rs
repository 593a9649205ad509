//! What `/proc` tells about the processes under test: CPU time, children, peak memory.

use anyhow::Context as _;

/// CPU time in clock ticks (`USER_HZ`, 100 per second on Linux).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cpu {
    pub(crate) api: u64,
    pub(crate) workers: u64,
    pub(crate) postgres: u64,
    pub(crate) redis: u64,
    /// This benchmark process: the load generator.
    pub(crate) load: u64,
    /// The kernel's own threads (children of `kthreadd`: the filesystem journal, writeback,
    /// block-layer and `ksoftirqd` workers), summed over those alive when read (one that exits
    /// between two readings takes its time with it, so this is a lower bound).
    pub(crate) kernel: u64,
    /// Interrupt handling (`irq` + `softirq` of `/proc/stat`: loopback TCP and I/O completions).
    /// Not a part of its own: with tick-based accounting (no `CONFIG_IRQ_TIME_ACCOUNTING`) a tick
    /// spent on an interrupt is also counted to the thread it interrupted.
    pub(crate) interrupts: u64,
    /// Every core's busy time (all but idle and iowait), whatever ran.
    pub(crate) machine: u64,
}

impl Cpu {
    /// Milliseconds of CPU per job between `before` and `self`, as one table cell.
    pub(crate) fn per_job_since(&self, before: &Cpu, jobs: usize) -> (String, f64) {
        let ms = |after: u64, before: u64| (after.saturating_sub(before)) as f64 * 10.0 / jobs as f64;
        let parts = format!(
            "api {:.2} + workers {:.2} + Postgres {:.2} + Redis {:.2} + load generator {:.2} + kernel threads {:.2} ms (interrupt handling {:.2} ms of these)",
            ms(self.api, before.api),
            ms(self.workers, before.workers),
            ms(self.postgres, before.postgres),
            ms(self.redis, before.redis),
            ms(self.load, before.load),
            ms(self.kernel, before.kernel),
            ms(self.interrupts, before.interrupts),
        );
        (parts, ms(self.machine, before.machine))
    }

    /// CPU seconds between `before` and `self` of the api, the worker, this program and the
    /// whole machine, as one table cell.
    pub(crate) fn seconds_since(&self, before: &Cpu) -> String {
        let s = |after: u64, before: u64| after.saturating_sub(before) as f64 / 100.0;
        format!(
            "api {:.2} + worker {:.2} + client (this program) {:.2} s; machine {:.2} s",
            s(self.api, before.api),
            s(self.workers, before.workers),
            s(self.load, before.load),
            s(self.machine, before.machine),
        )
    }

    /// Api + workers + Postgres + Redis (what issue 36's CPU target counts), in ms per job.
    pub(crate) fn service_per_job_since(&self, before: &Cpu, jobs: usize) -> f64 {
        let sum = |cpu: &Cpu| cpu.api + cpu.workers + cpu.postgres + cpu.redis;
        sum(self).saturating_sub(sum(before)) as f64 * 10.0 / jobs as f64
    }
}

/// (own user + system, waited-for children's user + system) ticks of a process; 0 if it is gone.
pub(crate) fn process_ticks(pid: u32) -> (u64, u64) {
    integration_tests::procfs::ProcessStat::of(pid)
        .map_or((0, 0), |stat| (stat.own_ticks, stat.children_ticks))
}

/// Live child processes of `parent`.
pub(crate) fn children(parent: u32) -> Vec<u32> {
    integration_tests::private_services::children_of(parent)
}

/// (busy, interrupt) ticks of every core since boot, from `/proc/stat`: busy is all but idle
/// and iowait; interrupts are `irq` + `softirq`, a part of busy.
pub(crate) fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    let total: u64 = fields.iter().take(8).sum();
    (total - field(3) - field(4), field(5) + field(6))
}

/// CPU ticks of the kernel's own threads (`kthreadd`, pid 2, and its children) alive now.
pub(crate) fn kernel_thread_ticks() -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(integration_tests::procfs::ProcessStat::of)
        .filter(|stat| stat.parent == 2)
        .map(|stat| stat.own_ticks)
        .sum()
}

/// Peak resident memory (VmHWM) of a process, in bytes.
pub(crate) fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .context("no VmHWM")?
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()?;
    Ok(kb * 1024)
}

/// Context switches of each part of the system: (voluntary, involuntary), summed over the
/// threads alive when read (a thread that exits takes its counts with it).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Switches {
    pub(crate) api: (u64, u64),
    pub(crate) workers: (u64, u64),
    pub(crate) postgres: (u64, u64),
    pub(crate) redis: (u64, u64),
}

impl Switches {
    /// Per job between `before` and `self`, as one table cell.
    pub(crate) fn per_job_since(&self, before: &Switches, jobs: usize) -> String {
        let part = |after: (u64, u64), before: (u64, u64)| {
            let per_job = |a: u64, b: u64| a.saturating_sub(b) as f64 / jobs as f64;
            format!("{:.1} + {:.1}", per_job(after.0, before.0), per_job(after.1, before.1))
        };
        format!(
            "api {}; workers {}; Postgres {}; Redis {} (voluntary + involuntary)",
            part(self.api, before.api),
            part(self.workers, before.workers),
            part(self.postgres, before.postgres),
            part(self.redis, before.redis),
        )
    }
}

/// (voluntary, involuntary) context switches so far of the live threads of each of `pids`.
pub(crate) fn switches_of(pids: impl IntoIterator<Item = u32>) -> (u64, u64) {
    let mut sum = (0, 0);
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
        for task in tasks.flatten() {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            let count = |name: &str| {
                status
                    .lines()
                    .find_map(|line| line.strip_prefix(name))
                    .and_then(|rest| rest.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            sum.0 += count("voluntary_ctxt_switches:");
            sum.1 += count("nonvoluntary_ctxt_switches:");
        }
    }
    sum
}
