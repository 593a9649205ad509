//! Scenario 3: memory of the api, the worker and `md5-client` while a large file goes through.

use crate::prelude::*;

pub(crate) async fn memory(root: &Path, sizes: &Sizes, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let service = Service::start(&root.join("memory"), 1).await?;
    let source = root.join("memory.bin");
    write_random_file(&source, sizes.memory)?;
    let id = service.upload_file(&source).await?;
    let done = service.wait_done(&id).await?;
    let api = peak_rss(Service::pid(service.api.as_ref().unwrap()))?;
    let worker = peak_rss(Service::pid(&service.workers[0]))?;
    let client = client_peak_rss(&service, &source, done["md5"].as_str().unwrap_or_default()).await?;
    let gib = sizes.memory as f64 / (1u64 << 30) as f64;
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    rows.push(Row {
        scenario: format!("3. md5-client peak RSS, `hash` of the {gib:.2} GiB file"),
        figure: format!("{:.1} MiB", mib(client)),
        baseline: "32 MiB budget".into(),
        ratio: ratio(mib(client), 32.0),
        target: "≤ 1.00×".into(),
    });
    for (who, bytes) in [("api", api), ("worker", worker)] {
        rows.push(Row {
            scenario: format!("3. {who} peak RSS, {gib:.2} GiB file"),
            figure: format!("{:.1} MiB", mib(bytes)),
            baseline: "64 MiB budget".into(),
            ratio: ratio(mib(bytes), 64.0),
            target: "≤ 1.00×".into(),
        });
    }
    std::fs::remove_file(&source)?;
    Ok(())
}

/// Runs `md5-client hash path` against the service and returns its peak resident memory (VmHWM,
/// read every 20 ms until it exits; the figure only grows). Fails unless it prints `md5`.
pub(crate) async fn client_peak_rss(service: &Service, path: &Path, md5: &str) -> anyhow::Result<u64> {
    let mut child = Command::new(sibling_binary("md5-client")?)
        .args(["hash", "--progress", "none"])
        .arg(path)
        .env("MD5_URL", &service.api_url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut peak = 0;
    while child.try_wait()?.is_none() {
        peak = peak.max(peak_rss(child.id()).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let output = child.wait_with_output()?;
    anyhow::ensure!(
        output.status.success(),
        "md5-client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(printed.starts_with(md5), "md5-client printed {printed:?}, not {md5}");
    Ok(peak)
}
