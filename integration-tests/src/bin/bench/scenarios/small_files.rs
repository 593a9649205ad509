//! Scenario 2: many small files end to end, at full speed and at a fixed rate, with CPU per job.

use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};

use crate::prelude::*;

/// Uploads `count` small files from `clients` clients; returns (jobs/s first upload → last done,
/// server-side latencies in ms).
pub(crate) async fn many_small(
    service: &Service,
    count: usize,
    size: usize,
    clients: usize,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let already = service.done_count().await?;
    let started = Instant::now();
    let expected: HashMap<String, String> = futures_util::stream::iter(0..count)
        .map(|n| async move {
            let bytes = random_bytes(size, n as u64 + 7);
            let md5 = md5_hex(&bytes);
            service.upload_bytes(bytes).await.map(|id| (id, md5))
        })
        .buffer_unordered(clients)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let target = already + expected.len() as i64;
    eventually(Duration::from_secs(600), "every small task done", || async {
        (service.done_count().await.ok()? >= target).then_some(())
    })
    .await?;
    let elapsed = started.elapsed();
    let rows = service.rows().await?;
    let mut latencies = Vec::new();
    for row in &rows {
        if let Some(md5) = expected.get(&row.task_id.to_string()) {
            anyhow::ensure!(
                row.result.as_ref().map(shared::Md5Hex::as_str) == Some(md5.as_str()),
                "wrong md5 for {}",
                row.task_id
            );
            let latency = row.finished_at.context("finished")? - row.created_at;
            latencies.push(latency.num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
    }
    anyhow::ensure!(latencies.len() == count, "{} of {count} tasks found", latencies.len());
    latencies.sort_by(f64::total_cmp);
    Ok((count as f64 / elapsed.as_secs_f64(), latencies))
}

/// Offers `rate` uploads/s for `seconds`; each client measures upload start → done (`?wait=`).
/// Each accepted upload's (upload → done seen, upload → 202) in ms and its task id, and how
/// many were refused with 503 (the api shedding load it cannot keep up with).
pub(crate) type Timed = (f64, f64, String);

/// The upload → done times of `timed`, sorted for [`percentile`].
fn sorted_totals(timed: &[Timed]) -> Vec<f64> {
    let mut totals: Vec<f64> = timed.iter().map(|(total, _, _)| *total).collect();
    totals.sort_by(f64::total_cmp);
    totals
}

pub(crate) async fn fixed_load(
    service: &Service,
    rate: u64,
    seconds: u64,
    size: usize,
) -> anyhow::Result<(Vec<Timed>, usize)> {
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut running = tokio::task::JoinSet::new();
    let client = service.client.clone();
    for n in 0..rate * seconds {
        ticker.tick().await;
        let client = client.clone();
        let url = service.api_url.clone();
        running.spawn(async move {
            let bytes = random_bytes(size, 1_000_000 + n);
            let started = Instant::now();
            let upload = format!("{url}/api/v1/hashes");
            let response =
                post_file(&client, &upload, "f.bin", reqwest::multipart::Part::bytes(bytes)).await?;
            // Shed load (every upload slot busy) is an outcome to count, not a failed run.
            if response.status() == 503 {
                return Ok(None);
            }
            anyhow::ensure!(response.status() == 202, "upload answered {}", response.status());
            let id = response.json::<Value>().await?["id"].as_str().context("id")?.to_owned();
            let accepted = started.elapsed().as_secs_f64() * 1000.0;
            loop {
                let task: Value =
                    client.get(format!("{url}/api/v1/hashes/{id}?wait=30")).send().await?.json().await?;
                if task["status"] == "done" {
                    return Ok(Some((started.elapsed().as_secs_f64() * 1000.0, accepted, id)));
                }
            }
        });
    }
    let (mut timed, mut refused) = (Vec::new(), 0);
    while let Some(result) = running.join_next().await {
        match result?? {
            Some(one) => timed.push(one),
            None => refused += 1,
        }
    }
    Ok((timed, refused))
}

/// Postgres's own rate for one INSERT … RETURNING plus one UPDATE per transaction: 32 clients
/// (so that it groups its commits, as the service's pipeline does) with prepared statements.
pub(crate) fn pgbench_baseline(service: &Service, seconds: u64) -> anyhow::Result<f64> {
    let script = service.root.join("pgbench.sql");
    std::fs::write(
        &script,
        "BEGIN;\nINSERT INTO bench (v) VALUES ('x') RETURNING id \\gset\nUPDATE bench SET v = 'y' WHERE id = :id;\nCOMMIT;\n",
    )?;
    let url = service.pg.url();
    let status = Command::new("psql")
        .args([&url, "-qc", "CREATE TABLE IF NOT EXISTS bench (id bigserial PRIMARY KEY, v text)"])
        .status()?;
    anyhow::ensure!(status.success(), "create bench table");
    let output = Command::new("pgbench")
        .args(["-n", "-c", "32", "-j", "2", "-M", "prepared", "-T", &seconds.to_string()])
        .args(["-f", script.to_str().unwrap(), &url])
        .output()
        .context("pgbench (apt-get install postgresql-contrib)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let tps = text
        .lines()
        .find_map(|line| line.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .with_context(|| format!("pgbench output: {text}"))?;
    Ok(tps)
}

pub(crate) async fn small_files(root: &Path, sizes: &Sizes, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let mut service = Service::start(&root.join("small"), 2).await?;
    let counts = crate::pg_counts::PgCounts::start(&service.pg.url())?;
    let before = service.cpu();
    let (rate, latencies) = many_small(&service, sizes.small_count, sizes.small_size, sizes.clients).await?;
    let after = service.cpu();
    let postgres = counts.print_per_job(&service.pg.url(), sizes.small_count, "at full speed")?;
    let (parts, machine) = after.per_job_since(&before, sizes.small_count);
    let service_ms = after.service_per_job_since(&before, sizes.small_count);
    // After the CPU figures: pgbench's backends are still exiting when it returns.
    let tps = pgbench_baseline(&service, if sizes.small_count > 1000 { 5 } else { 1 })?;
    rows.push(Row {
        scenario: format!("2. {} × 1 KiB, {} clients, 2 workers", sizes.small_count, sizes.clients),
        figure: format!("{rate:.0} jobs/s"),
        baseline: format!("Postgres insert+update, 32 clients, {tps:.0} tps"),
        ratio: ratio(rate, tps),
        target: "≥ 0.25× (and ≥ 2,000 jobs/s where the baseline ≥ 8,000)".into(),
    });
    rows.push(Row {
        scenario: "2. CPU per job (user + system)".into(),
        figure: format!(
            "api + workers + Postgres + Redis {service_ms:.2} ms (machine {machine:.2} ms: also the load generator and the kernel's threads)"
        ),
        baseline: parts,
        ratio: "—".into(),
        target: "≤ 0.9 ms".into(),
    });
    rows.push(Row {
        scenario: "2. Postgres per job".into(),
        figure: postgres,
        baseline: "—".into(),
        ratio: "—".into(),
        target: "—".into(),
    });
    rows.push(Row {
        scenario: "2. row committed → done, p50 / p99".into(),
        figure: format!("{:.1} / {:.1} ms", percentile(&latencies, 0.5), percentile(&latencies, 0.99)),
        baseline: "—".into(),
        ratio: "—".into(),
        target: "—".into(),
    });
    rate_sweep(&service, sizes).await?;
    keys_on_and_off(&mut service, sizes, rate, rows).await?;
    let counts = crate::pg_counts::PgCounts::start(&service.pg.url())?;
    let (before, switched) = (service.cpu(), service.switches());
    let (timed, refused) =
        fixed_load(&service, sizes.fixed_rate, sizes.fixed_seconds, sizes.small_size).await?;
    let switches = service.switches().per_job_since(&switched, timed.len());
    counts.print_per_job(&service.pg.url(), timed.len(), &format!("at {} uploads/s", sizes.fixed_rate))?;
    let (cpu_parts, machine) = service.cpu().per_job_since(&before, timed.len());
    let sorted = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        format!("{:.1} / {:.1} ms", percentile(&values, 0.5), percentile(&values, 0.99))
    };
    let fixed = sorted_totals(&timed);
    // Where the time goes, from the rows' own timestamps (one clock: Postgres').
    let ids: std::collections::HashSet<&str> = timed.iter().map(|(_, _, id)| id.as_str()).collect();
    let (mut queued, mut processed) = (Vec::new(), Vec::new());
    for row in service.rows().await? {
        if ids.contains(row.task_id.to_string().as_str()) {
            let (started, finished) =
                (row.started_at.context("started")?, row.finished_at.context("finished")?);
            queued.push((started - row.created_at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
            processed.push((finished - started).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
    }
    rows.push(Row {
        scenario: format!(
            "2. {} uploads/s offered: upload → done seen, p50 / p99 ({refused} of {} refused with 503)",
            sizes.fixed_rate,
            sizes.fixed_rate * sizes.fixed_seconds
        ),
        figure: format!("{:.1} / {:.1} ms", percentile(&fixed, 0.5), percentile(&fixed, 0.99)),
        baseline: "15 ms budget (p99)".into(),
        ratio: ratio(percentile(&fixed, 0.99), 15.0),
        target: "≤ 1.00×".into(),
    });
    rows.push(Row {
        scenario: "2. the same, in parts, p50 / p99".into(),
        figure: format!(
            "upload → 202 {}; row committed → claimed {}; claimed → result committed {} (a quick job is claimed by its result)",
            sorted(timed.iter().map(|(_, accepted, _)| *accepted).collect()),
            sorted(queued),
            sorted(processed)
        ),
        baseline: format!("machine CPU {machine:.2} ms per job: {cpu_parts}"),
        ratio: "—".into(),
        target: "—".into(),
    });
    rows.push(Row {
        scenario: "2. the same: context switches per job, threads of each part".into(),
        figure: switches,
        baseline: "—".into(),
        ratio: "—".into(),
        target: "—".into(),
    });
    Ok(())
}

/// The same small jobs with an API key, then without again (the key deleted): the key check is a
/// lookup in memory, not a query, so the rates should differ by no more than the noise.
async fn keys_on_and_off(
    service: &mut Service,
    sizes: &Sizes,
    off: f64,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let created = std::process::Command::new(sibling_binary("md5-api")?)
        .env("DATABASE_URL", service.pg.url())
        .env("RUST_LOG", "warn")
        .args(["keys", "create", "--name", "bench"])
        .output()?;
    anyhow::ensure!(
        created.status.success(),
        "md5-api keys create: {}",
        String::from_utf8_lossy(&created.stderr)
    );
    let key = String::from_utf8(created.stdout)?.trim().to_owned();
    let anonymous = service.client.clone();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {key}").parse()?);
    service.client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .pool_idle_timeout(Duration::from_secs(1))
        .default_headers(headers)
        .build()?;
    let hashes = format!("{}/api/v1/hashes/{}", service.api_url, uuid::Uuid::nil());
    eventually(Duration::from_secs(5), "the api to require the key", || async {
        (anonymous.get(&hashes).send().await.ok()?.status() == 401).then_some(())
    })
    .await?;
    let (on, _) = many_small(service, sizes.small_count, sizes.small_size, sizes.clients).await?;
    let mut conn = AsyncPgConnection::establish(&service.pg.url()).await?;
    diesel::sql_query("DELETE FROM md5_api_keys").execute(&mut conn).await?;
    service.client = anonymous;
    eventually(Duration::from_secs(5), "the api to be open again", || async {
        (service.client.get(&hashes).send().await.ok()?.status() == 404).then_some(())
    })
    .await?;
    let (off_again, _) = many_small(service, sizes.small_count, sizes.small_size, sizes.clients).await?;
    let without = (off + off_again) / 2.0;
    rows.push(Row {
        scenario: "2. the same with an API key (keys on), between two runs without".into(),
        figure: format!("{on:.0} jobs/s"),
        baseline: format!("without: {off:.0} before, {off_again:.0} after"),
        ratio: ratio(on, without),
        target: "within the noise of 1.00×".into(),
    });
    Ok(())
}

/// `BENCH_RATE_SWEEP=0,100,250,500`: for each rate, 10 s of uploads offered at that rate (as
/// the 500/s phase), or 10 s with none for `0`, printing the latency and each part's CPU per
/// job (per second for `0`): how a job's cost depends on how many come together. Prints only.
async fn rate_sweep(service: &Service, sizes: &Sizes) -> anyhow::Result<()> {
    let Ok(sweep) = std::env::var("BENCH_RATE_SWEEP") else { return Ok(()) };
    for rate in sweep.split(',') {
        let rate: u64 = rate.trim().parse().context("BENCH_RATE_SWEEP: uploads a second, comma-separated")?;
        let before = service.cpu();
        if rate == 0 {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let (parts, machine) = service.cpu().per_job_since(&before, 10);
            println!("rate sweep, idle: CPU ms a second: machine {machine:.2}: {parts}");
            continue;
        }
        let (timed, refused) = fixed_load(service, rate, 10, sizes.small_size).await?;
        let (parts, machine) = service.cpu().per_job_since(&before, timed.len());
        let fixed = sorted_totals(&timed);
        println!(
            "rate sweep, {rate} uploads/s: upload -> done p50 {:.1} / p99 {:.1} ms ({refused} refused); CPU ms a job: machine {machine:.2}: {parts}",
            percentile(&fixed, 0.5),
            percentile(&fixed, 0.99)
        );
    }
    Ok(())
}
