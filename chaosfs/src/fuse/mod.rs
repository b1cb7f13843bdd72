//! The FUSE protocol layer: reads requests from `/dev/fuse`, hands them to the file system as
//! [`Operation`]s, and writes the replies and notifications. Written for this server (rather than
//! taken from a general-purpose crate) so every request the kernel sends gets an answer —
//! including `FUSE_TMPFILE`, `FUSE_STATX` and `FUSE_SYNCFS` — and passthrough backing ids,
//! cloned device fds and INIT flags are under our control.

pub(crate) mod abi;
mod reply;
mod request;
mod session;
mod types;
mod uring;

use std::ffi::OsStr;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use zerocopy::IntoBytes;

pub use abi::FileLock;
pub use reply::{
    BackingId, Reply, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLock, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyStatx,
    ReplyWrite, ReplyXattr, Sender,
};
pub use request::{Operation, Request, SetattrArgs};
pub use session::{Filesystem, KernelConfig, Session};
pub use types::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, MAX_READ, TimeOrNow,
};
pub use uring::Transport;

/// Sends cache invalidations to the kernel.
#[derive(Debug, Clone)]
pub struct Notifier(Arc<OwnedFd>);

impl Notifier {
    fn new(dev: Arc<OwnedFd>) -> Notifier {
        Notifier(dev)
    }

    fn send(&self, code: i32, parts: &[&[u8]]) -> io::Result<()> {
        let payload = parts.iter().map(|p| p.len()).sum::<usize>();
        let h = abi::OutHeader::new(code, 0, payload)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let mut iov = vec![IoSlice::new(h.as_bytes())];
        iov.extend(parts.iter().map(|p| IoSlice::new(p)));
        crate::sys::fuse_dev::writev(self.0.as_fd(), &iov).map(drop)
    }

    /// Drop the kernel's cached attributes of `ino` and its page cache from `offset` for `len`
    /// bytes (`offset < 0`: attributes only; `len == 0`: to the end).
    pub fn inval_inode(&self, ino: INodeNo, offset: i64, len: i64) -> io::Result<()> {
        let o = abi::NotifyInvalInodeOut {
            ino: ino.0,
            off: offset,
            len,
        };
        self.send(abi::notify::INVAL_INODE, &[o.as_bytes()])
    }

    /// Drop the kernel's cached entry `name` in directory `parent`.
    pub fn inval_entry(&self, parent: INodeNo, name: &OsStr) -> io::Result<()> {
        let o = abi::NotifyInvalEntryOut {
            parent: parent.0,
            // The kernel refuses names over FUSE_NAME_MAX with ENAMETOOLONG too.
            namelen: u32::try_from(name.len())
                .map_err(|_| io::Error::from_raw_os_error(libc::ENAMETOOLONG))?,
            flags: 0,
        };
        self.send(
            abi::notify::INVAL_ENTRY,
            &[o.as_bytes(), name.as_bytes(), b"\0"],
        )
    }
}
