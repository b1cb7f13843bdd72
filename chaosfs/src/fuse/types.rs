//! Plain values the file system hands to the protocol layer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::abi;

/// Pages of the largest write the kernel is offered (INIT's `max_pages`): its
/// `max_pages_limit` default.
pub const MAX_PAGES: u16 = 256;
/// Largest write the kernel is offered: [`MAX_PAGES`] pages, 1 MiB.
pub const MAX_WRITE: u32 = MAX_PAGES as u32 * 4096;
/// Largest read (mount option `max_read`): one page less, so the reply's header and its data fit
/// a pipe of the default `pipe-max-size` (1 MiB, 256 pages) and reads can be spliced.
pub const MAX_READ: u32 = MAX_WRITE - 4096;

/// A positive errno value sent to the kernel as a failed reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(i32);

impl Errno {
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const EFAULT: Errno = Errno(libc::EFAULT);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const ENOMEM: Errno = Errno(libc::ENOMEM);
    pub const ENOSYS: Errno = Errno(libc::ENOSYS);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const ENOTTY: Errno = Errno(libc::ENOTTY);
    pub const ESTALE: Errno = Errno(libc::ESTALE);

    /// An errno from a raw value; anything outside `1..4096` becomes EIO (the kernel would
    /// reject it).
    pub fn from_i32(e: i32) -> Errno {
        if (1..4096).contains(&e) {
            Errno(e)
        } else {
            Errno(libc::EIO)
        }
    }

    /// The raw positive value.
    pub fn code(self) -> i32 {
        self.0
    }
}

/// A FUSE node id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct INodeNo(pub u64);

/// A file handle this server gave the kernel at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileHandle(pub u64);

/// An inode generation number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation(pub u64);

/// A time to set, or "now".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeOrNow {
    SpecificTime(SystemTime),
    Now,
}

/// File types, as in `st_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    NamedPipe,
    CharDevice,
    BlockDevice,
    Directory,
    RegularFile,
    Symlink,
    Socket,
}

impl FileType {
    /// The `S_IFMT` bits.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileType::NamedPipe => libc::S_IFIFO,
            FileType::CharDevice => libc::S_IFCHR,
            FileType::BlockDevice => libc::S_IFBLK,
            FileType::Directory => libc::S_IFDIR,
            FileType::RegularFile => libc::S_IFREG,
            FileType::Symlink => libc::S_IFLNK,
            FileType::Socket => libc::S_IFSOCK,
        }
    }

    /// The `d_type` of a directory entry.
    pub fn dtype(self) -> u32 {
        u32::from(match self {
            FileType::NamedPipe => libc::DT_FIFO,
            FileType::CharDevice => libc::DT_CHR,
            FileType::BlockDevice => libc::DT_BLK,
            FileType::Directory => libc::DT_DIR,
            FileType::RegularFile => libc::DT_REG,
            FileType::Symlink => libc::DT_LNK,
            FileType::Socket => libc::DT_SOCK,
        })
    }
}

/// Attributes of a file as the file system reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileAttr {
    pub ino: INodeNo,
    pub size: u64,
    pub blocks: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    /// Birth time (only statx replies carry it; `UNIX_EPOCH` means unknown).
    pub crtime: SystemTime,
    pub kind: FileType,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    /// Device number in the kernel's `new_encode_dev` form.
    pub rdev: u32,
    pub blksize: u32,
    pub flags: u32,
}

/// Seconds and nanoseconds since the epoch (negative seconds before it).
pub(crate) fn time_parts(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (secs_i64(d), d.subsec_nanos()),
        Err(e) => {
            // Before the epoch: borrow a second so the nanoseconds stay positive.
            let d = e.duration();
            match d.subsec_nanos() {
                0 => (-secs_i64(d), 0),
                ns => (-secs_i64(d) - 1, 1_000_000_000 - ns),
            }
        }
    }
}

/// Whole seconds of a distance from the epoch. A `SystemTime` is a `timespec` with `i64`
/// seconds, so the distance always fits; `i64::MAX` is only a formal fallback.
fn secs_i64(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl FileAttr {
    pub(crate) fn to_abi(self) -> abi::Attr {
        let (atime, atimensec) = time_parts(self.atime);
        let (mtime, mtimensec) = time_parts(self.mtime);
        let (ctime, ctimensec) = time_parts(self.ctime);
        // `fuse_attr` declares the times `uint64_t` but the kernel reads them back as signed
        // `time64_t`: the bits of the signed seconds are what it wants.
        abi::Attr {
            ino: self.ino.0,
            size: self.size,
            blocks: self.blocks,
            atime: atime.cast_unsigned(),
            mtime: mtime.cast_unsigned(),
            ctime: ctime.cast_unsigned(),
            atimensec,
            mtimensec,
            ctimensec,
            mode: self.kind.mode_bits() | u32::from(self.perm),
            nlink: self.nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: self.rdev,
            blksize: self.blksize,
            flags: self.flags,
        }
    }
}

/// A cache validity as the kernel wants it: seconds and nanoseconds.
pub(crate) fn valid(d: &Duration) -> (u64, u32) {
    (d.as_secs(), d.subsec_nanos())
}

/// `fuse_open_out.open_flags` bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FopenFlags(u32);

impl FopenFlags {
    pub const FOPEN_DIRECT_IO: FopenFlags = FopenFlags(abi::fopen::DIRECT_IO);
    pub const FOPEN_NOFLUSH: FopenFlags = FopenFlags(abi::fopen::NOFLUSH);
    pub const FOPEN_PARALLEL_DIRECT_WRITES: FopenFlags =
        FopenFlags(abi::fopen::PARALLEL_DIRECT_WRITES);

    pub const fn empty() -> FopenFlags {
        FopenFlags(0)
    }

    pub fn bits(self) -> u32 {
        self.0
    }

    pub const fn union(self, o: FopenFlags) -> FopenFlags {
        FopenFlags(self.0 | o.0)
    }
}

impl std::ops::BitOr for FopenFlags {
    type Output = FopenFlags;
    fn bitor(self, o: FopenFlags) -> FopenFlags {
        FopenFlags(self.0 | o.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_before_the_epoch_keep_nanoseconds_positive() {
        let t = UNIX_EPOCH - Duration::new(1, 250_000_000);
        assert_eq!(time_parts(t), (-2, 750_000_000));
        assert_eq!(time_parts(UNIX_EPOCH + Duration::new(5, 7)), (5, 7));
    }

    #[test]
    fn errno_out_of_range_becomes_eio() {
        assert_eq!(Errno::from_i32(0), Errno::EIO);
        assert_eq!(Errno::from_i32(-3), Errno::EIO);
        assert_eq!(Errno::from_i32(libc::ENOSPC).code(), libc::ENOSPC);
    }
}
