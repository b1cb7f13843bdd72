//! `/dev/fuse` system calls: reading requests, writing replies, cloning the connection and
//! registering passthrough backing files.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use super::{cvt, cvt_unsigned};

/// `FUSE_DEV_IOC_CLONE`: `_IOR(229, 0, uint32_t)`.
const IOC_CLONE: libc::c_ulong = 0x8004_e500;
/// `FUSE_DEV_IOC_BACKING_OPEN`: `_IOW(229, 1, struct fuse_backing_map)`.
const IOC_BACKING_OPEN: libc::c_ulong = 0x4010_e501;
/// `FUSE_DEV_IOC_BACKING_CLOSE`: `_IOW(229, 2, uint32_t)`.
const IOC_BACKING_CLOSE: libc::c_ulong = 0x4004_e502;

/// Read one request into `buf` (the kernel hands over whole requests only).
pub(crate) fn read(dev: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid, writable buffer of `buf.len()` bytes for the whole call.
    cvt_unsigned(unsafe { libc::read(dev.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
}

/// Write one reply or notification, all parts in a single `writev` (the kernel takes a message
/// only whole).
pub(crate) fn writev(dev: BorrowedFd<'_>, parts: &[IoSlice<'_>]) -> io::Result<usize> {
    let n = libc::c_int::try_from(parts.len()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `IoSlice` is ABI-compatible with `struct iovec`; each points to a live slice
    // borrowed for the whole call, and `n` does not exceed the slice count.
    cvt_unsigned(unsafe { libc::writev(dev.as_raw_fd(), parts.as_ptr().cast(), n) })
}

/// A new `/dev/fuse` fd attached to the same connection as `dev` (`FUSE_DEV_IOC_CLONE`): a
/// serving thread with its own fd gets its own processing queue. Replies must be written to the
/// fd the request was read from.
pub(crate) fn clone(dev: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let fd = super::file::open(c"/dev/fuse", libc::O_RDWR | libc::O_CLOEXEC)?;
    // The ioctl takes the fd as a `uint32_t`; an open fd is never negative, so the bits are the
    // same number.
    let src = dev.as_raw_fd().cast_unsigned();
    // SAFETY: FUSE_DEV_IOC_CLONE reads one u32 (the source fd) from the pointer, which points
    // to a live local; `fd` is an open /dev/fuse fd we own.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), IOC_CLONE, &src as *const u32) })?;
    Ok(fd)
}

/// Register `file` as a passthrough backing file of the connection; returns the backing id.
pub(crate) fn backing_open(dev: BorrowedFd<'_>, file: BorrowedFd<'_>) -> io::Result<u32> {
    let map = crate::fuse::abi::BackingMap {
        fd: file.as_raw_fd(),
        flags: 0,
        padding: 0,
    };
    // SAFETY: FUSE_DEV_IOC_BACKING_OPEN reads a `struct fuse_backing_map` (16 bytes, the layout
    // of `BackingMap`) from the pointer, which points to a live local.
    cvt_unsigned(unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            IOC_BACKING_OPEN,
            &map as *const crate::fuse::abi::BackingMap,
        )
    })
}

/// Drop a backing id registered with [`backing_open`].
pub(crate) fn backing_close(dev: BorrowedFd<'_>, id: u32) -> io::Result<()> {
    // SAFETY: FUSE_DEV_IOC_BACKING_CLOSE reads one u32 from the pointer, a live local.
    cvt(unsafe { libc::ioctl(dev.as_raw_fd(), IOC_BACKING_CLOSE, &id as *const u32) }).map(drop)
}

/// A pipe pair for splicing: `(read end, write end)`, both close-on-exec and non-blocking (a
/// full pipe must fail, not wait for a reader: the one reader is the caller).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a writable array of two ints, filled on success.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    // SAFETY: pipe2 succeeded, so both are fresh fds this process owns and nothing else does.
    Ok(unsafe {
        use std::os::fd::FromRawFd;
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    })
}

/// Set a pipe's capacity (`F_SETPIPE_SZ`); returns the capacity granted.
pub(crate) fn set_pipe_size(pipe: BorrowedFd<'_>, bytes: usize) -> io::Result<usize> {
    let n = libc::c_int::try_from(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: integer arguments only.
    cvt_unsigned(unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, n) })
}

/// `splice(2)` of up to `len` bytes from `from` (at `*off` if given, advancing it) to `to`.
pub(crate) fn splice(
    from: BorrowedFd<'_>,
    off: Option<&mut i64>,
    to: BorrowedFd<'_>,
    len: usize,
    flags: u32,
) -> io::Result<usize> {
    let off_ptr = match off {
        Some(o) => o as *mut i64,
        None => std::ptr::null_mut(),
    };
    // SAFETY: `off_ptr` is null or points to a live i64 for the whole call; no other memory is
    // passed.
    cvt_unsigned(unsafe {
        libc::splice(
            from.as_raw_fd(),
            off_ptr,
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            flags,
        )
    })
}

/// `write(2)` of `buf` to a pipe (a header small enough to be written whole).
pub(crate) fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a live slice of `buf.len()` bytes for the whole call.
    cvt_unsigned(unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) })
}
