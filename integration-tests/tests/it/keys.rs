//! Clients told apart by their API keys, on two api replicas: each key sees only its own tasks,
//! uploads and lookups (another's are 404, as ids that never existed), an admin key sees all, a
//! revoked key is refused everywhere within a second, each key has its own quotas, and the
//! database holds no key. Behind a trusted proxy, anonymous clients are their forwarded address.

use std::net::IpAddr;
use std::process::Child;
use std::time::{Duration, Instant};

use diesel_async::RunQueryDsl as _;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use reqwest::{Client, StatusCode};
use serde_json::Value;

use integration_tests::api_process::ApiProcess;
use integration_tests::launcher::{Launch, free_port};
use integration_tests::{TestApp, TestOptions, eventually, md5_hex, post_file, random_bytes, sibling_binary};

use crate::partial_uploads::creation;
use crate::resumable::TUS;

/// `md5-api keys <args>` on `database_url`: its standard output (the key, for `create`).
fn keys(database_url: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(sibling_binary("md5-api").unwrap())
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .env_remove("API_KEY")
        .arg("keys")
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "md5-api keys {args:?} failed: {stderr}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// A client sending `Authorization: Bearer <key>`, from the local address `from`.
fn client_with(key: &str, from: [u8; 4]) -> Client {
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {key}")).unwrap());
    Client::builder()
        .default_headers(headers)
        .local_address(IpAddr::from(from))
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Uploads `bytes` to `base`; the status and the body.
async fn upload(client: &Client, base: &str, bytes: &[u8]) -> (StatusCode, Value) {
    let part = reqwest::multipart::Part::bytes(bytes.to_vec());
    let response = post_file(client, &format!("{base}/api/v1/hashes"), "same.bin", part).await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The status and body of a GET.
async fn get(client: &Client, url: &str) -> (StatusCode, String) {
    let response = client.get(url).send().await.unwrap();
    (response.status(), response.text().await.unwrap())
}

/// A second api process on `app`'s database (logging each request, its log to `log`), and its URL.
async fn replica(app: &TestApp, log: &std::path::Path) -> (Child, String) {
    let mut config = app.api_config(&TestOptions::default());
    config.bind_addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    config.telemetry.log_filter = "info,tower_http=debug".into();
    let url = format!("http://{}", config.bind_addr);
    let child = Launch::api(&config).stderr_to(log).spawn().unwrap();
    eventually(Duration::from_secs(30), "the replica to answer", || async {
        app.client.get(format!("{url}/healthz")).send().await.ok()?.status().is_success().then_some(())
    })
    .await
    .unwrap();
    (child, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_sees_only_its_own_tasks_an_admin_sees_all_and_a_revoked_key_is_refused_within_a_second() {
    let app = TestApp::spawn(TestOptions::default()).await.unwrap();
    let base = app.base_url.clone();
    // Before any key exists the service is open.
    assert_eq!(upload(&app.client, &base, b"open").await.0, StatusCode::ACCEPTED);
    let key_a = keys(&app.database_url, &["create", "--name", "alice"]);
    let key_b = keys(&app.database_url, &["create", "--name", "bob"]);
    let key_admin = keys(&app.database_url, &["create", "--name", "ops", "--admin"]);
    assert!(key_a.starts_with("md5svc_") && key_a.len() == 7 + 43, "{key_a}");
    let replica_log =
        std::env::temp_dir().join(format!("keys-replica-{}.log", uuid::Uuid::new_v4().simple()));
    let (mut second, replica_url) = replica(&app, &replica_log).await;
    let (a, b, admin) = (
        client_with(&key_a, [127, 0, 0, 1]),
        client_with(&key_b, [127, 0, 0, 1]),
        client_with(&key_admin, [127, 0, 0, 1]),
    );

    // Once a key exists, nothing gets in without one, on either replica (within a second).
    for url in [&base, &replica_url] {
        eventually(Duration::from_secs(1), "an anonymous upload to be refused", || async {
            (upload(&app.client, url, b"anonymous").await.0 == StatusCode::UNAUTHORIZED).then_some(())
        })
        .await
        .unwrap();
        assert_eq!(get(&app.client, &format!("{url}/healthz")).await.0, 200, "health stays open");
    }
    let forged = client_with("md5svc_not-a-key", [127, 0, 0, 1]);
    assert_eq!(upload(&forged, &base, b"x").await.0, StatusCode::UNAUTHORIZED);

    // An endpoint, so that every ended task gets its webhook event (the outbox row is the body sent).
    diesel::sql_query("INSERT INTO md5_webhook_endpoints (url) VALUES ('http://127.0.0.1:9/hook')")
        .execute(&mut app.db().await)
        .await
        .unwrap();
    // Alice and Bob upload the same file, with the same Idempotency-Key: two tasks.
    let bytes = random_bytes(100_000, 33);
    let with_key = |client: &Client, url: &str| {
        let form = reqwest::multipart::Form::new()
            .part("file", reqwest::multipart::Part::bytes(bytes.clone()).file_name("secret.pdf"));
        client.post(format!("{url}/api/v1/hashes")).header("Idempotency-Key", "k-1").multipart(form).send()
    };
    let task_a: Value = with_key(&a, &base).await.unwrap().json().await.unwrap();
    let task_b: Value = with_key(&b, &replica_url).await.unwrap().json().await.unwrap();
    let (id_a, id_b) = (task_a["id"].as_str().unwrap().to_owned(), task_b["id"].as_str().unwrap().to_owned());
    assert_ne!(id_a, id_b, "one client's Idempotency-Key never names another's task");
    for (client, id) in [(&a, &id_a), (&b, &id_b)] {
        eventually(Duration::from_secs(30), "the task to be done", || async {
            let (_, body) = get(client, &format!("{base}/api/v1/hashes/{id}?wait=5")).await;
            body.contains("\"done\"").then_some(())
        })
        .await
        .unwrap();
    }

    // Each event names its task's key, never the key itself.
    let payloads: Vec<String> =
        diesel::sql_query("SELECT payload FROM md5_webhook_deliveries ORDER BY task_id")
            .load::<Payload>(&mut app.db().await)
            .await
            .unwrap()
            .into_iter()
            .map(|row| row.payload)
            .collect();
    let event_of =
        |id: &str| payloads.iter().find(|payload| payload.contains(id)).cloned().unwrap_or_default();
    assert!(event_of(&id_a).contains("\"key\":\"alice\""), "{payloads:?}");
    assert!(event_of(&id_b).contains("\"key\":\"bob\""), "{payloads:?}");
    assert!(!payloads.iter().any(|payload| payload.contains("md5svc_")));

    // Bob sees nothing of Alice's: the same 404 as an id that never existed, on both replicas.
    let never = uuid::Uuid::now_v7().to_string();
    for url in [&base, &replica_url] {
        for (path, what) in [
            ("api/v1/hashes/{}", "task"),
            ("api/v1/hashes/{}/events", "events"),
            ("hashes/{}", "compat task"),
        ] {
            let (status, body) = get(&b, &format!("{url}/{}", path.replace("{}", &id_a))).await;
            let (never_status, never_body) = get(&b, &format!("{url}/{}", path.replace("{}", &never))).await;
            assert_eq!((status, never_status), (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND), "{what}");
            assert_eq!(
                body.replace(&id_a, "ID"),
                never_body.replace(&never, "ID"),
                "{what}: the same answer"
            );
            assert_eq!(
                get(&admin, &format!("{url}/{}", path.replace("{}", &id_a))).await.0,
                200,
                "admin: {what}"
            );
        }
        let cancel = b.post(format!("{url}/api/v1/hashes/{id_a}/cancel")).send().await.unwrap();
        assert_eq!(cancel.status(), 404, "Bob cannot cancel Alice's task");
        let forget = b.delete(format!("{url}/api/v1/hashes/{id_a}")).send().await.unwrap();
        assert_eq!(forget.status(), 404, "nor forget it");
    }
    assert!(get(&a, &format!("{base}/api/v1/hashes/{id_a}")).await.1.contains("\"done\""));
    // The older service's flow with a key: Alice's compat upload is hers alone.
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(b"old".to_vec()).file_name("a.txt"));
    let old: Value =
        a.post(format!("{replica_url}/hashes/")).multipart(form).send().await.unwrap().json().await.unwrap();
    let old_url = format!("{base}/hashes/{}", old["task_id"].as_str().unwrap());
    let old_result = eventually(Duration::from_secs(30), "the compat task to finish", || async {
        let body: Value = a.get(&old_url).send().await.ok()?.json().await.ok()?;
        (body["status"] == "SUCCESS").then_some(body)
    })
    .await
    .unwrap();
    assert_eq!(old_result["result"], md5_hex(b"old"));
    assert_eq!(get(&b, &old_url).await.0, 404);

    // Lookup by content: each sees only its own upload of the file; the admin sees both.
    let lookup = format!("{base}/api/v1/digests/md5/{}", md5_hex(&bytes));
    let ids = |page: Value| -> Vec<String> {
        page["tasks"].as_array().unwrap().iter().map(|task| task["id"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(ids(a.get(&lookup).send().await.unwrap().json().await.unwrap()), [id_a.as_str()]);
    assert_eq!(ids(b.get(&lookup).send().await.unwrap().json().await.unwrap()), [id_b.as_str()]);
    let mut all = ids(admin.get(&lookup).send().await.unwrap().json().await.unwrap());
    all.sort();
    let mut both = vec![id_a.clone(), id_b.clone()];
    both.sort();
    assert_eq!(all, both);

    // A resumable upload is its creator's alone.
    let created = creation(&a, &base, 10).await;
    assert_eq!(created.status(), 201);
    let upload_url = format!("{base}{}", created.headers()["location"].to_str().unwrap());
    let head = |client: &Client| client.head(&upload_url).header(TUS.0, TUS.1).send();
    assert_eq!(head(&b).await.unwrap().status(), 404);
    let append = b
        .patch(&upload_url)
        .header(TUS.0, TUS.1)
        .header("Upload-Offset", 0)
        .header("Content-Type", "application/offset+octet-stream")
        .body(vec![0u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(append.status(), 404);
    assert_eq!(b.delete(&upload_url).header(TUS.0, TUS.1).send().await.unwrap().status(), 404);
    let own = head(&a).await.unwrap();
    assert_eq!((own.status().as_u16(), own.headers()["upload-offset"].to_str().unwrap()), (200, "0"));

    // md5-client with a key (MD5_API_KEY): its own file hashed; without one, a clear 401.
    let dir = std::env::temp_dir().join(format!("keys-client-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("f.bin"), &bytes).unwrap();
    let md5_client = |key: Option<&str>| {
        let mut command = std::process::Command::new(sibling_binary("md5-client").unwrap());
        command
            .current_dir(&dir)
            .env("MD5_URL", &replica_url)
            .env_remove("MD5_API_KEY")
            .args(["hash", "f.bin"]);
        if let Some(key) = key {
            command.env("MD5_API_KEY", key);
        }
        command.output().unwrap()
    };
    let with = md5_client(Some(&key_b));
    assert!(with.status.success(), "{}", String::from_utf8_lossy(&with.stderr));
    assert_eq!(String::from_utf8_lossy(&with.stdout), format!("{}  f.bin\n", md5_hex(&bytes)));
    let without = md5_client(None);
    assert!(!without.status.success());
    assert!(
        String::from_utf8_lossy(&without.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&without.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);

    // Revoked: refused by both replicas within a second of the command.
    keys(&app.database_url, &["revoke", "alice"]);
    let revoked = Instant::now();
    for url in [&base, &replica_url] {
        eventually(Duration::from_secs(1), "the revoked key to be refused", || async {
            (get(&a, &format!("{url}/api/v1/hashes/{id_a}")).await.0 == 401).then_some(())
        })
        .await
        .unwrap();
    }
    assert!(revoked.elapsed() <= Duration::from_secs(1), "{:?}", revoked.elapsed());
    assert_eq!(get(&b, &format!("{replica_url}/api/v1/hashes/{id_b}")).await.0, 200, "Bob is still served");
    let listed = keys(&app.database_url, &["list", "--json"]);
    let alice: Value = listed
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .find(|k| k["name"] == "alice")
        .unwrap();
    assert!(alice["revoked_at"].is_string(), "{alice}");
    assert!(!listed.contains("md5svc_"), "list never shows a key: {listed}");
    eventually(Duration::from_secs(5), "bob's last use to be recorded", || async {
        let listed = keys(&app.database_url, &["list", "--json"]);
        listed
            .lines()
            .any(|line| line.contains("\"name\":\"bob\"") && !line.contains("\"last_used_at\":null"))
            .then_some(())
    })
    .await
    .unwrap();

    // The database holds no key: only their SHA-256.
    let pg_dump = glob_pg_dump();
    let dump = std::process::Command::new(pg_dump).arg(&app.database_url).output().unwrap();
    assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains("md5_api_keys"), "the dump has the keys' table");
    for key in [&key_a, &key_b, &key_admin] {
        assert!(!dump.contains(key.as_str()), "the dump holds a key");
    }
    integration_tests::stop_process(&mut second);
    // Each request's log lines carry the key's name.
    let log = std::fs::read_to_string(&replica_log).unwrap();
    assert!(log.contains("key=\"bob\""), "no request of Bob's logged with his key's name");
    assert!(!log.contains("md5svc_"), "a key in the log");
    let _ = std::fs::remove_file(&replica_log);
    app.stop().await;
}

#[derive(diesel::QueryableByName)]
struct Payload {
    #[diesel(sql_type = diesel::sql_types::Text)]
    payload: String,
}

/// Debian's `pg_dump` (package `postgresql-client`), of the newest installed version.
fn glob_pg_dump() -> std::path::PathBuf {
    let mut found: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| {
            dir.flatten().map(|entry| entry.path().join("bin/pg_dump")).filter(|p| p.exists()).collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().unwrap_or_else(|| "pg_dump".into())
}

/// The problem of a 429: its `quota` member, after checking `Retry-After`.
async fn refused_quota(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    let problem: Value = response.json().await.unwrap();
    problem["quota"].as_str().unwrap_or_else(|| panic!("no quota in {problem}")).to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_is_held_to_its_own_quotas_while_another_key_is_served_and_quotas_change_without_a_restart()
{
    let app =
        TestApp::spawn(TestOptions::default().api(|c| c.max_tasks_per_client_per_second = 0)).await.unwrap();
    let base = app.base_url.clone();
    let db = &app.database_url;
    let slow = keys(db, &["create", "--name", "slow", "--uploads", "1"]);
    let rate = keys(db, &["create", "--name", "rate", "--tasks-per-minute", "1"]);
    let hoard =
        keys(db, &["create", "--name", "hoard", "--open-uploads", "2", "--open-upload-bytes", "1000"]);
    let watch = keys(db, &["create", "--name", "watch", "--event-streams", "1", "--long-polls", "1"]);
    let normal = client_with(&keys(db, &["create", "--name", "normal"]), [127, 0, 0, 1]);
    // The keys are read as one table: once the last one created is known, all are.
    eventually(Duration::from_secs(2), "the keys to be read", || async {
        (upload(&normal, &base, b"n").await.0 == StatusCode::ACCEPTED
            && upload(&app.client, &base, b"anonymous").await.0 == StatusCode::UNAUTHORIZED)
            .then_some(())
    })
    .await
    .unwrap();
    // Every key below comes from the same address as the normal client: only the key tells them apart.
    let (slow, rate, hoard, watch) = (
        client_with(&slow, [127, 0, 0, 1]),
        client_with(&rate, [127, 0, 0, 1]),
        client_with(&hoard, [127, 0, 0, 1]),
        client_with(&watch, [127, 0, 0, 1]),
    );
    let normal_upload = || async {
        let started = Instant::now();
        let (status, _) = upload(&normal, &base, &random_bytes(1000, 5)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "the normal key is never refused");
        assert!(started.elapsed() < Duration::from_secs(2), "nor slowed: {:?}", started.elapsed());
    };

    // uploads: one streaming at once; a body held open takes it.
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    sender.send(Ok(vec![1u8; 1000])).await.unwrap();
    let held = {
        let slow = slow.clone();
        let url = format!("{base}/api/v1/hashes");
        tokio::spawn(async move {
            let body = reqwest::Body::wrap_stream(tokio_stream_from(receiver));
            slow.post(url).header("Content-Type", "application/octet-stream").body(body).send().await
        })
    };
    eventually(Duration::from_secs(5), "the held upload to take its slot", || async {
        get(&normal, &format!("{base}/metrics")).await.1.contains("md5_upload_slots_in_use 1").then_some(())
    })
    .await
    .unwrap();
    let second = slow
        .post(format!("{base}/api/v1/hashes"))
        .header("Content-Type", "application/octet-stream")
        .body("x");
    let second = second.send().await.unwrap();
    assert_eq!(refused_quota(second).await, "uploads");
    normal_upload().await;
    drop(sender);
    let _ = held.await;

    // tasks-per-minute: one, then 429 for about a minute; raised without a restart.
    assert_eq!(upload(&rate, &base, b"1").await.0, StatusCode::ACCEPTED);
    let response =
        post_file(&rate, &format!("{base}/api/v1/hashes"), "f", reqwest::multipart::Part::bytes(vec![2]))
            .await
            .unwrap();
    assert!(response.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() > 30);
    assert_eq!(refused_quota(response).await, "tasks-per-minute");
    normal_upload().await;
    keys(db, &["update", "rate", "--tasks-per-minute", "0"]);
    eventually(Duration::from_secs(1), "the raised quota to apply", || async {
        (upload(&rate, &base, b"3").await.0 == StatusCode::ACCEPTED).then_some(())
    })
    .await
    .unwrap();

    // open-uploads and open-upload-bytes.
    assert_eq!(creation(&hoard, &base, 600).await.status(), 201);
    assert_eq!(refused_quota(creation(&hoard, &base, 500).await).await, "open-upload-bytes");
    assert_eq!(creation(&hoard, &base, 300).await.status(), 201);
    assert_eq!(refused_quota(creation(&hoard, &base, 10).await).await, "open-uploads");
    let normal_unfinished = creation(&normal, &base, 600).await;
    assert_eq!(normal_unfinished.status(), 201, "another key's uploads are its own");
    let normal_id =
        normal_unfinished.headers()["location"].to_str().unwrap().rsplit('/').next().unwrap().to_owned();

    // event-streams: one open; long-polls: one held, a second answered at once. The task is an
    // upload that never finishes, so neither ends by itself.
    let unfinished = creation(&watch, &base, 10).await;
    let id = unfinished.headers()["location"].to_str().unwrap().rsplit('/').next().unwrap().to_owned();
    let events = format!("{base}/api/v1/hashes/{id}/events");
    let mut open = watch.get(&events).send().await.unwrap();
    assert_eq!(open.status(), 200);
    let _first = open.chunk().await.unwrap();
    assert_eq!(refused_quota(watch.get(&events).send().await.unwrap()).await, "event-streams");
    let task = format!("{base}/api/v1/hashes/{id}?wait=30");
    let holding = tokio::spawn(watch.get(&task).send());
    eventually(Duration::from_secs(5), "the first long-poll to be held", || async {
        get(&normal, &format!("{base}/metrics")).await.1.contains("md5_long_polls_waiting 1").then_some(())
    })
    .await
    .unwrap();
    let started = Instant::now();
    assert_eq!(watch.get(&task).send().await.unwrap().status(), 200);
    assert!(started.elapsed() < Duration::from_secs(1), "past its long-polls, answered at once");
    let normal_poll = Instant::now();
    let _ = normal.get(format!("{base}/api/v1/hashes/{normal_id}?wait=1")).send().await.unwrap();
    assert!(normal_poll.elapsed() >= Duration::from_millis(900), "another key's long-poll is held");
    holding.abort();
    normal_upload().await;
    let metrics = get(&normal, &format!("{base}/metrics")).await.1;
    for quota in ["uploads", "tasks-per-minute", "open-uploads", "open-upload-bytes", "event-streams"] {
        assert!(
            metrics.contains(&format!("md5_quota_refusals_total{{quota=\"{quota}\"}}")),
            "{quota} refusals on /metrics"
        );
    }
    assert!(!metrics.contains("hoard") && !metrics.contains("md5svc_"), "no key or key name is a label");
    drop(open);
    app.stop().await;
}

/// The chunks a channel receives, as a stream (a body that stays open while the sender lives).
fn tokio_stream_from(
    receiver: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_a_client_is_its_forwarded_address_and_an_untrusted_peer_cannot_claim_one() {
    // One task a second per client: the second upload within the second shows who was counted.
    let api = ApiProcess::start(|c| {
        c.max_tasks_per_client_per_second = 1;
        c.trusted_proxies = vec!["127.0.0.2/32".parse().unwrap()];
    })
    .await
    .unwrap();
    let upload_as = |client: Client, forwarded: &'static str| {
        let url = format!("{}/api/v1/hashes", api.base_url);
        async move {
            let form = reqwest::multipart::Form::new()
                .part("file", reqwest::multipart::Part::bytes(vec![7]).file_name("f"));
            client
                .post(url)
                .header("X-Forwarded-For", forwarded)
                .multipart(form)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let proxy = api.client_from("127.0.0.2".parse().unwrap());
    let stranger = api.client_from("127.0.0.3".parse().unwrap());
    // Through the proxy: two clients, each with its own token; the same one twice is refused.
    assert_eq!(upload_as(proxy.clone(), "198.51.100.1").await, 202);
    assert_eq!(upload_as(proxy.clone(), "198.51.100.2").await, 202);
    assert_eq!(
        upload_as(proxy.clone(), "203.0.113.50, 198.51.100.1").await,
        429,
        "the rightmost untrusted hop counts"
    );
    // From an untrusted peer the header is ignored: both count against 127.0.0.3.
    assert_eq!(upload_as(stranger.clone(), "198.51.100.3").await, 202);
    assert_eq!(upload_as(stranger.clone(), "198.51.100.4").await, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_on_a_task_just_inserted_is_answered_from_fresh_reads_and_only_to_its_owner() {
    // No workers: the task stays `queued`, as the api knows without reading it (it inserted it
    // and has seen no event of it), so each `?wait=` below starts without a read.
    let app = TestApp::spawn(TestOptions::default().no_workers()).await.unwrap();
    let base = app.base_url.clone();
    let key_a = keys(&app.database_url, &["create", "--name", "alice"]);
    let key_b = keys(&app.database_url, &["create", "--name", "bob"]);
    let (a, b) = (client_with(&key_a, [127, 0, 0, 1]), client_with(&key_b, [127, 0, 0, 1]));
    eventually(Duration::from_secs(2), "the keys to be in force", || async {
        (upload(&app.client, &base, b"anonymous").await.0 == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await
    .unwrap();
    let (status, task) = upload(&a, &base, b"waiting").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let url = format!("{base}/api/v1/hashes/{}", task["id"].as_str().unwrap());

    // Bob: the same 404 as for any id he may not see, at once: not after his wait's first
    // periodic read (1 s), nor after Alice's task changes.
    let started = Instant::now();
    let (status, body) = get(&b, &format!("{url}?wait=5")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(started.elapsed() < Duration::from_secs(1), "answered after {:?}", started.elapsed());

    // Alice, past her wait: the task as a read finds it.
    let started = Instant::now();
    let (status, body) = get(&a, &format!("{url}?wait=1")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["status"], "queued");
    assert!(started.elapsed() >= Duration::from_secs(1), "answered after {:?}", started.elapsed());

    // Alice again, and her task is cancelled meanwhile: woken by the change, answered from a read.
    let waiting = tokio::spawn({
        let (a, url) = (a.clone(), url.clone());
        async move {
            let started = Instant::now();
            let (status, body) = get(&a, &format!("{url}?wait=20")).await;
            (status, body, started.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cancel = a.post(format!("{url}/cancel")).send().await.unwrap();
    assert_eq!(cancel.status(), StatusCode::OK);
    let (status, body, took) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["status"], "cancelled");
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    app.stop().await;
}
