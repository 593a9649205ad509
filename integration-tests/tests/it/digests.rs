//! More than MD5: every algorithm against reference tools, expected digests checked, the server
//! default and the upload's choice, and the lookup by content.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use integration_tests::{TestApp, TestOptions, eventually, random_bytes};
use serde_json::Value;
use sha1::Digest as _;

const EVERY_OTHER: &str = "sha-1,sha-256,sha-512,crc32c,crc64nvme,blake3";

/// `POST /api/v1/hashes{query}` with the file as a raw body and `headers`.
async fn raw_upload(
    app: &TestApp,
    query: &str,
    headers: &[(&str, &str)],
    bytes: Vec<u8>,
) -> reqwest::Response {
    let mut request = app
        .client
        .post(format!("{}/api/v1/hashes{query}", app.base_url))
        .header("Content-Type", "application/octet-stream")
        .header("Content-Disposition", "attachment; filename=\"f.bin\"");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(bytes).send().await.expect("the api answers")
}

async fn id_of(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 202);
    response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
}

/// The digest coreutils' `tool` prints for `path`.
fn coreutils(tool: &str, path: &Path) -> String {
    let out = std::process::Command::new(tool).arg(path).output().expect("coreutils installed");
    assert!(out.status.success(), "{tool}");
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_owned()
}

/// Every algorithm's digest of `bytes` from tools and crates other than the worker's: coreutils
/// for MD5 and SHA, the `blake3` crate, and the `crc` crate's table-driven CRCs.
fn references(bytes: &[u8], dir: &Path) -> Vec<(&'static str, String)> {
    let path = dir.join(format!("file-{}", bytes.len()));
    std::fs::write(&path, bytes).unwrap();
    let crc32c = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI).checksum(bytes);
    let crc64 = crc::Crc::<u64>::new(&crc::CRC_64_NVME).checksum(bytes);
    let answer = vec![
        ("md5", coreutils("md5sum", &path)),
        ("sha-1", coreutils("sha1sum", &path)),
        ("sha-256", coreutils("sha256sum", &path)),
        ("sha-512", coreutils("sha512sum", &path)),
        ("crc32c", format!("{crc32c:08x}")),
        ("crc64nvme", format!("{crc64:016x}")),
        ("blake3", blake3::hash(bytes).to_hex().to_string()),
    ];
    std::fs::remove_file(&path).unwrap();
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_algorithm_equals_the_reference_at_every_padding_edge_up_to_100_mib() {
    let app = TestApp::spawn(TestOptions::default().api(|c| c.max_upload_bytes = 128 << 20)).await.unwrap();
    let dir = app.root.join("references");
    std::fs::create_dir_all(&dir).unwrap();
    // The CRC catalogue's check input, the padding edges of 64-byte (MD5, SHA-1, SHA-256) and
    // 128-byte (SHA-512) blocks, and sizes that take the worker's overlapped read.
    let mut files: Vec<Vec<u8>> = vec![b"123456789".to_vec()];
    for (seed, size) in
        [0usize, 1, 55, 56, 63, 64, 65, 111, 112, 127, 128, 129, 1 << 20, 100 << 20].into_iter().enumerate()
    {
        files.push(random_bytes(size, seed as u64));
    }
    for bytes in files {
        let want = references(&bytes, &dir);
        let size = bytes.len();
        let id = id_of(raw_upload(&app, &format!("?digests={EVERY_OTHER}"), &[], bytes).await).await;
        let task = app.wait_finished(&id, Duration::from_secs(120)).await;
        assert_eq!(task["status"], "done", "{task}");
        for (algorithm, hex) in &want {
            assert_eq!(
                task["digests"][algorithm].as_str(),
                Some(hex.as_str()),
                "{algorithm} of {size} bytes"
            );
        }
        assert_eq!(task["digests"].as_object().unwrap().len(), 7, "{task}");
        assert_eq!(task["md5"], task["digests"]["md5"]);
        if size == 9 {
            // The catalogue's check values of CRC-32C and CRC-64/NVME.
            assert_eq!(task["digests"]["crc32c"], "e3069283");
            assert_eq!(task["digests"]["crc64nvme"], "ae8b14860a799888");
            // The answer's File-Digest has the active algorithms, in RFC 9530 syntax.
            let answer = app.client.get(format!("{}/api/v1/hashes/{id}", app.base_url)).send().await.unwrap();
            let sha256 = STANDARD.encode(hex::decode(&want[2].1).unwrap());
            let sha512 = STANDARD.encode(hex::decode(&want[3].1).unwrap());
            assert_eq!(
                answer.headers()["file-digest"].to_str().unwrap(),
                format!("sha-256=:{sha256}:, sha-512=:{sha512}:")
            );
        }
    }
    // The log lines carry the other digests in their trailing field, MD5 where it always was.
    let lines = eventually(Duration::from_secs(10), "every log line", || async {
        let lines = app.log_lines();
        (lines.len() == 15).then_some(lines)
    })
    .await
    .unwrap();
    for line in lines {
        let digests = line.digests.expect("done lines have digests");
        assert_eq!(digests.others.len(), 6, "{:?}", digests);
    }
    let raw = std::fs::read_to_string(&app.log_file).unwrap();
    let first = raw.lines().next().unwrap();
    let at: Vec<usize> = ["ts", "task_id", "status", "md5", "size_bytes", "worker", "error", "digests"]
        .iter()
        .map(|key| first.find(&format!("\"{key}\":")).unwrap_or_else(|| panic!("{key} in {first}")))
        .collect();
    assert!(at.is_sorted(), "the fields in their order, digests last: {first}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expected_digest_that_differs_fails_the_task_naming_it_and_leaves_nothing() {
    let app = TestApp::spawn(TestOptions::default()).await.unwrap();
    let bytes = random_bytes(300_000, 7);
    let other = random_bytes(300_000, 8);
    let sha256 = |b: &[u8]| sha2_256(b);
    let md5 = |b: &[u8]| md5::Md5::digest(b).to_vec();
    let b64 = |raw: Vec<u8>| STANDARD.encode(raw);
    // (header, value for `bytes`, value for other bytes, algorithm named)
    let cases = [
        (
            "repr-digest",
            format!("sha-256=:{}:", b64(sha256(&bytes))),
            format!("sha-256=:{}:", b64(sha256(&other))),
            "sha-256",
        ),
        ("content-md5", b64(md5(&bytes)), b64(md5(&other)), "md5"),
        ("x-amz-checksum-sha256", b64(sha256(&bytes)), b64(sha256(&other)), "sha-256"),
    ];
    let mut failed = Vec::new();
    for (header, right, wrong, algorithm) in &cases {
        let good = id_of(raw_upload(&app, "", &[(header, right)], bytes.clone()).await).await;
        let task = app.wait_finished(&good, Duration::from_secs(30)).await;
        assert_eq!(task["status"], "done", "{header} right: {task}");
        assert!(task["digests"][algorithm].is_string(), "an expected algorithm is computed: {task}");

        let bad = id_of(raw_upload(&app, "", &[(header, wrong)], bytes.clone()).await).await;
        let task = app.wait_finished(&bad, Duration::from_secs(30)).await;
        assert_eq!(task["status"], "failed", "{header} wrong: {task}");
        let (want, got) = match *algorithm {
            "md5" => (hex::encode(md5(&other)), hex::encode(md5(&bytes))),
            _ => (hex::encode(sha256(&other)), hex::encode(sha256(&bytes))),
        };
        assert_eq!(
            task["error"].as_str().unwrap(),
            format!("{algorithm} mismatch: expected {want}, computed {got}"),
            "{header}"
        );
        assert_eq!(task["md5"], Value::Null);
        failed.push(bad);
    }
    // The same check for a resumable upload: the expected digest comes with its creation.
    let wrong = format!("sha-256=:{}:", b64(sha256(&other)));
    let created = app
        .client
        .post(format!("{}/api/v1/uploads", app.base_url))
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", bytes.len())
        .header("Repr-Digest", &wrong)
        .header("Content-Type", "application/offset+octet-stream")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let id = created.headers()["location"].to_str().unwrap().rsplit('/').next().unwrap().to_owned();
    let task = app.wait_finished(&id, Duration::from_secs(30)).await;
    assert_eq!(task["status"], "failed", "{task}");
    assert!(task["error"].as_str().unwrap().starts_with("sha-256 mismatch: expected "), "{task}");
    failed.push(id);
    // The IETF draft's creation with the whole body, and a multipart form (Content-MD5 is the
    // file's, not the form's): right → done, wrong → failed.
    let right = format!("sha-256=:{}:", b64(sha256(&bytes)));
    for (repr, want) in [(&right, "done"), (&wrong, "failed")] {
        let created = app
            .client
            .post(format!("{}/api/v1/uploads", app.base_url))
            .header("Upload-Draft-Interop-Version", "6")
            .header("Upload-Complete", "?1")
            .header("Repr-Digest", repr.as_str())
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
        let id = created.headers()["location"].to_str().unwrap().rsplit('/').next().unwrap().to_owned();
        let task = app.wait_finished(&id, Duration::from_secs(30)).await;
        assert_eq!(task["status"], want, "IETF creation: {task}");
        if want == "failed" {
            failed.push(id);
        }
    }
    for (md5_header, want) in [(b64(md5(&bytes)), "done"), (b64(md5(&other)), "failed")] {
        let form = reqwest::multipart::Form::new()
            .part("file", reqwest::multipart::Part::bytes(bytes.clone()).file_name("f.bin"));
        let answer = app
            .client
            .post(format!("{}/api/v1/hashes", app.base_url))
            .header("Content-MD5", md5_header)
            .multipart(form)
            .send()
            .await
            .unwrap();
        let id = id_of(answer).await;
        let task = app.wait_finished(&id, Duration::from_secs(30)).await;
        assert_eq!(task["status"], want, "multipart with Content-MD5: {task}");
        if want == "failed" {
            failed.push(id);
        }
    }

    // One log line per task, the failed ones `failed`; every file removed.
    let lines = eventually(Duration::from_secs(10), "every log line", || async {
        let lines = app.log_lines();
        (lines.len() == 11).then_some(lines)
    })
    .await
    .unwrap();
    for id in &failed {
        let mine: Vec<_> = lines.iter().filter(|line| line.task_id.to_string() == *id).collect();
        assert_eq!(mine.len(), 1, "{id}");
        assert_eq!(mine[0].status, shared::TaskStatus::Failed);
        assert!(mine[0].error.as_deref().unwrap().contains("mismatch"));
    }
    eventually(Duration::from_secs(10), "every file removed", || async {
        app.upload_files().is_empty().then_some(())
    })
    .await
    .unwrap();

    // A malformed expectation is refused before anything is stored, on every upload route.
    let rows = app.row_count().await;
    for (header, value) in [
        ("repr-digest", "sha-256=:AAAA:"),
        ("repr-digest", "sha-384=:AAAA:"),
        ("content-md5", "not base64!"),
        ("x-amz-checksum-crc32", "mnG7TA=="),
    ] {
        // A small body: a refused request's unread body may cost its connection otherwise.
        let answer = raw_upload(&app, "", &[(header, value)], b"0123456789".to_vec()).await;
        assert_eq!(answer.status(), 400, "{header}: {value}");
        let problem: Value = answer.json().await.unwrap();
        assert!(problem["detail"].as_str().unwrap().len() > 10, "{problem}");
        let created = app
            .client
            .post(format!("{}/api/v1/uploads", app.base_url))
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Length", 10)
            .header(header, value)
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 400, "tus {header}: {value}");
    }
    assert_eq!(app.row_count().await, rows);
    assert!(app.upload_files().is_empty());
    app.stop().await;
}

fn sha2_256(bytes: &[u8]) -> Vec<u8> {
    // SHA-256 from coreutils, so the test does not check the worker's crate against itself.
    let dir = std::env::temp_dir().join(format!("sha256-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("f");
    std::fs::write(&path, bytes).unwrap();
    let hex = coreutils("sha256sum", &path);
    std::fs::remove_dir_all(&dir).unwrap();
    hex::decode(hex).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_default_applies_unless_the_upload_chooses_and_unknown_names_are_refused() {
    let app =
        TestApp::spawn(TestOptions::default().api(|c| c.digests = "crc32c".parse().unwrap())).await.unwrap();
    let keys =
        |task: &Value| -> Vec<String> { task["digests"].as_object().unwrap().keys().cloned().collect() };
    let default = id_of(raw_upload(&app, "", &[], b"hello".to_vec()).await).await;
    let task = app.wait_finished(&default, Duration::from_secs(30)).await;
    assert_eq!(keys(&task), ["crc32c", "md5"]);
    let chosen = id_of(raw_upload(&app, "?digests=blake3", &[], b"hello".to_vec()).await).await;
    let task = app.wait_finished(&chosen, Duration::from_secs(30)).await;
    assert_eq!(keys(&task), ["blake3", "md5"]);
    // The compatibility route answers as it always did, and its task computes DIGESTS too.
    let compat = app.upload_to("/hashes/", "c.txt", b"hello".to_vec()).await;
    assert_eq!(compat.status(), 200);
    let compat: Value = compat.json().await.unwrap();
    assert_eq!(compat.as_object().unwrap().keys().collect::<Vec<_>>(), ["task_id"]);
    let task = app.wait_finished(compat["task_id"].as_str().unwrap(), Duration::from_secs(30)).await;
    assert_eq!(keys(&task), ["crc32c", "md5"]);
    let md5_only = id_of(raw_upload(&app, "?digests=md5", &[], b"hello".to_vec()).await).await;
    let task = app.wait_finished(&md5_only, Duration::from_secs(30)).await;
    assert_eq!(keys(&task), ["md5"]);
    // A multipart upload takes the same query.
    let form = app.upload_to("/api/v1/hashes?digests=sha-512", "a.txt", b"hello".to_vec()).await;
    let task = app.wait_finished(&id_of(form).await, Duration::from_secs(30)).await;
    assert_eq!(keys(&task), ["md5", "sha-512"]);

    let rows = app.row_count().await;
    let refused = raw_upload(&app, "?digests=sha-256,sha3-256", &[], b"hello".to_vec()).await;
    assert_eq!(refused.status(), 400);
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(
        problem["detail"],
        "digests: unknown digest algorithm \"sha3-256\"; known: md5, sha-1, sha-256, sha-512, crc32c, crc64nvme, blake3"
    );
    let tus = app
        .client
        .post(format!("{}/api/v1/uploads?digests=sha256", app.base_url))
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", 5)
        .send()
        .await
        .unwrap();
    assert_eq!(tus.status(), 400);
    assert_eq!(app.row_count().await, rows);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lookup_finds_a_file_uploaded_twice_under_both_tasks_newest_first() {
    let app = TestApp::spawn(TestOptions::default()).await.unwrap();
    let bytes = random_bytes(4096, 99);
    let first = id_of(raw_upload(&app, "?digests=sha-256", &[], bytes.clone()).await).await;
    let task = app.wait_finished(&first, Duration::from_secs(30)).await;
    let sha256 = task["digests"]["sha-256"].as_str().unwrap().to_owned();
    let md5 = task["md5"].as_str().unwrap().to_owned();
    let second = id_of(raw_upload(&app, "?digests=sha-256", &[], bytes.clone()).await).await;
    app.wait_finished(&second, Duration::from_secs(30)).await;
    // Another file, not to be found.
    let other = id_of(raw_upload(&app, "?digests=sha-256", &[], random_bytes(4096, 100)).await).await;
    app.wait_finished(&other, Duration::from_secs(30)).await;

    let lookup = |path: String| {
        let client = app.client.clone();
        let url = format!("{}{path}", app.base_url);
        async move {
            let answer = client.get(url).send().await.unwrap();
            (answer.status().as_u16(), answer.json::<Value>().await.unwrap())
        }
    };
    let ids = |page: &Value| -> Vec<String> {
        page["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_owned()).collect()
    };
    for (algorithm, hex) in
        [("sha-256", sha256.clone()), ("md5", md5.clone()), ("sha-256", sha256.to_uppercase())]
    {
        let (status, page) = lookup(format!("/api/v1/digests/{algorithm}/{hex}")).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(ids(&page), [second.clone(), first.clone()], "{algorithm}");
        assert_eq!(page["tasks"][0]["file_name"], "f.bin");
        assert_eq!(page["tasks"][0]["size_bytes"], 4096);
        assert!(page["tasks"][0]["finished_at"].as_str().unwrap().ends_with('Z'));
        assert_eq!(page["next"], Value::Null);
        assert_eq!(page["digest"], hex.to_lowercase());
    }
    // A page at a time.
    let (_, page) = lookup(format!("/api/v1/digests/sha-256/{sha256}?limit=1")).await;
    assert_eq!(ids(&page), std::slice::from_ref(&second));
    let (_, rest) = lookup(page["next"].as_str().unwrap().to_owned()).await;
    assert_eq!(ids(&rest), std::slice::from_ref(&first));
    let (_, end) = lookup(rest["next"].as_str().unwrap().to_owned()).await;
    assert_eq!(ids(&end), Vec::<String>::new());
    assert_eq!(end["next"], Value::Null);
    // Not computed for these tasks, never seen, or malformed.
    let (status, page) = lookup(format!("/api/v1/digests/sha-1/{}", "0".repeat(40))).await;
    assert_eq!((status, ids(&page).len()), (200, 0));
    for (path, status_wanted, says) in [
        (format!("/api/v1/digests/sha3-256/{sha256}"), 404, "known: md5"),
        (format!("/api/v1/digests/sha-256/{md5}"), 404, "64 hex digits"),
        (format!("/api/v1/digests/md5/{}", "z".repeat(32)), 404, "32 hex digits"),
        (format!("/api/v1/digests/md5/{md5}?limit=0"), 400, "limit"),
        (format!("/api/v1/digests/md5/{md5}?limit=101"), 400, "limit"),
        (format!("/api/v1/digests/md5/{md5}?cursor=nonsense"), 400, "cursor"),
    ] {
        let (status, problem) = lookup(path.clone()).await;
        assert_eq!(status, status_wanted, "{path}");
        assert!(problem["detail"].as_str().unwrap().contains(says), "{path}: {problem}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lookup_needs_the_api_key_when_one_is_set() {
    let app = TestApp::spawn(TestOptions::default().no_workers().api(|c| c.api_key = Some("s3cret".into())))
        .await
        .unwrap();
    let url = format!("{}/api/v1/digests/md5/{}", app.base_url, "0".repeat(32));
    assert_eq!(app.client.get(&url).send().await.unwrap().status(), 401);
    assert_eq!(app.client.get(&url).bearer_auth("wrong").send().await.unwrap().status(), 401);
    assert_eq!(app.client.get(&url).bearer_auth("s3cret").send().await.unwrap().status(), 200);
    app.stop().await;
}
