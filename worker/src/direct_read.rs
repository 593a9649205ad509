//! Reading a large upload past the page cache (`O_DIRECT`).
//!
//! The api writes a large upload's whole blocks directly to the device (its `storage::direct`),
//! so they are not in this host's page cache, and on another host they never were. A buffered
//! read would allocate a page-cache page for every 4 KiB and copy out of it: 0.12–0.47 s of CPU a
//! GiB on the 2-core hosts of BENCHMARKS.md, taken from the hash it feeds. A direct read of
//! 1 MiB has the device fill the buffer itself: 0.04–0.05 s a GiB, at about 2 GB/s, faster than
//! the hash (small direct reads are slower: 64 KiB ones ran at 0.7 GB/s, hence the block size).
//!
//! Only aligned reads go directly: an aligned buffer ([`Block`]), at an aligned offset, of an
//! aligned length, on a local disk filesystem (`shared::filesystems`: on a network one each
//! direct read would be a round trip to the server). The rest (the bytes past the last whole block of a range,
//! everything on any other filesystem or one that refuses the flag) is read as before, the flag
//! cleared first.

use std::fs::File;
use std::io::{self, Read, Seek};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use shared::filesystems::{self, DIRECT_ALIGN, set_direct};

/// Bytes of one direct read.
pub(crate) const DIRECT_BLOCK_BYTES: usize = 1024 * 1024;

/// A read buffer whose bytes start at an aligned address; derefs to the bytes read into it.
pub(crate) struct Block {
    bytes: Vec<u8>,
    start: usize,
    size: usize,
    len: usize,
}

/// Direct blocks kept for the next range once their hash is done: a followed upload is hashed
/// a range at a time (8 MiB or so each), and new blocks for every range would be fresh memory,
/// which the kernel zeroes and faults in page by page (half a GiB of it for each GiB hashed).
static SPARE_BLOCKS: Mutex<Vec<(Vec<u8>, usize)>> = Mutex::new(Vec::new());

/// Most blocks [`SPARE_BLOCKS`] keeps: those of two hashes at once with other algorithms.
const MAX_SPARE_BLOCKS: usize = 16;

impl Block {
    /// An empty buffer of `size` bytes, its first byte aligned for a direct read (a spare one of
    /// [`DIRECT_BLOCK_BYTES`] if there is one).
    pub(crate) fn new(size: usize) -> Block {
        if size == DIRECT_BLOCK_BYTES {
            let spare = SPARE_BLOCKS.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop();
            if let Some((bytes, start)) = spare {
                return Block { bytes, start, size, len: 0 };
            }
        }
        let mut bytes = vec![0u8; size + DIRECT_ALIGN];
        let start = bytes.as_mut_ptr().align_offset(DIRECT_ALIGN);
        let start = if start < DIRECT_ALIGN { start } else { 0 };
        Block { bytes, start, size, len: 0 }
    }

    /// Its whole room, whatever was read into it before.
    fn room(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + self.size]
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if self.size == DIRECT_BLOCK_BYTES {
            let mut spare = SPARE_BLOCKS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if spare.len() < MAX_SPARE_BLOCKS {
                spare.push((std::mem::take(&mut self.bytes), self.start));
            }
        }
    }
}

impl std::ops::Deref for Block {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[self.start..self.start + self.len]
    }
}

/// Reads the next `length` bytes of a file, from its position, into [`Block`]s: directly where
/// the rules allow it and `direct` asked for it, else through the page cache.
pub(crate) struct BlockReader<'a> {
    file: &'a File,
    left: u64,
    position: u64,
    direct: bool,
    /// Where reading must stop for now, when the file is still being written.
    frontier: Option<Until<'a>>,
}

/// How far into a file still being written its bytes may be read: those announced as written
/// and flushed. It only grows; a reader that reaches it waits a little for it to grow again,
/// unless the upload has ended.
#[derive(Default)]
pub(crate) struct Frontier {
    /// The bytes announced, and whether the upload has ended (none will follow).
    bytes: Mutex<(u64, bool)>,
    grew: Condvar,
}

impl Frontier {
    /// Moves it to `bytes` if that is further, waking a reader waiting for it.
    pub(crate) fn advance(&self, bytes: u64) {
        let mut frontier = self.bytes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if bytes > frontier.0 {
            frontier.0 = bytes;
            self.grew.notify_all();
        }
    }

    /// The upload has ended (at `bytes`, if it completed): a reader that reaches the frontier
    /// no longer waits there.
    pub(crate) fn end(&self, bytes: Option<u64>) {
        let mut frontier = self.bytes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        frontier.0 = frontier.0.max(bytes.unwrap_or(0));
        frontier.1 = true;
        self.grew.notify_all();
    }

    /// Where it is now.
    pub(crate) fn get(&self) -> u64 {
        self.bytes.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).0
    }

    /// Waits until it is past `position`, the upload ends or `deadline` passes; gives where it
    /// is then.
    fn wait_past(&self, position: u64, deadline: Instant) -> u64 {
        let frontier = self.bytes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let linger = deadline.saturating_duration_since(Instant::now());
        let (frontier, _) = self
            .grew
            .wait_timeout_while(frontier, linger, |(bytes, ended)| *bytes <= position && !*ended)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        frontier.0
    }
}

/// A [`Frontier`] that a [`BlockReader`] stops at, and how long it waits there for more.
#[derive(Clone, Copy)]
pub(crate) struct Until<'a> {
    /// The frontier.
    pub frontier: &'a Frontier,
    /// How long a reader that has reached it waits for it to move before its range ends.
    pub linger: Duration,
    /// When the range ends in any case, so that its caller looks up (a heartbeat, a stop).
    pub deadline: Instant,
}

impl<'a> BlockReader<'a> {
    /// A reader of the next `length` bytes of `file` (`u64::MAX`: to its end), direct if
    /// `direct` and the filesystem allows it. The flag is set or cleared on the file either way,
    /// whatever an earlier reader left.
    pub(crate) fn new(file: &'a File, length: u64, direct: bool) -> io::Result<Self> {
        let position = (&mut &*file).stream_position()?;
        let direct = direct
            && position.is_multiple_of(DIRECT_ALIGN as u64)
            && filesystems::on_local_disk(file)
            && set_direct(file, true).is_ok();
        if !direct {
            set_direct(file, false)?;
        }
        Ok(BlockReader { file, left: length, position, direct, frontier: None })
    }

    /// The same reader, stopping at `until`'s frontier (as well as after `length` bytes): a
    /// range that goes on as long as announcements keep coming, ending when none came for
    /// `until.linger` or at `until.deadline`.
    pub(crate) fn until(mut self, until: Until<'a>) -> Self {
        self.frontier = Some(until);
        self
    }

    /// Whether it reads directly (and so wants blocks of [`DIRECT_BLOCK_BYTES`]).
    pub(crate) fn is_direct(&self) -> bool {
        self.direct
    }

    /// Fills `block` (up to its size, fewer where the range or the file ends); gives the bytes
    /// read, 0 at the end.
    pub(crate) fn fill(&mut self, block: &mut Block) -> io::Result<usize> {
        block.len = 0;
        let mut want = usize::try_from(self.left).unwrap_or(usize::MAX).min(block.size);
        if let Some(until) = self.frontier
            && want > 0
        {
            let now = Instant::now();
            if now >= until.deadline {
                return Ok(0);
            }
            let mut frontier = until.frontier.get();
            if frontier <= self.position {
                frontier = until.frontier.wait_past(self.position, (now + until.linger).min(until.deadline));
            }
            let ready = usize::try_from(frontier.saturating_sub(self.position)).unwrap_or(usize::MAX);
            // A direct reader takes whole aligned lengths while it can, so that it stays direct.
            let aligned = ready - ready % DIRECT_ALIGN;
            want = want.min(if self.direct && aligned > 0 { aligned } else { ready });
        }
        if want == 0 {
            return Ok(0);
        }
        let room = &mut block.room()[..want];
        let aligned = want.is_multiple_of(DIRECT_ALIGN)
            && self.position.is_multiple_of(DIRECT_ALIGN as u64)
            && room.as_ptr().align_offset(DIRECT_ALIGN) == 0;
        if self.direct && !aligned {
            set_direct(self.file, false)?;
            self.direct = false;
        }
        let read = if self.direct {
            // One call: a short direct read is the file's end, and what follows it is read
            // buffered, at the unaligned position it left.
            match (&mut &*self.file).read(room) {
                Err(err) if err.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                    set_direct(self.file, false)?;
                    self.direct = false;
                    read_full(&mut &*self.file, room)?
                }
                read => read?,
            }
        } else {
            read_full(&mut &*self.file, room)?
        };
        block.len = read;
        self.left -= read as u64;
        self.position += read as u64;
        Ok(read)
    }
}

/// Reads until `buffer` is full or the file ends; returns the bytes read.
pub(crate) fn read_full(file: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `size` known bytes in a folder of its own (removed by the caller), open.
    fn file_of(size: usize) -> (std::path::PathBuf, Vec<u8>, File) {
        let dir = std::env::temp_dir().join(format!("md5-worker-direct-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("file");
        let bytes: Vec<u8> = (0..size).map(|n| (n % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        (dir, bytes, file)
    }

    /// Ranges read directly, then buffered past their last whole block, give every byte in
    /// order, wherever they start and end.
    #[test]
    fn every_byte_is_read_once_direct_or_not() {
        let (dir, bytes, file) = file_of(3 * DIRECT_BLOCK_BYTES + 12_345);
        let mut seen = Vec::new();
        let mut block = Block::new(DIRECT_BLOCK_BYTES);
        // An aligned range of two blocks and a bit, an unaligned one, then the rest.
        for length in [2 * DIRECT_BLOCK_BYTES as u64 + 8192, 5000, u64::MAX] {
            let mut reader = BlockReader::new(&file, length, true).unwrap();
            let mut got = 0u64;
            while reader.fill(&mut block).unwrap() > 0 {
                seen.extend_from_slice(&block);
                got += block.len() as u64;
            }
            assert!(got == length || length == u64::MAX, "{got} of {length}");
        }
        assert_eq!(seen.len(), bytes.len());
        assert!(seen == bytes, "the bytes read differ from the file's");

        // The whole file from its start: the last direct read meets its unaligned end.
        (&mut &file).rewind().unwrap();
        let mut reader = BlockReader::new(&file, u64::MAX, true).unwrap();
        let mut whole = Vec::new();
        while reader.fill(&mut block).unwrap() > 0 {
            whole.extend_from_slice(&block);
        }
        assert!(whole == bytes, "{} bytes read of {}", whole.len(), bytes.len());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A reader held at a frontier reads only the bytes before it, goes on as it moves, ends
    /// when it stays put for the linger or at the range's deadline, and stops waiting at once
    /// when the upload ends.
    #[test]
    fn a_reader_at_a_frontier_reads_only_announced_bytes_and_follows_them() {
        let (dir, bytes, file) = file_of(4 * DIRECT_BLOCK_BYTES + 777);
        let frontier = Frontier::default();
        frontier.advance(DIRECT_BLOCK_BYTES as u64 + 4096);
        let until = |linger| Until {
            frontier: &frontier,
            linger,
            deadline: Instant::now() + Duration::from_secs(30),
        };
        let mut block = Block::new(DIRECT_BLOCK_BYTES);
        let mut seen = Vec::new();

        // Up to the frontier, then the linger passes with nothing new: the range ends there.
        let started = Instant::now();
        let mut reader =
            BlockReader::new(&file, u64::MAX, true).unwrap().until(until(Duration::from_millis(50)));
        while reader.fill(&mut block).unwrap() > 0 {
            seen.extend_from_slice(&block);
        }
        assert_eq!(seen.len(), DIRECT_BLOCK_BYTES + 4096);
        assert!(started.elapsed() >= Duration::from_millis(50), "it waited for the frontier");

        // The frontier moves while a reader waits at it: the same range goes on.
        std::thread::scope(|scope| {
            let mut reader =
                BlockReader::new(&file, u64::MAX, true).unwrap().until(until(Duration::from_secs(20)));
            scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(100));
                frontier.advance(3 * DIRECT_BLOCK_BYTES as u64);
                std::thread::sleep(Duration::from_millis(100));
                // The upload completes: the last bytes are readable, and nobody waits after them.
                frontier.end(Some(bytes.len() as u64));
            });
            let started = Instant::now();
            while reader.fill(&mut block).unwrap() > 0 {
                seen.extend_from_slice(&block);
            }
            assert!(started.elapsed() < Duration::from_secs(10), "the end stopped the wait");
        });
        assert_eq!(seen.len(), bytes.len());
        assert!(seen == bytes, "the bytes read differ from the file's");

        // However long it may linger, a range ends at its deadline.
        let waiting = Frontier::default();
        (&mut &file).rewind().unwrap();
        let started = Instant::now();
        let until = Until {
            frontier: &waiting,
            linger: Duration::from_secs(20),
            deadline: Instant::now() + Duration::from_millis(100),
        };
        let mut reader = BlockReader::new(&file, u64::MAX, true).unwrap().until(until);
        assert_eq!(reader.fill(&mut block).unwrap(), 0, "nothing announced, nothing read");
        assert!(started.elapsed() < Duration::from_secs(10), "the deadline ended the wait");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
