//! Extended attributes: getxattr, listxattr, setxattr, removexattr.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use super::name_cstr;
use crate::fs::inode::Inode;
use crate::fs::{FsInner, errno};
use crate::fuse::{Errno, ReplyXattr};
use crate::sys;
use crate::sys::FdName;

/// Where an xattr call is aimed.
enum XTarget<'a> {
    /// A name relative to the thread's cwd (`/proc/self/fd`).
    Path(&'a std::ffi::CStr),
    Fd(BorrowedFd<'a>),
}

/// Answer getxattr/listxattr: the size needed when the caller asked with size 0, else the
/// first `len` bytes of `buf`. A size is at most `XATTR_SIZE_MAX` (64 KiB); a larger one gets
/// E2BIG, the kernel's own answer for a value too large.
fn reply_xattr(reply: ReplyXattr, size: u32, buf: &[u8], len: usize) {
    if size != 0 {
        reply.data(&buf[..len]);
    } else {
        match u32::try_from(len) {
            Ok(len) => reply.size(len),
            Err(_) => reply.error(Errno::from_i32(libc::E2BIG)),
        }
    }
}

impl FsInner {
    /// Run an xattr call on `inode`: by its `/proc/self/fd` name relative to the thread's cwd
    /// (works for every file type), or through a real fd when the thread cannot have its own
    /// cwd.
    fn with_xattr_target<T>(
        &self,
        inode: &Inode,
        f: impl FnOnce(XTarget<'_>) -> io::Result<T>,
    ) -> io::Result<T> {
        if sys::thread::ensure_private_fs(self.proc_fd.as_fd()) {
            f(XTarget::Path(FdName::new(inode.fd().as_raw_fd()).as_cstr()))
        } else if inode.kind == libc::S_IFREG || inode.kind == libc::S_IFDIR {
            let fd = self.reopen(inode, libc::O_RDONLY | libc::O_NONBLOCK)?;
            f(XTarget::Fd(fd.as_fd()))
        } else {
            Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
        }
    }

    pub(crate) fn getxattr(&self, inode: &Inode, name: &OsStr, size: u32, reply: ReplyXattr) {
        let mut buf = vec![0u8; size as usize];
        let r = name_cstr(name, |n| {
            self.with_xattr_target(inode, |t| match t {
                XTarget::Path(p) => sys::file::getxattr(p, n, &mut buf),
                XTarget::Fd(fd) => sys::file::fgetxattr(fd, n, &mut buf),
            })
        });
        let len = tri!(r, reply);
        reply_xattr(reply, size, &buf, len);
    }

    pub(crate) fn listxattr(&self, inode: &Inode, size: u32, reply: ReplyXattr) {
        let mut buf = vec![0u8; size as usize];
        let r = self.with_xattr_target(inode, |t| match t {
            XTarget::Path(p) => sys::file::listxattr(p, &mut buf),
            XTarget::Fd(fd) => sys::file::flistxattr(fd, &mut buf),
        });
        let len = tri!(r.map_err(errno), reply);
        reply_xattr(reply, size, &buf, len);
    }

    pub(crate) fn setxattr(
        &self,
        inode: &Inode,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> Result<(), Errno> {
        name_cstr(name, |n| {
            self.with_xattr_target(inode, |t| match t {
                XTarget::Path(p) => sys::file::setxattr(p, n, value, flags),
                XTarget::Fd(fd) => sys::file::fsetxattr(fd, n, value, flags),
            })
        })
    }

    pub(crate) fn removexattr(&self, inode: &Inode, name: &OsStr) -> Result<(), Errno> {
        name_cstr(name, |n| {
            self.with_xattr_target(inode, |t| match t {
                XTarget::Path(p) => sys::file::removexattr(p, n),
                XTarget::Fd(fd) => sys::file::fremovexattr(fd, n),
            })
        })
    }
}
