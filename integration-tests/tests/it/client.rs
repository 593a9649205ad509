//! `md5-client` (the real binary) against the real api and worker processes: its output is what
//! `md5sum` prints, `md5sum -c` accepts it, and an api killed mid-run costs no file a second task.
//!
//! Needs `md5sum` (GNU coreutils).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use diesel::QueryDsl as _;
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use integration_tests::fault::FaultEnv;
use integration_tests::proxy::AnswerLosingProxy;
use integration_tests::{TestApp, TestOptions, eventually, random_bytes, sibling_binary};

/// Writes `count` files of mixed sizes (0 B, 50 MB, 20 MB, 8 MB, then up to ~300 KB) under
/// `root/files`, with names md5sum must escape among them; every file name is unique.
fn write_files(root: &Path, count: usize, big: &[usize]) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    for i in 0..count {
        let size = if i == 0 { 0 } else { big.get(i - 1).copied().unwrap_or((i * 7919) % 300_000 + i) };
        let name = match i {
            5 => "back\\slash 5.bin".to_owned(),
            6 => "new\nline 6.bin".to_owned(),
            7 => "ünïcödé 7.txt".to_owned(),
            _ => format!("file {i}.bin"),
        };
        let path = root.join("files").join(format!("d{}", i % 5)).join(format!("s{}", i % 3)).join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, random_bytes(size, i as u64)).unwrap();
        paths.push(path);
    }
    paths
}

/// `md5-client` with `args`, run in `cwd` against `url`, progress as plain lines.
fn client(cwd: &Path, url: &str, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(sibling_binary("md5-client").unwrap());
    command.current_dir(cwd).env("MD5_URL", url).env_remove("MD5_API_KEY").args(args);
    command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).kill_on_drop(true);
    command
}

/// `md5sum` over every file under `cwd/files`, as relative paths.
fn md5sum_of(cwd: &Path, files: &[PathBuf]) -> Vec<String> {
    let relative: Vec<&Path> = files.iter().map(|path| path.strip_prefix(cwd).unwrap()).collect();
    let output =
        std::process::Command::new("md5sum").current_dir(cwd).args(&relative).output().expect("md5sum runs");
    assert!(output.status.success());
    sorted_lines(&output.stdout)
}

fn sorted_lines(bytes: &[u8]) -> Vec<String> {
    let mut lines: Vec<String> = String::from_utf8_lossy(bytes).lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

/// The client's output is md5sum's, and `md5sum -c` verifies it.
fn assert_md5sum_identical(cwd: &Path, files: &[PathBuf], output: &Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "md5-client failed: {stderr}");
    assert_eq!(sorted_lines(&output.stdout), md5sum_of(cwd, files), "stderr: {stderr}");
    std::fs::write(cwd.join("sums.md5"), &output.stdout).unwrap();
    let check = std::process::Command::new("md5sum")
        .current_dir(cwd)
        .args(["-c", "--quiet", "sums.md5"])
        .output()
        .expect("md5sum -c runs");
    assert!(check.status.success(), "md5sum -c: {}", String::from_utf8_lossy(&check.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_r_over_200_files_prints_what_md5sum_prints() {
    let mut app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    app.start_worker_process(4).unwrap();
    let files = write_files(&app.root, 200, &[50_000_000, 20_000_000, 8_000_000]);
    let output =
        client(&app.root, &app.base_url, &["hash", "-r", "-j", "8", "files"]).output().await.unwrap();
    assert_md5sum_identical(&app.root, &files, &output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("200 of 200 files hashed"), "the summary line: {stderr}");
    assert_eq!(app.row_count().await, 200);

    // --json: one object per file, in the order of the files.
    let json =
        client(&app.root, &app.base_url, &["hash", "--json", "-q", "files/d0/s0/file 15.bin", "files/d1"])
            .arg("-r")
            .output()
            .await
            .unwrap();
    assert!(json.status.success());
    let objects: Vec<serde_json::Value> = String::from_utf8_lossy(&json.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(objects.len(), 41);
    assert_eq!(objects[0]["path"], "files/d0/s0/file 15.bin");
    assert!(objects.iter().all(|o| o["status"] == "done" && o["md5"].as_str().unwrap().len() == 32));
    app.stop().await;
}

/// Runs `md5-client <args>` against `app` in `app.root` with a terminal for stdout and stderr
/// (`script`, from util-linux); what the terminal showed.
async fn on_a_terminal(app: &TestApp, args: &str) -> String {
    let command =
        format!("MD5_URL={} {} {args}", app.base_url, sibling_binary("md5-client").unwrap().display());
    let output = tokio::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .current_dir(&app.root)
        .output()
        .await
        .expect("script (util-linux) runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_progress_is_drawn_as_bars() {
    let app = TestApp::spawn(TestOptions::default()).await.unwrap();
    let files = write_files(&app.root, 4, &[20_000_000]);
    let screen = on_a_terminal(&app, "hash -r files").await;
    assert!(screen.contains("files [") && screen.contains("ETA"), "a total bar: {screen}");
    assert!(screen.contains("uploading ["), "a bar per file: {screen}");
    assert!(screen.contains("4 of 4 files hashed"), "the summary: {screen}");
    for line in md5sum_of(&app.root, &files) {
        assert!(screen.contains(&line), "{line} is printed: {screen}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_a_large_file_shows_its_hashing_progress() {
    // 2 GiB (sparse: no disk write here) hashes for a few seconds; the file's bar then
    // follows the bytes hashed, which the service reports while the task is processing (hashed
    // once stored: while it arrives, the upload's own bar is the one that moves).
    let app = TestApp::spawn(TestOptions::default().api(|c| {
        c.max_upload_bytes = 3 << 30;
        c.hash_while_uploading_above_bytes = 0;
    }))
    .await
    .unwrap();
    let file = std::fs::File::create(app.root.join("large.bin")).unwrap();
    file.set_len(2 << 30).unwrap();
    let screen = on_a_terminal(&app, "hash --no-resume large.bin").await;
    // The MD5 of 2 GiB of zeros (`head -c 2G /dev/zero | md5sum`).
    assert!(screen.contains("a981130cf2b7e09f4686dc273cf7187e  large.bin"), "{screen}");
    let hashing_mid_way = screen
        .split("hashing [")
        .skip(1)
        .map(|rest| rest.split(['\r', '\n']).next().unwrap_or(""))
        .filter_map(|bar| bar.split_once("/2.00 GiB").map(|(before, _)| before.trim_end().to_owned()))
        .any(|before| !before.ends_with("2.00 GiB"));
    assert!(hashing_mid_way, "the bar showed the hash part way: {screen}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_paths_and_unknown_ids_fail_with_the_reason_and_the_rest_is_still_done() {
    let app = TestApp::spawn(TestOptions::default()).await.unwrap();
    let files = write_files(&app.root, 3, &[]);
    let output =
        client(&app.root, &app.base_url, &["hash", "files/d0/s0/file 0.bin", "missing.bin", "files"])
            .output()
            .await
            .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("missing.bin: No such file"), "{stderr}");
    assert!(stderr.contains("files: is a folder (use -r"), "{stderr}");
    // The summary counts every file named, those that could not be read among them.
    assert!(stderr.contains("1 of 3 files hashed"), "{stderr}");
    assert!(stderr.contains("2 failed"), "{stderr}");
    assert_eq!(sorted_lines(&output.stdout), md5sum_of(&app.root, &files[..1]));

    let id = uuid::Uuid::new_v4().to_string();
    let status = client(&app.root, &app.base_url, &["status", &id]).output().await.unwrap();
    assert_eq!(status.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&status.stderr).contains("404"), "{status:?}");

    let ids: Vec<String> = {
        let json = client(&app.root, &app.base_url, &["hash", "--json", "-q", "files/d1/s1/file 1.bin"])
            .output()
            .await
            .unwrap();
        String::from_utf8_lossy(&json.stdout)
            .lines()
            .map(|line| {
                serde_json::from_str::<serde_json::Value>(line).unwrap()["id"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    let status = client(&app.root, &app.base_url, &["status", &ids[0]]).output().await.unwrap();
    assert!(status.status.success());
    let expected = md5sum_of(&app.root, &files[1..2])[0].split_whitespace().next().unwrap().to_owned();
    assert_eq!(String::from_utf8_lossy(&status.stdout).trim(), format!("{}  done  {expected}", ids[0]));

    let help = client(&app.root, &app.base_url, &["hash", "--help"]).output().await.unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--jobs"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_whose_answers_are_lost_are_retried_under_their_key_and_make_one_task_each() {
    let mut app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    app.start_worker_process(4).unwrap();
    let upstream = app.base_url.trim_start_matches("http://").parse().unwrap();
    // The api commits each of these uploads; the client never hears of it and sends it again.
    let proxy = AnswerLosingProxy::start(upstream, 12).await.unwrap();
    let files = write_files(&app.root, 30, &[3_000_000]);
    let output = client(&app.root, &proxy.url, &["hash", "-r", "-j", "4", "files"]).output().await.unwrap();
    assert_eq!((proxy.answers_lost(), proxy.answers_to_lose()), (12, 0), "every planned answer was lost");
    assert_md5sum_identical(&app.root, &files, &output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.matches("; trying again in").count() >= 12, "each lost answer is retried: {stderr}");
    assert_eq!(app.row_count().await, 30, "one task per file, however often it was sent");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_killed_and_restarted_mid_run_costs_no_file_a_second_task() {
    let mut env = FaultEnv::start(|c| c.worker.worker_concurrency = 2).await.unwrap();
    env.spawn_worker(&[]).unwrap();
    let files = write_files(&env.root, 200, &[50_000_000, 30_000_000, 20_000_000, 20_000_000, 10_000_000]);
    let mut run = client(&env.root, &env.api_url, &["hash", "-r", "-j", "4", "--retries", "20", "files"])
        .spawn()
        .unwrap();
    let stdout = run.stdout.take().unwrap();
    let stderr = run.stderr.take().unwrap();
    let read_all = |mut pipe: Box<dyn tokio::io::AsyncRead + Unpin + Send>| {
        tokio::spawn(async move {
            let mut bytes = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut pipe, &mut bytes).await.map(|_| bytes)
        })
    };
    let (stdout, stderr) = (read_all(Box::new(stdout)), read_all(Box::new(stderr)));

    // Kill the api while the run is under way: some tasks exist, not all.
    let rows_at_kill = eventually(Duration::from_secs(60), "the run to be under way", || async {
        env.row_count().await.filter(|rows| *rows >= 20)
    })
    .await
    .unwrap();
    let mut api = env.api.take().unwrap();
    api.kill().unwrap();
    api.wait().unwrap();
    assert!(run.try_wait().unwrap().is_none(), "the client was still running when the api died");
    env.start_api().unwrap();

    let status =
        tokio::time::timeout(Duration::from_secs(240), run.wait()).await.expect("the run ends").unwrap();
    let output =
        Output { status, stdout: stdout.await.unwrap().unwrap(), stderr: stderr.await.unwrap().unwrap() };
    assert!(rows_at_kill < 200, "killed before the last upload was accepted ({rows_at_kill} rows)");
    assert_md5sum_identical(&env.root, &files, &output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("; trying again in"), "the client retried through the restart: {stderr}");

    // Exactly one task per file name (names are unique).
    use shared::schema::md5_tasks::dsl;
    let mut conn = AsyncPgConnection::establish(&env.pg.url()).await.unwrap();
    let per_name: Vec<(String, i64)> = dsl::md5_tasks
        .group_by(dsl::file_name)
        .select((dsl::file_name, diesel::dsl::count_star()))
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(per_name.len(), 200, "every file has a task");
    let twice: Vec<_> = per_name.iter().filter(|(_, tasks)| *tasks != 1).collect();
    assert!(twice.is_empty(), "files with more than one task: {twice:?}");
}

/// `<tool>` (sha256sum, md5sum) over `files`, as relative paths from `cwd`, with `args` first.
fn coreutils_sums(tool: &str, args: &[&str], cwd: &Path, files: &[PathBuf]) -> Vec<u8> {
    let relative: Vec<&Path> = files.iter().map(|path| path.strip_prefix(cwd).unwrap()).collect();
    let output = std::process::Command::new(tool)
        .current_dir(cwd)
        .args(args)
        .args(&relative)
        .output()
        .expect("coreutils");
    assert!(output.status.success(), "{tool}");
    output.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_over_50_files_fails_exactly_the_3_corrupted_and_sha256sum_accepts_hash_a_sha256() {
    let app = TestApp::spawn(TestOptions::default()).await.unwrap();
    let root = &app.root;
    let files = write_files(root, 50, &[3_000_000]);

    // `hash -a sha256` prints what sha256sum prints (escaped names too), and sha256sum -c accepts it.
    let output =
        client(root, &app.base_url, &["hash", "-r", "-q", "-a", "sha256", "files"]).output().await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(sorted_lines(&output.stdout), sorted_lines(&coreutils_sums("sha256sum", &[], root, &files)));
    std::fs::write(root.join("sums.sha256"), &output.stdout).unwrap();
    let verified = std::process::Command::new("sha256sum")
        .current_dir(root)
        .args(["-c", "--strict", "sums.sha256"])
        .output()
        .unwrap();
    assert!(verified.status.success(), "sha256sum -c: {}", String::from_utf8_lossy(&verified.stdout));
    // --tag, and two algorithms from one upload: a line each, in the order asked.
    let one = &files[15..16];
    let tagged = client(
        root,
        &app.base_url,
        &["hash", "-q", "--tag", "-a", "sha256", "-a", "md5", one[0].to_str().unwrap()],
    )
    .output()
    .await
    .unwrap();
    assert!(tagged.status.success());
    let want =
        [coreutils_sums("sha256sum", &["--tag"], root, one), coreutils_sums("md5sum", &["--tag"], root, one)]
            .concat();
    let absolute =
        String::from_utf8(want).unwrap().replace("(files/", &format!("({}/files/", root.display()));
    assert_eq!(String::from_utf8_lossy(&tagged.stdout), absolute);

    // Three files change after their sums were written: check finds exactly those.
    let corrupted = [&files[10], &files[20], &files[31]];
    let mut bytes = std::fs::read(corrupted[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(corrupted[0], bytes).unwrap();
    let bytes = std::fs::read(corrupted[1]).unwrap();
    std::fs::write(corrupted[1], &bytes[..bytes.len() - 1]).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(corrupted[2])
        .and_then(|mut f| {
            use std::io::Write as _;
            f.write_all(b"x")
        })
        .unwrap();
    let checked = client(root, &app.base_url, &["check", "-j", "8", "sums.sha256"]).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&checked.stdout);
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert_eq!(checked.status.code(), Some(1), "{stdout}{stderr}");
    let failed: Vec<&str> = stdout.lines().filter(|line| line.ends_with(": FAILED")).collect();
    let want: Vec<String> = corrupted
        .iter()
        .map(|path| format!("{}: FAILED", path.strip_prefix(root).unwrap().display()))
        .collect();
    assert_eq!(failed, want, "{stdout}");
    assert_eq!(stdout.lines().filter(|line| line.ends_with(": OK")).count(), 47, "{stdout}");
    assert!(stderr.contains("WARNING: 3 computed checksums did NOT match"), "{stderr}");
    // The same verdicts as sha256sum's own check.
    let coreutils = std::process::Command::new("sha256sum")
        .current_dir(root)
        .args(["-c", "sums.sha256"])
        .output()
        .unwrap();
    // In the sum file's order, as sha256sum -c prints them.
    assert_eq!(String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&coreutils.stdout));

    // An md5sum file (MD5 by the digest's length), --quiet, and a file gone missing.
    let md5_sums = coreutils_sums("md5sum", &[], root, &files[..10]);
    std::fs::write(root.join("sums.md5"), [md5_sums, b"not a sum line\n".to_vec()].concat()).unwrap();
    std::fs::remove_file(&files[3]).unwrap();
    let quiet = client(root, &app.base_url, &["check", "--quiet", "sums.md5"]).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&quiet.stdout);
    let stderr = String::from_utf8_lossy(&quiet.stderr);
    assert_eq!(quiet.status.code(), Some(1));
    assert_eq!(stdout, format!("{}: FAILED open or read\n", files[3].strip_prefix(root).unwrap().display()));
    assert!(stderr.contains("WARNING: 1 line is improperly formatted"), "{stderr}");
    assert!(stderr.contains("WARNING: 1 listed file could not be read"), "{stderr}");
    // Without --quiet, every line in the sum file's order, the unreadable one in its place,
    // exactly as md5sum -c prints them.
    let all = client(root, &app.base_url, &["check", "-j", "4", "sums.md5"]).output().await.unwrap();
    let coreutils =
        std::process::Command::new("md5sum").current_dir(root).args(["-c", "sums.md5"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&all.stdout), String::from_utf8_lossy(&coreutils.stdout));
    assert!(String::from_utf8_lossy(&all.stdout).lines().nth(3).unwrap().ends_with(": FAILED open or read"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_where_nothing_has_ever_answered_is_given_up_within_10_seconds_saying_so() {
    let root = std::env::temp_dir().join(format!("md5-unreachable-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("a.txt"), b"hello").unwrap();
    // A port nothing listens on: every connection is refused.
    let url = format!("http://127.0.0.1:{}", integration_tests::launcher::free_port());
    let started = std::time::Instant::now();
    let output = client(&root, &url, &["hash", "a.txt"]).output().await.unwrap();
    let _ = std::fs::remove_dir_all(&root);
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(took < std::time::Duration::from_secs(10), "gave up after {took:?}: {stderr}");
    assert!(stderr.contains(&format!("the service is not reachable at {url}")), "{stderr}");
    assert!(stderr.contains("0 of 1 files hashed"), "{stderr}");
}
