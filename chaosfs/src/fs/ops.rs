//! One method per FUSE request, each given the request's [`Verdict`]. They run either in a FUSE
//! thread or, after a latency fault, in a delay worker; they never panic and always reply.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use crate::fuse::abi::init as F;
use crate::fuse::{
    BackingId, Errno, FileHandle, FileType, FopenFlags, Generation, INodeNo, KernelConfig,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyStatx, ReplyWrite, ReplyXattr,
    SetattrArgs, TimeOrNow,
};

use super::handle::{DirStream, Handle, HandleKind, OpenMode};
use super::inode::{Inode, ROOT, share_key};
use super::{
    Caller, FsInner, Target, apply_override, attr_of, decode_dev, dtype_file_type, errno,
    file_type, reported_ino,
};
use crate::rules::{DataFault, Verdict};
use crate::sys;
use crate::sys::FdName;
use crate::sys::file::AlignedBuf;

/// Where an xattr call is aimed.
enum XTarget<'a> {
    /// A name relative to the thread's cwd (`/proc/self/fd`).
    Path(&'a std::ffi::CStr),
    Fd(BorrowedFd<'a>),
}

const GEN: Generation = Generation(0);
/// Reads at least this large, with no data fault, are answered by splicing the backing file.
const SPLICE_MIN: usize = 64 << 10;
const DIRBUF: usize = 32 * 1024;

thread_local! {
    /// Reusable read buffer of a serving thread.
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Reply with the verdict's errno if it has one; true if the request is answered.
macro_rules! fail_if_errno {
    ($v:expr, $reply:expr) => {
        if let Some(e) = $v.errno {
            $reply.error(Errno::from_i32(e));
            return;
        }
    };
}

/// Unwrap a `Result<_, Errno>` or reply with the error.
macro_rules! tri {
    ($e:expr, $reply:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => {
                $reply.error(e);
                return;
            }
        }
    };
}

/// Answer a read of up to `want` bytes at `offset` of `fd` by splicing it into the reply, if
/// `fd` is a regular file (whose size says how many bytes the read returns). The reply back
/// when nothing was sent: the caller reads and copies instead.
fn splice_read(
    fd: BorrowedFd<'_>,
    offset: u64,
    want: usize,
    reply: ReplyData,
) -> Option<ReplyData> {
    let Ok(st) = sys::file::fstat(fd) else {
        return Some(reply);
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Some(reply);
    }
    let left = (st.st_size.max(0) as u64).saturating_sub(offset);
    let n = want.min(usize::try_from(left).unwrap_or(usize::MAX));
    if n == 0 {
        reply.data(&[]);
        return None;
    }
    reply.splice(fd, offset, n).err()
}

fn name_cstr<T>(
    name: &OsStr,
    f: impl FnOnce(&std::ffi::CStr) -> io::Result<T>,
) -> Result<T, Errno> {
    sys::with_cstr(name, f).map_err(errno)
}

fn timespec(t: Option<TimeOrNow>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            },
            Err(e) => {
                let d = e.duration();
                let (mut s, mut ns) = (-(d.as_secs() as i64), -(d.subsec_nanos() as i64));
                if ns < 0 {
                    s -= 1;
                    ns += 1_000_000_000;
                }
                libc::timespec {
                    tv_sec: s as libc::time_t,
                    tv_nsec: ns as libc::c_long,
                }
            }
        },
    }
}

impl FsInner {
    // ----- init -----

    pub(crate) fn init(&self, config: &mut KernelConfig) {
        for f in [
            F::ATOMIC_O_TRUNC,
            F::DONT_MASK,
            F::POSIX_ACL,
            F::DO_READDIRPLUS,
            F::READDIRPLUS_AUTO,
            F::PARALLEL_DIROPS,
            F::HAS_IOCTL_DIR,
            F::AUTO_INVAL_DATA,
            F::ASYNC_DIO,
            F::DIRECT_IO_ALLOW_MMAP,
            F::HANDLE_KILLPRIV_V2,
        ] {
            config.want(f);
        }
        if self.cfg.passthrough && config.want(F::PASSTHROUGH) {
            config.max_stack_depth = 1;
            self.passthrough_ok.store(true, Ordering::Relaxed);
        } else if self.cfg.passthrough {
            tracing::warn!("kernel lacks FUSE passthrough; every file is served with direct I/O");
        }
        config.max_readahead = config.max_readahead.min(1 << 20);
        config.max_background = 64;
        config.congestion_threshold = 48;
    }

    // ----- helpers -----

    /// Open a real fd of `inode` through its `/proc/self/fd` magic link.
    fn reopen(&self, inode: &Inode, flags: i32) -> io::Result<OwnedFd> {
        let flags = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_NOFOLLOW);
        sys::file::openat(
            self.proc_fd.as_fd(),
            FdName::new(inode.fd.as_raw_fd()).as_cstr(),
            flags,
            0,
        )
    }

    /// Make this thread's fs_struct private and apply the caller's umask the way the kernel
    /// would: through the thread umask, so a default ACL on the parent overrides it. Returns the
    /// mode to pass to the create call.
    fn prepare_umask(&self, mode: u32, umask: u32) -> u32 {
        if sys::thread::ensure_private_fs(self.proc_fd.as_fd()) {
            sys::thread::set_thread_umask(umask & 0o777);
            mode
        } else {
            mode & !umask
        }
    }

    /// Look up `name` in `parent` after a successful create: new `O_PATH` fd, stat, table entry
    /// (counting one kernel lookup).
    fn entry_of_new(
        &self,
        parent: &Inode,
        name: &OsStr,
    ) -> Result<(Arc<Inode>, libc::stat), Errno> {
        let fd = sys::with_cstr(name, |c| {
            sys::file::openat(parent.fd.as_fd(), c, libc::O_PATH | libc::O_NOFOLLOW, 0)
        })
        .map_err(|e| self.fd_errno(e))?;
        let st = sys::file::fstat(fd.as_fd()).map_err(errno)?;
        let inode = self.inodes.insert(fd, &st).ok_or(Errno::EIO)?;
        inode.remember_name(parent.nodeid, name);
        Ok((inode, st))
    }

    /// Look up `name` in `parent`: stat first (a hit in the table costs one syscall), open an
    /// `O_PATH` fd only for inodes the table does not hold yet.
    fn do_lookup(&self, parent: &Inode, name: &OsStr) -> Result<(Arc<Inode>, libc::stat), Errno> {
        if parent.nodeid == ROOT && name.as_bytes() == b".." {
            return Err(Errno::ENOENT);
        }
        let st = name_cstr(name, |c| {
            sys::file::fstatat(parent.fd.as_fd(), c, libc::AT_SYMLINK_NOFOLLOW)
        })?;
        if let Some(inode) = self.inodes.lookup_existing(st.st_dev, st.st_ino) {
            inode.remember_name(parent.nodeid, name);
            return Ok((inode, st));
        }
        self.entry_of_new(parent, name)
    }

    fn reply_entry(
        &self,
        reply: ReplyEntry,
        inode: &Inode,
        st: &libc::stat,
        v: &Verdict,
        ttl: Duration,
        attr_ttl: Duration,
    ) {
        let mut attr = attr_of(reported_ino(inode), st);
        if let Some(o) = &v.attr {
            apply_override(&mut attr, o);
        }
        let ttl = if self.must_relookup(st) {
            Duration::ZERO
        } else {
            ttl
        };
        reply.entry_with_ttls(&attr_ttl, &ttl, &attr, GEN);
    }

    /// A file with several names, while rules select by path: the kernel must look the name up
    /// on every path walk, so an open is attributed to the name it came through (the open
    /// request itself names no path).
    fn must_relookup(&self, st: &libc::stat) -> bool {
        st.st_nlink > 1
            && st.st_mode & libc::S_IFMT != libc::S_IFDIR
            && self.rules.load().uses_paths
    }

    fn handle(&self, fh: FileHandle) -> Result<Arc<Handle>, Errno> {
        self.handles.get(fh.0).ok_or(Errno::EBADF)
    }

    // ----- requests -----

    pub(crate) fn lookup(&self, parent: INodeNo, name: &OsStr, v: &Verdict, reply: ReplyEntry) {
        fail_if_errno!(v, reply);
        let p = tri!(self.inode(parent), reply);
        let ttl = self.ttl(Target::Child(parent.0, name));
        match self.do_lookup(&p, name) {
            Ok((inode, st)) => self.reply_entry(reply, &inode, &st, v, ttl, ttl),
            Err(e) if e == Errno::ENOENT && !ttl.is_zero() => {
                // A negative entry the kernel may cache (node id 0).
                let st = sys::file::zeroed_stat();
                let attr = attr_of(0, &st);
                reply.entry(&ttl, &attr, GEN);
            }
            Err(e) => reply.error(e),
        }
    }

    pub(crate) fn forget(&self, ino: u64, n: u64) {
        self.inodes.forget(ino, n);
    }

    pub(crate) fn getattr(&self, ino: INodeNo, v: &Verdict, reply: ReplyAttr) {
        fail_if_errno!(v, reply);
        let inode = tri!(self.inode(ino), reply);
        let st = tri!(sys::file::fstat(inode.fd.as_fd()).map_err(errno), reply);
        let mut attr = attr_of(reported_ino(&inode), &st);
        if let Some(o) = &v.attr {
            apply_override(&mut attr, o);
        }
        reply.attr(&self.ttl(Target::Node(ino.0)), &attr);
    }

    /// FUSE_STATX (the kernel asks when a caller wants more than the basic stats: birth time).
    pub(crate) fn statx(&self, ino: INodeNo, v: &Verdict, reply: ReplyStatx) {
        fail_if_errno!(v, reply);
        let inode = tri!(self.inode(ino), reply);
        let st = tri!(sys::file::fstat(inode.fd.as_fd()).map_err(errno), reply);
        let stx = tri!(sys::file::statx(inode.fd.as_fd()).map_err(errno), reply);
        let mut attr = attr_of(reported_ino(&inode), &st);
        if let Some(o) = &v.attr {
            apply_override(&mut attr, o);
        }
        reply.statx(&self.ttl(Target::Node(ino.0)), &attr, &stx);
    }

    pub(crate) fn setattr(&self, ino: INodeNo, a: SetattrArgs, v: &Verdict, reply: ReplyAttr) {
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
        fail_if_errno!(v, reply);
        let inode = tri!(self.inode(ino), reply);
        let handle = fh.and_then(|fh| self.handles.get(fh.0));
        let fdname = FdName::new(inode.fd.as_raw_fd());
        if let Some(mode) = mode {
            let r = match &handle {
                Some(h) => sys::file::fchmod(h.fd.as_fd(), mode & 0o7777),
                None => sys::file::fchmodat(self.proc_fd.as_fd(), fdname.as_cstr(), mode & 0o7777),
            };
            tri!(r.map_err(errno), reply);
        }
        if uid.is_some() || gid.is_some() {
            let r = sys::file::fchownat(
                inode.fd.as_fd(),
                c"",
                uid.unwrap_or(u32::MAX),
                gid.unwrap_or(u32::MAX),
                libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            );
            tri!(r.map_err(errno), reply);
        }
        if let Some(size) = size {
            let r = match &handle {
                Some(h) => sys::file::ftruncate(h.fd.as_fd(), size),
                None => self
                    .reopen(&inode, libc::O_WRONLY | libc::O_NONBLOCK)
                    .and_then(|fd| sys::file::ftruncate(fd.as_fd(), size)),
            };
            tri!(r.map_err(errno), reply);
        }
        if atime.is_some() || mtime.is_some() {
            let times = [timespec(atime), timespec(mtime)];
            let r = sys::file::utimensat(
                inode.fd.as_fd(),
                c"",
                &times,
                libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            );
            tri!(r.map_err(errno), reply);
        }
        if kill_suidgid {
            let fd = handle.as_ref().map(|h| h.fd.as_fd());
            tri!(self.kill_suidgid(&inode, fd).map_err(errno), reply);
        }
        let st = tri!(sys::file::fstat(inode.fd.as_fd()).map_err(errno), reply);
        let mut attr = attr_of(reported_ino(&inode), &st);
        if let Some(o) = &v.attr {
            apply_override(&mut attr, o);
        }
        reply.attr(&self.ttl(Target::Node(ino.0)), &attr);
    }

    /// Clear the setuid bit, and setgid where group execute is set, of the regular file `inode`
    /// (through `fd`, an open file of it, if given), as the kernel does for a FUSE file when a
    /// caller lacking `CAP_FSETID` writes or truncates it: the server works as root, so the
    /// backing file system would keep them. Nothing is changed (no ctime update) when neither
    /// bit is to go.
    fn kill_suidgid(&self, inode: &Inode, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let st = sys::file::fstat(inode.fd.as_fd())?;
        let Some(mode) = killed_mode(st.st_mode) else {
            return Ok(());
        };
        match fd {
            Some(fd) => sys::file::fchmod(fd, mode),
            None => {
                let fdname = FdName::new(inode.fd.as_raw_fd());
                sys::file::fchmodat(self.proc_fd.as_fd(), fdname.as_cstr(), mode)
            }
        }
    }

    pub(crate) fn readlink(&self, ino: INodeNo, v: &Verdict, reply: ReplyData) {
        fail_if_errno!(v, reply);
        let inode = tri!(self.inode(ino), reply);
        let target = tri!(
            sys::file::readlinkat(inode.fd.as_fd(), c"").map_err(errno),
            reply
        );
        reply.data(&target);
    }

    /// Shared tail of mknod/mkdir/symlink: look the new entry up and reply.
    fn finish_create(&self, parent: &Inode, name: &OsStr, v: &Verdict, reply: ReplyEntry) {
        let ttl = self.ttl(Target::Child(parent.nodeid, name));
        match self.entry_of_new(parent, name) {
            Ok((inode, st)) => self.reply_entry(reply, &inode, &st, v, ttl, ttl),
            Err(e) => reply.error(e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn mknod(
        &self,
        c: Caller,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        v: &Verdict,
        reply: ReplyEntry,
    ) {
        fail_if_errno!(v, reply);
        let p = tri!(self.inode(parent), reply);
        let mode = self.prepare_umask(mode, umask);
        let r = sys::thread::CallerCreds::enter(c.uid, c.gid).and_then(|_creds| {
            sys::with_cstr(name, |n| {
                sys::file::mknodat(p.fd.as_fd(), n, mode, decode_dev(rdev))
            })
        });
        tri!(r.map_err(errno), reply);
        self.finish_create(&p, name, v, reply);
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn mkdir(
        &self,
        c: Caller,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        v: &Verdict,
        reply: ReplyEntry,
    ) {
        fail_if_errno!(v, reply);
        let p = tri!(self.inode(parent), reply);
        let mode = self.prepare_umask(mode, umask);
        let r = sys::thread::CallerCreds::enter(c.uid, c.gid)
            .and_then(|_creds| sys::with_cstr(name, |n| sys::file::mkdirat(p.fd.as_fd(), n, mode)));
        tri!(r.map_err(errno), reply);
        self.finish_create(&p, name, v, reply);
    }

    pub(crate) fn symlink(
        &self,
        c: Caller,
        parent: INodeNo,
        name: &OsStr,
        target: &Path,
        v: &Verdict,
        reply: ReplyEntry,
    ) {
        fail_if_errno!(v, reply);
        let p = tri!(self.inode(parent), reply);
        let r = sys::thread::CallerCreds::enter(c.uid, c.gid).and_then(|_creds| {
            sys::with_cstr(target.as_os_str(), |t| {
                sys::with_cstr(name, |n| sys::file::symlinkat(t, p.fd.as_fd(), n))
            })
        });
        tri!(r.map_err(errno), reply);
        self.finish_create(&p, name, v, reply);
    }

    pub(crate) fn unlink(
        &self,
        parent: INodeNo,
        name: &OsStr,
        rmdir: bool,
        v: &Verdict,
        reply: ReplyEmpty,
    ) {
        fail_if_errno!(v, reply);
        let p = tri!(self.inode(parent), reply);
        let flags = if rmdir { libc::AT_REMOVEDIR } else { 0 };
        tri!(
            name_cstr(name, |n| sys::file::unlinkat(p.fd.as_fd(), n, flags)),
            reply
        );
        reply.ok();
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rename(
        &self,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: u32,
        v: &Verdict,
        reply: ReplyEmpty,
    ) {
        fail_if_errno!(v, reply);
        let p = tri!(self.inode(parent), reply);
        let np = tri!(self.inode(newparent), reply);
        let r = name_cstr(name, |a| {
            sys::with_cstr(newname, |b| {
                sys::file::renameat2(p.fd.as_fd(), a, np.fd.as_fd(), b, flags)
            })
        });
        tri!(r, reply);
        // Keep the names the rules see current (the kernel moves its dentry, no lookup follows).
        self.renamed(&np, newname);
        if flags & libc::RENAME_EXCHANGE != 0 {
            self.renamed(&p, name);
        }
        reply.ok();
    }

    /// `name` in `dir` now leads to an inode the kernel may know: remember it under that name.
    fn renamed(&self, dir: &Inode, name: &OsStr) {
        let st = sys::with_cstr(name, |c| {
            sys::file::fstatat(dir.fd.as_fd(), c, libc::AT_SYMLINK_NOFOLLOW)
        });
        if let Ok(st) = st
            && let Some(inode) = self.inodes.find(st.st_dev, st.st_ino)
        {
            inode.remember_name(dir.nodeid, name);
        }
    }

    pub(crate) fn link(
        &self,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        v: &Verdict,
        reply: ReplyEntry,
    ) {
        fail_if_errno!(v, reply);
        let inode = tri!(self.inode(ino), reply);
        let np = tri!(self.inode(newparent), reply);
        let r = name_cstr(newname, |n| {
            sys::file::linkat(inode.fd.as_fd(), c"", np.fd.as_fd(), n, libc::AT_EMPTY_PATH)
        });
        tri!(r, reply);
        let st = tri!(sys::file::fstat(inode.fd.as_fd()).map_err(errno), reply);
        let Some(same) = self.inodes.lookup_existing(st.st_dev, st.st_ino) else {
            // The entry was split off (rules changed): give the new name its own entry.
            return self.finish_create(&np, newname, v, reply);
        };
        let ttl = self.ttl(Target::Child(newparent.0, newname));
        // Attribute time 0: the kernel adjusts the link count it caches after this reply, so
        // make it fetch the real one.
        self.reply_entry(reply, &same, &st, v, ttl, Duration::ZERO);
    }

    /// Decide the mode of a new open of `inode` and count it. Returns the mode and whether the
    /// caller must create the backing id.
    fn choose_mode(&self, path: Option<&Path>, st: &mut super::inode::OpenState) -> OpenMode {
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

    fn count_open(&self, mode: OpenMode, st: &mut super::inode::OpenState) {
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
    /// round trip less per close). Nothing else needs it here: there is no writeback cache to
    /// flush, and POSIX locks are the kernel's own, released by `close` itself.
    fn noflush_flag(&self, path: Option<&Path>) -> FopenFlags {
        if self.may_touch_flush(path) {
            FopenFlags::empty()
        } else {
            FopenFlags::FOPEN_NOFLUSH
        }
    }

    pub(crate) fn open(
        &self,
        ino: INodeNo,
        flags: i32,
        kill_suidgid: bool,
        v: &Verdict,
        reply: ReplyOpen,
    ) {
        fail_if_errno!(v, reply);
        let inode = tri!(self.inode(ino), reply);
        let fd = tri!(
            self.open_shared(&inode, flags)
                .map_err(|e| self.fd_errno(e)),
            reply
        );
        if kill_suidgid && flags & libc::O_TRUNC != 0 {
            tri!(
                self.kill_suidgid(&inode, Some(fd.as_fd())).map_err(errno),
                reply
            );
        }
        let path = self.handle_path(&inode, None);
        let Ok(mut st) = inode.open.lock() else {
            return reply.error(Errno::EIO);
        };
        let (fh, mode, pflags) = self.register_open(&inode, &mut st, fd, flags, path, |fd| {
            reply.open_backing(fd)
        });
        match (mode, &st.backing) {
            (OpenMode::Passthrough, Some(id)) => reply.opened_passthrough(fh, pflags, id),
            _ => reply.opened(fh, Self::DIRECT | pflags),
        }
    }

    /// An fd of `inode` for a new handle opened with `flags`: the one already open for handles
    /// with the same [`share_key`] if any, else a new one, then shared. An `O_TRUNC` open still
    /// opens (and so truncates, with the backing file system's own checks and events).
    fn open_shared(&self, inode: &Inode, flags: i32) -> io::Result<Arc<OwnedFd>> {
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
    fn register_open(
        &self,
        inode: &Arc<Inode>,
        st: &mut super::inode::OpenState,
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
        let fh = self.handles.insert(Handle {
            fd,
            inode: inode.clone(),
            kind: HandleKind::File {
                mode,
                o_direct,
                noflush,
            },
            path,
            path_full,
        });
        (FileHandle(fh), mode, pflags)
    }

    /// FUSE_CREATE of `name` in `parent`, or with no name FUSE_TMPFILE (`open(dir, O_TMPFILE)`:
    /// an unnamed file, linkable later unless `O_EXCL`). Created as the caller, then opened.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create(
        &self,
        c: Caller,
        parent: INodeNo,
        name: Option<&OsStr>,
        mode: u32,
        umask: u32,
        flags: i32,
        v: &Verdict,
        reply: ReplyCreate,
    ) {
        fail_if_errno!(v, reply);
        let p = tri!(self.inode(parent), reply);
        let mode = self.prepare_umask(mode, umask) & 0o7777;
        let r = sys::thread::CallerCreds::enter(c.uid, c.gid).and_then(|_creds| match name {
            Some(name) => sys::with_cstr(name, |n| {
                let oflags = (flags & !libc::O_NOCTTY) | libc::O_CREAT;
                sys::file::openat(p.fd.as_fd(), n, oflags, mode)
            }),
            None => {
                // O_TMPFILE carries O_DIRECTORY; O_EXCL (never linkable) is kept.
                let drop = libc::O_CREAT | libc::O_NOCTTY | libc::O_TRUNC;
                let oflags = (flags & !drop) | libc::O_TMPFILE;
                sys::file::openat(p.fd.as_fd(), c".", oflags, mode)
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
                let path = self.handle_path(&inode, Some((parent.0, name)));
                (self.ttl(Target::Child(parent.0, name)), path)
            }
            // No name: rules see the path the kernel gives it ("DIR/#INO (deleted)").
            None => (
                self.ttl(Target::Node(parent.0)),
                self.handle_path(&inode, None),
            ),
        };
        let mut attr = attr_of(reported_ino(&inode), &st);
        if let Some(o) = &v.attr {
            apply_override(&mut attr, o);
        }
        let fd = inode.share(share_key(flags), fd);
        let Ok(mut ost) = inode.open.lock() else {
            return reply.error(Errno::EIO);
        };
        let (fh, mode, pflags) = self.register_open(&inode, &mut ost, fd, flags, path, |fd| {
            reply.open_backing(fd)
        });
        match (mode, &ost.backing) {
            (OpenMode::Passthrough, Some(id)) => {
                reply.created_passthrough(&ttl, &attr, GEN, fh, pflags, id)
            }
            _ => reply.created(&ttl, &attr, GEN, fh, Self::DIRECT | pflags),
        }
    }

    pub(crate) fn read(
        &self,
        fh: FileHandle,
        offset: u64,
        size: u32,
        v: &Verdict,
        reply: ReplyData,
    ) {
        fail_if_errno!(v, reply);
        let h = tri!(self.handle(fh), reply);
        let mut want = size as usize;
        if let Some(DataFault::Short(_)) = v.data {
            want = v.short_len(want);
        }
        let o_direct = matches!(h.kind, HandleKind::File { o_direct: true, .. });
        if o_direct {
            let Some(mut buf) = AlignedBuf::new(want) else {
                return reply.error(Errno::ENOMEM);
            };
            let b = buf.as_mut_slice();
            let n = tri!(
                sys::file::pread(h.fd.as_fd(), b, offset).map_err(errno),
                reply
            );
            v.apply_data(&mut b[..n]);
            return reply.data(&b[..n]);
        }
        // No data fault: let the kernel move the bytes (one copy instead of two).
        let reply = if v.data.is_none() && want >= SPLICE_MIN {
            match splice_read(h.fd.as_fd(), offset, want, reply) {
                Some(r) => r,
                None => return,
            }
        } else {
            reply
        };
        READ_BUF.with(|cell| {
            let Ok(mut buf) = cell.try_borrow_mut() else {
                return reply.error(Errno::EIO);
            };
            if buf.len() < want {
                buf.resize(want, 0);
            }
            match sys::file::pread(h.fd.as_fd(), &mut buf[..want], offset) {
                Ok(n) => {
                    v.apply_data(&mut buf[..n]);
                    reply.data(&buf[..n]);
                }
                Err(e) => reply.error(errno(e)),
            }
            // Do not keep huge buffers around.
            if buf.len() > (4 << 20) {
                *buf = Vec::new();
            }
        });
    }

    pub(crate) fn write(
        &self,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        kill_suidgid: bool,
        v: &Verdict,
        reply: ReplyWrite,
    ) {
        fail_if_errno!(v, reply);
        let h = tri!(self.handle(fh), reply);
        // Before the write, as the kernel's `file_remove_privs` does.
        if kill_suidgid {
            tri!(
                self.kill_suidgid(&h.inode, Some(h.fd.as_fd()))
                    .map_err(errno),
                reply
            );
        }
        let mut data = data;
        if let Some(DataFault::Short(_)) = v.data {
            data = &data[..v.short_len(data.len()).min(data.len())];
        }
        let o_direct = matches!(h.kind, HandleKind::File { o_direct: true, .. });
        let corrupt = matches!(v.data, Some(DataFault::Corrupt));
        let r = if o_direct {
            match AlignedBuf::new(data.len()) {
                Some(mut buf) => {
                    let b = buf.as_mut_slice();
                    b.copy_from_slice(data);
                    if corrupt {
                        v.apply_data(b);
                    }
                    sys::file::pwrite(h.fd.as_fd(), b, offset)
                }
                None => Err(io::Error::from_raw_os_error(libc::ENOMEM)),
            }
        } else if corrupt {
            let mut b = data.to_vec();
            v.apply_data(&mut b);
            sys::file::pwrite(h.fd.as_fd(), &b, offset)
        } else {
            sys::file::pwrite(h.fd.as_fd(), data, offset)
        };
        match r {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    pub(crate) fn flush(&self, fh: FileHandle, v: &Verdict, reply: ReplyEmpty) {
        fail_if_errno!(v, reply);
        if self.handles.get(fh.0).is_none() {
            return reply.error(Errno::EBADF);
        }
        reply.ok();
    }

    pub(crate) fn release(&self, fh: FileHandle, v: &Verdict, reply: ReplyEmpty) {
        // The handle is released whatever the rules say: the kernel forgets it anyway.
        if let Some(h) = self.handles.remove(fh.0)
            && let HandleKind::File { mode, noflush, .. } = h.kind
        {
            let c = &self.counters;
            if let Ok(mut st) = h.inode.open.lock() {
                if noflush {
                    st.noflush = st.noflush.saturating_sub(1);
                }
                match mode {
                    OpenMode::Passthrough => {
                        st.passthrough = st.passthrough.saturating_sub(1);
                        c.passthrough_now.fetch_sub(1, Ordering::Relaxed);
                        if st.passthrough == 0 {
                            st.backing = None;
                        }
                    }
                    OpenMode::Direct => {
                        st.direct = st.direct.saturating_sub(1);
                        c.direct_now.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            }
        }
        match v.errno {
            Some(e) => reply.error(Errno::from_i32(e)),
            None => reply.ok(),
        }
    }

    pub(crate) fn fsync(&self, fh: FileHandle, datasync: bool, v: &Verdict, reply: ReplyEmpty) {
        fail_if_errno!(v, reply);
        let h = tri!(self.handle(fh), reply);
        tri!(
            sys::file::fsync(h.fd.as_fd(), datasync).map_err(errno),
            reply
        );
        reply.ok();
    }

    /// FUSE_SYNCFS: `syncfs` of the backing file system.
    pub(crate) fn syncfs(&self, v: &Verdict, reply: ReplyEmpty) {
        fail_if_errno!(v, reply);
        let root = self.inodes.root().clone();
        // syncfs needs a real fd; the inode's is O_PATH.
        let r = sys::file::openat(root.fd.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .and_then(|d| sys::file::syncfs(d.as_fd()));
        tri!(r.map_err(errno), reply);
        reply.ok();
    }

    pub(crate) fn opendir(&self, ino: INodeNo, v: &Verdict, reply: ReplyOpen) {
        fail_if_errno!(v, reply);
        let inode = tri!(self.inode(ino), reply);
        let fd = tri!(
            sys::file::openat(
                inode.fd.as_fd(),
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
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    /// Walk the directory stream from `offset`, calling `add` per entry until it returns false
    /// (reply full). `add` gets (d_ino, d_off, d_type, name).
    fn walk_dir(
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
            let (reclen, off) = (d.reclen, d.off as u64);
            if !add(h.fd.as_fd(), d.ino, off, d.typ, OsStr::from_bytes(d.name)) {
                return Ok(());
            }
            s.start += reclen;
            s.next_offset = off;
        }
    }

    pub(crate) fn readdir(
        &self,
        fh: FileHandle,
        offset: u64,
        v: &Verdict,
        mut reply: ReplyDirectory,
    ) {
        fail_if_errno!(v, reply);
        let h = tri!(self.handle(fh), reply);
        let r = self.walk_dir(&h, offset, |dirfd, ino, off, typ, name| {
            let kind = match dtype_file_type(typ) {
                Some(k) => k,
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

    pub(crate) fn readdirplus(
        &self,
        fh: FileHandle,
        offset: u64,
        v: &Verdict,
        mut reply: ReplyDirectoryPlus,
    ) {
        fail_if_errno!(v, reply);
        let h = tri!(self.handle(fh), reply);
        let dir = h.inode.clone();
        let r = self.walk_dir(&h, offset, |dirfd, _ino, off, _typ, name| {
            let b = name.as_bytes();
            if b == b"." || b == b".." {
                // The kernel does not take a lookup reference for these.
                let st = match sys::with_cstr(name, |c| {
                    sys::file::fstatat(dirfd, c, libc::AT_SYMLINK_NOFOLLOW)
                }) {
                    Ok(st) => st,
                    Err(_) => return true,
                };
                let ino = if b == b"." {
                    reported_ino(&dir)
                } else {
                    st.st_ino
                };
                let attr = attr_of(ino, &st);
                return !reply.add(INodeNo(ino), off, name, &Duration::ZERO, &attr, GEN);
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
                    return !reply.add(INodeNo(0), off, name, &Duration::ZERO, &attr, GEN);
                }
            };
            let mut ttl = self.ttl(Target::Child(dir.nodeid, name));
            if self.must_relookup(&st) {
                ttl = Duration::ZERO;
            }
            let attr = attr_of(reported_ino(&inode), &st);
            if reply.add(INodeNo(attr.ino.0), off, name, &ttl, &attr, GEN) {
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

    pub(crate) fn statfs(&self, ino: INodeNo, v: &Verdict, reply: ReplyStatfs) {
        fail_if_errno!(v, reply);
        let inode = self
            .inode(ino)
            .unwrap_or_else(|_| self.inodes.root().clone());
        let s = tri!(sys::file::fstatfs(inode.fd.as_fd()).map_err(errno), reply);
        let (bfree, bavail) = if v.full {
            (0, 0)
        } else {
            (s.f_bfree, s.f_bavail)
        };
        reply.statfs(
            s.f_blocks,
            bfree,
            bavail,
            s.f_files,
            s.f_ffree,
            s.f_bsize as u32,
            s.f_namemax as u32,
            s.f_frsize as u32,
        );
    }

    pub(crate) fn access(&self, ino: INodeNo, mask: i32, v: &Verdict, reply: ReplyEmpty) {
        fail_if_errno!(v, reply);
        let inode = tri!(self.inode(ino), reply);
        let r = sys::file::faccessat(
            self.proc_fd.as_fd(),
            FdName::new(inode.fd.as_raw_fd()).as_cstr(),
            mask,
            libc::AT_EACCESS,
        );
        tri!(r.map_err(errno), reply);
        reply.ok();
    }

    /// Run an xattr call on `inode`: by its `/proc/self/fd` name relative to the thread's cwd
    /// (works for every file type), or through a real fd when the thread cannot have its own
    /// cwd.
    fn with_xattr_target<T>(
        &self,
        inode: &Inode,
        f: impl FnOnce(XTarget<'_>) -> io::Result<T>,
    ) -> io::Result<T> {
        if sys::thread::ensure_private_fs(self.proc_fd.as_fd()) {
            f(XTarget::Path(FdName::new(inode.fd.as_raw_fd()).as_cstr()))
        } else if inode.kind == libc::S_IFREG || inode.kind == libc::S_IFDIR {
            let fd = self.reopen(inode, libc::O_RDONLY | libc::O_NONBLOCK)?;
            f(XTarget::Fd(fd.as_fd()))
        } else {
            Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
        }
    }

    pub(crate) fn getxattr(
        &self,
        ino: INodeNo,
        name: &OsStr,
        size: u32,
        v: &Verdict,
        reply: ReplyXattr,
    ) {
        fail_if_errno!(v, reply);
        let inode = tri!(self.inode(ino), reply);
        let mut buf = vec![0u8; size as usize];
        let r = name_cstr(name, |n| {
            self.with_xattr_target(&inode, |t| match t {
                XTarget::Path(p) => sys::file::getxattr(p, n, &mut buf),
                XTarget::Fd(fd) => sys::file::fgetxattr(fd, n, &mut buf),
            })
        });
        let len = tri!(r, reply);
        if size == 0 {
            reply.size(len as u32);
        } else {
            reply.data(&buf[..len]);
        }
    }

    pub(crate) fn listxattr(&self, ino: INodeNo, size: u32, v: &Verdict, reply: ReplyXattr) {
        fail_if_errno!(v, reply);
        let inode = tri!(self.inode(ino), reply);
        let mut buf = vec![0u8; size as usize];
        let r = self.with_xattr_target(&inode, |t| match t {
            XTarget::Path(p) => sys::file::listxattr(p, &mut buf),
            XTarget::Fd(fd) => sys::file::flistxattr(fd, &mut buf),
        });
        let len = tri!(r.map_err(errno), reply);
        if size == 0 {
            reply.size(len as u32);
        } else {
            reply.data(&buf[..len]);
        }
    }

    pub(crate) fn setxattr(
        &self,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        v: &Verdict,
        reply: ReplyEmpty,
    ) {
        fail_if_errno!(v, reply);
        let inode = tri!(self.inode(ino), reply);
        let r = name_cstr(name, |n| {
            self.with_xattr_target(&inode, |t| match t {
                XTarget::Path(p) => sys::file::setxattr(p, n, value, flags),
                XTarget::Fd(fd) => sys::file::fsetxattr(fd, n, value, flags),
            })
        });
        tri!(r, reply);
        reply.ok();
    }

    pub(crate) fn removexattr(&self, ino: INodeNo, name: &OsStr, v: &Verdict, reply: ReplyEmpty) {
        fail_if_errno!(v, reply);
        let inode = tri!(self.inode(ino), reply);
        let r = name_cstr(name, |n| {
            self.with_xattr_target(&inode, |t| match t {
                XTarget::Path(p) => sys::file::removexattr(p, n),
                XTarget::Fd(fd) => sys::file::fremovexattr(fd, n),
            })
        });
        tri!(r, reply);
        reply.ok();
    }

    pub(crate) fn fallocate(
        &self,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        v: &Verdict,
        reply: ReplyEmpty,
    ) {
        fail_if_errno!(v, reply);
        let h = tri!(self.handle(fh), reply);
        tri!(
            sys::file::fallocate(h.fd.as_fd(), mode, offset, length).map_err(errno),
            reply
        );
        reply.ok();
    }

    pub(crate) fn lseek(
        &self,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        v: &Verdict,
        reply: ReplyLseek,
    ) {
        fail_if_errno!(v, reply);
        let h = tri!(self.handle(fh), reply);
        let off = tri!(
            sys::file::lseek(h.fd.as_fd(), offset, whence).map_err(errno),
            reply
        );
        reply.offset(off);
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn copy_file_range(
        &self,
        fh_in: FileHandle,
        off_in: u64,
        fh_out: FileHandle,
        off_out: u64,
        len: u64,
        flags: u32,
        v: &Verdict,
        reply: ReplyWrite,
    ) {
        fail_if_errno!(v, reply);
        let hi = tri!(self.handle(fh_in), reply);
        let ho = tri!(self.handle(fh_out), reply);
        let len = len.min(1 << 30) as usize;
        let n = tri!(
            sys::file::copy_file_range(hi.fd.as_fd(), off_in, ho.fd.as_fd(), off_out, len, flags)
                .map_err(errno),
            reply
        );
        reply.written(n as u32);
    }

    pub(crate) fn ioctl(
        &self,
        fh: FileHandle,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        v: &Verdict,
        reply: ReplyIoctl,
    ) {
        fail_if_errno!(v, reply);
        let h = tri!(self.handle(fh), reply);
        let fd = h.fd.as_fd();
        let out = out_size as usize;
        let int_in =
            |d: &[u8]| -> Option<u32> { Some(u32::from_ne_bytes(d.get(..4)?.try_into().ok()?)) };
        let cmd = cmd as libc::Ioctl;
        if cmd == libc::FS_IOC_GETFLAGS || cmd == libc::FS_IOC32_GETFLAGS {
            let f = tri!(sys::file::get_inode_flags(fd).map_err(errno), reply);
            let b = f.to_ne_bytes();
            reply.ioctl(0, &b[..out.min(4)]);
        } else if cmd == libc::FS_IOC_SETFLAGS || cmd == libc::FS_IOC32_SETFLAGS {
            let Some(f) = int_in(in_data) else {
                return reply.error(Errno::EFAULT);
            };
            tri!(sys::file::set_inode_flags(fd, f).map_err(errno), reply);
            reply.ioctl(0, &[]);
        } else if cmd == libc::FS_IOC_GETVERSION || cmd == libc::FS_IOC32_GETVERSION {
            let g = tri!(sys::file::get_inode_version(fd).map_err(errno), reply);
            let b = g.to_ne_bytes();
            reply.ioctl(0, &b[..out.min(4)]);
        } else if cmd == sys::file::FS_IOC_FSGETXATTR {
            let x = tri!(sys::file::get_fsxattr(fd).map_err(errno), reply);
            reply.ioctl(0, &x[..out.min(x.len())]);
        } else if cmd == sys::file::FS_IOC_FSSETXATTR {
            let Some(x) = in_data
                .get(..28)
                .and_then(|d| <sys::file::FsXattr>::try_from(d).ok())
            else {
                return reply.error(Errno::EFAULT);
            };
            tri!(sys::file::set_fsxattr(fd, &x).map_err(errno), reply);
            reply.ioctl(0, &[]);
        } else {
            reply.error(Errno::ENOTTY);
        }
    }
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
