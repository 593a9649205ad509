//! A resumable upload survives its api: `md5-client` (the real binary) sends a 2 GiB file through
//! a counting proxy while the api process is killed with SIGKILL at ~30 %, ~60 % and ~90 % and
//! started again each time. The client finishes from the service's offsets, the task's MD5 is
//! right, there is one row and one log line, offsets never go backwards, and no byte range was
//! sent more than twice.

use std::io::Write as _;
use std::time::Duration;

use integration_tests::api_process::ApiProcess;
use integration_tests::launcher::{Launch, defaults};
use integration_tests::proxy::CountingProxy;
use integration_tests::{eventually, read_log, sibling_binary};
use md5::Digest as _;
use serde_json::Value;

const SIZE: u64 = 2 * 1024 * 1024 * 1024;

/// Writes `SIZE` pseudo-random bytes to `path`; their MD5.
fn write_file(path: &std::path::Path) -> String {
    let mut file = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(path).unwrap());
    let mut md5 = md5::Md5::new();
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut block = vec![0u8; 8 << 20];
    for _ in 0..SIZE / block.len() as u64 {
        for word in block.chunks_exact_mut(8) {
            // xorshift64: fast, and no two blocks alike.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        md5.update(&block);
        file.write_all(&block).unwrap();
    }
    file.flush().unwrap();
    hex::encode(md5.finalize())
}

/// The upload's durable offset as the status route shows it (the upload's task is the only one).
async fn durable_offset(api: &ApiProcess, id: &str) -> Option<u64> {
    let task: Value = api
        .client
        .get(format!("{}/api/v1/hashes/{id}", api.base_url))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    match task["status"].as_str()? {
        "uploading" => task["bytes_received"].as_u64(),
        _ => Some(SIZE),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_gib_upload_survives_three_api_kills_and_resends_no_range_more_than_twice() {
    let mut api = ApiProcess::start(|c| c.max_upload_bytes = 4 * SIZE).await.unwrap();
    let path = api.root().join("big.bin");
    let expected = write_file(&path);
    let proxy = CountingProxy::start(api.addr).await.unwrap();
    let mut client = tokio::process::Command::new(sibling_binary("md5-client").unwrap())
        .args([
            "--url",
            &proxy.url,
            "--retries",
            "40",
            "hash",
            "--progress",
            "none",
            "--json",
            "--resume-threshold",
            "0",
        ])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // The upload's id: its file (written in place) is the only one in UPLOAD_DIR.
    let id = eventually(Duration::from_secs(30), "the upload to be created", || async {
        let files = api.upload_files();
        files.first().and_then(|file| file.file_name()?.to_str().map(str::to_owned))
    })
    .await
    .unwrap();

    // Segment k starts at durable offset starts[k] with the proxy's count at bases[k]; the client
    // had sent up to ends[k] when the api died.
    let (mut starts, mut ends, mut bases) = (vec![0u64], Vec::new(), vec![0u64]);
    for fraction in [0.3, 0.6, 0.9] {
        let target = (SIZE as f64 * fraction) as u64;
        let (start, base) = (*starts.last().unwrap(), *bases.last().unwrap());
        eventually(Duration::from_secs(120), "the client to reach the next kill point", || async {
            (start + proxy.sent().saturating_sub(base) >= target).then_some(())
        })
        .await
        .unwrap();
        api.kill();
        ends.push(start + proxy.sent() - base);
        bases.push(proxy.sent());
        api.restart().await.unwrap();
        let resumed = durable_offset(&api, &id).await.unwrap();
        assert!(resumed >= start, "the offset went backwards: {resumed} after {start}");
        starts.push(resumed);
    }

    // The upload completes; a worker hashes it.
    let output = tokio::time::timeout(Duration::from_secs(600), async {
        let mut worker: worker::Config = defaults("md5-worker");
        worker.database.database_url = api.database_url().to_owned();
        worker.redis.redis_url = api.config.redis.redis_url.clone();
        worker.stream = api.config.stream.clone();
        worker.storage.upload_dir = api.upload_dir.clone();
        worker.log_file = api.root().join("log").join("md5.log");
        let mut worker_process = Launch::worker(&worker).spawn().unwrap();
        let output = (&mut client).wait_with_output_ref().await;
        integration_tests::stop_process(&mut worker_process);
        output
    })
    .await
    .expect("the client finishes");
    let (status, stdout, stderr) = output;
    assert!(status.success(), "md5-client failed: {stderr}");
    let line: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(line["md5"], expected, "the task's MD5 is the file's");
    assert_eq!(line["id"], id);
    assert!(starts[1..].iter().all(|&start| start > 0), "each restart kept what was durable: {starts:?}");

    // Offsets: every segment resumed at or after the previous; a byte sent in segment k and
    // again in k + 1 is durable before segment k + 2 starts (so none went three times).
    starts.push(SIZE);
    for k in 0..ends.len() {
        assert!(starts[k + 1] >= starts[k]);
        assert!(
            ends[k] <= starts[(k + 2).min(starts.len() - 1)],
            "bytes up to {} (segment {k}) were sent again after restart {} resumed at {}: {starts:?} {ends:?}",
            ends[k],
            k + 2,
            starts[(k + 2).min(starts.len() - 1)]
        );
    }
    let resent = proxy.sent().saturating_sub(SIZE);
    println!(
        "resumed at {starts:?} after kills at {ends:?}; {} MiB sent again in all",
        resent / (1024 * 1024)
    );
    let log = read_log(&api.root().join("log").join("md5.log")).unwrap();
    assert_eq!(log.len(), 1, "one log line");
    assert_eq!(log[0].task_id.to_string(), id);
}

/// `wait_with_output` on a borrowed child (so `kill_on_drop` still covers an early return).
trait WaitRef {
    async fn wait_with_output_ref(&mut self) -> (std::process::ExitStatus, String, String);
}

impl WaitRef for &mut tokio::process::Child {
    async fn wait_with_output_ref(&mut self) -> (std::process::ExitStatus, String, String) {
        use tokio::io::AsyncReadExt as _;
        let (mut stdout, mut stderr) = (self.stdout.take().unwrap(), self.stderr.take().unwrap());
        let (mut out, mut err) = (String::new(), String::new());
        let (read_out, read_err, status) =
            tokio::join!(stdout.read_to_string(&mut out), stderr.read_to_string(&mut err), self.wait());
        read_out.unwrap();
        read_err.unwrap();
        (status.unwrap(), out, err)
    }
}
