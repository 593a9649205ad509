//! Scenario 7: many large files at once. Files already stored (uploaded while no worker ran,
//! so in the page cache) are drained by one worker process on every CPU of this machine: with
//! the multi-buffer MD5 lanes (`MD5_SIMD=auto`) and forced to the scalar path, against
//! coreutils `md5sum` over the same files two at a time (`xargs -P 2`).

use std::path::PathBuf;

use integration_tests::launcher::Launch;
use worker::lanes::{Engine, Md5Simd};

use crate::prelude::*;

pub(crate) async fn many_files(root: &Path, sizes: &Sizes, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let mut service = Service::start_with(&root.join("many"), 0, |c| c.worker.keep_uploads = true).await?;
    let best = Engine::select(Md5Simd::Auto).map_err(anyhow::Error::msg)?;
    let count = sizes.many_count;
    let total = count as u64 * sizes.many_size;
    let label = format!("{count} × {} MiB", sizes.many_size >> 20);
    let mut results = Vec::new();
    for (run, simd) in [Md5Simd::Auto, Md5Simd::Scalar].into_iter().enumerate() {
        let files = store(&service, root, count, sizes.many_size, run as u64).await?;
        let paths: Vec<&str> = files.iter().map(|(_, path)| path.to_str().unwrap_or_default()).collect();
        // md5sum two at a time over the stored files (page cache warm for both), best of 2.
        let script = r#"printf '%s\0' "$@" | xargs -0 -n 1 -P 2 md5sum"#;
        let args: Vec<&str> = ["-c", script, "sh"].into_iter().chain(paths.iter().copied()).collect();
        let (md5sum, printed) = best_of(2, || time_command("sh", &args))?;
        let expected: HashMap<String, String> = printed
            .lines()
            .filter_map(|line| line.split_once("  "))
            .map(|(md5, path)| (path.to_owned(), md5.to_owned()))
            .collect();
        anyhow::ensure!(expected.len() == count, "md5sum printed {printed}");

        let mut config = service.config.worker.clone();
        config.md5_simd = simd;
        let log = service.root.join(format!("worker-many-{run}.log"));
        let worker = Launch::worker(&config).stderr_to(&log).spawn()?;
        let pid = worker.id();
        service.workers.push(worker);
        for (id, path) in &files {
            let task = service.wait_done(id).await?;
            let want = expected.get(path.to_str().unwrap_or_default()).context("md5sum of the file")?;
            anyhow::ensure!(task["md5"] == want.as_str(), "{path:?}: {task} != md5sum {want}");
        }
        let rss = peak_rss(pid)?;
        let mut worker = service.workers.pop().context("the worker")?;
        let _ = worker.kill();
        let _ = worker.wait();
        // Drained: the first claim to the last result committed.
        let ids: Vec<String> = files.iter().map(|(id, _)| id.clone()).collect();
        let done: Vec<_> =
            service.rows().await?.into_iter().filter(|row| ids.contains(&row.task_id.to_string())).collect();
        let first = done.iter().filter_map(|row| row.started_at).min().context("started")?;
        let last = done.iter().filter_map(|row| row.finished_at).max().context("finished")?;
        let drained = (last - first).to_std()?;
        for (_, path) in &files {
            std::fs::remove_file(path)?;
        }
        results.push((simd, drained, md5sum, rss));
    }
    for (simd, drained, md5sum, rss) in results {
        let path = match simd {
            Md5Simd::Auto => format!("MD5_SIMD=auto ({}, {} lanes)", best.path().name(), best.lanes()),
            _ => "MD5_SIMD=scalar (one file per CPU)".to_owned(),
        };
        rows.push(Row {
            scenario: format!("7. {label} stored, drained by one worker, {path}: first claim → last result"),
            figure: format!("{:.2} s ({:.0} MB/s)", drained.as_secs_f64(), mb_per_s(total, drained)),
            baseline: format!(
                "md5sum, xargs -P 2: {:.2} s ({:.0} MB/s, best of 2)",
                md5sum.as_secs_f64(),
                mb_per_s(total, md5sum)
            ),
            ratio: ratio(mb_per_s(total, drained), mb_per_s(total, md5sum)),
            target: match (simd, best.path().name()) {
                (Md5Simd::Auto, "avx512") => "≥ 4.00× (AVX-512)".into(),
                (Md5Simd::Auto, "avx2") => "≥ 2.50× (AVX2 only)".into(),
                _ => "—".into(),
            },
        });
        rows.push(Row {
            scenario: format!("7. worker peak RSS while hashing those files, {path}"),
            figure: format!("{:.1} MiB", rss as f64 / (1 << 20) as f64),
            baseline: "—".into(),
            ratio: "—".into(),
            target: if simd == Md5Simd::Auto { "≤ 64 MiB".into() } else { "—".into() },
        });
    }
    Ok(())
}

/// Uploads `count` distinct random files of `size` bytes; returns each task's id and stored path.
async fn store(
    service: &Service,
    root: &Path,
    count: usize,
    size: u64,
    run: u64,
) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::with_capacity(count);
    for n in 0..count {
        let source = root.join(format!("many-{run}-{n}.bin"));
        write_random_file_seeded(&source, size, 1000 * (run + 1) + n as u64)?;
        let id = service.upload_raw(&source).await?;
        std::fs::remove_file(&source)?;
        let stored = shared::config::upload_path(&service.config.worker.storage.upload_dir, id.parse()?);
        files.push((id, stored));
    }
    Ok(files)
}
