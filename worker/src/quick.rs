//! Quick jobs (`JobMessage::quick`): a small upload that needs MD5 alone is hashed on its first
//! delivery before any claim, and its claim and result are recorded by one conditional update
//! (`queries::Completion::unclaimed`): one statement, one commit and one status change fewer
//! than a claimed job, which matters when the job's whole cost is its bookkeeping.
//!
//! What still holds: the update records nothing unless the row is still `queued`, of the size
//! hashed, computing MD5 alone and expecting nothing, so a cancel, another worker's claim or a
//! flag the row contradicts wins, and the job goes the claimed way (which reports a missing or
//! unreadable file as usual). A worker dying before the update leaves the row `queued` and the
//! entry pending: it is taken over as any job, by the claimed way, whose claim counts the dead
//! worker's try as an attempt, so a file that crashes every worker is still given up.

use shared::config::upload_path;
use shared::job::QUICK_AT_MOST_BYTES;
use shared::queries::Completion;
use uuid::Uuid;

use crate::context::JobContext;
use crate::hash::{SizedFile, md5_of_small_file};

/// The result of quick job `task_id` to record, or `None` when it must go the claimed way: its
/// file is missing, unreadable or larger than a quick job's.
pub async fn hash(ctx: &JobContext, task_id: Uuid) -> Option<Completion> {
    let path = upload_path(&ctx.config.storage.upload_dir, task_id);
    let _turn = ctx.hashing.acquire().await;
    let started = std::time::Instant::now();
    // On a local volume the file is opened here and its read and hash go where its size says
    // (`crate::volume`): here for a file of a few KiB, in microseconds; a blocking thread for a
    // larger quick file, which could hold a runtime thread for up to 2 ms. On any other volume
    // the open too goes to a blocking thread.
    let hashed = if ctx.volume.is_local() {
        match SizedFile::open(&path) {
            Ok(file) if file.size <= QUICK_AT_MOST_BYTES => {
                ctx.volume.on_file(file.size, move || file.md5()).await
            }
            _ => return None,
        }
    } else {
        ctx.volume.blocking(move || md5_of_small_file(&path, QUICK_AT_MOST_BYTES)).await.transpose()?
    };
    let (digests, size) = hashed.ok()?;
    metrics::histogram!("md5_hash_duration_seconds").record(started.elapsed().as_secs_f64());
    metrics::counter!("md5_hashed_bytes_total").increment(size);
    Some(Completion::unclaimed(task_id, digests, i64::try_from(size).ok()?))
}
