//! One method per FUSE request. The dispatcher calls them through [`FsInner::answer`], which
//! has already answered an errno fault and resolved the handle or inode the request names; they
//! get that, the request's other arguments, the [`Verdict`] where its other faults apply, and
//! the reply. They run either in a FUSE thread or, after a latency fault, in a delay worker;
//! they never panic and always reply.
//!
//! Grouped by family: [`entries`] (lookup, create and remove names), [`attrs`] (getattr,
//! setattr, statx, access), [`open`] (open modes, create), [`data`] (I/O on open files),
//! [`dirs`] (directory handles), [`xattrs`], [`special`] (statfs, syncfs, ioctl). This module
//! holds what they share: INIT negotiation, lookup, the entry and attribute replies.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::handle::Handle;
use super::inode::{Inode, ROOT};
use super::{FsInner, Target, apply_override, attr_of, errno, reported_ino};
use crate::fuse::abi::init as F;
use crate::fuse::{
    Errno, FileAttr, FileHandle, Generation, INodeNo, KernelConfig, Reply, ReplyAttr, ReplyEntry,
};
use crate::rules::Verdict;
use crate::sys;
use crate::sys::FdName;

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

mod attrs;
mod data;
mod dirs;
pub(crate) mod entries;
mod open;
mod special;
mod xattrs;

/// Generation of the entries that name no inode of the table: negative entries, "." and ".."
/// in READDIRPLUS (the kernel takes no reference for either).
const NO_GEN: Generation = Generation(0);

fn name_cstr<T>(
    name: &OsStr,
    f: impl FnOnce(&std::ffi::CStr) -> io::Result<T>,
) -> Result<T, Errno> {
    sys::with_cstr(name, f).map_err(errno)
}

/// The attributes replied for `inode` whose backing stat is `st`: the verdict's `attr`
/// overrides applied.
fn attr_for(inode: &Inode, st: &crate::sys::file::Stat, v: &Verdict) -> FileAttr {
    let mut attr = attr_of(reported_ino(inode), st);
    if let Some(o) = &v.attr {
        apply_override(&mut attr, o);
    }
    attr
}

/// What a request names that must exist before it is served: an open handle (EBADF if not),
/// an inode (ESTALE if not), two of them, or nothing.
pub(crate) trait Resolve {
    type Out;
    fn resolve(self, fs: &FsInner) -> Result<Self::Out, Errno>;
}

impl Resolve for () {
    type Out = ();
    fn resolve(self, _: &FsInner) -> Result<(), Errno> {
        Ok(())
    }
}

impl Resolve for FileHandle {
    type Out = Arc<Handle>;
    fn resolve(self, fs: &FsInner) -> Result<Arc<Handle>, Errno> {
        fs.handles.get(self.0).ok_or(Errno::EBADF)
    }
}

impl Resolve for INodeNo {
    type Out = Arc<Inode>;
    fn resolve(self, fs: &FsInner) -> Result<Arc<Inode>, Errno> {
        fs.inode(self)
    }
}

/// Both, the first first (its error wins).
impl<A: Resolve, B: Resolve> Resolve for (A, B) {
    type Out = (A::Out, B::Out);
    fn resolve(self, fs: &FsInner) -> Result<Self::Out, Errno> {
        Ok((self.0.resolve(fs)?, self.1.resolve(fs)?))
    }
}

impl FsInner {
    /// Serve a request whose verdict is `v`: reply with the verdict's errno if it has one, else
    /// resolve what it names (`key`) and hand that and the reply to the handler `f`, or reply
    /// with the error of the lookup.
    pub(crate) fn answer<K: Resolve, R: Reply>(
        &self,
        v: &Verdict,
        key: K,
        reply: R,
        f: impl FnOnce(K::Out, R),
    ) {
        let Some(reply) = self.crash_rule(v, reply) else {
            return;
        };
        if let Some(e) = v.errno {
            reply.error(Errno::from_i32(e));
        } else {
            match key.resolve(self) {
                Ok(x) => f(x, reply),
                Err(e) => reply.error(e),
            }
        }
    }

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
            // File handles (`name_to_handle_at`) of files the kernel has evicted come back as a
            // LOOKUP of "." in their node id: served while the node is in the table (ESTALE
            // otherwise), and the generation tells a reused inode number apart.
            F::EXPORT_SUPPORT,
        ] {
            config.want(f);
        }
        if self.cfg.forward_locks {
            // Both or neither: flock forwarded while POSIX locks stay local would make the two
            // kinds conflict differently than on the backing file.
            if config.offers(F::POSIX_LOCKS | F::FLOCK_LOCKS) {
                config.want(F::POSIX_LOCKS | F::FLOCK_LOCKS);
                self.locks_on.store(true, Ordering::Relaxed);
            } else {
                tracing::warn!("kernel lacks FUSE lock forwarding; locks stay local to the mount");
            }
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

    /// Open a real fd of `inode` through its `/proc/self/fd` magic link.
    pub(super) fn reopen(&self, inode: &Inode, flags: i32) -> io::Result<OwnedFd> {
        let flags = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_NOFOLLOW);
        sys::file::openat(
            self.proc_fd.as_fd(),
            FdName::new(inode.fd().as_raw_fd()).as_cstr(),
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
    ) -> Result<(Arc<Inode>, crate::sys::file::Stat), Errno> {
        let fd = sys::with_cstr(name, |c| {
            sys::file::openat(parent.fd().as_fd(), c, libc::O_PATH | libc::O_NOFOLLOW, 0)
        })
        .map_err(|e| self.fd_errno(e))?;
        let st = sys::file::fstat(fd.as_fd()).map_err(errno)?;
        let inode = self.inodes.insert(fd, &st).ok_or(Errno::EIO)?;
        inode.remember_name(parent.nodeid, name);
        Ok((inode, st))
    }

    /// Look up `name` in `parent`: stat first (a hit in the table costs one syscall), open an
    /// `O_PATH` fd only for inodes the table does not hold yet.
    fn do_lookup(
        &self,
        parent: &Inode,
        name: &OsStr,
    ) -> Result<(Arc<Inode>, crate::sys::file::Stat), Errno> {
        if name.as_bytes() == b".." {
            return self.lookup_parent(parent);
        }
        let st = name_cstr(name, |c| {
            sys::file::fstatat(parent.fd().as_fd(), c, libc::AT_SYMLINK_NOFOLLOW)
        })?;
        if let Some(inode) = self.inodes.lookup_existing(st.st_dev, st.st_ino) {
            inode.remember_name(parent.nodeid, name);
            return Ok((inode, st));
        }
        self.entry_of_new(parent, name)
    }

    /// LOOKUP of "." in node `nodeid`: the kernel decodes a file handle (`open_by_handle_at`)
    /// of an inode it evicted (FUSE_EXPORT_SUPPORT). The node itself if the table still holds
    /// it, else its backing inode found again through the backing file handle kept when the
    /// kernel forgot it (with the same node id and generation, so the kernel accepts it);
    /// ESTALE if it is gone (deleted, or forgotten too long ago).
    fn lookup_node(&self, nodeid: u64) -> Result<(Arc<Inode>, crate::sys::file::Stat), Errno> {
        if let Some(inode) = self.inodes.get(nodeid)
            && self.inodes.lookup_again(&inode)
        {
            return match sys::file::fstat(inode.fd().as_fd()) {
                Ok(st) => Ok((inode, st)),
                Err(e) => {
                    self.inodes.forget(nodeid, 1);
                    Err(errno(e))
                }
            };
        }
        let (kind, bytes) = self.inodes.forgotten(nodeid).ok_or(Errno::ESTALE)?;
        let root = match self.export_fd.get() {
            Some(fd) => fd,
            None => {
                let fd = self.reopen(self.inodes.root(), libc::O_RDONLY | libc::O_DIRECTORY);
                let fd = fd.map_err(|e| self.fd_errno(e))?;
                self.export_fd.get_or_init(|| fd)
            }
        };
        let fd = sys::file::open_by_handle(root.as_fd(), (kind, &bytes), libc::O_PATH);
        let fd = fd.map_err(|e| match e.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE) => self.fd_errno(e),
            _ => Errno::ESTALE,
        })?;
        let st = sys::file::fstat(fd.as_fd()).map_err(errno)?;
        let inode = self.inodes.insert(fd, &st).ok_or(Errno::EIO)?;
        if inode.nodeid != nodeid {
            // Its number is another entry's node id now: this node cannot come back.
            self.inodes.forget(inode.nodeid, 1);
            return Err(Errno::ESTALE);
        }
        Ok((inode, st))
    }

    /// LOOKUP of ".." in `dir`: the kernel reconnects a directory it decoded from a file handle
    /// to the root. Never leaves the mount, and never goes through it: a plain `..` from a child
    /// of the backing root would land on ChaosFS itself, mounted over it, so the parent is
    /// opened without crossing mounts and a crossing from the root's file system is the root
    /// (node 1, see `reply_entry`). The parent of a directory at the root of another file system
    /// mounted under the backing directory is not resolved (ESTALE).
    fn lookup_parent(&self, dir: &Inode) -> Result<(Arc<Inode>, crate::sys::file::Stat), Errno> {
        let root = self.inodes.root();
        if dir.nodeid == ROOT {
            return Err(Errno::ENOENT);
        }
        match sys::file::parent_same_mount(dir.fd().as_fd()) {
            Ok(fd) => {
                let st = sys::file::fstat(fd.as_fd()).map_err(errno)?;
                match self.inodes.lookup_existing(st.st_dev, st.st_ino) {
                    Some(inode) => Ok((inode, st)),
                    None => Ok((self.inodes.insert(fd, &st).ok_or(Errno::EIO)?, st)),
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) && dir.dev == root.dev => {
                let st = sys::file::fstat(root.fd().as_fd()).map_err(errno)?;
                Ok((root.clone(), st))
            }
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => Err(Errno::ESTALE),
            Err(e) => Err(self.fd_errno(e)),
        }
    }

    /// The attributes of `dir`'s parent (`dirfd` is an fd of `dir`) without crossing a mount:
    /// the backing root's for a child of it (what [`Self::lookup_parent`] answers), never
    /// through ChaosFS itself.
    pub(crate) fn parent_stat(
        &self,
        dir: &Inode,
        dirfd: std::os::fd::BorrowedFd<'_>,
    ) -> std::io::Result<crate::sys::file::Stat> {
        let root = self.inodes.root();
        match sys::file::parent_same_mount(dirfd) {
            Ok(fd) => sys::file::fstat(fd.as_fd()),
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) && dir.dev == root.dev => {
                sys::file::fstat(root.fd().as_fd())
            }
            Err(e) => Err(e),
        }
    }

    fn reply_entry(
        &self,
        reply: ReplyEntry,
        inode: &Inode,
        st: &crate::sys::file::Stat,
        v: &Verdict,
        ttl: Duration,
        attr_ttl: Duration,
    ) {
        let attr = attr_for(inode, st, v);
        let ttl = if self.must_relookup(st) {
            Duration::ZERO
        } else {
            ttl
        };
        let ttls = (&attr_ttl, &ttl);
        reply.node_entry(INodeNo(inode.nodeid), ttls, &attr, inode.generation);
    }

    /// A file with several names, while rules select by path: the kernel must look the name up
    /// on every path walk, so an open is attributed to the name it came through (the open
    /// request itself names no path).
    fn must_relookup(&self, st: &crate::sys::file::Stat) -> bool {
        st.st_nlink > 1
            && st.st_mode & libc::S_IFMT != libc::S_IFDIR
            && self.rules.load().uses_paths
    }

    /// FUSE_GETATTR (and the reply of setattr): stat `inode` and reply with its attributes
    /// (overrides applied).
    pub(crate) fn reply_attr(&self, inode: &Inode, v: &Verdict, reply: ReplyAttr) {
        let st = tri!(sys::file::fstat(inode.fd().as_fd()).map_err(errno), reply);
        reply.attr(
            &self.ttl(Target::Node(inode.nodeid)),
            &attr_for(inode, &st, v),
        );
    }
}
