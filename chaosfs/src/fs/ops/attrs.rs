//! Requests on attributes: getattr, statx, setattr (with the kill-suid/sgid rule), access.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::UNIX_EPOCH;

use std::sync::Arc;

use crate::fs::crash::Touch;
use crate::fs::inode::Inode;
use crate::fs::{FsInner, Target, errno};
use crate::fuse::{Errno, ReplyAttr, ReplyStatx, SetattrArgs, TimeOrNow};
use crate::rules::Verdict;
use crate::sys;
use crate::sys::FdName;
use crate::sys::file::{Timespec, Timestamps};

/// A setattr time for `utimensat`: `UTIME_OMIT` when not set, `UTIME_NOW`, or the time
/// (before the epoch: negative seconds, nanoseconds counted forward).
fn timespec(t: Option<TimeOrNow>) -> Timespec {
    let (tv_sec, tv_nsec) = match t {
        None => (0, rustix::fs::UTIME_OMIT),
        Some(TimeOrNow::Now) => (0, rustix::fs::UTIME_NOW),
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => (secs_i64(d.as_secs()), i64::from(d.subsec_nanos())),
            Err(e) => {
                let d = e.duration();
                let (mut s, mut ns) = (-secs_i64(d.as_secs()), -i64::from(d.subsec_nanos()));
                if ns < 0 {
                    s -= 1;
                    ns += 1_000_000_000;
                }
                (s, ns)
            }
        },
    };
    Timespec { tv_sec, tv_nsec }
}

/// Seconds as `time_t` (saturating: no time the kernel can store is that far off).
fn secs_i64(s: u64) -> i64 {
    i64::try_from(s).unwrap_or(i64::MAX)
}

/// The permission bits `st_mode` keeps once setuid, and setgid where group execute is set, are
/// cleared (the FUSE kernel's rule, `fuse_setattr`), or `None` if that changes nothing or the
/// file is not a regular file.
fn killed_mode(st_mode: u32) -> Option<u32> {
    if st_mode & libc::S_IFMT != libc::S_IFREG {
        return None;
    }
    let mut kill = st_mode & libc::S_ISUID;
    if st_mode & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP {
        kill |= libc::S_ISGID;
    }
    (kill != 0).then_some(st_mode & 0o7777 & !kill)
}

impl FsInner {
    /// FUSE_STATX (the kernel asks when a caller wants more than the basic stats: birth time).
    pub(crate) fn statx(&self, inode: &Inode, v: &Verdict, reply: ReplyStatx) {
        let st = tri!(sys::file::fstat(inode.fd().as_fd()).map_err(errno), reply);
        let stx = tri!(sys::file::statx(inode.fd().as_fd()).map_err(errno), reply);
        let attr = super::attr_for(inode, &st, v);
        reply.statx(&self.ttl(Target::Node(inode.nodeid)), &attr, &stx);
    }

    pub(crate) fn setattr(
        &self,
        inode: &Arc<Inode>,
        a: SetattrArgs,
        v: &Verdict,
        reply: ReplyAttr,
    ) {
        let SetattrArgs {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            fh,
            kill_suidgid,
        } = a;
        let handle = fh.and_then(|fh| self.handles.get(fh.0));
        let node_fd = inode.fd();
        let fdname = FdName::new(node_fd.as_raw_fd());
        if let Some(mode) = mode {
            let r = match &handle {
                Some(h) => sys::file::fchmod(h.fd.as_fd(), mode & 0o7777),
                None => sys::file::fchmodat(self.proc_fd.as_fd(), fdname.as_cstr(), mode & 0o7777),
            };
            tri!(r.map_err(errno), reply);
        }
        if uid.is_some() || gid.is_some() {
            let r = sys::file::fchownat(
                inode.fd().as_fd(),
                c"",
                uid,
                gid,
                libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            );
            tri!(r.map_err(errno), reply);
        }
        if let Some(size) = size {
            let r = self.changing(inode, Touch::From(size), false, || {
                match &handle {
                    Some(h) => sys::file::ftruncate(h.fd.as_fd(), size),
                    None => self
                        .reopen(inode, libc::O_WRONLY | libc::O_NONBLOCK)
                        .and_then(|fd| sys::file::ftruncate(fd.as_fd(), size)),
                }
                .map_err(errno)
            });
            tri!(r, reply);
        }
        if atime.is_some() || mtime.is_some() {
            let times = Timestamps {
                last_access: timespec(atime),
                last_modification: timespec(mtime),
            };
            let r = sys::file::utimensat(
                inode.fd().as_fd(),
                c"",
                &times,
                libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            );
            tri!(r.map_err(errno), reply);
        }
        if kill_suidgid {
            let fd = handle.as_ref().map(|h| h.fd.as_fd());
            tri!(self.kill_suidgid(inode, fd).map_err(errno), reply);
        }
        self.reply_attr(inode, v, reply);
    }

    /// Clear the setuid bit, and setgid where group execute is set, of the regular file `inode`
    /// (through `fd`, an open file of it, if given), as the kernel does for a FUSE file when a
    /// caller lacking `CAP_FSETID` writes or truncates it: the server works as root, so the
    /// backing file system would keep them. Nothing is changed (no ctime update) when neither
    /// bit is to go.
    pub(super) fn kill_suidgid(&self, inode: &Inode, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let st = sys::file::fstat(inode.fd().as_fd())?;
        let Some(mode) = killed_mode(st.st_mode) else {
            return Ok(());
        };
        match fd {
            Some(fd) => sys::file::fchmod(fd, mode),
            None => {
                let node_fd = inode.fd();
                let fdname = FdName::new(node_fd.as_raw_fd());
                sys::file::fchmodat(self.proc_fd.as_fd(), fdname.as_cstr(), mode)
            }
        }
    }

    pub(crate) fn access(&self, inode: &Inode, mask: i32) -> Result<(), Errno> {
        sys::file::faccessat(
            self.proc_fd.as_fd(),
            FdName::new(inode.fd().as_raw_fd()).as_cstr(),
            mask,
            libc::AT_EACCESS,
        )
        .map_err(errno)
    }
}
