//! The results log's unit tests: one process's writers, and two writers on one file.

use super::*;
use shared::TaskStatus;

fn line(task_id: Uuid, ts: &str) -> LogLine {
    LogLine {
        ts: chrono::DateTime::parse_from_rfc3339(ts).unwrap().with_timezone(&Utc),
        task_id,
        status: TaskStatus::Done,
        digests: Some(shared::Digests::md5_only("d41d8cd98f00b204e9800998ecf8427e".parse().unwrap())),
        size_bytes: 0,
        worker: "w".into(),
        error: None,
    }
}

fn temp_log(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("md5-log-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir.join("md5.log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_is_cut_before_the_next_append() {
    let path = temp_log("torn");
    let log = ResultsLog::open(&path).unwrap();
    let first = line(Uuid::now_v7(), "2026-11-27T19:00:00.000Z");
    log.append(&first, Utc::now(), false).await.unwrap();
    std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"ts\":\"20").unwrap();
    let second = line(Uuid::now_v7(), "2026-11-27T19:00:01.000Z");
    log.append(&second, Utc::now(), false).await.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, format!("{}{}", first.to_json_line(), second.to_json_line()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_already_logged_is_not_logged_again() {
    let path = temp_log("dup");
    let log = ResultsLog::open(&path).unwrap();
    let task = Uuid::now_v7();
    let since = Utc::now();
    let ts = shared::time::format_millis(since);
    assert_eq!(log.append(&line(task, &ts), since, true).await.unwrap(), Appended::Written);
    // Many later lines push it into an earlier scan chunk.
    for _ in 0..2000 {
        log.append(&line(Uuid::now_v7(), &ts), Utc::now(), false).await.unwrap();
    }
    assert_eq!(log.append(&line(task, &ts), since, true).await.unwrap(), Appended::AlreadyPresent);
    let other = Uuid::now_v7();
    assert_eq!(log.append(&line(other, &ts), since, true).await.unwrap(), Appended::Written);
}

#[tokio::test]
async fn the_search_goes_on_into_rotated_files_and_rotation_keeps_every_line() {
    let path = temp_log("rotate");
    let log = ResultsLog::open(&path).unwrap().with_max_bytes(Some(2048));
    let since = Utc::now();
    let ts = shared::time::format_millis(since);
    let first = Uuid::now_v7();
    assert_eq!(log.append(&line(first, &ts), Utc::now(), false).await.unwrap(), Appended::Written);
    let mut all = vec![first];
    for _ in 0..40 {
        let task = Uuid::now_v7();
        log.append(&line(task, &ts), Utc::now(), false).await.unwrap();
        all.push(task);
    }
    assert!(log.rotate().await.unwrap().is_some(), "SIGHUP's rotation");
    let rotated = log.rotated_files().unwrap();
    assert!(rotated.len() >= 3, "rotated by size and on demand: {rotated:?}");
    // The first task's line is in the oldest rotated file; the current file is empty.
    assert_eq!(log.append(&line(first, &ts), since, true).await.unwrap(), Appended::AlreadyPresent);
    let mut lines = 0;
    for file in rotated.iter().chain(std::iter::once(&path)) {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        assert!(text.len() <= 2048, "{} is {} bytes", file.display(), text.len());
        lines += text.lines().count();
    }
    assert_eq!(lines, all.len(), "every line once, across the files");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_flushes_and_each_line_is_written_once() {
    let path = temp_log("group");
    let log = ResultsLog::open(&path).unwrap();
    let ts = shared::time::format_millis(Utc::now());
    let tasks: Vec<Uuid> = (0..64).map(|_| Uuid::now_v7()).collect();
    let appends: Vec<_> = tasks
        .iter()
        .map(|&task| {
            let (log, ts) = (log.clone(), ts.clone());
            tokio::spawn(async move { log.append(&line(task, &ts), Utc::now(), false).await })
        })
        .collect();
    for append in appends {
        assert_eq!(append.await.unwrap().unwrap(), Appended::Written);
    }
    let flushes = log.file.flushes.load(Ordering::Relaxed);
    assert!(flushes < 32, "64 concurrent appends took {flushes} flushes");
    let text = std::fs::read_to_string(&path).unwrap();
    for task in &tasks {
        assert_eq!(text.matches(&task.to_string()).count(), 1);
    }
}

/// The lines of `task` in the log and its rotated files.
fn lines_of(path: &Path, task: Uuid) -> usize {
    let dir = path.parent().unwrap();
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| std::fs::read_to_string(entry.unwrap().path()).unwrap())
        .map(|text| text.matches(&task.to_string()).count())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_delivery_appending_after_a_redelivery_logged_its_task_writes_nothing() {
    // Two writers (two worker processes): `first` holds the task's first delivery, which
    // committed the result and appends without searching; `other` redelivered it meanwhile,
    // found the result committed and no line, and logged it.
    let path = temp_log("race");
    let first = ResultsLog::open(&path).unwrap();
    let other = ResultsLog::open(&path).unwrap();
    let now = Utc::now();
    let ts = shared::time::format_millis(now);
    assert_eq!(first.append(&line(Uuid::now_v7(), &ts), now, false).await.unwrap(), Appended::Written);
    let task = Uuid::now_v7();
    assert_eq!(other.append(&line(task, &ts), now, true).await.unwrap(), Appended::Written);
    other.append(&line(Uuid::now_v7(), &ts), now, false).await.unwrap();
    assert_eq!(first.append(&line(task, &ts), now, false).await.unwrap(), Appended::AlreadyPresent);
    assert_eq!(lines_of(&path, task), 1);

    // A writer that has not written yet (a new process) searches back to the finish time.
    let fresh = ResultsLog::open(&path).unwrap();
    assert_eq!(fresh.append(&line(task, &ts), now, false).await.unwrap(), Appended::AlreadyPresent);

    // So does one whose file was rotated by another since its last write.
    let task = Uuid::now_v7();
    assert_eq!(other.append(&line(task, &ts), now, true).await.unwrap(), Appended::Written);
    assert!(other.rotate().await.unwrap().is_some());
    assert_eq!(first.append(&line(task, &ts), now, false).await.unwrap(), Appended::AlreadyPresent);
    assert_eq!(lines_of(&path, task), 1);

    // And in one process: the redelivery's searching append, then the first delivery's.
    let task = Uuid::now_v7();
    assert_eq!(first.append(&line(task, &ts), now, true).await.unwrap(), Appended::Written);
    assert_eq!(first.append(&line(task, &ts), now, false).await.unwrap(), Appended::AlreadyPresent);
    assert_eq!(lines_of(&path, task), 1);
    // A task logged by nobody else is written.
    let task = Uuid::now_v7();
    assert_eq!(first.append(&line(task, &ts), now, false).await.unwrap(), Appended::Written);
    assert_eq!(lines_of(&path, task), 1);
}
