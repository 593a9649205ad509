//! Following an upload that is still arriving (the protocol is `shared::follow`): a follow job's
//! worker hashes the bytes the api announces as written and flushed, and once the upload
//! completes only its last part is left, so the result comes at the last byte. It then goes on
//! as any job (`crate::job`): claim, result, log line, acknowledgement.
//!
//! Only announced bytes are read (the announcements move a `Frontier` that the reads stop at,
//! and a range of reads goes on as it moves, ahead of the hash), from the partial file
//! `.<id>.part` (a one-shot upload) or the upload's own file (a resumable one, or after the
//! one-shot file's rename): a descriptor stays valid across the rename. A read that finds fewer
//! bytes than announced (a network filesystem whose client cached the file's old length)
//! reopens the file, which revalidates it.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::streams::StreamReadReply;
use shared::follow::{self, Announcement};
use shared::{Algorithm, Digests};
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

use crate::context::JobContext;
use crate::direct_read::{Frontier, Until};
use crate::hash::MultiHasher;
use crate::running::HashProgress;

static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(follow::RELEASE_SCRIPT));

/// Most bytes hashed in one range, between two looks at the heartbeat, a stop and the progress
/// report; a range also ends after [`RANGE_FOR`].
const CHUNK_BYTES: u64 = 256 * 1024 * 1024;

/// Longest time one range runs.
const RANGE_FOR: Duration = Duration::from_millis(500);

/// How long a range that has hashed every announced byte waits for the next announcement before
/// it ends: announcements come every `ANNOUNCE_EVERY_BYTES` (8 MiB, about 10 ms at the speed
/// of the device), and a range that goes on keeps its reads ahead of the hash.
const RANGE_LINGER: Duration = Duration::from_millis(50);

/// How long one blocking read of the announcements waits.
const READ_BLOCK: Duration = Duration::from_secs(1);

/// How long announced bytes may stay unreadable (a network filesystem catching up) before the
/// worker lets go and leaves the file to an ordinary job.
const UNREADABLE_FOR: Duration = Duration::from_secs(5);

/// Most uploads a worker process with `concurrency` job slots follows at once: half its slots
/// (at least one), so that uploads still arriving, however slow, leave the other half to jobs
/// that are ready.
pub fn most_followed(concurrency: usize) -> usize {
    (concurrency / 2).max(1)
}

/// What following an upload came to.
pub enum Followed {
    /// The upload is complete and its row committed: claim it as any job, going on from what
    /// was hashed here (if anything).
    Complete(Option<Following>),
    /// The upload ended without a task (cut off, terminated, expired), or it stalled or this
    /// worker is stopping and let it go: the entry is acknowledged; a completion later gets an
    /// ordinary job.
    Gone,
    /// The worker is stopping and the upload has ended: the entry stays pending for another.
    Stopping,
}

/// An upload partly hashed while it arrived, complete now.
pub struct Following {
    file: Option<std::fs::File>,
    path: std::path::PathBuf,
    hasher: MultiHasher,
    hashed: u64,
    size: u64,
    algorithms: Vec<Algorithm>,
}

impl Following {
    /// Whether this hash is `task`'s: the same size, and every algorithm the task asks for.
    pub fn fits(&self, task: &shared::Task) -> bool {
        let same_size = i64::try_from(self.size).is_ok_and(|size| size == task.size_bytes);
        same_size
            && task
                .algorithms()
                .iter()
                .all(|algorithm| *algorithm == Algorithm::Md5 || self.algorithms.contains(algorithm))
    }

    /// Bytes hashed while the upload arrived.
    pub fn hashed(&self) -> u64 {
        self.hashed
    }

    /// Hashes the rest of the file (reopened at its final name if need be), counting into
    /// `progress` from the bytes already hashed: every digest, and the file's size. Blocking.
    pub fn finish(self, progress: &HashProgress) -> std::io::Result<(Digests, u64)> {
        use std::io::Seek as _;
        let Following { file, path, mut hasher, hashed, size, .. } = self;
        progress.set(hashed);
        let file = match file {
            Some(file) => file,
            None => {
                let mut file = std::fs::File::open(path)?;
                file.seek(std::io::SeekFrom::Start(hashed))?;
                file
            }
        };
        let read = crate::hash::hash_range(&file, u64::MAX, &mut hasher, hashed, progress)?;
        let _ = size;
        Ok((hasher.finish(), hashed + read))
    }
}

/// How the upload ended, once an announcement says so (the bytes announced are the
/// [`Frontier`]'s).
#[derive(Debug, Clone, Copy, Default)]
struct Latest {
    end: Option<Announcement>,
}

/// Follows task `task_id`'s upload until it completes, ends, or stalls.
pub async fn follow(ctx: &JobContext, entry_id: &str, task_id: Uuid) -> anyhow::Result<Followed> {
    let stream = ctx.jobs.stream().to_owned();
    let meta = follow::meta_key(&stream, task_id);
    let (state, algorithms): (Option<String>, Option<String>) = redis::cmd("HMGET")
        .arg(&meta)
        .arg("state")
        .arg("algorithms")
        .query_async(&mut ctx.jobs.connection())
        .await?;
    if state.is_none() {
        // Its keys are gone (expired, or Redis lost them): nothing to follow; the row decides.
        return Ok(Followed::Complete(None));
    }
    let Ok(_following) = ctx.following.clone().try_acquire_owned() else {
        // Half the job slots follow uploads already: this one is turned down (its next
        // announcement offers it again, its completion gets an ordinary job).
        metrics::counter!("md5_follow_turned_down_total").increment(1);
        tracing::debug!("following enough uploads already; turning this one down");
        return release_or_complete(ctx, &meta, None).await;
    };
    let algorithms = follow::parse_algorithms(algorithms.as_deref().unwrap_or(""));
    let (news, mut latest) = watch::channel(Latest::default());
    let frontier = Arc::new(Frontier::default());
    let reader = tokio::spawn(read_announcements(
        ctx.jobs.clone(),
        follow::bytes_key(&stream, task_id),
        news,
        frontier.clone(),
    ));
    let followed = hash_as_announced(ctx, entry_id, task_id, &meta, &algorithms, &mut latest, frontier).await;
    reader.abort();
    followed
}

async fn hash_as_announced(
    ctx: &JobContext,
    entry_id: &str,
    task_id: Uuid,
    meta: &str,
    algorithms: &[Algorithm],
    latest: &mut watch::Receiver<Latest>,
    frontier: Arc<Frontier>,
) -> anyhow::Result<Followed> {
    let registered = ctx.running.register(task_id);
    let mut hasher = Some(MultiHasher::with(algorithms));
    let mut hashed = 0u64;
    let mut file: Option<std::fs::File> = None;
    let mut last_news = Instant::now();
    let mut unreadable_since: Option<Instant> = None;
    let mut reported = Instant::now();
    let beat = ctx.config.claim_idle() / 3;
    let mut next_beat = Instant::now() + beat;
    loop {
        if Instant::now() >= next_beat {
            next_beat = Instant::now() + beat;
            if let Err(err) = ctx.jobs.touch(entry_id).await {
                tracing::warn!(error = %err, "heartbeat could not touch the stream entry");
            }
        }
        if registered.progress.is_stopped() {
            // Its task was cancelled (a terminated resumable upload).
            return release_or_complete(ctx, meta, None).await;
        }
        let now = *latest.borrow_and_update();
        if now.end == Some(Announcement::Aborted) {
            tracing::info!(upload.hashed_bytes = hashed, "the upload ended without a task; let go");
            return Ok(Followed::Gone);
        }
        let target = frontier.get();
        if let Some(Announcement::Complete(size)) = now.end {
            metrics::counter!("md5_followed_bytes_total").increment(hashed);
            let hasher = hasher.take().expect("the hasher is back after every chunk");
            let path = shared::config::upload_path(&ctx.config.storage.upload_dir, task_id);
            let algorithms = algorithms.to_vec();
            return Ok(Followed::Complete(Some(Following { file, path, hasher, hashed, size, algorithms })));
        }
        // Only now: an upload whose completion has been read is finished as any job is, within
        // the worker's grace period, rather than left pending for a takeover.
        if ctx.shutdown.is_cancelled() {
            return Ok(hand_back(ctx, meta, hashed).await);
        }
        if hashed < target {
            let opened = match file.take() {
                Some(open) => Ok(open),
                None => open_upload(ctx, task_id, hashed).await,
            };
            let read = match opened {
                Ok(open) => {
                    let mut state = hasher.take().expect("the hasher is back after every chunk");
                    let _turn = ctx.hashing.acquire().await;
                    let (frontier, progress) = (frontier.clone(), registered.progress.clone());
                    let (open, state, read) = tokio::task::spawn_blocking(move || {
                        let until = Until {
                            frontier: &frontier,
                            linger: RANGE_LINGER,
                            deadline: std::time::Instant::now() + RANGE_FOR,
                        };
                        let read = crate::hash::hash_announced(
                            &open,
                            CHUNK_BYTES,
                            &mut state,
                            hashed,
                            &progress,
                            until,
                        );
                        (open, state, read)
                    })
                    .await?;
                    hasher = Some(state);
                    file = Some(open);
                    read
                }
                Err(err) => Err(err),
            };
            if read.is_err() && registered.progress.is_stopped() {
                // Its task was cancelled while the range was being hashed: acted on above.
                continue;
            }
            match read {
                Ok(read) if read > 0 => {
                    hashed += read;
                    registered.progress.set(hashed);
                    let announced = frontier.get();
                    let caught_up = hashed >= announced;
                    report(ctx, meta, task_id, hashed, caught_up, &mut reported).await;
                    unreadable_since = None;
                    if read < CHUNK_BYTES && hashed < announced {
                        // Fewer bytes than announced (or announced as the range ended): reopen
                        // to see the file's new length.
                        file = None;
                    }
                    continue;
                }
                outcome => {
                    file = None;
                    let since = *unreadable_since.get_or_insert_with(Instant::now);
                    if since.elapsed() < UNREADABLE_FOR {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    let why = match outcome {
                        Ok(_) => "the file holds fewer bytes than announced".to_owned(),
                        Err(err) => err.to_string(),
                    };
                    tracing::warn!(error = %why, upload.hashed_bytes = hashed, "cannot read the announced bytes; leaving the upload to an ordinary job");
                    return release_or_complete(ctx, meta, now.end).await;
                }
            }
        }
        let idle_until = last_news + follow::IDLE_RELEASE;
        tokio::select! {
            changed = latest.changed() => {
                if changed.is_err() {
                    anyhow::bail!("the announcements' reader ended");
                }
                last_news = Instant::now();
            }
            () = tokio::time::sleep_until(next_beat) => {}
            () = tokio::time::sleep_until(idle_until) => {
                tracing::info!(upload.hashed_bytes = hashed, "the upload announced nothing for a while; letting go");
                match release_or_complete(ctx, meta, None).await? {
                    Followed::Complete(_) => last_news = Instant::now(),
                    other => return Ok(other),
                }
            }
            // Both are acted on at the top of the loop (a stop only after a completion already
            // read has been taken).
            () = ctx.shutdown.cancelled() => {}
            () = registered.progress.stopped() => {}
        }
    }
}

/// Records how far the hash has come: in the upload's keys at every chunk, and to whoever
/// watches the task (a resumable upload's `GET` and event streams) every half second and
/// whenever it has caught up with the bytes announced.
async fn report(
    ctx: &JobContext,
    meta: &str,
    task_id: Uuid,
    hashed: u64,
    caught_up: bool,
    reported: &mut Instant,
) {
    // With its expiry again: the keys may have been lost meanwhile (Redis restarted), and a key
    // recreated here must not stay forever.
    let recorded: redis::RedisResult<()> = redis::pipe()
        .cmd("HSET")
        .arg(meta)
        .arg("hashed")
        .arg(hashed)
        .ignore()
        .cmd("EXPIRE")
        .arg(meta)
        .arg(follow::TTL.as_secs())
        .ignore()
        .query_async(&mut ctx.jobs.connection())
        .await;
    if let Err(err) = recorded {
        tracing::debug!(error = %err, "cannot record the hash's progress in the upload's keys");
    }
    if caught_up || reported.elapsed() >= crate::progress::PROGRESS_EVERY {
        *reported = Instant::now();
        crate::progress::announce_progress(ctx, task_id, hashed).await;
    }
}

/// The worker is stopping: an upload still arriving is let go (`Gone`: its next announcement
/// offers it to another worker, its completion gets an ordinary job), so that it does not wait
/// `CLAIM_IDLE_MS` for a takeover of this entry. One that has ended, or when Redis cannot say,
/// stays pending for another worker (`Stopping`).
async fn hand_back(ctx: &JobContext, meta: &str, hashed: u64) -> Followed {
    match RELEASE.key(meta).invoke_async::<i64>(&mut ctx.jobs.connection()).await {
        Ok(1) => {
            metrics::counter!("md5_followed_uploads_released_total").increment(1);
            tracing::info!(
                upload.hashed_bytes = hashed,
                "stopping; the upload still arriving is let go for another worker"
            );
            Followed::Gone
        }
        Ok(_) => Followed::Stopping,
        Err(err) => {
            tracing::warn!(error = %err, "stopping; cannot let go of the upload, it waits for a takeover");
            Followed::Stopping
        }
    }
}

/// Lets go of the upload if it is still uploading (`Gone`); once it has ended, a completion is
/// left to the ordinary path (`Complete(None)`: claim, hash the file) and an abort is `Gone`.
async fn release_or_complete(
    ctx: &JobContext,
    meta: &str,
    end: Option<Announcement>,
) -> anyhow::Result<Followed> {
    if matches!(end, Some(Announcement::Complete(_))) {
        return Ok(Followed::Complete(None));
    }
    let released: i64 = RELEASE.key(meta).invoke_async(&mut ctx.jobs.connection()).await?;
    if released == 1 {
        metrics::counter!("md5_followed_uploads_released_total").increment(1);
        return Ok(Followed::Gone);
    }
    let state: Option<String> =
        redis::cmd("HGET").arg(meta).arg("state").query_async(&mut ctx.jobs.connection()).await?;
    Ok(match state.as_deref() {
        Some("complete") => Followed::Complete(None),
        _ => Followed::Gone,
    })
}

/// The upload's file, whichever of its two names it has now, at `offset`.
async fn open_upload(ctx: &JobContext, task_id: Uuid, offset: u64) -> std::io::Result<std::fs::File> {
    use std::io::Seek as _;
    let dir = ctx.config.storage.upload_dir.clone();
    tokio::task::spawn_blocking(move || {
        let mut file = match std::fs::File::open(dir.join(format!(".{task_id}.part"))) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                std::fs::File::open(shared::config::upload_path(&dir, task_id))
            }
            opened => opened,
        }?;
        file.seek(std::io::SeekFrom::Start(offset))?;
        Ok(file)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Reads the announcements until nobody watches: their bytes into `frontier`, and into `news` how
/// the upload ended, each announcement waking its watcher (`send_modify` always does). One
/// blocking read at a time on a connection of its own, reconnecting after an error.
async fn read_announcements(
    jobs: crate::stream::JobsHandle,
    key: String,
    news: watch::Sender<Latest>,
    frontier: Arc<Frontier>,
) {
    let mut last_id = "0".to_owned();
    let mut connection = None;
    loop {
        if news.is_closed() {
            return;
        }
        if connection.is_none() {
            match jobs.blocking_connection(READ_BLOCK).await {
                Ok(opened) => connection = Some(opened),
                Err(err) => {
                    tracing::debug!(error = %err, "cannot connect to read an upload's announcements");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        let reader = connection.as_mut().expect("connected above");
        let reply: redis::RedisResult<Option<StreamReadReply>> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(64)
            .arg("BLOCK")
            .arg(READ_BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&key)
            .arg(&last_id)
            .query_async(reader)
            .await;
        match reply {
            Ok(reply) => {
                for entry in reply.into_iter().flat_map(|reply| reply.keys).flat_map(|key| key.ids) {
                    last_id.clone_from(&entry.id);
                    let fields: Vec<(String, Vec<u8>)> = entry
                        .map
                        .iter()
                        .filter_map(|(name, value)| match value {
                            redis::Value::BulkString(bytes) => Some((name.clone(), bytes.clone())),
                            _ => None,
                        })
                        .collect();
                    let Some(announced) =
                        Announcement::from_fields(fields.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                    else {
                        continue;
                    };
                    // The frontier first: whoever the news wakes finds the bytes there.
                    match announced {
                        Announcement::Bytes(bytes) => frontier.advance(bytes),
                        Announcement::Complete(size) => frontier.end(Some(size)),
                        Announcement::Aborted => frontier.end(None),
                    }
                    news.send_modify(|latest| {
                        if !matches!(announced, Announcement::Bytes(_)) {
                            latest.end = Some(announced);
                        }
                    });
                }
            }
            Err(err) => {
                tracing::debug!(error = %err, "cannot read an upload's announcements; retrying");
                connection = None;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
