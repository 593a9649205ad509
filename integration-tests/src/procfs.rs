//! What the tests and the benchmark read of a process from `/proc`, and the one thing they
//! change of their own: the open-file limit.

/// The fields of `/proc/<pid>/stat` the tests use; `None` once the process is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessStat {
    /// The parent's pid.
    pub parent: u32,
    /// Clock ticks spent in user and system mode by the process itself.
    pub own_ticks: u64,
    /// Clock ticks of its children that it waited for.
    pub children_ticks: u64,
}

impl ProcessStat {
    /// The stat of process `pid`.
    pub fn of(pid: u32) -> Option<ProcessStat> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // After the command name, which is in parentheses and may hold spaces: the state, then
        // the parent (1), …, utime and stime (12, 13), cutime and cstime (14, 15), counted from
        // the state as 0.
        let (_, rest) = stat.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let at = |i: usize| fields.get(i).and_then(|field| field.parse::<u64>().ok()).unwrap_or(0);
        Some(ProcessStat {
            parent: u32::try_from(at(1)).unwrap_or(0),
            own_ticks: at(11) + at(12),
            children_ticks: at(13) + at(14),
        })
    }

    /// The process's own CPU time (user + system), in seconds (100 ticks a second on Linux).
    pub fn cpu_seconds(&self) -> f64 {
        self.own_ticks as f64 / 100.0
    }
}

/// Raises this process's soft open-file limit to its hard limit, so that a test or the
/// benchmark can play many clients at once.
pub fn raise_own_file_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum });
}
