//! File system calls on fds: the `*at()` family, I/O, xattrs, directory streams, ioctls.
//!
//! Every function borrows the fds it uses (`BorrowedFd`), so an fd cannot be closed while a call
//! on it runs; names are `&CStr`, so the kernel always sees a NUL-terminated string. The calls
//! go through rustix; raw `libc` remains only where rustix has no call (each says why).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};
pub(crate) use rustix::fs::{Stat, StatVfs, Statx, Timespec, Timestamps};

use super::{cvt, cvt_long};

/// The bits of a C `int` flag word (`O_*`, `AT_*`, …) as the unsigned word rustix takes.
fn bits(flags: i32) -> u32 {
    u32::from_ne_bytes(flags.to_ne_bytes())
}

/// `openat(2)`. `O_CLOEXEC` is always added.
pub(crate) fn openat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: i32,
    mode: u32,
) -> io::Result<OwnedFd> {
    let flags = OFlags::from_bits_retain(bits(flags)) | OFlags::CLOEXEC;
    Ok(rfs::openat(dir, name, flags, Mode::from_bits_retain(mode))?)
}

/// The whole content of a small file (a `/proc` status file) at `name` under `dir`.
pub(crate) fn read_small(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let fd = openat(dir, name, libc::O_RDONLY, 0)?;
    let mut out = Vec::with_capacity(2048);
    std::fs::File::from(fd).read_to_end(&mut out)?;
    Ok(out)
}

/// An `O_PATH` fd of the parent of directory `dir`, if reaching it crosses no mount point
/// (`openat2` with `RESOLVE_NO_XDEV`; `EXDEV` otherwise — also when a mount covers the parent,
/// as ChaosFS covers the directory it serves).
pub(crate) fn parent_same_mount(dir: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let flags = OFlags::PATH | OFlags::CLOEXEC;
    let resolve = rfs::ResolveFlags::NO_XDEV;
    Ok(rfs::openat2(dir, c"..", flags, Mode::empty(), resolve)?)
}

/// The current working directory as a directory "fd" for the `*at()` calls (`AT_FDCWD`).
pub(crate) fn cwd() -> BorrowedFd<'static> {
    rfs::CWD
}

/// `open(2)` of an absolute path (only used before serving starts).
pub(crate) fn open(path: &CStr, flags: i32) -> io::Result<OwnedFd> {
    let flags = OFlags::from_bits_retain(bits(flags)) | OFlags::CLOEXEC;
    Ok(rfs::open(path, flags, Mode::empty())?)
}

/// `fstatat(2)`.
pub(crate) fn fstatat(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<Stat> {
    Ok(rfs::statat(
        dir,
        name,
        AtFlags::from_bits_retain(bits(flags)),
    )?)
}

/// Stat what an fd refers to (works on `O_PATH` fds, including symlinks opened with
/// `O_NOFOLLOW`).
pub(crate) fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    fstatat(fd, c"", libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW)
}

/// `statx(2)` of what an fd refers to (basic stats plus birth time).
pub(crate) fn statx(fd: BorrowedFd<'_>) -> io::Result<Statx> {
    let flags = AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW;
    let mask = rfs::StatxFlags::BASIC_STATS | rfs::StatxFlags::BTIME;
    Ok(rfs::statx(fd, c"", flags, mask)?)
}

/// `struct file_handle` with room for `MAX_HANDLE_SZ` bytes (libc's has a flexible array).
#[repr(C)]
struct FileHandleBuf {
    handle_bytes: u32,
    handle_type: libc::c_int,
    f_handle: [u8; MAX_HANDLE],
}

const MAX_HANDLE: usize = 128; // MAX_HANDLE_SZ

/// The file system's file handle of what an fd refers to (`name_to_handle_at(2)` with
/// `AT_EMPTY_PATH`, so it works on `O_PATH` fds and on symlinks): its type and bytes. File
/// systems put the inode's generation in it (ext4, xfs, btrfs, tmpfs), so it changes when an
/// inode number is reused. Raw: rustix has no such call.
pub(crate) fn file_handle(fd: BorrowedFd<'_>) -> io::Result<(i32, Box<[u8]>)> {
    let mut h = FileHandleBuf {
        handle_bytes: 128,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `h` is a `struct file_handle` whose `handle_bytes` (128) is the size of the
    // `f_handle` array that follows it, so the kernel writes at most that many bytes after the
    // header; `mount_id` is a live `int`; the name is a NUL-terminated empty string.
    cvt(unsafe {
        libc::name_to_handle_at(
            fd.as_raw_fd(),
            c"".as_ptr(),
            (&raw mut h).cast::<libc::file_handle>(),
            &raw mut mount_id,
            libc::AT_EMPTY_PATH,
        )
    })?;
    let n = usize::try_from(h.handle_bytes).map_or(MAX_HANDLE, |n| n.min(MAX_HANDLE));
    Ok((h.handle_type, h.f_handle[..n].into()))
}

/// `open_by_handle_at(2)` of a handle from [`file_handle`], on the file system of `mount`
/// (needs `CAP_DAC_READ_SEARCH`); `ESTALE` if the file is gone. `O_CLOEXEC` is always added.
pub(crate) fn open_by_handle(
    mount: BorrowedFd<'_>,
    (kind, bytes): (i32, &[u8]),
    flags: i32,
) -> io::Result<OwnedFd> {
    let mut h = FileHandleBuf {
        handle_bytes: 0,
        handle_type: kind,
        f_handle: [0; MAX_HANDLE],
    };
    let n = bytes.len().min(MAX_HANDLE);
    h.f_handle[..n].copy_from_slice(&bytes[..n]);
    h.handle_bytes = u32::try_from(n).unwrap_or(0);
    // SAFETY: `h` is a `struct file_handle` whose `handle_bytes` bytes of `f_handle` are
    // initialised (n ≤ 128, the array's size); the kernel only reads it. On success the
    // returned fd is new and owned by nobody else.
    let fd = cvt(unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            (&raw mut h).cast::<libc::file_handle>(),
            flags | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: `fd` was just returned by the kernel, is open, and nothing else owns it.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// `syncfs(2)`.
pub(crate) fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rfs::syncfs(fd)?)
}

/// `fstatvfs(3)`.
pub(crate) fn fstatfs(fd: BorrowedFd<'_>) -> io::Result<StatVfs> {
    Ok(rfs::fstatvfs(fd)?)
}

pub(crate) fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    Ok(rfs::mkdirat(dir, name, Mode::from_bits_retain(mode))?)
}

/// `mknodat(2)`; `mode` holds the file type and the permission bits.
pub(crate) fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32, dev: u64) -> io::Result<()> {
    let kind = rfs::FileType::from_raw_mode(mode);
    let perm = Mode::from_bits_retain(mode & !libc::S_IFMT);
    Ok(rfs::mknodat(dir, name, kind, perm, dev)?)
}

pub(crate) fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    Ok(rfs::symlinkat(target, dir, name)?)
}

pub(crate) fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<()> {
    Ok(rfs::unlinkat(
        dir,
        name,
        AtFlags::from_bits_retain(bits(flags)),
    )?)
}

pub(crate) fn renameat2(
    olddir: BorrowedFd<'_>,
    old: &CStr,
    newdir: BorrowedFd<'_>,
    new: &CStr,
    flags: u32,
) -> io::Result<()> {
    let flags = rfs::RenameFlags::from_bits_retain(flags);
    Ok(rfs::renameat_with(olddir, old, newdir, new, flags)?)
}

/// `linkat(fd, "", newdir, new, AT_EMPTY_PATH)`: a new name for the file `fd` refers to.
pub(crate) fn link_fd(fd: BorrowedFd<'_>, newdir: BorrowedFd<'_>, new: &CStr) -> io::Result<()> {
    Ok(rfs::linkat(fd, c"", newdir, new, AtFlags::EMPTY_PATH)?)
}

/// `readlinkat(2)` into a fresh buffer.
pub(crate) fn readlinkat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    Ok(rfs::readlinkat(dir, name, Vec::new())?.into_bytes())
}

/// `fchownat(2)`; `None` leaves that id unchanged.
pub(crate) fn fchownat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    uid: Option<u32>,
    gid: Option<u32>,
    flags: i32,
) -> io::Result<()> {
    let uid = uid.map(rustix::process::Uid::from_raw);
    let gid = gid.map(rustix::process::Gid::from_raw);
    let flags = AtFlags::from_bits_retain(bits(flags));
    Ok(rfs::chownat(dir, name, uid, gid, flags)?)
}

pub(crate) fn fchmodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    Ok(rfs::chmodat(
        dir,
        name,
        Mode::from_bits_retain(mode),
        AtFlags::empty(),
    )?)
}

pub(crate) fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    Ok(rfs::fchmod(fd, Mode::from_bits_retain(mode))?)
}

/// `utimensat(2)`; a time may be [`rfs::UTIME_NOW`]/[`rfs::UTIME_OMIT`] in `tv_nsec`.
pub(crate) fn utimensat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    times: &Timestamps,
    flags: i32,
) -> io::Result<()> {
    Ok(rfs::utimensat(
        dir,
        name,
        times,
        AtFlags::from_bits_retain(bits(flags)),
    )?)
}

pub(crate) fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> io::Result<()> {
    if i64::try_from(size).is_err() {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    }
    Ok(rfs::ftruncate(fd, size)?)
}

/// An offset the kernel takes as `loff_t` (signed): EINVAL past `i64::MAX`.
fn off(offset: u64) -> io::Result<u64> {
    i64::try_from(offset)
        .map(|_| offset)
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

pub(crate) fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    Ok(rustix::io::pread(fd, buf, off(offset)?)?)
}

pub(crate) fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> io::Result<usize> {
    Ok(rustix::io::pwrite(fd, buf, off(offset)?)?)
}

pub(crate) fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> io::Result<()> {
    Ok(if datasync {
        rfs::fdatasync(fd)
    } else {
        rfs::fsync(fd)
    }?)
}

/// A new anonymous memory file (`memfd_create`, close-on-exec): private to this process.
pub(crate) fn memfd(name: &CStr) -> io::Result<OwnedFd> {
    Ok(rfs::memfd_create(name, rfs::MemfdFlags::CLOEXEC)?)
}

pub(crate) fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    let mode = rfs::FallocateFlags::from_bits_retain(bits(mode));
    Ok(rfs::fallocate(fd, mode, off(offset)?, off(len)?)?)
}

/// `lseek(2)` with any `whence` the kernel knows (`SEEK_DATA`/`SEEK_HOLE` included); the offset
/// reaches the kernel with the same bits.
pub(crate) fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: i32) -> io::Result<i64> {
    let raw = u64::from_ne_bytes(offset.to_ne_bytes());
    let pos = match whence {
        libc::SEEK_SET => rfs::SeekFrom::Start(raw),
        libc::SEEK_CUR => rfs::SeekFrom::Current(offset),
        libc::SEEK_END => rfs::SeekFrom::End(offset),
        libc::SEEK_DATA => rfs::SeekFrom::Data(raw),
        libc::SEEK_HOLE => rfs::SeekFrom::Hole(raw),
        _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
    };
    let r = rfs::seek(fd, pos)?;
    i64::try_from(r).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))
}

/// `copy_file_range(2)`. No flags are defined (the kernel refuses any): EINVAL for any.
pub(crate) fn copy_file_range(
    fd_in: BorrowedFd<'_>,
    off_in: u64,
    fd_out: BorrowedFd<'_>,
    off_out: u64,
    len: usize,
    flags: u32,
) -> io::Result<usize> {
    if flags != 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let (mut off_in, mut off_out) = (off(off_in)?, off(off_out)?);
    Ok(rfs::copy_file_range(
        fd_in,
        Some(&mut off_in),
        fd_out,
        Some(&mut off_out),
        len,
    )?)
}

/// `getdents64(2)` into `buf`; returns the number of bytes filled (0 at end of directory).
/// Raw: rustix only offers `RawDir`, which borrows its buffer for its whole life, while a
/// directory handle keeps its unread entries between requests.
pub(crate) fn getdents64(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for `buf.len()` bytes; the kernel writes at most that many.
    let n = cvt_long(unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    })?;
    usize::try_from(n).map_err(|_| io::Error::from_raw_os_error(libc::EIO))
}

/// One entry parsed out of a `getdents64` buffer.
pub(crate) struct RawDirent<'a> {
    pub ino: u64,
    pub off: i64,
    pub typ: u8,
    pub name: &'a [u8],
    /// Length of the record in the buffer.
    pub reclen: usize,
}

/// Parse the `linux_dirent64` record at the start of `buf` (safe code: plain byte parsing).
pub(crate) fn parse_dirent(buf: &[u8]) -> Option<RawDirent<'_>> {
    // struct linux_dirent64 { u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
    const HDR: usize = 19;
    if buf.len() < HDR {
        return None;
    }
    let ino = u64::from_ne_bytes(buf[0..8].try_into().ok()?);
    let off = i64::from_ne_bytes(buf[8..16].try_into().ok()?);
    let reclen = usize::from(u16::from_ne_bytes(buf[16..18].try_into().ok()?));
    let typ = buf[18];
    if reclen < HDR || reclen > buf.len() {
        return None;
    }
    let raw = &buf[HDR..reclen];
    let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    Some(RawDirent {
        ino,
        off,
        typ,
        name: &raw[..len],
        reclen,
    })
}

/// `ioctl(fd, FS_IOC_GETFLAGS)`.
pub(crate) fn get_inode_flags(fd: BorrowedFd<'_>) -> io::Result<u32> {
    Ok(rfs::ioctl_getflags(fd)?.bits())
}

/// `ioctl(fd, FS_IOC_SETFLAGS)`.
pub(crate) fn set_inode_flags(fd: BorrowedFd<'_>, flags: u32) -> io::Result<()> {
    Ok(rfs::ioctl_setflags(
        fd,
        rfs::IFlags::from_bits_retain(flags),
    )?)
}

/// `ioctl(fd, FS_IOC_GETVERSION)`; the kernel writes an `int`. Raw: rustix has no such call.
pub(crate) fn get_inode_version(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut v: libc::c_int = 0;
    // SAFETY: FS_IOC_GETVERSION writes one `int` to the pointer, which points to a live c_int.
    cvt(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::FS_IOC_GETVERSION,
            &mut v as *mut libc::c_int,
        )
    })?;
    Ok(u32::from_ne_bytes(v.to_ne_bytes()))
}

/// `struct fsxattr` of `<linux/fs.h>` (28 bytes), as raw bytes.
pub(crate) type FsXattr = [u8; 28];

#[repr(C)]
struct FsXattrLayout {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

/// `FS_IOC_FSGETXATTR` = `_IOR('X', 31, struct fsxattr)`.
pub(crate) const FS_IOC_FSGETXATTR: libc::Ioctl = libc::_IOR::<FsXattrLayout>(b'X' as u32, 31);
/// `FS_IOC_FSSETXATTR` = `_IOW('X', 32, struct fsxattr)`.
pub(crate) const FS_IOC_FSSETXATTR: libc::Ioctl = libc::_IOW::<FsXattrLayout>(b'X' as u32, 32);

/// `ioctl(fd, FS_IOC_FSGETXATTR)`. Raw: rustix has no such call.
pub(crate) fn get_fsxattr(fd: BorrowedFd<'_>) -> io::Result<FsXattr> {
    let mut buf: FsXattr = [0; 28];
    // SAFETY: FS_IOC_FSGETXATTR writes one 28-byte `struct fsxattr` (size encoded in the
    // command) to the pointer, which points to a live 28-byte buffer.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSGETXATTR, buf.as_mut_ptr()) })?;
    Ok(buf)
}

/// `ioctl(fd, FS_IOC_FSSETXATTR)`. Raw: rustix has no such call.
pub(crate) fn set_fsxattr(fd: BorrowedFd<'_>, x: &FsXattr) -> io::Result<()> {
    // SAFETY: FS_IOC_FSSETXATTR reads one 28-byte `struct fsxattr` from the pointer, which
    // points to a live 28-byte buffer.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSSETXATTR, x.as_ptr()) }).map(drop)
}

/// `getxattr(2)` on a path (relative paths resolve against the calling thread's cwd; the
/// `/proc/self/fd` magic link is followed). With `buf` empty (as with every call here that
/// fills a buffer), returns the size of the value.
pub(crate) fn getxattr(path: &CStr, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // rustix answers 0 for an empty buffer; the size query is its own call.
    if buf.is_empty() {
        return Ok(rfs::getxattr_query(path, name)?);
    }
    Ok(rfs::getxattr(path, name, buf)?)
}

pub(crate) fn setxattr(path: &CStr, name: &CStr, value: &[u8], flags: i32) -> io::Result<()> {
    let flags = rfs::XattrFlags::from_bits_retain(bits(flags));
    Ok(rfs::setxattr(path, name, value, flags)?)
}

pub(crate) fn listxattr(path: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    if buf.is_empty() {
        return Ok(rfs::listxattr_query(path)?);
    }
    Ok(rfs::listxattr(path, buf)?)
}

pub(crate) fn removexattr(path: &CStr, name: &CStr) -> io::Result<()> {
    Ok(rfs::removexattr(path, name)?)
}

pub(crate) fn fgetxattr(fd: BorrowedFd<'_>, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    if buf.is_empty() {
        return Ok(rfs::fgetxattr_query(fd, name)?);
    }
    Ok(rfs::fgetxattr(fd, name, buf)?)
}

pub(crate) fn fsetxattr(
    fd: BorrowedFd<'_>,
    name: &CStr,
    value: &[u8],
    flags: i32,
) -> io::Result<()> {
    let flags = rfs::XattrFlags::from_bits_retain(bits(flags));
    Ok(rfs::fsetxattr(fd, name, value, flags)?)
}

pub(crate) fn flistxattr(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    if buf.is_empty() {
        return Ok(rfs::flistxattr_query(fd)?);
    }
    Ok(rfs::flistxattr(fd, buf)?)
}

pub(crate) fn fremovexattr(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    Ok(rfs::fremovexattr(fd, name)?)
}

pub(crate) fn faccessat(dir: BorrowedFd<'_>, name: &CStr, mode: i32, flags: i32) -> io::Result<()> {
    let mode = rfs::Access::from_bits_retain(bits(mode));
    Ok(rfs::accessat(
        dir,
        name,
        mode,
        AtFlags::from_bits_retain(bits(flags)),
    )?)
}

/// A heap buffer aligned for `O_DIRECT` I/O (4096 bytes), zero-initialized.
pub(crate) struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf exclusively owns its allocation, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    const ALIGN: usize = 4096;

    pub(crate) fn new(len: usize) -> Option<Self> {
        let size = len.max(1).next_multiple_of(Self::ALIGN);
        let layout = std::alloc::Layout::from_size_align(size, Self::ALIGN).ok()?;
        // SAFETY: the layout has non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        Some(AlignedBuf {
            ptr: std::ptr::NonNull::new(ptr)?,
            len,
        })
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is a live, zero-initialized allocation of at least `len` bytes owned by
        // self; the &mut borrow of self makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let size = self.len.max(1).next_multiple_of(Self::ALIGN);
        if let Ok(layout) = std::alloc::Layout::from_size_align(size, Self::ALIGN) {
            // SAFETY: `ptr` was allocated in `new` with exactly this layout and is freed once.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
        }
    }
}
