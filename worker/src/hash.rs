//! Hashing a stored upload: large sequential reads fed to every digest of a [`MultiHasher`],
//! on a blocking thread.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::{Arc, mpsc};

use md5_many::Md5State;
use shared::{Algorithm, Digests, Md5Hex};

use crate::direct_read::{Block, BlockReader, DIRECT_BLOCK_BYTES, Until, read_full};
use crate::running::HashProgress;

/// Read size. Measured on the 2-core machine (1 GiB in page cache, md-5 0.10 asm): 64 KiB reads
/// hash at ~514 MB/s, 1 MiB reads at ~399 MB/s, because a buffer that outgrows the L2 cache is
/// evicted between the copy from the page cache and the hash.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Files up to this size are read and hashed on one thread; larger ones on two (or, needing MD5
/// alone, in the lanes of `crate::lanes`).
pub(crate) const OVERLAP_ABOVE_BYTES: u64 = 4 * READ_BUFFER_BYTES as u64;

/// Files from this size on are read past the page cache (`crate::direct_read`), as the api
/// writes their whole blocks where it can; so are a followed upload's ranges from one direct
/// block on.
const DIRECT_READ_ABOVE_BYTES: u64 = 8 * 1024 * 1024;

/// Buffers in circulation between the reading and the hashing thread: few, so that they stay in
/// the L2 cache.
const BUFFERS: usize = 4;

/// Buffers in circulation when a second thread computes the other algorithms (the two hashing
/// threads may drift apart by this many).
const PARALLEL_BUFFERS: usize = 8;

/// Every digest of one stream of bytes, each fed from the same buffers (rclone's
/// `hash.MultiHasher`): the file is read once whatever the number of algorithms. MD5 is always
/// one of them.
pub struct MultiHasher {
    /// `md5-many`'s single-stream MD5 (faster than `md-5`'s assembly: BENCHMARKS.md).
    md5: Md5State,
    others: Vec<Hasher>,
}

/// One algorithm's running state (each crate picks its hardware path at run time: SHA-NI for
/// sha2/sha1, SSE4.2/PCLMULQDQ/VPCLMULQDQ for crc-fast, SSE4.1/AVX2/AVX-512 for blake3).
enum Hasher {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
    Crc32c(crc_fast::Digest),
    Crc64Nvme(crc_fast::Digest),
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    /// The state of `algorithm`; `None` for MD5 (which [`MultiHasher`] always keeps itself).
    fn new(algorithm: Algorithm) -> Option<Hasher> {
        use sha2::Digest as _;
        Some(match algorithm {
            Algorithm::Md5 => return None,
            Algorithm::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
            Algorithm::Crc32c => Hasher::Crc32c(crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi)),
            Algorithm::Crc64Nvme => {
                Hasher::Crc64Nvme(crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme))
            }
            Algorithm::Blake3 => Hasher::Blake3(Box::new(blake3::Hasher::new())),
        })
    }

    /// True for the CRCs, which cost little beside any hash.
    fn is_crc(&self) -> bool {
        matches!(self, Hasher::Crc32c(_) | Hasher::Crc64Nvme(_))
    }

    fn update(&mut self, bytes: &[u8]) {
        use sha2::Digest as _;
        match self {
            Hasher::Sha1(hasher) => hasher.update(bytes),
            Hasher::Sha256(hasher) => hasher.update(bytes),
            Hasher::Sha512(hasher) => hasher.update(bytes),
            Hasher::Crc32c(hasher) | Hasher::Crc64Nvme(hasher) => hasher.update(bytes),
            Hasher::Blake3(hasher) => {
                hasher.update(bytes);
            }
        }
    }

    /// The algorithm and its digest as lowercase hex (a CRC as its big-endian bytes).
    fn finish(self) -> (Algorithm, String) {
        use sha2::Digest as _;
        match self {
            Hasher::Sha1(hasher) => (Algorithm::Sha1, hex::encode(hasher.finalize())),
            Hasher::Sha256(hasher) => (Algorithm::Sha256, hex::encode(hasher.finalize())),
            Hasher::Sha512(hasher) => (Algorithm::Sha512, hex::encode(hasher.finalize())),
            Hasher::Crc32c(hasher) => (Algorithm::Crc32c, format!("{:08x}", hasher.finalize())),
            Hasher::Crc64Nvme(hasher) => (Algorithm::Crc64Nvme, format!("{:016x}", hasher.finalize())),
            Hasher::Blake3(hasher) => (Algorithm::Blake3, hasher.finalize().to_hex().to_string()),
        }
    }
}

impl MultiHasher {
    /// A hasher for MD5 alone.
    pub fn new() -> Self {
        MultiHasher::with(&[])
    }

    /// A hasher for MD5 and each of `algorithms` (each once, whatever the list repeats).
    pub fn with(algorithms: &[Algorithm]) -> Self {
        let mut wanted: Vec<Algorithm> = algorithms.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        MultiHasher { md5: Md5State::new(), others: wanted.into_iter().filter_map(Hasher::new).collect() }
    }

    /// Feeds `bytes` to every digest.
    pub fn update(&mut self, bytes: &[u8]) {
        self.md5.update(bytes);
        for hasher in &mut self.others {
            hasher.update(bytes);
        }
    }

    /// The digests of everything fed so far.
    pub fn finish(self) -> Digests {
        Digests {
            md5: Md5Hex::from_digest(self.md5.finalize()),
            others: self.others.into_iter().map(Hasher::finish).collect(),
        }
    }
}

impl Default for MultiHasher {
    fn default() -> Self {
        MultiHasher::new()
    }
}

/// The digests of the file at `path`, and the bytes read. Blocking: call it from
/// `spawn_blocking`.
///
/// A large file is read on a second thread while this one hashes (the copy out of the page
/// cache and the hash overlap, so the hash runs at md-5's in-memory speed); a small one is read
/// and hashed in turn.
pub fn digest_file(path: &Path) -> io::Result<(Digests, u64)> {
    digest_file_with(path, &[])
}

/// A file opened for a hash of its MD5 alone, with its size as `fstat` gave it.
pub struct SizedFile {
    file: File,
    /// Its size in bytes when opened.
    pub size: u64,
}

impl SizedFile {
    /// Opens the file at `path` and reads its size: two small system calls, run wherever a
    /// small operation on the volume runs (`crate::volume`).
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        Ok(SizedFile { file, size })
    }

    /// Its MD5 and the bytes read, in one pass through a buffer of at most the read buffer's
    /// size. Blocking: call it from a blocking thread, or for a small file on a local volume
    /// from any (`crate::volume::Volume::on_file`).
    pub fn md5(mut self) -> io::Result<(Digests, u64)> {
        let mut hasher = MultiHasher::new();
        let total = hash_in_turn(&mut self.file, self.size, &mut hasher, &HashProgress::default())?;
        Ok((hasher.finish(), total))
    }
}

/// The MD5 of the file at `path` and its size, or `None` if it holds more than `at_most` bytes
/// (then it is not read). Blocking, as [`SizedFile::md5`].
pub fn md5_of_small_file(path: &Path, at_most: u64) -> io::Result<Option<(Digests, u64)>> {
    let file = SizedFile::open(path)?;
    if file.size > at_most {
        return Ok(None);
    }
    file.md5().map(Some)
}

/// [`digest_file`] with `algorithms` besides MD5, all from one read of the file.
pub fn digest_file_with(path: &Path, algorithms: &[Algorithm]) -> io::Result<(Digests, u64)> {
    digest_file_on(path, algorithms, side_threads(), &HashProgress::default())
}

/// [`digest_file_with`], counting the bytes hashed into `progress` as it goes and ending with
/// [`HashProgress::stopped_error`] within one buffer of `progress` being stopped.
pub fn digest_file_watched(
    path: &Path,
    algorithms: &[Algorithm],
    progress: &HashProgress,
) -> io::Result<(Digests, u64)> {
    digest_file_on(path, algorithms, side_threads(), progress)
}

/// [`digest_file_watched`], the other algorithms on at most `threads` threads.
fn digest_file_on(
    path: &Path,
    algorithms: &[Algorithm],
    threads: usize,
    progress: &HashProgress,
) -> io::Result<(Digests, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = MultiHasher::with(algorithms);
    let size = file.metadata()?.len();
    let total = if size <= OVERLAP_ABOVE_BYTES {
        hash_in_turn(&mut file, size, &mut hasher, progress)?
    } else {
        hash_overlapped(
            &file,
            u64::MAX,
            size >= DIRECT_READ_ABOVE_BYTES,
            &mut hasher,
            threads,
            0,
            progress,
            None,
        )?
    };
    Ok((hasher.finish(), total))
}

/// Hashes the next `length` bytes of `file` (from its position) into `hasher`, read on a second
/// thread as [`digest_file`] reads, counting into `progress` from `start`; returns the bytes
/// read, fewer if the file ended first.
pub fn hash_range(
    file: &File,
    length: u64,
    hasher: &mut MultiHasher,
    start: u64,
    progress: &HashProgress,
) -> io::Result<u64> {
    hash_overlapped(
        file,
        length,
        length >= DIRECT_BLOCK_BYTES as u64,
        hasher,
        side_threads(),
        start,
        progress,
        None,
    )
}

/// [`hash_range`] over the bytes of a file still being written (counting into `progress` from
/// `start`, and ending within a block of its stop): at most `most` bytes, none past
/// `until`'s frontier, and the range goes on as the frontier moves (one reader for as long as
/// announcements keep coming, its reads ahead of the hash) until it stops moving for
/// `until.linger` or `until.deadline` passes. Returns the bytes read.
pub(crate) fn hash_announced(
    file: &File,
    most: u64,
    hasher: &mut MultiHasher,
    start: u64,
    progress: &HashProgress,
    until: Until<'_>,
) -> io::Result<u64> {
    hash_overlapped(file, most, true, hasher, side_threads(), start, progress, Some(until))
}

/// Threads for the other algorithms: the CPUs beside the MD5's, at least one. Asked once per
/// process: the standard library reads the cgroup's CPU quota files on every call (a dozen
/// system calls, which a small file's whole hash does not need).
fn side_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS
        .get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1)).max(1))
}

/// Reads on a second thread while this one computes the MD5 and, when there are other
/// algorithms, more threads compute them from the same buffers (shared, never copied: a buffer
/// goes back to the reader when every thread is done with it). Costs then do not add up: the
/// file takes as long as its slowest thread. Returns the bytes read.
#[allow(clippy::too_many_arguments)]
fn hash_overlapped(
    file: &File,
    length: u64,
    direct: bool,
    hasher: &mut MultiHasher,
    threads: usize,
    start: u64,
    progress: &HashProgress,
    until: Option<Until<'_>>,
) -> io::Result<u64> {
    let mut total = 0u64;
    // Read past the page cache where `direct` asks (`crate::direct_read`), in blocks of
    // that size; else in blocks that stay in the L2 cache.
    let mut reader = BlockReader::new(file, length, direct)?;
    if let Some(until) = until {
        reader = reader.until(until);
    }
    let block = if reader.is_direct() { DIRECT_BLOCK_BYTES } else { READ_BUFFER_BYTES };
    let groups = groups(std::mem::take(&mut hasher.others), threads);
    let buffers = if groups.is_empty() { BUFFERS } else { PARALLEL_BUFFERS };
    let (full_tx, full_rx) = mpsc::sync_channel::<io::Result<Arc<Block>>>(buffers);
    let (empty_tx, empty_rx) = mpsc::sync_channel::<Block>(buffers);
    for _ in 0..buffers {
        empty_tx.send(Block::new(block)).expect("the channel holds every buffer");
    }
    let others = std::thread::scope(|scope| {
        scope.spawn(move || {
            // Ends when the file ends, a read fails, or the hashing side hangs up.
            while let Ok(mut buffer) = empty_rx.recv() {
                match reader.fill(&mut buffer) {
                    Ok(0) => return,
                    Ok(_) => {
                        if full_tx.send(Ok(Arc::new(buffer))).is_err() {
                            return;
                        }
                    }
                    Err(err) => {
                        let _ = full_tx.send(Err(err));
                        return;
                    }
                }
            }
        });
        // Each group's queue holds at most every buffer, so sending to it never blocks for
        // long: at worst until that thread is done with one.
        let mut sides = Vec::with_capacity(groups.len());
        for mut group in groups {
            let (side_tx, side_rx) = mpsc::sync_channel::<Arc<Block>>(buffers);
            let empty_tx = empty_tx.clone();
            let thread = scope.spawn(move || {
                for buffer in side_rx {
                    for hasher in &mut group {
                        hasher.update(&buffer);
                    }
                    give_back(buffer, &empty_tx);
                }
                group
            });
            sides.push((side_tx, thread));
        }
        let hashed = (|| {
            // Owned here: once this ends and the other threads have, the reader's wait for an
            // empty buffer ends too, even when it stopped early and buffers were dropped.
            let empty_tx = empty_tx;
            for buffer in full_rx {
                let buffer = buffer?;
                for (side_tx, _) in &sides {
                    // Cannot fail while that thread lives; if it died, its join says so.
                    let _ = side_tx.send(Arc::clone(&buffer));
                }
                hasher.md5.update(&buffer[..]);
                total += buffer.len() as u64;
                progress.set(start + total);
                give_back(buffer, &empty_tx);
                if progress.is_stopped() {
                    // Returning drops the receiver: the reader and the other threads end too.
                    return Err(HashProgress::stopped_error());
                }
            }
            Ok::<(), io::Error>(())
        })();
        let mut others = Vec::new();
        for (side_tx, thread) in sides {
            drop(side_tx);
            others.extend(thread.join().expect("a digest thread does not panic"));
        }
        hashed.map(|()| others)
    })?;
    hasher.others = others;
    Ok(total)
}

/// The other algorithms in groups of one thread each: at most `threads` (at least one), the
/// costly algorithms spread over them, the CRCs (tens of GB/s) with the first. On a 2-CPU host
/// ([`side_threads`]) that is one thread for all of them.
fn groups(others: Vec<Hasher>, threads: usize) -> Vec<Vec<Hasher>> {
    let threads = threads.max(1);
    let (cheap, costly): (Vec<Hasher>, Vec<Hasher>) = others.into_iter().partition(Hasher::is_crc);
    let mut groups: Vec<Vec<Hasher>> = Vec::new();
    for (i, hasher) in costly.into_iter().enumerate() {
        match groups.get_mut(i % threads) {
            Some(group) => group.push(hasher),
            None => groups.push(vec![hasher]),
        }
    }
    match groups.first_mut() {
        Some(first) => first.extend(cheap),
        None if !cheap.is_empty() => groups.push(cheap),
        None => {}
    }
    groups
}

/// Returns `buffer` to the reader once nobody else holds it. The reader may have finished and
/// dropped its receiver: then nothing is needed.
fn give_back(buffer: Arc<Block>, empty: &mpsc::SyncSender<Block>) {
    if let Some(buffer) = Arc::into_inner(buffer) {
        let _ = empty.send(buffer);
    }
}

/// Reads and hashes in turn on this thread; returns the bytes read. The buffer is the file's
/// `size` when that is smaller than [`READ_BUFFER_BYTES`]: a 1 KiB file is read whole in one call
/// into 1 KiB (a file that grew is still read to its end).
fn hash_in_turn(
    file: &mut File,
    size: u64,
    hasher: &mut MultiHasher,
    progress: &HashProgress,
) -> io::Result<u64> {
    let mut buffer = vec![0u8; size.clamp(1, READ_BUFFER_BYTES as u64) as usize];
    let mut total = 0u64;
    loop {
        if progress.is_stopped() {
            return Err(HashProgress::stopped_error());
        }
        match read_full(file, &mut buffer)? {
            0 => break,
            read => {
                hasher.update(&buffer[..read]);
                total += read as u64;
                progress.set(total);
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        let dir = std::env::temp_dir().join(format!("md5-hash-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty");
        std::fs::write(&empty, b"").unwrap();
        let md5 = |path: &Path| digest_file(path).map(|(digests, size)| (digests.md5, size)).unwrap();
        assert_eq!(md5(&empty), ("d41d8cd98f00b204e9800998ecf8427e".parse().unwrap(), 0));
        let fox = dir.join("fox");
        std::fs::write(&fox, b"The quick brown fox jumps over the lazy dog").unwrap();
        assert_eq!(md5(&fox).0.as_str(), "9e107d9d372bb6826bd81d3542a419d6");
        // Large enough for the two-thread path, and not a multiple of the read size.
        let big = dir.join("big");
        let bytes: Vec<u8> = (0..(5 * READ_BUFFER_BYTES + 123)).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&big, &bytes).unwrap();
        let expected = hex::encode(<md5::Md5 as md5::Digest>::digest(&bytes));
        assert_eq!(md5(&big), (expected.parse().unwrap(), bytes.len() as u64));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A small file is read into a buffer of its own size: every size around the read buffer's
    /// gives md-5's digest and its length, and a file over `at_most` is not read.
    #[test]
    fn a_small_file_is_hashed_whole_at_every_size_around_the_read_buffer() {
        let dir = std::env::temp_dir().join(format!("md5-small-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for size in [0, 1, 1024, READ_BUFFER_BYTES - 1, READ_BUFFER_BYTES, READ_BUFFER_BYTES + 1, 3 << 20] {
            let bytes: Vec<u8> = (0..size).map(|i| (i * 13 % 251) as u8).collect();
            let path = dir.join(format!("f{size}"));
            std::fs::write(&path, &bytes).unwrap();
            let expected = hex::encode(<md5::Md5 as md5::Digest>::digest(&bytes));
            let (digests, read) = md5_of_small_file(&path, 4 << 20).unwrap().expect("under at_most");
            assert_eq!((digests.md5.as_str(), read), (expected.as_str(), size as u64), "{size} bytes");
            assert!(md5_of_small_file(&path, size as u64).unwrap().is_some(), "{size}: at most is inclusive");
            if size > 0 {
                assert!(md5_of_small_file(&path, size as u64 - 1).unwrap().is_none(), "{size}: over at_most");
            }
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The first field of `tool file`'s output (`sha256sum` and friends).
    fn reference(tool: &str, path: &Path) -> String {
        let output = std::process::Command::new(tool).arg(path).output().expect("coreutils are installed");
        assert!(output.status.success(), "{tool} failed");
        String::from_utf8(output.stdout).unwrap().split_whitespace().next().unwrap().to_owned()
    }

    #[test]
    fn every_algorithm_equals_the_reference_tools_at_every_padding_edge_and_size() {
        let dir = std::env::temp_dir().join(format!("md5-hash-all-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let crc32c = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
        let crc64 = crc::Crc::<u64>::new(&crc::CRC_64_NVME);
        // The catalogue's check values (of "123456789"), through the service's own path.
        let check = dir.join("check");
        std::fs::write(&check, b"123456789").unwrap();
        let (digests, _) = digest_file_with(&check, Algorithm::ALL).unwrap();
        assert_eq!(digests.get(Algorithm::Crc32c), Some("e3069283"));
        assert_eq!(digests.get(Algorithm::Crc64Nvme), Some("ae8b14860a799888"));
        for size in [0usize, 1, 55, 56, 63, 64, 65, 1 << 20, 100 << 20] {
            let bytes: Vec<u8> = (0..size).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
            let path = dir.join(format!("f{size}"));
            std::fs::write(&path, &bytes).unwrap();
            let (digests, read) = digest_file_with(&path, Algorithm::ALL).unwrap();
            assert_eq!(read, size as u64);
            assert_eq!(digests.iter().count(), Algorithm::ALL.len(), "{size}: every algorithm");
            for (algorithm, hex) in digests.iter() {
                assert_eq!(hex.len(), algorithm.hex_len(), "{algorithm} at {size} bytes");
            }
            let expect = |algorithm: Algorithm, want: String| {
                assert_eq!(digests.get(algorithm), Some(want.as_str()), "{algorithm} of {size} bytes");
            };
            expect(Algorithm::Md5, reference("md5sum", &path));
            expect(Algorithm::Sha1, reference("sha1sum", &path));
            expect(Algorithm::Sha256, reference("sha256sum", &path));
            expect(Algorithm::Sha512, reference("sha512sum", &path));
            expect(Algorithm::Blake3, blake3::hash(&bytes).to_hex().to_string());
            // A second CRC implementation (the `crc` crate's table-driven one).
            expect(Algorithm::Crc32c, format!("{:08x}", crc32c.checksum(&bytes)));
            expect(Algorithm::Crc64Nvme, format!("{:016x}", crc64.checksum(&bytes)));
            // MD5 alone is what it always was, and asking twice for one algorithm computes it once.
            assert_eq!(digest_file(&path).unwrap().0, Digests::md5_only(digests.md5.clone()));
            let twice =
                digest_file_with(&path, &[Algorithm::Sha256, Algorithm::Sha256, Algorithm::Md5]).unwrap().0;
            assert_eq!(twice.others.len(), 1);
            std::fs::remove_file(&path).unwrap();
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn other_algorithms_are_spread_over_the_threads_each_once_and_agree_with_one_thread() {
        for threads in [1, 2, 3, 8] {
            let groups = groups_of(&Algorithm::ALL[1..], threads);
            // Four costly ones (sha-1, sha-256, sha-512, blake3), the two CRCs with the first.
            assert_eq!(groups.len(), threads.min(4), "{threads} threads");
            let mut names: Vec<Algorithm> =
                groups.into_iter().flatten().map(|hasher| hasher.finish().0).collect();
            names.sort_unstable();
            assert_eq!(names, Algorithm::ALL[1..], "each once, {threads} threads");
        }
        assert_eq!(groups_of(&[Algorithm::Crc32c, Algorithm::Crc64Nvme], 4).len(), 1, "the CRCs alone: one");
        assert!(groups_of(&[], 4).is_empty());

        // The same digests whatever the number of threads, through the overlapped read.
        let dir = std::env::temp_dir().join(format!("md5-hash-threads-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let bytes: Vec<u8> = (0..5_000_003u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let one = digest_file_on(&path, Algorithm::ALL, 1, &HashProgress::default()).unwrap();
        for threads in [2, 3, 8] {
            assert_eq!(
                digest_file_on(&path, Algorithm::ALL, threads, &HashProgress::default()).unwrap(),
                one,
                "{threads} threads"
            );
        }
        assert_eq!(one.1, bytes.len() as u64);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_watched_hash_counts_its_bytes_and_a_stopped_one_ends_without_hanging() {
        let dir = std::env::temp_dir().join(format!("md5-hash-stop-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        std::fs::write(&path, vec![7u8; 3_000_001]).unwrap();
        for algorithms in [&[][..], &[Algorithm::Sha256, Algorithm::Crc32c][..]] {
            let progress = HashProgress::default();
            let (_, size) = digest_file_watched(&path, algorithms, &progress).unwrap();
            assert_eq!((size, progress.bytes()), (3_000_001, 3_000_001));
            // Stopped before it starts: it ends at the first buffer, whatever the threads hold.
            let stopped = HashProgress::default();
            stopped.stop();
            let err = digest_file_watched(&path, algorithms, &stopped).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::Interrupted);
            assert!(stopped.bytes() <= READ_BUFFER_BYTES as u64, "{} bytes", stopped.bytes());
        }
        // A small file (read in turn) stops too.
        std::fs::write(&path, b"small").unwrap();
        let stopped = HashProgress::default();
        stopped.stop();
        assert_eq!(digest_file_watched(&path, &[], &stopped).unwrap_err().kind(), io::ErrorKind::Interrupted);
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn groups_of(algorithms: &[Algorithm], threads: usize) -> Vec<Vec<Hasher>> {
        groups(algorithms.iter().filter_map(|&algorithm| Hasher::new(algorithm)).collect(), threads)
    }
}
