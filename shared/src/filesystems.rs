//! What kind of filesystem holds the upload volume, from `statfs(2)`'s `f_type` (the numbers of
//! `linux/magic.h`): where the worker runs a small file's operations inline (`worker::volume`),
//! and which files are written and read past the page cache (the api's `storage::direct`, the
//! worker's `direct_read`), and the flag that does the latter.

use std::os::fd::AsFd;

/// Local filesystems on a disk of their own: ext2/3/4, XFS, Btrfs, F2FS, bcachefs and ZFS.
const LOCAL_DISK: [u64; 6] = [0xEF53, 0x5846_5342, 0x9123_683E, 0xF2F5_2010, 0xCA45_1A4E, 0x2FC1_2FC1];

/// Local filesystems without one: tmpfs (memory) and overlayfs (a container's own layer).
const LOCAL_OTHER: [u64; 2] = [0x0102_1994, 0x794C_7630];

/// Whether a filesystem of type `f_type` is local: its operations take microseconds, never a
/// round trip to a server that may hang.
pub fn is_local(f_type: u64) -> bool {
    LOCAL_DISK.contains(&f_type) || LOCAL_OTHER.contains(&f_type)
}

/// Whether a filesystem of type `f_type` is local and on a disk: a direct read or write there
/// goes to the device itself. (On a network filesystem each direct write would be a round trip
/// to the server; on tmpfs the bytes are in memory whichever way they are written.)
pub fn is_local_disk(f_type: u64) -> bool {
    LOCAL_DISK.contains(&f_type)
}

/// Whether `file` lies on a local disk filesystem ([`is_local_disk`]); `false` if `fstatfs`
/// fails.
pub fn on_local_disk(file: impl AsFd) -> bool {
    #[allow(clippy::unnecessary_cast, reason = "f_type's width differs between targets")]
    rustix::fs::fstatfs(file).is_ok_and(|stats| is_local_disk(stats.f_type as u64))
}

/// The alignment of a direct read's or write's memory, file offset and length: every logical
/// block size Linux devices use (512 or 4096) divides it.
pub const DIRECT_ALIGN: usize = 4096;

/// Sets or clears `O_DIRECT` on `file` (on its open file description, which its clones share).
pub fn set_direct(file: impl AsFd, direct: bool) -> std::io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(&file)?;
    let wanted = if direct { flags | rustix::fs::OFlags::DIRECT } else { flags - rustix::fs::OFlags::DIRECT };
    if wanted != flags {
        rustix::fs::fcntl_setfl(&file, wanted)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_filesystems_are_known_and_network_ones_are_not() {
        assert!(is_local(0xEF53) && is_local_disk(0xEF53), "ext4");
        assert!(is_local(0x5846_5342) && is_local_disk(0x5846_5342), "xfs");
        assert!(is_local(0x0102_1994) && !is_local_disk(0x0102_1994), "tmpfs: local, no disk");
        assert!(is_local(0x794C_7630) && !is_local_disk(0x794C_7630), "overlayfs: local, no disk");
        for network in [0x6969_u64, 0xFF53_4D42, 0xFE53_4D42, 0x6573_5546, 0x0102_1997, 0x00C3_6400] {
            assert!(
                !is_local(network) && !is_local_disk(network),
                "{network:#x}: NFS, CIFS, SMB2, FUSE, 9p, Ceph"
            );
        }
    }
}
