//! File system calls on fds: the `*at()` family, I/O, xattrs, directory streams, ioctls.
//!
//! Every function borrows the fds it uses (`BorrowedFd`), so an fd cannot be closed while a call
//! on it runs; names are `&CStr`, so the kernel always sees a NUL-terminated string.

use std::ffi::CStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::{cvt, cvt_long};

/// `openat(2)`. `O_CLOEXEC` is always added.
pub(crate) fn openat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: i32,
    mode: u32,
) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated and outlives the call; `dir` is an open fd borrowed for
    // the call. The returned fd is new and owned by nobody else, so `OwnedFd` may take it.
    unsafe {
        let fd = cvt(libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        ))?;
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// The current working directory as a directory "fd" for the `*at()` calls (`AT_FDCWD`).
pub(crate) fn cwd() -> BorrowedFd<'static> {
    // SAFETY: AT_FDCWD is a sentinel the *at() calls accept in place of a directory fd; a
    // BorrowedFd never closes it, and it is only passed to *at() calls.
    unsafe { BorrowedFd::borrow_raw(libc::AT_FDCWD) }
}

/// `open(2)` of an absolute path (only used before serving starts).
pub(crate) fn open(path: &CStr, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: `path` is NUL-terminated; the returned fd is new and exclusively ours.
    unsafe {
        let fd = cvt(libc::open(path.as_ptr(), flags | libc::O_CLOEXEC))?;
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// `fstatat(2)`.
pub(crate) fn fstatat(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` points to writable memory of the size of `struct stat`, which the kernel fills
    // completely on success; `name` is NUL-terminated.
    unsafe {
        cvt(libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            flags,
        ))?;
        Ok(st.assume_init())
    }
}

/// An all-zero `struct stat` (for negative entries).
pub(crate) fn zeroed_stat() -> libc::stat {
    // SAFETY: `struct stat` consists of plain integers, for which all-zero bytes are valid.
    unsafe { MaybeUninit::<libc::stat>::zeroed().assume_init() }
}

/// Stat what an fd refers to (works on `O_PATH` fds, including symlinks opened with
/// `O_NOFOLLOW`).
pub(crate) fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    fstatat(fd, c"", libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW)
}

/// `statx(2)` of what an fd refers to (basic stats plus birth time).
pub(crate) fn statx(fd: BorrowedFd<'_>) -> io::Result<libc::statx> {
    let mut st = MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: the empty path is NUL-terminated, `st` is writable memory for one `struct statx`,
    // filled on success (and zeroed before, so fields the kernel skips are defined).
    unsafe {
        cvt(libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_BASIC_STATS | libc::STATX_BTIME,
            st.as_mut_ptr(),
        ))?;
        Ok(st.assume_init())
    }
}

/// `syncfs(2)`.
pub(crate) fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: no memory is passed.
    cvt(unsafe { libc::syncfs(fd.as_raw_fd()) }).map(drop)
}

/// `fstatfs(2)`.
pub(crate) fn fstatfs(fd: BorrowedFd<'_>) -> io::Result<libc::statvfs> {
    let mut st = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `st` is writable memory for one `struct statvfs`, filled on success.
    unsafe {
        cvt(libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()))?;
        Ok(st.assume_init())
    }
}

pub(crate) fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; no memory is written.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

pub(crate) fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32, dev: u64) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; no memory is written.
    cvt(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, dev) }).map(drop)
}

pub(crate) fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated; no memory is written.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

pub(crate) fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; no memory is written.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

pub(crate) fn renameat2(
    olddir: BorrowedFd<'_>,
    old: &CStr,
    newdir: BorrowedFd<'_>,
    new: &CStr,
    flags: u32,
) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated; no memory is written.
    cvt(unsafe {
        libc::renameat2(
            olddir.as_raw_fd(),
            old.as_ptr(),
            newdir.as_raw_fd(),
            new.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

pub(crate) fn linkat(
    olddir: BorrowedFd<'_>,
    old: &CStr,
    newdir: BorrowedFd<'_>,
    new: &CStr,
    flags: i32,
) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated; no memory is written.
    cvt(unsafe {
        libc::linkat(
            olddir.as_raw_fd(),
            old.as_ptr(),
            newdir.as_raw_fd(),
            new.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// `readlinkat(2)` into a fresh buffer (symlink targets are at most `PATH_MAX` bytes).
pub(crate) fn readlinkat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: `buf` is writable for `buf.len()` bytes and the kernel writes at most that many.
    let n = cvt_long(unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        ) as i64
    })?;
    buf.truncate(n as usize);
    Ok(buf)
}

pub(crate) fn fchownat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    uid: u32,
    gid: u32,
    flags: i32,
) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; no memory is written.
    cvt(unsafe { libc::fchownat(dir.as_raw_fd(), name.as_ptr(), uid, gid, flags) }).map(drop)
}

pub(crate) fn fchmodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; no memory is written.
    cvt(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode, 0) }).map(drop)
}

pub(crate) fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a borrowed fd; no memory is passed.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode) }).map(drop)
}

/// `utimensat(2)`; `times` may hold `UTIME_NOW`/`UTIME_OMIT` in `tv_nsec`.
pub(crate) fn utimensat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    times: &[libc::timespec; 2],
    flags: i32,
) -> io::Result<()> {
    // SAFETY: `times` points to two initialized timespecs, as utimensat requires; `name` is
    // NUL-terminated.
    cvt(unsafe { libc::utimensat(dir.as_raw_fd(), name.as_ptr(), times.as_ptr(), flags) }).map(drop)
}

pub(crate) fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> io::Result<()> {
    let size = i64::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: plain syscall on a borrowed fd.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), size) }).map(drop)
}

fn off(offset: u64) -> io::Result<i64> {
    i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

pub(crate) fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let offset = off(offset)?;
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call.
    let n = cvt_long(unsafe {
        libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), offset) as i64
    })?;
    Ok(n as usize)
}

pub(crate) fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> io::Result<usize> {
    let offset = off(offset)?;
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the duration of the call.
    let n = cvt_long(unsafe {
        libc::pwrite(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), offset) as i64
    })?;
    Ok(n as usize)
}

pub(crate) fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> io::Result<()> {
    // SAFETY: plain syscalls on a borrowed fd.
    cvt(unsafe {
        if datasync {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })
    .map(drop)
}

pub(crate) fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    let (offset, len) = (off(offset)?, off(len)?);
    // SAFETY: plain syscall on a borrowed fd.
    cvt(unsafe { libc::fallocate(fd.as_raw_fd(), mode, offset, len) }).map(drop)
}

pub(crate) fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: i32) -> io::Result<i64> {
    // SAFETY: plain syscall on a borrowed fd.
    cvt_long(unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) })
}

pub(crate) fn copy_file_range(
    fd_in: BorrowedFd<'_>,
    off_in: u64,
    fd_out: BorrowedFd<'_>,
    off_out: u64,
    len: usize,
    flags: u32,
) -> io::Result<usize> {
    let mut off_in = off(off_in)?;
    let mut off_out = off(off_out)?;
    // SAFETY: the offsets point to live i64s the kernel reads and updates; no other memory is
    // passed.
    let n = cvt_long(unsafe {
        libc::syscall(
            libc::SYS_copy_file_range,
            fd_in.as_raw_fd(),
            &mut off_in as *mut i64,
            fd_out.as_raw_fd(),
            &mut off_out as *mut i64,
            len,
            flags,
        )
    })?;
    Ok(n as usize)
}

/// `getdents64(2)` into `buf`; returns the number of bytes filled (0 at end of directory).
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
    Ok(n as usize)
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
    let reclen = u16::from_ne_bytes(buf[16..18].try_into().ok()?) as usize;
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

/// `ioctl(fd, FS_IOC_GETFLAGS)`; the kernel writes an `int`.
pub(crate) fn get_inode_flags(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one `int` to the pointer, which points to a live c_int.
    cvt(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::FS_IOC_GETFLAGS,
            &mut flags as *mut libc::c_int,
        )
    })?;
    Ok(flags as u32)
}

/// `ioctl(fd, FS_IOC_SETFLAGS)`; the kernel reads an `int`.
pub(crate) fn set_inode_flags(fd: BorrowedFd<'_>, flags: u32) -> io::Result<()> {
    let flags = flags as libc::c_int;
    // SAFETY: FS_IOC_SETFLAGS reads one `int` from the pointer, which points to a live c_int.
    cvt(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::FS_IOC_SETFLAGS,
            &flags as *const libc::c_int,
        )
    })
    .map(drop)
}

/// `ioctl(fd, FS_IOC_GETVERSION)`; the kernel writes an `int`.
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
    Ok(v as u32)
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

/// `ioctl(fd, FS_IOC_FSGETXATTR)`.
pub(crate) fn get_fsxattr(fd: BorrowedFd<'_>) -> io::Result<FsXattr> {
    let mut buf: FsXattr = [0; 28];
    // SAFETY: FS_IOC_FSGETXATTR writes one 28-byte `struct fsxattr` (size encoded in the
    // command) to the pointer, which points to a live 28-byte buffer.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSGETXATTR, buf.as_mut_ptr()) })?;
    Ok(buf)
}

/// `ioctl(fd, FS_IOC_FSSETXATTR)`.
pub(crate) fn set_fsxattr(fd: BorrowedFd<'_>, x: &FsXattr) -> io::Result<()> {
    // SAFETY: FS_IOC_FSSETXATTR reads one 28-byte `struct fsxattr` from the pointer, which
    // points to a live 28-byte buffer.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSSETXATTR, x.as_ptr()) }).map(drop)
}

/// `getxattr(2)` on a path (relative paths resolve against the calling thread's cwd).
/// With `buf` empty, returns the size of the value.
pub(crate) fn getxattr(path: &CStr, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: strings are NUL-terminated; `buf` is writable for `buf.len()` bytes (a null
    // pointer with size 0 asks only for the size).
    let n = cvt_long(unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            if buf.is_empty() {
                std::ptr::null_mut()
            } else {
                buf.as_mut_ptr().cast()
            },
            buf.len(),
        ) as i64
    })?;
    Ok(n as usize)
}

pub(crate) fn setxattr(path: &CStr, name: &CStr, value: &[u8], flags: i32) -> io::Result<()> {
    // SAFETY: strings are NUL-terminated; `value` is readable for `value.len()` bytes.
    cvt(unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(drop)
}

pub(crate) fn listxattr(path: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `path` is NUL-terminated; `buf` is writable for `buf.len()` bytes (null with 0
    // asks only for the size).
    let n = cvt_long(unsafe {
        libc::listxattr(
            path.as_ptr(),
            if buf.is_empty() {
                std::ptr::null_mut()
            } else {
                buf.as_mut_ptr().cast()
            },
            buf.len(),
        ) as i64
    })?;
    Ok(n as usize)
}

pub(crate) fn removexattr(path: &CStr, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated.
    cvt(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) }).map(drop)
}

pub(crate) fn fgetxattr(fd: BorrowedFd<'_>, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: as for `getxattr`, on a borrowed fd.
    let n = cvt_long(unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            if buf.is_empty() {
                std::ptr::null_mut()
            } else {
                buf.as_mut_ptr().cast()
            },
            buf.len(),
        ) as i64
    })?;
    Ok(n as usize)
}

pub(crate) fn fsetxattr(
    fd: BorrowedFd<'_>,
    name: &CStr,
    value: &[u8],
    flags: i32,
) -> io::Result<()> {
    // SAFETY: as for `setxattr`, on a borrowed fd.
    cvt(unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(drop)
}

pub(crate) fn flistxattr(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: as for `listxattr`, on a borrowed fd.
    let n = cvt_long(unsafe {
        libc::flistxattr(
            fd.as_raw_fd(),
            if buf.is_empty() {
                std::ptr::null_mut()
            } else {
                buf.as_mut_ptr().cast()
            },
            buf.len(),
        ) as i64
    })?;
    Ok(n as usize)
}

pub(crate) fn fremovexattr(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; plain syscall on a borrowed fd.
    cvt(unsafe { libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()) }).map(drop)
}

pub(crate) fn faccessat(dir: BorrowedFd<'_>, name: &CStr, mode: i32, flags: i32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; no memory is written.
    cvt(unsafe { libc::faccessat(dir.as_raw_fd(), name.as_ptr(), mode, flags) }).map(drop)
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
