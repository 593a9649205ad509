//! The benchmark's and `log-stress`'s command lines: `--help` explains them without running
//! anything, and a bad value is a usage error (exit 2) before anything starts.

use std::process::{Command, Output};

fn run(binary: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(binary);
    command.args(args).env_remove("BENCH_SMALL_COUNT").env_remove("BENCH_UPLOAD_DIR");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

#[test]
fn bench_help_explains_and_bad_values_are_refused_before_anything_runs() {
    let bench = env!("CARGO_BIN_EXE_bench");
    let help = run(bench, &["--help"], &[]);
    assert!(help.status.success(), "bench --help failed: {help:?}");
    let text = String::from_utf8(help.stdout).unwrap();
    for expected in ["Usage: bench", "--smoke", "--only <N>", "BENCH_SMALL_COUNT", "BENCH_UPLOAD_DIR"] {
        assert!(text.contains(expected), "bench --help does not mention {expected}:\n{text}");
    }
    // Before the command line, `--only 9` ran nothing and `--only x` or a bad count ran
    // everything: now each is a usage error that starts nothing (no table printed).
    for (args, env) in [
        (&["--only", "9"][..], &[][..]),
        (&["--only", "x"][..], &[][..]),
        (&["--only", "2", "--small-count", "0"][..], &[][..]),
        (&["--only", "2"][..], &[("BENCH_SMALL_COUNT", "many")][..]),
    ] {
        let refused = run(bench, args, env);
        assert_eq!(refused.status.code(), Some(2), "bench {args:?} {env:?}: {refused:?}");
        let stdout = String::from_utf8_lossy(&refused.stdout);
        assert!(!stdout.contains("| scenario |"), "bench {args:?} {env:?} ran: {stdout}");
        assert!(String::from_utf8_lossy(&refused.stderr).contains("invalid value"), "{refused:?}");
    }
}

#[test]
fn log_stress_help_explains_and_a_bad_mode_writes_nothing() {
    let log_stress = env!("CARGO_BIN_EXE_log-stress");
    let help = run(log_stress, &["--help"], &[]);
    assert!(help.status.success(), "log-stress --help failed: {help:?}");
    assert!(String::from_utf8(help.stdout).unwrap().contains("[possible values: locked, unlocked]"));
    let dir = std::env::temp_dir().join(format!("log-stress-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("results.log");
    let refused = run(log_stress, &[log.to_str().unwrap(), "w", "3", "sideways"], &[]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(!log.exists(), "a refused mode created the log");
    std::fs::remove_dir_all(&dir).unwrap();
}
