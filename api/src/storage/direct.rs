//! Writing an upload's whole blocks past the page cache (`O_DIRECT`).
//!
//! A buffered `write` copies every byte into newly allocated page-cache pages, and on a virtual
//! machine that copy is most of what a large upload costs the api: 0.6–1.4 s of CPU a GiB in the
//! benchmark on the 2-core hosts of BENCHMARKS.md (2.7 s for `dd` after a pause), against 0.1 s
//! for the same bytes written directly, which the device takes from the write buffer itself. The CPU this frees is the hash's: a worker on the
//! same host hashes while the upload arrives.
//!
//! Only a whole block goes past the cache: from a buffer whose memory is aligned
//! ([`WriteBuffer::aligned`]), at an aligned offset, of an aligned length, and never the last
//! write (which is flushed as before). Everything else (a small upload, the tail of a large one,
//! a partial block written because the client is slow) is written as before, and so is every
//! byte on a filesystem that is not a local disk (`shared::filesystems`: on a network one each
//! direct write would wait for the server). The flag is set on the file for a direct write and
//! cleared for the next buffered one (`fcntl`), and where the filesystem refuses it the file is
//! written buffered from then on: the bytes on disk, and the
//! `fdatasync` that makes them durable before the row exists, are the same either way.

use std::io::{self, Write as _};

use shared::filesystems;

pub use filesystems::DIRECT_ALIGN;

/// An upload's write buffer: a `Vec` whose bytes start at an offset into it, so that a buffer
/// made with [`WriteBuffer::aligned`] has its first byte aligned for a direct write.
#[derive(Default)]
pub struct WriteBuffer {
    bytes: Vec<u8>,
    start: usize,
}

impl WriteBuffer {
    /// An empty buffer of `block` bytes whose first byte is aligned to [`DIRECT_ALIGN`], holding
    /// `head` to begin with (`head` no longer than `block`).
    pub fn aligned(block: usize, head: &[u8]) -> Self {
        let mut bytes: Vec<u8> = Vec::with_capacity(block + DIRECT_ALIGN);
        let start = bytes.as_ptr().align_offset(DIRECT_ALIGN);
        let start = if start < DIRECT_ALIGN { start } else { 0 };
        bytes.resize(start, 0);
        bytes.extend_from_slice(head);
        WriteBuffer { bytes, start }
    }

    /// The bytes held.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[self.start..]
    }

    /// How many bytes are held.
    pub fn len(&self) -> usize {
        self.bytes.len() - self.start
    }

    /// Whether no byte is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many bytes it can hold without growing.
    pub fn capacity(&self) -> usize {
        self.bytes.capacity() - self.start
    }

    /// Whether its bytes start at an aligned address.
    fn is_aligned(&self) -> bool {
        self.as_slice().as_ptr().align_offset(DIRECT_ALIGN) == 0
    }

    /// Adds `bytes` (growing the buffer, which a buffer made [aligned](WriteBuffer::aligned) to
    /// its block never needs).
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    /// Grows an unaligned buffer's room to `capacity` bytes (it is never shrunk).
    pub fn reserve_exact(&mut self, capacity: usize) {
        self.bytes.reserve_exact(capacity.saturating_sub(self.len()));
    }

    /// Empties it, keeping its memory (and alignment).
    pub fn clear(&mut self) {
        self.bytes.truncate(self.start);
    }
}

/// Whether an upload's file is written directly now, and whether it may be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DirectMode {
    /// Buffered, and direct writes are allowed.
    #[default]
    Off,
    /// `O_DIRECT` is set on the file.
    On,
    /// The filesystem refused a direct write: buffered from now on.
    Refused,
}

/// Writes all of `buffer` at `offset` (the file's position), directly when it is a whole block
/// (`whole`) that the alignment rules allow, else buffered; returns the mode the file is left in.
pub fn write_block(
    file: &mut std::fs::File,
    buffer: &WriteBuffer,
    offset: u64,
    whole: bool,
    mode: DirectMode,
) -> io::Result<DirectMode> {
    let bytes = buffer.as_slice();
    let aligned = whole
        && !bytes.is_empty()
        && bytes.len().is_multiple_of(DIRECT_ALIGN)
        && offset.is_multiple_of(DIRECT_ALIGN as u64)
        && buffer.is_aligned();
    let mode = match (aligned, mode) {
        (true, DirectMode::Off) if filesystems::on_local_disk(&*file) => {
            set_direct(file, true).unwrap_or(DirectMode::Refused)
        }
        (true, DirectMode::Off) => DirectMode::Refused,
        (false, DirectMode::On) => set_direct(file, false)?,
        (_, mode) => mode,
    };
    if mode != DirectMode::On {
        file.write_all(bytes)?;
        return Ok(mode);
    }
    match file.write(bytes) {
        Ok(written) if written == bytes.len() => Ok(DirectMode::On),
        // A short direct write leaves the rest for a buffered one, at the position it reached.
        Ok(written) => {
            set_direct(file, false)?;
            file.write_all(&bytes[written..])?;
            Ok(DirectMode::Off)
        }
        Err(err) if err.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
            // The filesystem or device does not take this write directly: nothing was written.
            set_direct(file, false)?;
            file.write_all(bytes)?;
            Ok(DirectMode::Refused)
        }
        Err(err) => Err(err),
    }
}

/// Clears `O_DIRECT` on a file that an earlier writer may have left it set on (a resumable
/// upload's file is shared by its appends).
pub fn clear_direct(file: &std::fs::File) -> io::Result<()> {
    filesystems::set_direct(file, false)
}

/// Sets or clears `O_DIRECT` on `file`; gives the mode it is then in.
fn set_direct(file: &std::fs::File, direct: bool) -> io::Result<DirectMode> {
    filesystems::set_direct(file, direct)?;
    Ok(if direct { DirectMode::On } else { DirectMode::Off })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whole aligned blocks go past the cache, the tail does not, and the file holds every byte
    /// in order either way.
    #[test]
    fn whole_blocks_are_written_directly_and_the_file_holds_every_byte() {
        let dir = std::env::temp_dir().join(format!("md5-api-direct-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("file");
        let mut file = std::fs::File::create(&path).unwrap();
        let block = 64 * 1024;
        let bytes: Vec<u8> = (0..3 * block + 1000).map(|n| (n % 251) as u8).collect();

        let mut mode = DirectMode::Off;
        let mut offset = 0u64;
        let mut modes = Vec::new();
        for chunk in bytes.chunks(block) {
            let buffer = WriteBuffer::aligned(block, chunk);
            assert!(buffer.is_aligned());
            mode = write_block(&mut file, &buffer, offset, chunk.len() == block, mode).unwrap();
            modes.push(mode);
            offset += chunk.len() as u64;
        }
        // On a local disk the whole blocks went directly and the tail did not; elsewhere (a
        // temporary folder on tmpfs) every write was buffered.
        if filesystems::on_local_disk(&file) {
            assert_eq!(modes, [DirectMode::On, DirectMode::On, DirectMode::On, DirectMode::Off]);
        } else {
            assert_eq!(modes, [DirectMode::Refused; 4]);
        }
        drop(file);
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
