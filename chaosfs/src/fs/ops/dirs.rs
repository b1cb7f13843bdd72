//! Directory handles: opendir, readdir, readdirplus, releasedir (fsyncdir is `fsync`).

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::Duration;

use super::NO_GEN;
use crate::fs::handle::{DirStream, Handle, HandleKind};
use crate::fs::inode::Inode;
use crate::fs::{FsInner, Target, attr_of, dtype_file_type, errno, file_type, reported_ino};
use crate::fuse::{
    Errno, FileHandle, FileType, FopenFlags, INodeNo, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyOpen,
};
use crate::rules::Verdict;
use crate::sys;

/// Size of a directory handle's `getdents64` buffer.
const DIRBUF: usize = 32 * 1024;

impl FsInner {
    pub(crate) fn opendir(&self, inode: Arc<Inode>, reply: ReplyOpen) {
        let fd = tri!(
            sys::file::openat(
                inode.fd().as_fd(),
                c".",
                libc::O_RDONLY | libc::O_DIRECTORY,
                0
            )
            .map_err(|e| self.fd_errno(e)),
            reply
        );
        let fh = self.handles.insert(Handle {
            fd: Arc::new(fd),
            inode,
            path: None,
            path_full: false,
            kind: HandleKind::Dir(std::sync::Mutex::new(DirStream {
                buf: Vec::new(),
                start: 0,
                end: 0,
                next_offset: 0,
                eof: false,
            })),
        });
        reply.opened(FileHandle(fh), FopenFlags::empty(), None);
    }

    /// Walk the directory stream from `offset`, calling `add` per entry until it returns false
    /// (reply full). `add` gets (d_ino, d_off, d_type, name).
    pub(super) fn walk_dir(
        &self,
        h: &Handle,
        offset: u64,
        mut add: impl FnMut(BorrowedFd<'_>, u64, u64, u8, &OsStr) -> bool,
    ) -> Result<(), Errno> {
        let HandleKind::Dir(stream) = &h.kind else {
            return Err(Errno::ENOTDIR);
        };
        let Ok(mut s) = stream.lock() else {
            return Err(Errno::EIO);
        };
        if offset != s.next_offset {
            let off = i64::try_from(offset).map_err(|_| Errno::EINVAL)?;
            sys::file::lseek(h.fd.as_fd(), off, libc::SEEK_SET).map_err(errno)?;
            s.start = 0;
            s.end = 0;
            s.eof = false;
            s.next_offset = offset;
        }
        if s.buf.len() < DIRBUF {
            s.buf.resize(DIRBUF, 0);
        }
        loop {
            if s.start >= s.end {
                if s.eof {
                    return Ok(());
                }
                let st = &mut *s;
                let n = sys::file::getdents64(h.fd.as_fd(), &mut st.buf).map_err(errno)?;
                st.start = 0;
                st.end = n;
                if n == 0 {
                    st.eof = true;
                    return Ok(());
                }
            }
            let (start, end) = (s.start, s.end);
            let Some(d) = sys::file::parse_dirent(&s.buf[start..end]) else {
                // A malformed batch: drop it and read on.
                s.start = s.end;
                continue;
            };
            // `d_off` is an opaque position cookie; FUSE carries it as a u64 and the seek above
            // turns the same bits back into the i64.
            let (reclen, off) = (d.reclen, d.off.cast_unsigned());
            if !add(h.fd.as_fd(), d.ino, off, d.typ, OsStr::from_bytes(d.name)) {
                return Ok(());
            }
            s.start += reclen;
            s.next_offset = off;
        }
    }

    pub(crate) fn readdir(&self, h: &Handle, offset: u64, mut reply: ReplyDirectory) {
        let r = self.walk_dir(h, offset, |dirfd, ino, off, typ, name| {
            let kind = match dtype_file_type(typ) {
                Some(k) => k,
                // "." and ".." are directories; a stat of ".." could cross into this mount.
                None if matches!(name.as_bytes(), b"." | b"..") => FileType::Directory,
                None => sys::with_cstr(name, |c| {
                    sys::file::fstatat(dirfd, c, libc::AT_SYMLINK_NOFOLLOW)
                })
                .map(|st| file_type(st.st_mode))
                .unwrap_or(FileType::RegularFile),
            };
            !reply.add(INodeNo(ino), off, kind, name)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    pub(crate) fn readdirplus(&self, h: &Handle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let dir = h.inode.clone();
        let r = self.walk_dir(h, offset, |dirfd, _ino, off, _typ, name| {
            let b = name.as_bytes();
            if b == b"." || b == b".." {
                // The kernel does not take a lookup reference for these. ".." is stat'ed
                // without crossing mounts: from a child of the backing root a plain ".." lands
                // on ChaosFS itself, mounted over it: a request to this very server, which
                // deadlocks it when the thread that asks is the one that would answer (one
                // /dev/fuse thread, or an io_uring queue's own CPU).
                let st = if b == b"." {
                    sys::file::fstatat(dirfd, c".", libc::AT_SYMLINK_NOFOLLOW)
                } else {
                    self.parent_stat(&dir, dirfd)
                };
                let Ok(st) = st else {
                    return true;
                };
                let ino = if b == b"." {
                    reported_ino(&dir)
                } else {
                    st.st_ino
                };
                let attr = attr_of(ino, &st);
                return !reply.add(INodeNo(ino), off, name, &Duration::ZERO, &attr, NO_GEN);
            }
            let (inode, st) = match self.do_lookup(&dir, name) {
                Ok(x) => x,
                Err(e) if e == Errno::ENOENT => return true, // vanished meanwhile: skip it
                Err(_) => {
                    // No entry for it now (e.g. the server is out of fds): list the name
                    // without one (node id 0), so it is not missing from the listing; the
                    // kernel looks it up when it is used.
                    let Ok(st) = sys::with_cstr(name, |c| {
                        sys::file::fstatat(dirfd, c, libc::AT_SYMLINK_NOFOLLOW)
                    }) else {
                        return true;
                    };
                    let attr = attr_of(st.st_ino, &st);
                    return !reply.add(INodeNo(0), off, name, &Duration::ZERO, &attr, NO_GEN);
                }
            };
            let mut ttl = self.ttl(Target::Child(dir.nodeid, name));
            if self.must_relookup(&st) {
                ttl = Duration::ZERO;
            }
            let attr = attr_of(reported_ino(&inode), &st);
            if reply.add(
                INodeNo(attr.ino.0),
                off,
                name,
                &ttl,
                &attr,
                inode.generation,
            ) {
                // Did not fit: the kernel will not see it, so it takes no reference.
                self.inodes.forget(inode.nodeid, 1);
                return false;
            }
            true
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    pub(crate) fn releasedir(&self, fh: FileHandle, v: &Verdict, reply: ReplyEmpty) {
        self.handles.remove(fh.0);
        match v.errno {
            Some(e) => reply.error(Errno::from_i32(e)),
            None => reply.ok(),
        }
    }
}
