//! Opening files: the open mode (kernel passthrough or direct I/O), shared backing fds, and
//! FUSE_CREATE / FUSE_TMPFILE.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::fs::crash::Touch;
use crate::fs::handle::{Handle, HandleKind, OpenMode};
use crate::fs::inode::{Inode, OpenState, share_key};
use crate::fs::{Caller, FsInner, Target, errno};
use crate::fuse::{BackingId, Errno, FileHandle, FopenFlags, ReplyCreate, ReplyOpen};
use crate::rules::Verdict;
use crate::sys;
use crate::sys::FdName;

impl FsInner {
    /// Decide the mode of a new open of `inode` and count it. Returns the mode and whether the
    /// caller must create the backing id.
    pub(super) fn choose_mode(&self, path: Option<&Path>, st: &mut OpenState) -> OpenMode {
        let c = &self.counters;
        if st.passthrough > 0 {
            if self.wants_direct(path) {
                c.forced.fetch_add(1, Ordering::Relaxed);
            }
            OpenMode::Passthrough
        } else if st.direct > 0 || self.wants_direct(path) {
            OpenMode::Direct
        } else {
            OpenMode::Passthrough
        }
    }

    pub(super) fn count_open(&self, mode: OpenMode, st: &mut OpenState) {
        let c = &self.counters;
        match mode {
            OpenMode::Passthrough => {
                st.passthrough += 1;
                c.passthrough.fetch_add(1, Ordering::Relaxed);
                c.passthrough_now.fetch_add(1, Ordering::Relaxed);
            }
            OpenMode::Direct => {
                st.direct += 1;
                c.direct.fetch_add(1, Ordering::Relaxed);
                c.direct_now.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Direct I/O: every read and write reaches the rules.
    const DIRECT: FopenFlags =
        FopenFlags::FOPEN_DIRECT_IO.union(FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES);

    /// No rule can select FLUSH on a file opened by `path`: the kernel need not send it (one
    /// round trip less per close). Nothing else needs it here unless locks are forwarded (a
    /// FLUSH is what drops the closing process's POSIX locks on the backing file); there is no
    /// writeback cache to flush.
    pub(super) fn noflush_flag(&self, path: Option<&Path>) -> FopenFlags {
        if self.may_touch_flush(path) || self.locks_on.load(Ordering::Relaxed) {
            FopenFlags::empty()
        } else {
            FopenFlags::FOPEN_NOFLUSH
        }
    }

    pub(crate) fn open(
        &self,
        inode: &Arc<Inode>,
        flags: i32,
        kill_suidgid: bool,
        reply: ReplyOpen,
    ) {
        // O_TRUNC empties the file: a change like any other in crash mode.
        let fd = if flags & libc::O_TRUNC != 0 {
            self.changing(inode, Touch::From(0), false, || {
                self.open_shared(inode, flags).map_err(|e| self.fd_errno(e))
            })
        } else {
            self.open_shared(inode, flags).map_err(|e| self.fd_errno(e))
        };
        let fd = tri!(fd, reply);
        if kill_suidgid && flags & libc::O_TRUNC != 0 {
            tri!(
                self.kill_suidgid(inode, Some(fd.as_fd())).map_err(errno),
                reply
            );
        }
        let path = self.handle_path(inode, None);
        let Ok(mut st) = inode.open.lock() else {
            return reply.error(Errno::EIO);
        };
        let (fh, mode, pflags) =
            self.register_open(inode, &mut st, fd, flags, path, |fd| reply.open_backing(fd));
        let (flags, backing) = Self::reply_mode(mode, &st, pflags);
        reply.opened(fh, flags, backing);
    }

    /// The open flags and backing id of the reply for a new handle in `mode` (`pflags` as
    /// [`Self::register_open`] returns them).
    fn reply_mode(
        mode: OpenMode,
        st: &OpenState,
        pflags: FopenFlags,
    ) -> (FopenFlags, Option<&BackingId>) {
        match (mode, &st.backing) {
            (OpenMode::Passthrough, Some(id)) => (pflags, Some(id)),
            _ => (Self::DIRECT | pflags, None),
        }
    }

    /// An fd of `inode` for a new handle opened with `flags`: the one already open for handles
    /// with the same [`share_key`] if any, else a new one, then shared. An `O_TRUNC` open still
    /// opens (and so truncates, with the backing file system's own checks and events).
    pub(super) fn open_shared(&self, inode: &Inode, flags: i32) -> io::Result<Arc<OwnedFd>> {
        let key = share_key(flags);
        if flags & libc::O_TRUNC != 0 {
            return Ok(inode.share(key, self.reopen(inode, flags)?));
        }
        inode.shared_fd(key, || self.reopen(inode, flags))
    }

    /// Register a new handle on `inode` for `fd`: kernel passthrough when no rule can touch its
    /// data and the inode has (or now gets, through `open_backing`) a backing id, direct I/O
    /// otherwise. `st` is the inode's locked open state, held by the caller until it has replied
    /// with the backing id. Returns the handle, its mode, and the open flags both modes share
    /// (`FOPEN_NOFLUSH` where no rule can select flush).
    pub(super) fn register_open(
        &self,
        inode: &Arc<Inode>,
        st: &mut OpenState,
        fd: Arc<OwnedFd>,
        flags: i32,
        (path, path_full): (Option<Box<Path>>, bool),
        open_backing: impl FnOnce(BorrowedFd<'_>) -> io::Result<BackingId>,
    ) -> (FileHandle, OpenMode, FopenFlags) {
        let mut mode = self.choose_mode(path.as_deref(), st);
        if mode == OpenMode::Passthrough && st.backing.is_none() {
            match open_backing(fd.as_fd()) {
                Ok(id) => st.backing = Some(id),
                Err(e) => {
                    tracing::debug!(
                        "passthrough backing for inode {}: {e}; using direct I/O",
                        inode.nodeid
                    );
                    mode = OpenMode::Direct;
                }
            }
        }
        self.count_open(mode, st);
        let pflags = self.noflush_flag(path.as_deref());
        let noflush = pflags == FopenFlags::FOPEN_NOFLUSH;
        if noflush {
            st.noflush += 1;
        }
        let o_direct = flags & libc::O_DIRECT != 0;
        // O_SYNC is O_DSYNC plus a bit of its own: one test covers both.
        let sync = flags & libc::O_DSYNC != 0;
        let fh = self.handles.insert(Handle {
            fd,
            inode: inode.clone(),
            kind: HandleKind::File {
                mode,
                o_direct,
                sync,
                noflush,
            },
            path,
            path_full,
        });
        (FileHandle(fh), mode, pflags)
    }

    /// FUSE_CREATE of `name` in `parent`, or with no name FUSE_TMPFILE (`open(dir, O_TMPFILE)`:
    /// an unnamed file, linkable later unless `O_EXCL`). Created as the caller, then opened.
    pub(crate) fn create(
        &self,
        (c, p): (Caller, &Inode),
        name: Option<&OsStr>,
        (mode, umask, flags): (u32, u32, i32),
        v: &Verdict,
        reply: ReplyCreate,
    ) {
        let parent = p.nodeid;
        let mode = self.prepare_umask(mode, umask) & 0o7777;
        let r = sys::thread::CallerCreds::enter(c.uid, c.gid).and_then(|_creds| match name {
            Some(name) => sys::with_cstr(name, |n| {
                let oflags = (flags & !libc::O_NOCTTY) | libc::O_CREAT;
                sys::file::openat(p.fd().as_fd(), n, oflags, mode)
            }),
            None => {
                // O_TMPFILE carries O_DIRECTORY; O_EXCL (never linkable) is kept.
                let drop = libc::O_CREAT | libc::O_NOCTTY | libc::O_TRUNC;
                let oflags = (flags & !drop) | libc::O_TMPFILE;
                sys::file::openat(p.fd().as_fd(), c".", oflags, mode)
            }
        });
        let fd = tri!(r.map_err(|e| self.fd_errno(e)), reply);
        let path_fd = tri!(
            sys::file::openat(
                self.proc_fd.as_fd(),
                FdName::new(fd.as_raw_fd()).as_cstr(),
                libc::O_PATH,
                0
            )
            .map_err(|e| self.fd_errno(e)),
            reply
        );
        let st = tri!(sys::file::fstat(path_fd.as_fd()).map_err(errno), reply);
        let inode = tri!(self.inodes.insert(path_fd, &st).ok_or(Errno::EIO), reply);
        let (ttl, path) = match name {
            Some(name) => {
                inode.remember_name(p.nodeid, name);
                let path = self.handle_path(&inode, Some((parent, name)));
                (self.ttl(Target::Child(parent, name)), path)
            }
            // No name: rules see the path the kernel gives it ("DIR/#INO (deleted)").
            None => (
                self.ttl(Target::Node(parent)),
                self.handle_path(&inode, None),
            ),
        };
        let attr = super::attr_for(&inode, &st, v);
        let fd = inode.share(share_key(flags), fd);
        let Ok(mut ost) = inode.open.lock() else {
            return reply.error(Errno::EIO);
        };
        let (fh, mode, pflags) = self.register_open(&inode, &mut ost, fd, flags, path, |fd| {
            reply.open_backing(fd)
        });
        let (flags, backing) = Self::reply_mode(mode, &ost, pflags);
        reply.created(&ttl, &attr, inode.generation, fh, flags, backing);
    }
}
