//! Several processes appending to one results log at once.

use std::collections::HashSet;

use integration_tests::read_log;

const WRITERS: usize = 4;
const LINES: usize = 1500;

fn run_writers(mode: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("md5-log-writers-{}-{mode}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("md5.log");
    let children: Vec<_> = (0..WRITERS)
        .map(|n| {
            std::process::Command::new(env!("CARGO_BIN_EXE_log-stress"))
                .arg(&log)
                .arg(format!("writer-{n}"))
                .arg(LINES.to_string())
                .arg(mode)
                .spawn()
                .expect("start log-stress")
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    log
}

#[test]
fn concurrent_writer_processes_leave_no_torn_lost_or_duplicated_line() {
    let log = run_writers("locked");
    let lines = read_log(&log).expect("every line well formed");
    assert_eq!(lines.len(), WRITERS * LINES, "no line lost");
    let ids: HashSet<_> = lines.iter().map(|line| line.task_id).collect();
    assert_eq!(ids.len(), lines.len(), "no line duplicated");
    std::fs::remove_dir_all(log.parent().unwrap()).unwrap();
}

#[test]
fn the_check_catches_interleaving_when_writers_skip_the_lock() {
    // Control: the same check on writers that do not lock and split each line in two writes.
    let log = run_writers("unlocked");
    let result = read_log(&log);
    assert!(result.is_err(), "the checker must see interleaved lines from unlocked writers");
    std::fs::remove_dir_all(log.parent().unwrap()).unwrap();
}
