//! Scenario 5: hostile clients against one api, beside a normal client.

use crate::prelude::*;

/// The api under attacks 1-4 of the hostile-client tests at once, with `MAX_CONCURRENT_UPLOADS`
/// (its default, 64) large uploads in flight, beside the same api's figures after a quiet phase.
pub(crate) async fn hostile(root: &Path, sizes: &Sizes, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    use integration_tests::attacks;
    let service = Service::start_with(&root.join("hostile"), 1, |c| {
        c.api.max_concurrent_uploads = 64;
        c.api.header_timeout_seconds = 2;
    })
    .await?;
    let api_pid = Service::pid(service.api.as_ref().context("api")?);
    let metrics_size = || async {
        let text = service.client.get(format!("{}/metrics", service.api_url)).send().await?.text().await?;
        anyhow::Ok(text.len())
    };
    for _ in 0..20 {
        service.upload_bytes(random_bytes(sizes.small_size, 3)).await?;
    }
    let (quiet_rss, quiet_metrics) = (peak_rss(api_pid)?, metrics_size().await?);

    let url = service.api_url.clone();
    let preamble = tokio::spawn({
        let url = url.clone();
        let bytes = sizes.hostile_body;
        async move { (attacks::long_preamble(&url, bytes).await, attacks::endless_part_header(&url, bytes).await) }
    });
    let methods = tokio::spawn({
        let (url, count) = (url.clone(), sizes.hostile_methods);
        async move {
            let mut refused = 0;
            for i in 0..count {
                let method =
                    if i % 100 == 0 { format!("L{i}{}", "M".repeat(20_000)) } else { format!("Z{i:07}") };
                refused += usize::from(attacks::made_up_method(&url, &method).await == 405);
            }
            refused
        }
    });
    let mut silent = attacks::silent_connections(&url, sizes.hostile_silent).await;
    // Half the large uploads from another loopback address: one client may hold 48 of the 64 slots.
    let data = bytes::Bytes::from(random_bytes(sizes.hostile_upload, 9));
    let uploads: Vec<_> = (0..sizes.hostile_in_flight)
        .map(|i| {
            let local: std::net::IpAddr = if i % 2 == 0 { [127, 0, 0, 1] } else { [127, 0, 0, 3] }.into();
            let client = reqwest::Client::builder().local_address(local).build();
            let (url, data) = (format!("{url}/api/v1/hashes"), data.clone());
            tokio::spawn(async move {
                let part = reqwest::multipart::Part::stream(data);
                post_file(&client?, &url, "big.bin", part).await.map(|r| r.status().as_u16())
            })
        })
        .collect();
    let healthz_started = Instant::now();
    let healthy = service.client.get(format!("{url}/healthz")).send().await.is_ok_and(|r| r.status() == 200);
    let healthz_ms = healthz_started.elapsed().as_secs_f64() * 1000.0;
    let mut accepted = 0;
    for upload in uploads {
        accepted += usize::from(upload.await?? == 202);
    }
    let (preamble_status, header_status) = preamble.await?;
    let refused_methods = methods.await?;
    let mut closed = 0;
    for stream in &mut silent {
        closed += usize::from(attacks::closed_within(stream, Duration::from_secs(30)).await);
    }
    let (hostile_rss, hostile_metrics) = (peak_rss(api_pid)?, metrics_size().await?);
    anyhow::ensure!(healthy, "/healthz did not answer during the attacks");
    anyhow::ensure!(
        accepted == sizes.hostile_in_flight,
        "{accepted} of {} large uploads accepted",
        sizes.hostile_in_flight
    );
    anyhow::ensure!(
        (preamble_status, header_status) == (400, 400),
        "form-head attacks got {preamble_status}/{header_status}"
    );
    anyhow::ensure!(refused_methods == sizes.hostile_methods, "{refused_methods} made-up methods refused");
    anyhow::ensure!(closed == silent.len(), "{closed} of {} silent connections closed", silent.len());
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    rows.push(Row {
        scenario: format!(
            "5. api peak RSS under attacks 1-4 + {} × {} MiB uploads in flight",
            sizes.hostile_in_flight,
            sizes.hostile_upload >> 20
        ),
        figure: format!("{:.1} MiB", mib(hostile_rss)),
        baseline: format!("quiet {:.1} MiB", mib(quiet_rss)),
        ratio: ratio(mib(hostile_rss), mib(quiet_rss)),
        target: "≤ 64 MiB".into(),
    });
    rows.push(Row {
        scenario: format!("5. /metrics size after {} made-up methods", sizes.hostile_methods),
        figure: format!("{:.1} KiB", hostile_metrics as f64 / 1024.0),
        baseline: format!("quiet {:.1} KiB", quiet_metrics as f64 / 1024.0),
        ratio: ratio(hostile_metrics as f64, quiet_metrics as f64),
        target: "bounded (closed label sets)".into(),
    });
    rows.push(Row {
        scenario: format!("5. /healthz during the attacks ({} silent connections)", sizes.hostile_silent),
        figure: format!("{healthz_ms:.0} ms"),
        baseline: "—".into(),
        ratio: "—".into(),
        target: "answered".into(),
    });
    drop(service);
    hostile_h2(root, sizes, rows).await
}

/// The api's peak memory while `sizes.h2_idle` HTTP/2 connections sit idle answering pings and
/// `sizes.h2_zero_window` connections hold unread `/openapi.json` responses on every stream the
/// api allows (asking for 32; it allows 16), all at
/// once, with `/healthz` asked on a new connection every 250 ms throughout.
async fn hostile_h2(root: &Path, sizes: &Sizes, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    use integration_tests::h2_attacks;
    integration_tests::procfs::raise_own_file_limit();
    let service = Service::start_with(&root.join("hostile-h2"), 0, |_| {}).await?;
    let api_pid = Service::pid(service.api.as_ref().context("api")?);
    let quiet_rss = peak_rss(api_pid)?;
    let url = service.api_url.clone();
    let watching = tokio_util::sync::CancellationToken::new();
    let watcher = tokio::spawn({
        let (url, stop) = (url.clone(), watching.clone());
        async move {
            // A new connection each time: a client that arrives during the attack.
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(10))
                .build()?;
            let (mut answered, mut slowest) = (0usize, Duration::ZERO);
            while !stop.is_cancelled() {
                let started = Instant::now();
                let ok = client.get(format!("{url}/healthz")).send().await.is_ok_and(|r| r.status() == 200);
                anyhow::ensure!(ok, "/healthz was not answered during the HTTP/2 attacks");
                answered += 1;
                slowest = slowest.max(started.elapsed());
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            anyhow::Ok((answered, slowest))
        }
    });
    let attacker: std::net::IpAddr = [127, 0, 0, 3].into();
    let mut held = Vec::new();
    for _ in 0..sizes.h2_idle {
        held.push(h2_attacks::idle_connection(&url, Some(attacker)).await?);
    }
    for _ in 0..sizes.h2_zero_window {
        held.push(h2_attacks::zero_window_connection(&url, Some(attacker), "/openapi.json", 32).await?);
    }
    // Held for a few seconds, all of them at once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let open = held.iter().filter(|connection| !connection.is_closed()).count();
    let unread = held.iter().map(h2_attacks::HeldConnection::streams).sum::<usize>();
    let attacked_rss = peak_rss(api_pid)?;
    watching.cancel();
    let (answered, slowest) = watcher.await??;
    anyhow::ensure!(
        open == held.len(),
        "{} of {} attack connections were closed before the idle timeout",
        held.len() - open,
        held.len()
    );
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    rows.push(Row {
        scenario: format!(
            "5. api peak RSS, {} idle HTTP/2 connections + {} zero-window ones holding {unread} unread responses",
            sizes.h2_idle, sizes.h2_zero_window
        ),
        figure: format!("{:.1} MiB", mib(attacked_rss)),
        baseline: format!("quiet {:.1} MiB", mib(quiet_rss)),
        ratio: ratio(mib(attacked_rss), mib(quiet_rss)),
        target: "≤ 64 MiB".into(),
    });
    rows.push(Row {
        scenario: "5. /healthz on a new connection every 250 ms during the HTTP/2 attacks".into(),
        figure: format!(
            "{answered} of {answered} answered, slowest {:.0} ms",
            slowest.as_secs_f64() * 1000.0
        ),
        baseline: "—".into(),
        ratio: "—".into(),
        target: "answered throughout".into(),
    });
    Ok(())
}
