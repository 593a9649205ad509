//! Following an upload: the protocol by which a worker hashes a large upload's bytes while the
//! api is still receiving them, so that its result comes when the last byte lands rather than a
//! whole hash later. The api announces, the worker reads; both go through Redis (the transport),
//! and Postgres stays the source of truth: nothing here is a task's state.
//!
//! For an upload of task `T` on jobs stream `S`:
//!
//! - **`S:follow:T`** (a hash): `state` is `uploading`, `complete` or `aborted`; `requested` is
//!   `1` while a follow job for `T` is in the stream or held by a worker; `algorithms` lists the
//!   digests besides MD5 the task asks for (comma-separated registry names); `hashed` counts the
//!   bytes its worker has hashed so far.
//! - **`S:follow:T:bytes`** (a stream of announcements): `bytes` counts the bytes from the start
//!   of the file that the api has written **and flushed** (`fdatasync`) — only those may be read,
//!   so a worker on another host sees them even over a network filesystem, which shows a reader
//!   another host's writes only once they are flushed to the server. An entry with `end` closes
//!   the upload: `complete` (then `bytes` is the file's size, durable, and the task's row is
//!   committed) or `aborted` (the upload failed or was terminated: no row will come of it).
//!
//! Both keys expire [`TTL`] after the last announcement. The scripts below run atomically in
//! Redis: [`ANNOUNCE_SCRIPT`] adds the follow job (a [`crate::JobMessage`] with `follow`) the
//! first time, or again after a worker let go; [`COMPLETE_SCRIPT`] tells the api whether a
//! follower will take the task (then it adds no ordinary job; if that follower dies, its entry is
//! taken over like any other); [`RELEASE_SCRIPT`] lets a worker go from an upload that stalled,
//! only while it is still `uploading`, so a completion can never be left without a job.

use std::time::Duration;

use uuid::Uuid;

use crate::Algorithm;

/// Uploads at least this large (declared, or once this many bytes arrived) are followed; smaller
/// ones keep the ordinary path (stored, then hashed), whose cost per job is lower.
pub const FOLLOW_ABOVE_BYTES: u64 = 32 * 1024 * 1024;

/// The api flushes and announces a one-shot upload's bytes at least every this many bytes.
pub const ANNOUNCE_EVERY_BYTES: u64 = 8 * 1024 * 1024;

/// How long the keys of an upload outlive its last announcement.
pub const TTL: Duration = Duration::from_secs(3600);

/// A worker lets go of an upload that announced nothing new for this long (a resumable upload
/// paused between appends, or an api that died mid-upload).
pub const IDLE_RELEASE: Duration = Duration::from_secs(5);

/// The hash of task `task_id`'s upload on jobs stream `stream`.
pub fn meta_key(stream: &str, task_id: Uuid) -> String {
    format!("{stream}:follow:{task_id}")
}

/// The stream of announcements of task `task_id`'s upload on jobs stream `stream`.
pub fn bytes_key(stream: &str, task_id: Uuid) -> String {
    format!("{stream}:follow:{task_id}:bytes")
}

/// The `algorithms` field: `algorithms`' names, comma-separated.
pub fn algorithms_field(algorithms: &[Algorithm]) -> String {
    algorithms.iter().map(|algorithm| algorithm.name()).collect::<Vec<_>>().join(",")
}

/// The algorithms an `algorithms` field names (unknown names are skipped).
pub fn parse_algorithms(field: &str) -> Vec<Algorithm> {
    field.split(',').filter_map(Algorithm::from_name).collect()
}

/// One announcement read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announcement {
    /// So many bytes are written and flushed; more will come.
    Bytes(u64),
    /// The upload is complete at this size, durable, and its row committed.
    Complete(u64),
    /// The upload failed or was terminated.
    Aborted,
}

impl Announcement {
    /// Reads an announcement from a stream entry's field/value pairs.
    pub fn from_fields<'a>(fields: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Option<Self> {
        let (mut bytes, mut end) = (None, None);
        for (name, value) in fields {
            match name {
                "bytes" => bytes = std::str::from_utf8(value).ok().and_then(|text| text.parse().ok()),
                "end" => end = Some(value.to_vec()),
                _ => {}
            }
        }
        match end.as_deref() {
            Some(b"aborted") => Some(Announcement::Aborted),
            Some(b"complete") => bytes.map(Announcement::Complete),
            Some(_) => None,
            None => bytes.map(Announcement::Bytes),
        }
    }
}

/// KEYS: meta, bytes, jobs stream. ARGV: bytes, algorithms, TTL seconds, then the follow job's
/// field/value pairs. Announces `bytes` of an upload still `uploading` (creating its keys), and
/// adds the follow job unless one is requested already. Returns 0 if the upload has ended, 1 if
/// announced, 2 if announced and a follow job added.
pub const ANNOUNCE_SCRIPT: &str = r"
local state = redis.call('HGET', KEYS[1], 'state')
if state and state ~= 'uploading' then return 0 end
if not state then redis.call('HSET', KEYS[1], 'state', 'uploading', 'algorithms', ARGV[2]) end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', '32', '*', 'bytes', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
if redis.call('HGET', KEYS[1], 'requested') == '1' then return 1 end
redis.call('HSET', KEYS[1], 'requested', '1')
redis.call('XADD', KEYS[3], '*', unpack(ARGV, 4))
return 2
";

/// KEYS: meta, bytes. ARGV: size, TTL seconds. Completes an upload that was announced: 1 when a
/// follow job is requested (the api then adds no ordinary job), 0 otherwise (it adds one).
pub const COMPLETE_SCRIPT: &str = r"
if redis.call('HGET', KEYS[1], 'state') ~= 'uploading' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'complete')
redis.call('XADD', KEYS[2], 'MAXLEN', '~', '32', '*', 'bytes', ARGV[1], 'end', 'complete')
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
if redis.call('HGET', KEYS[1], 'requested') == '1' then return 1 end
return 0
";

/// KEYS: meta, bytes. ARGV: TTL seconds. Ends an upload that will not complete.
pub const ABORT_SCRIPT: &str = r"
if redis.call('HGET', KEYS[1], 'state') ~= 'uploading' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'aborted')
redis.call('XADD', KEYS[2], 'MAXLEN', '~', '32', '*', 'end', 'aborted')
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return 1
";

/// KEYS: meta. A worker letting go of an upload: 1 if it may (the upload is still uploading,
/// or forgotten), after which the next announcement adds a new follow job and a completion an
/// ordinary one; 0 if it has ended (the worker reads how, and goes on).
pub const RELEASE_SCRIPT: &str = r"
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'complete' or state == 'aborted' then return 0 end
if state then redis.call('HSET', KEYS[1], 'requested', '0') end
return 1
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_read_back() {
        let read = |fields: &[(&str, &[u8])]| Announcement::from_fields(fields.iter().copied());
        assert_eq!(read(&[("bytes", b"42")]), Some(Announcement::Bytes(42)));
        assert_eq!(read(&[("bytes", b"7"), ("end", b"complete")]), Some(Announcement::Complete(7)));
        assert_eq!(read(&[("end", b"aborted")]), Some(Announcement::Aborted));
        assert_eq!(read(&[("end", b"complete")]), None);
        assert_eq!(read(&[("bytes", b"x")]), None);
    }

    #[test]
    fn algorithms_round_trip() {
        let algorithms = [Algorithm::Sha256, Algorithm::Crc32c];
        assert_eq!(parse_algorithms(&algorithms_field(&algorithms)), algorithms);
        assert!(parse_algorithms("").is_empty());
    }
}
