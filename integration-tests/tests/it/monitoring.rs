//! The monitoring of `deploy/monitoring/` against a real Prometheus: Debian's, installed by
//! `scripts/install-prometheus.sh` (the README's test command runs it) into `.tools/prometheus`,
//! or the binary named by `PROMETHEUS_BIN`. Prometheus scrapes an api process and two worker
//! processes every second and evaluates the rules as `render.py` writes them, with every `for:`
//! shortened to a few seconds. The promtool unit tests of each rule are `deploy/monitoring/
//! rules.test.yml` (run by `scripts/deploy-check.sh`); this checks what they cannot: that the
//! metrics the rules and the dashboard use are the ones the binaries export, under those names
//! and labels.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use integration_tests::api_process::ApiProcess;
use integration_tests::launcher::{Launch, ServiceConfig, free_port};
use integration_tests::{eventually, random_bytes};
use serde_json::Value;

const ALERT_FOR: &str = "2s";
/// Queued tasks that make a backlog, for this test.
const BACKLOG: usize = 3;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf()
}

fn prometheus_binary() -> PathBuf {
    let binary = std::env::var_os("PROMETHEUS_BIN")
        .map_or_else(|| repository().join(".tools/prometheus/bin/prometheus"), PathBuf::from);
    assert!(
        binary.exists(),
        "no Prometheus at {}: run scripts/install-prometheus.sh (the README's test command does), \
         or set PROMETHEUS_BIN",
        binary.display()
    );
    binary
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A worker process with its metrics on `metrics_addr`.
fn start_worker(api: &ApiProcess, metrics_addr: &str, name: &str) -> Killed {
    let mut config = ServiceConfig::new(api.database_url(), &integration_tests::redis_url(), api.root(), 0)
        .with_stream(&api.config.stream.jobs_stream, &api.config.stream.jobs_group)
        .worker;
    config.metrics_addr = Some(metrics_addr.parse().expect("an address"));
    config.consumer_name = Some(name.to_owned());
    config.telemetry.log_filter = "warn".to_owned();
    let log = api.root().join(format!("{name}.log"));
    Killed(Launch::worker(&config).stderr_to(&log).spawn().expect("md5-worker starts"))
}

/// What Prometheus answers to an instant query: its result vector.
async fn query(client: &reqwest::Client, base: &str, expr: &str) -> anyhow::Result<Vec<Value>> {
    let url = reqwest::Url::parse_with_params(&format!("{base}/api/v1/query"), &[("query", expr)])?;
    let body: Value = client.get(url).send().await?.json().await?;
    anyhow::ensure!(body["status"] == "success", "{expr}: {body}");
    Ok(body["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// The alerts firing now, by name.
async fn firing(client: &reqwest::Client, base: &str) -> anyhow::Result<BTreeSet<String>> {
    let body: Value = client.get(format!("{base}/api/v1/alerts")).send().await?.json().await?;
    Ok(body["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|alert| alert["state"] == "firing")
        .filter_map(|alert| alert["labels"]["alertname"].as_str().map(str::to_owned))
        .collect())
}

/// Every `md5_…` metric name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("md5_") {
        let boundary =
            at == 0 || !rest.as_bytes()[at - 1].is_ascii_alphanumeric() && rest.as_bytes()[at - 1] != b'_';
        let name: String =
            rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if boundary && !name.ends_with('_') {
            names.insert(name.clone());
        }
        rest = &rest[at + name.len().max(1)..];
    }
    names
}

/// Every query of the dashboard (panels and annotations), with its variables set as a
/// deployment with the default job names would: (title, expression).
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repository().join("deploy/monitoring/dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let set = |expr: &str| {
        expr.replace("$__rate_interval", "1m")
            .replace("$api_job", "md5-api")
            .replace("$worker_job", "md5-worker")
    };
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries
                .push((panel["title"].as_str().unwrap().to_owned(), set(target["expr"].as_str().unwrap())));
        }
    }
    for annotation in dashboard["annotations"]["list"].as_array().unwrap() {
        if let Some(expr) = annotation["expr"].as_str() {
            queries.push((annotation["name"].as_str().unwrap().to_owned(), set(expr)));
        }
    }
    queries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_fires_the_workers_down_and_backlog_alerts_and_resolves_them_and_every_dashboard_query_answers()
 {
    let binary = prometheus_binary();
    let api = ApiProcess::start(|c| c.max_upload_bytes = 1 << 20).await.unwrap();
    let root = api.root().to_path_buf();

    // The rules as a deployment renders them, with short `for:` and a small backlog.
    let rendered = root.join("monitoring");
    let status = Command::new("python3")
        .arg(repository().join("deploy/monitoring/render.py"))
        .arg("--out")
        .arg(&rendered)
        .env("MD5_ALERT_FOR", ALERT_FOR)
        .env("MD5_ALERT_BACKLOG_TASKS", BACKLOG.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "render.py failed");
    let rules = std::fs::read_to_string(rendered.join("rules.yml")).unwrap();

    let worker_addrs = [format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port())];
    let mut workers: Vec<Killed> =
        worker_addrs.iter().enumerate().map(|(n, addr)| start_worker(&api, addr, &format!("w{n}"))).collect();

    let prometheus_addr = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\n\
         scrape_configs:\n  - job_name: md5-api\n    static_configs:\n      - targets: ['{api}']\n\
         \x20 - job_name: md5-worker\n    static_configs:\n      - targets: ['{w0}', '{w1}']\n",
        rules = rendered.join("rules.yml").display(),
        api = api.addr,
        w0 = worker_addrs[0],
        w1 = worker_addrs[1],
    );
    std::fs::write(root.join("prometheus.yml"), config).unwrap();
    let _prometheus = Killed(
        Command::new(&binary)
            .arg(format!("--config.file={}", root.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", root.join("tsdb").display()))
            .arg(format!("--web.listen-address={prometheus_addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.join("prometheus.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let prom = format!("http://{prometheus_addr}");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    eventually(Duration::from_secs(30), "Prometheus to be ready", || async {
        client.get(format!("{prom}/-/ready")).send().await.ok()?.status().is_success().then_some(())
    })
    .await
    .unwrap();

    // A normal service: tasks uploaded and done, every target up.
    for n in 0..10u64 {
        assert_eq!(api.upload_with(&api.client, &format!("f{n}.bin"), random_bytes(4096, n)).await, 202);
    }
    // And one refusal, for the refusals panel.
    assert_eq!(api.upload_with(&api.client, "large.bin", vec![0; 2 << 20]).await, 413);
    eventually(Duration::from_secs(60), "ten tasks finished, as scraped, and every target up", || async {
        let done = query(&client, &prom, r#"sum(md5_tasks_finished_total{job="md5-worker",status="done"})"#)
            .await
            .ok()?;
        let up = query(&client, &prom, "sum(up)").await.ok()?;
        let value = |result: &[Value]| result.first()?["value"][1].as_str()?.parse::<f64>().ok();
        (value(&done)? >= 10.0 && value(&up)? == 3.0).then_some(())
    })
    .await
    .unwrap();

    // Every metric the rules and the dashboard name is exported under that name.
    let exported: BTreeSet<String> = query(&client, &prom, r#"group by (__name__) ({__name__=~"md5_.+"})"#)
        .await
        .unwrap()
        .iter()
        .filter_map(|series| series["metric"]["__name__"].as_str().map(str::to_owned))
        .collect();
    let queries = dashboard_queries();
    let mut used = metric_names(&rules);
    for (_, expr) in &queries {
        used.extend(metric_names(expr));
    }
    let missing: Vec<&String> = used.difference(&exported).collect();
    assert!(missing.is_empty(), "named by the rules or the dashboard but not exported: {missing:?}");
    println!("{} metrics named by the rules and the dashboard, all exported", used.len());
    // And every metric exported is in the runbook's table, under its name without a histogram's
    // suffix.
    let runbook = std::fs::read_to_string(repository().join("deploy/monitoring/RUNBOOK.md")).unwrap();
    let documented =
        metric_names(runbook.split("## Metrics").nth(1).unwrap().split("## Alerts").next().unwrap());
    let undocumented: Vec<&String> = exported
        .iter()
        .filter(|name| {
            let base = ["_bucket", "_sum", "_count"].iter().find_map(|suffix| name.strip_suffix(suffix));
            !documented.contains(*name) && !base.is_some_and(|base| documented.contains(base))
        })
        .collect();
    assert!(undocumented.is_empty(), "exported but not in deploy/monitoring/RUNBOOK.md: {undocumented:?}");

    // Every rule evaluates without an error.
    let rules_state: Value =
        client.get(format!("{prom}/api/v1/rules")).send().await.unwrap().json().await.unwrap();
    let mut evaluated = 0;
    for group in rules_state["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            evaluated += 1;
            assert_ne!(rule["health"], "err", "{}: {}", rule["name"], rule["lastError"]);
        }
    }
    assert!(evaluated >= 20, "{evaluated} rules loaded");

    // Every panel's query parses and returns data (rates over 1 m need two scrapes in the window).
    for (title, expr) in queries.iter().filter(|(_, expr)| !expr.contains("ALERTS")) {
        eventually(Duration::from_secs(20), &format!("data for {title:?}: {expr}"), || async {
            (!query(&client, &prom, expr).await.ok()?.is_empty()).then_some(())
        })
        .await
        .unwrap();
    }
    let quiet = firing(&client, &prom).await.unwrap();
    for alert in ["MD5NoWorkerConsuming", "MD5BacklogHigh", "MD5WorkerDown"] {
        assert!(!quiet.contains(alert), "{alert} fires while the service is well: {quiet:?}");
    }

    // The workers stop while uploads keep arriving: the alerts fire.
    workers.clear();
    let expected = ["MD5NoWorkerConsuming", "MD5BacklogHigh", "MD5WorkerDown"];
    let mut sent = 0u64;
    let fired = eventually(Duration::from_secs(90), "the workers-down and backlog alerts firing", || {
        sent += 1;
        let (api, client, prom) = (&api, &client, &prom);
        async move {
            // Four uploads a second.
            tokio::time::sleep(Duration::from_millis(250)).await;
            assert_eq!(
                api.upload_with(&api.client, &format!("late{sent}.bin"), random_bytes(1024, sent)).await,
                202
            );
            let now = firing(client, prom).await.ok()?;
            expected.iter().all(|alert| now.contains(*alert)).then_some(now)
        }
    })
    .await
    .unwrap();
    println!("firing after {sent} uploads with no worker: {fired:?}");
    let alerts_series = queries.iter().find(|(_, expr)| expr.contains("ALERTS")).unwrap();
    assert!(!query(&client, &prom, &alerts_series.1).await.unwrap().is_empty(), "{alerts_series:?}");

    // Brought back, the workers drain the backlog and the alerts resolve.
    workers =
        worker_addrs.iter().enumerate().map(|(n, addr)| start_worker(&api, addr, &format!("w{n}"))).collect();
    eventually(Duration::from_secs(90), "the workers-down and backlog alerts resolved", || async {
        let now = firing(&client, &prom).await.ok()?;
        expected.iter().all(|alert| !now.contains(*alert)).then_some(())
    })
    .await
    .unwrap();
    drop(workers);
}

#[test]
fn metric_names_are_found_whole() {
    let names = metric_names(
        r#"sum(rate(md5_a_total{job="x"}[5m])) / md5_b_bucket + foo_md5_c + md5:recorded:rate5m md5_"#,
    );
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["md5_a_total", "md5_b_bucket"]);
}
