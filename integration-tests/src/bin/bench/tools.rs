//! Helpers of the scenarios: timed commands, test files, the loopback bound, repeated runs.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use integration_tests::random_bytes;

pub(crate) fn time_command(program: &str, args: &[&str]) -> anyhow::Result<(Duration, String)> {
    let started = Instant::now();
    let output = Command::new(program).args(args).output().with_context(|| format!("run {program}"))?;
    anyhow::ensure!(output.status.success(), "{program} failed: {}", String::from_utf8_lossy(&output.stderr));
    Ok((started.elapsed(), String::from_utf8_lossy(&output.stdout).into_owned()))
}

pub(crate) fn write_random_file(path: &Path, size: u64) -> anyhow::Result<()> {
    write_random_file_seeded(path, size, 1)
}

/// [`write_random_file`] with bytes from `seed` (different seeds: different files).
pub(crate) fn write_random_file_seeded(path: &Path, size: u64, seed: u64) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut written = 0u64;
    let mut seed = seed << 32;
    while written < size {
        let chunk = random_bytes((size - written).min(8 << 20) as usize, seed);
        file.write_all(&chunk)?;
        written += chunk.len() as u64;
        seed += 1;
    }
    file.flush()?;
    Ok(())
}

/// Time to send the file at `path` through a loopback TCP connection to a reader that discards
/// every byte (the sender reads the file as an upload client does).
pub(crate) async fn send_over_loopback(path: &Path) -> anyhow::Result<Duration> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    const CHUNK: usize = 256 * 1024;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let sink = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await?;
        let mut buffer = vec![0u8; CHUNK];
        while socket.read(&mut buffer).await? > 0 {}
        anyhow::Ok(())
    });
    let started = Instant::now();
    let mut file = tokio::fs::File::open(path).await?;
    let mut socket = tokio::net::TcpStream::connect(addr).await?;
    let mut buffer = vec![0u8; CHUNK];
    loop {
        let read = file.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        socket.write_all(&buffer[..read]).await?;
    }
    socket.shutdown().await?;
    sink.await??;
    Ok(started.elapsed())
}

/// Flushes what earlier scenarios wrote (gigabytes, for scenario 1), so the writeback of one
/// scenario's files does not run during the next one's measurement.
pub(crate) fn settle_disk() -> anyhow::Result<()> {
    time_command("sync", &[]).map(drop)
}

/// Best (shortest) of `runs` timings of `step`.
pub(crate) fn best_of<T>(
    runs: usize,
    mut step: impl FnMut() -> anyhow::Result<(Duration, T)>,
) -> anyhow::Result<(Duration, T)> {
    let mut best = step()?;
    for _ in 1..runs {
        let next = step()?;
        if next.0 < best.0 {
            best = next;
        }
    }
    Ok(best)
}
