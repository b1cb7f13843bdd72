//! The passthrough file system: FUSE requests served from a backing directory fd with `*at()`
//! calls, with the fault rules applied to each request.
//!
//! * [`inode`]: backing inodes the kernel knows, keyed by `(st_dev, st_ino)`, each with an
//!   `O_PATH` fd.
//! * [`handle`]: open files and directories, each with a real fd (a file's shared with the
//!   handles of its inode opened with the same flags).
//! * [`delay`]: requests hit by a latency fault wait there, never in a FUSE thread.
//! * `ops`: one method per request, by family (entries, attrs, open, data, dirs, xattrs,
//!   special); `dispatch`: the [`crate::fuse::Filesystem`] impl that routes each request to its
//!   family, evaluates the rules once per request and runs or defers the op.

mod crash;
mod delay;
mod dispatch;
mod handle;
mod inode;
mod locks;
mod ops;
mod watch;

use std::borrow::Cow;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::fuse::{Errno, FileAttr, FileType, INodeNo, Notifier};
use arc_swap::ArcSwap;

pub(crate) use delay::Scheduler;
use handle::HandleTable;
pub use handle::OpenMode;
use inode::{Inode, InodeTable, ROOT};
pub use locks::ForwardedLock;

use crate::rules::{AttrOverride, Call, Op, RuleSet, Verdict};
use crate::sys;

pub use crash::{CrashOptions, CrashedFile, WriteFate};
pub(crate) use dispatch::ChaosFs;

/// Settings of the file system part of a server.
#[derive(Debug, Clone)]
pub(crate) struct FsConfig {
    /// Entry and attribute cache time for paths no rule's metadata ops can touch.
    pub ttl: Duration,
    /// The same while outside changes are watched (`watch`) and invalidated as they happen.
    pub watched_ttl: Duration,
    /// Use kernel passthrough for files no rule can touch.
    pub passthrough: bool,
    /// Forward POSIX locks and flock to the backing files.
    pub forward_locks: bool,
}

/// Counts of file opens by mode since the server started, and how many are open now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenStats {
    /// Opens (and creates) served in kernel passthrough mode.
    pub passthrough: u64,
    /// Opens (and creates) served with direct I/O.
    pub direct: u64,
    /// Opens that had to take passthrough mode although the rules could touch the file, because
    /// the inode was already open in passthrough mode (the kernel requires one mode per inode).
    pub forced_passthrough: u64,
    /// Handles open now in passthrough mode.
    pub passthrough_now: u64,
    /// Handles open now in direct I/O mode.
    pub direct_now: u64,
}

/// `FUSE_INTERRUPT`s received since the server started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InterruptStats {
    /// Interrupts the kernel sent (a caller got a signal while a request of its was out).
    pub seen: u64,
    /// Requests answered early because of one (EINTR: a dying caller's latency fault, a lock
    /// wait).
    pub answered: u64,
}

#[derive(Default)]
struct Counters {
    interrupts: AtomicU64,
    interrupts_answered: AtomicU64,
    passthrough: AtomicU64,
    direct: AtomicU64,
    forced: AtomicU64,
    passthrough_now: AtomicU64,
    direct_now: AtomicU64,
}

/// Who sent a request (from the FUSE request header).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl Caller {
    fn of(req: &crate::fuse::Request) -> Caller {
        Caller {
            uid: req.uid(),
            gid: req.gid(),
            pid: req.pid(),
        }
    }
}

/// A file currently open in a way new rules cannot fully see until it is reopened: in
/// passthrough mode while the new rules may touch its data (its reads and writes bypass them), or
/// without FLUSH while they may select flush on it (its closes send none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Escaped {
    /// The node id (= `st_ino` as seen through the mount) of the file.
    pub ino: u64,
    /// Its path relative to the mount root.
    pub path: PathBuf,
}

/// What [`crate::server::Server::update_rules`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateReport {
    /// Files open in passthrough mode that the new rules may touch, or opened without FLUSH that
    /// the new rules may select flush on. Until the processes holding them reopen them, their
    /// reads and writes (or closes) bypass the rules; a reopen (by path) gets the mode and
    /// flags the new rules call for.
    pub escaped: Vec<Escaped>,
}

/// The rules in force plus what the file system derives from them once per update (so no
/// request has to work it out again).
pub(crate) struct Loaded {
    pub set: Arc<RuleSet>,
    /// Some rule selects by glob ([`RuleSet::uses_paths`]).
    pub uses_paths: bool,
    /// Some glob has a `/` and matches whole relative paths. When false, every glob matches
    /// only a file's own name, so [`Call::path`] can be that name: no path is rebuilt from the
    /// kernel's view of an fd (a `readlink` of `/proc/self/fd/N`) on the request path.
    pub full_paths: bool,
    /// Which files a rule could select FLUSH on (passthrough opens of other files are answered
    /// with `FOPEN_NOFLUSH`, sparing a round trip per close).
    flush: Selector,
}

/// A conservative "could some rule select this op on this path" check for one op.
enum Selector {
    Never,
    Always,
    /// Globs of the rules whose ops include the op: (matches whole paths, matcher).
    Globs(Vec<(bool, globset::GlobMatcher)>),
}

impl Selector {
    fn for_op(set: &RuleSet, op: Op) -> Selector {
        let mut globs = Vec::new();
        for r in &set.spec().rules {
            let Ok(ops) = r.action_kind().and_then(|k| r.op_set(k)) else {
                return Selector::Always;
            };
            if !ops.contains(op) {
                continue;
            }
            match &r.glob {
                None => return Selector::Always,
                Some(g) => match g.matcher() {
                    Some(m) => globs.push((g.is_path_glob(), m)),
                    None => return Selector::Always,
                },
            }
        }
        if globs.is_empty() {
            Selector::Never
        } else {
            Selector::Globs(globs)
        }
    }

    /// `path` is a whole relative path, or only the name when no glob needs more.
    fn may_match(&self, path: &Path) -> bool {
        match self {
            Selector::Never => false,
            Selector::Always => true,
            Selector::Globs(g) => g.iter().any(|(whole, m)| {
                if *whole {
                    m.is_match(path)
                } else {
                    path.file_name().is_some_and(|n| m.is_match(n))
                }
            }),
        }
    }
}

impl Loaded {
    fn new(set: Arc<RuleSet>) -> Loaded {
        let full_paths = set
            .spec()
            .rules
            .iter()
            .any(|r| r.glob.as_ref().is_some_and(|g| g.is_path_glob()));
        Loaded {
            uses_paths: set.uses_paths(),
            full_paths,
            flush: Selector::for_op(&set, Op::Flush),
            set,
        }
    }
}

pub(crate) struct FsInner {
    inodes: InodeTable,
    handles: HandleTable,
    rules: ArcSwap<Loaded>,
    /// `/proc/self/fd` of this process, opened at construction (`O_PATH | O_DIRECTORY`).
    proc_fd: OwnedFd,
    /// `/proc` as this process saw it at construction (`O_PATH | O_DIRECTORY`): callers' thread
    /// ids are in the pid namespace of the mount, which is the server's own.
    proc_root: OwnedFd,
    /// The backing root as `readlink(/proc/self/fd/N)` shows it, for paths given to the rules.
    root_path: Vec<u8>,
    notifier: OnceLock<Notifier>,
    cfg: FsConfig,
    /// The kernel accepted FUSE_PASSTHROUGH.
    passthrough_ok: AtomicBool,
    /// The kernel accepted FUSE_POSIX_LOCKS: locks are forwarded to the backing files.
    locks_on: AtomicBool,
    locks: Arc<locks::Locks>,
    counters: Counters,
    sched: Scheduler,
    /// A [`FsInner::reclaim_fds`] pass is running.
    reclaiming: Arc<AtomicBool>,
    /// The backing root opened for reading, the `mount_fd` of `open_by_handle_at` (which
    /// refuses `O_PATH` fds); opened when first needed.
    export_fd: OnceLock<OwnedFd>,
    /// Crash mode's undo log (docs/crash.md); empty unless the rules ask for crash mode.
    crash: Arc<crash::CrashLog>,
    /// Outside changes to the backing file system are watched ([`FsInner::start_watch`]).
    watching: AtomicBool,
    /// Outside changes seen and invalidations sent for them.
    outside: AtomicU64,
}

pub(crate) use watch::Watcher;

/// The errno a caller sees for a failed backing call: the real one, except that the server
/// running out of fds in its own table (EMFILE) is reported as ENFILE, "the system's file table
/// is full": the caller's own table may have room, and an EMFILE would make it think otherwise.
fn errno(e: io::Error) -> Errno {
    match e.raw_os_error() {
        Some(libc::EMFILE) => Errno::from_i32(libc::ENFILE),
        Some(n) => Errno::from_i32(n),
        None => Errno::EIO,
    }
}

fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn dtype_file_type(t: u8) -> Option<FileType> {
    Some(match t {
        libc::DT_DIR => FileType::Directory,
        libc::DT_REG => FileType::RegularFile,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        libc::DT_SOCK => FileType::Socket,
        _ => return None,
    })
}

fn systime(secs: i64, nsecs: u64) -> SystemTime {
    let nsecs = u32::try_from(nsecs.min(999_999_999)).unwrap_or(0);
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs.unsigned_abs(), nsecs)
    } else {
        UNIX_EPOCH - Duration::new(secs.unsigned_abs(), 0) + Duration::new(0, nsecs)
    }
}

/// The kernel's `new_encode_dev`, which FUSE uses for `rdev`.
fn encode_dev(dev: u64) -> u32 {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// The kernel's `new_decode_dev`.
fn decode_dev(dev: u32) -> u64 {
    let major = (dev & 0xfff00) >> 8;
    let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    libc::makedev(major, minor)
}

/// A size or block count from `stat`/`statvfs` (`off_t`, `blkcnt_t`): never negative from
/// the kernel; 0 is only a formal fallback.
pub(crate) fn stat_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A number the kernel keeps in 32 bits (link count, block sizes, name length) that libc
/// reports in a wider field; it fits, and `u32::MAX` is only a saturating fallback.
pub(crate) fn stat_u32<T: TryInto<u32>>(v: T) -> u32 {
    v.try_into().unwrap_or(u32::MAX)
}

/// The st_ino reported for an inode: its node id, except the root, whose node id is fixed at 1.
fn reported_ino(inode: &Inode) -> u64 {
    if inode.nodeid == ROOT {
        inode.ino
    } else {
        inode.nodeid
    }
}

fn attr_of(ino: u64, st: &crate::sys::file::Stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: stat_u64(st.st_size),
        blocks: stat_u64(st.st_blocks),
        atime: systime(st.st_atime, st.st_atime_nsec),
        mtime: systime(st.st_mtime, st.st_mtime_nsec),
        ctime: systime(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: file_type(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: stat_u32(st.st_nlink),
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: encode_dev(st.st_rdev),
        blksize: stat_u32(st.st_blksize),
        flags: 0,
    }
}

/// The attributes of a negative entry (node id 0: "no such name", cacheable): all zero, as
/// from an all-zero `struct stat`.
fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: file_type(0),
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: encode_dev(0),
        blksize: 0,
        flags: 0,
    }
}

fn apply_override(attr: &mut FileAttr, o: &AttrOverride) {
    if let Some(p) = o.perm {
        attr.perm = p & 0o7777;
    }
    if let Some(u) = o.uid {
        attr.uid = u;
    }
    if let Some(g) = o.gid {
        attr.gid = g;
    }
    if let Some(s) = o.size {
        attr.size = s;
    }
    if let Some(t) = o.atime {
        attr.atime = systime(t, 0);
    }
    if let Some(t) = o.mtime {
        attr.mtime = systime(t, 0);
    }
    if let Some(t) = o.ctime {
        attr.ctime = systime(t, 0);
    }
    if let Some(n) = o.nlink {
        attr.nlink = n;
    }
    if let Some(k) = o.kind {
        attr.kind = file_type(k);
    }
}

/// What a request is about, for building [`Call::path`].
#[derive(Clone, Copy)]
pub(crate) enum Target<'a> {
    Node(u64),
    /// An open file handle (falls back to the node).
    File(u64, u64),
    Child(u64, &'a OsStr),
}

impl FsInner {
    pub(crate) fn new(backing: OwnedFd, rules: RuleSet, cfg: FsConfig) -> crate::Result<Self> {
        let st = sys::file::fstat(backing.as_fd())
            .map_err(|e| crate::Error::sys("stat backing directory", e))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(crate::Error::sys(
                "backing fd",
                io::Error::from_raw_os_error(libc::ENOTDIR),
            ));
        }
        let proc_fd = sys::file::open(c"/proc/self/fd", libc::O_PATH | libc::O_DIRECTORY)
            .map_err(|e| crate::Error::sys("open /proc/self/fd", e))?;
        let proc_root = sys::file::open(c"/proc", libc::O_PATH | libc::O_DIRECTORY)
            .map_err(|e| crate::Error::sys("open /proc", e))?;
        let root_path = sys::file::readlinkat(
            proc_fd.as_fd(),
            sys::FdName::new(backing.as_raw_fd()).as_cstr(),
        )
        .map_err(|e| crate::Error::sys("readlink backing fd", e))?;
        Ok(FsInner {
            inodes: InodeTable::new(backing, &st),
            handles: HandleTable::new(),
            rules: ArcSwap::from_pointee(Loaded::new(Arc::new(rules))),
            proc_fd,
            proc_root,
            root_path,
            notifier: OnceLock::new(),
            cfg,
            passthrough_ok: AtomicBool::new(false),
            locks_on: AtomicBool::new(false),
            locks: locks::Locks::new(),
            counters: Counters::default(),
            sched: Scheduler::new(),
            reclaiming: Arc::new(AtomicBool::new(false)),
            export_fd: OnceLock::new(),
            crash: Arc::default(),
            watching: AtomicBool::new(false),
            outside: AtomicU64::new(0),
        })
    }

    pub(crate) fn scheduler(&self) -> &Scheduler {
        &self.sched
    }

    /// Park `work` with its `reply` in the delay scheduler for `delay`; if the caller dies
    /// meanwhile (an interrupt for the request, the caller with a fatal signal pending), the
    /// request is answered with EINTR at once.
    pub(crate) fn park<R, F>(&self, delay: Duration, reply: R, work: F)
    where
        R: crate::fuse::Reply + Send + 'static,
        F: FnOnce(R) + Send + 'static,
    {
        let key = reply
            .request()
            .map(|(unique, pid)| delay::Key { unique, pid });
        self.sched
            .defer(delay, key, Box::new(delay::Job::new(reply, work)), |pid| {
                self.caller_dying(pid)
            });
    }

    /// `FUSE_INTERRUPT` for request `unique`: answer it now if it is parked in a latency fault
    /// and its caller is dying. A signal the caller survives leaves the delay as it is: a slow
    /// disk does not cut a read short on a signal either.
    /// A lock wait (SETLKW) is always woken, with EINTR, as `fcntl` natively returns on a
    /// signal.
    pub(crate) fn interrupt(&self, unique: u64) {
        self.counters.interrupts.fetch_add(1, Ordering::Relaxed);
        let mut parked = false;
        let waited = self.interrupt_lock_wait(unique, || {
            parked = self.sched.interrupt(unique, |pid| self.caller_dying(pid));
        });
        if waited || parked {
            self.counters
                .interrupts_answered
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(unique, "interrupted request answered early");
        }
    }

    pub(crate) fn interrupt_stats(&self) -> InterruptStats {
        InterruptStats {
            seen: self.counters.interrupts.load(Ordering::Relaxed),
            answered: self.counters.interrupts_answered.load(Ordering::Relaxed),
        }
    }

    /// Whether thread `pid` (of the mount's pid namespace) has SIGKILL pending, which is how the
    /// kernel marks every thread of a process that is exiting from a fatal signal. A thread
    /// that cannot be looked up (pid 0: outside our pid namespace) counts as dying: an
    /// interrupted caller must never wait out a long delay unkillable.
    fn caller_dying(&self, pid: u32) -> bool {
        const SIGKILL_BIT: u64 = 1 << (libc::SIGKILL - 1);
        let Some(text) = self.proc_status(pid) else {
            return true;
        };
        procinfo::task::SigMasks::parse(&text).pending & SIGKILL_BIT != 0
    }

    /// `/proc/PID/status` of thread `pid` of the mount's pid namespace (`None` for pid 0, a
    /// thread outside it, or one gone).
    fn proc_status(&self, pid: u32) -> Option<String> {
        if pid == 0 {
            return None;
        }
        let path = format!("{pid}/status");
        let text = sys::with_cstr(OsStr::new(&path), |c| {
            sys::file::read_small(self.proc_root.as_fd(), c)
        })
        .ok()?;
        Some(String::from_utf8_lossy(&text).into_owned())
    }

    pub(crate) fn set_notifier(&self, n: Notifier) {
        let _ = self.notifier.set(n);
    }

    pub(crate) fn rules(&self) -> Arc<RuleSet> {
        self.rules.load().set.clone()
    }

    pub(crate) fn open_stats(&self) -> OpenStats {
        let c = &self.counters;
        OpenStats {
            passthrough: c.passthrough.load(Ordering::Relaxed),
            direct: c.direct.load(Ordering::Relaxed),
            forced_passthrough: c.forced.load(Ordering::Relaxed),
            passthrough_now: c.passthrough_now.load(Ordering::Relaxed),
            direct_now: c.direct_now.load(Ordering::Relaxed),
        }
    }

    /// Number of inodes the kernel currently holds (diagnostics).
    pub(crate) fn inode_count(&self) -> usize {
        self.inodes.len()
    }

    /// The mode the open handles of the file with node id `ino` use, if it has any.
    pub(crate) fn open_mode_of(&self, ino: u64) -> Option<OpenMode> {
        let inode = self.inode_by_reported(ino)?;
        let st = inode.open.lock().ok()?;
        if st.passthrough > 0 {
            Some(OpenMode::Passthrough)
        } else if st.direct > 0 {
            Some(OpenMode::Direct)
        } else {
            None
        }
    }

    fn inode_by_reported(&self, ino: u64) -> Option<Arc<Inode>> {
        if ino == self.inodes.root().ino {
            return Some(self.inodes.root().clone());
        }
        self.inodes.get(ino)
    }

    fn inode(&self, nodeid: INodeNo) -> Result<Arc<Inode>, Errno> {
        self.inodes.get(nodeid.0).ok_or(Errno::ESTALE)
    }

    // ----- paths for the rules -----

    /// Path of an inode relative to the mount root ("" for the root), from the kernel's view of
    /// its `O_PATH` fd.
    fn path_of(&self, inode: &Inode) -> PathBuf {
        if inode.nodeid == ROOT {
            return PathBuf::new();
        }
        let node_fd = inode.fd();
        let name = sys::FdName::new(node_fd.as_raw_fd());
        let Ok(mut p) = sys::file::readlinkat(self.proc_fd.as_fd(), name.as_cstr()) else {
            return PathBuf::new();
        };
        const DELETED: &[u8] = b" (deleted)";
        if p.ends_with(DELETED) {
            p.truncate(p.len() - DELETED.len());
        }
        let root = self.root_path.as_slice();
        let rel: &[u8] = if root == b"/" {
            p.strip_prefix(b"/").unwrap_or(&p)
        } else if let Some(rest) = p.strip_prefix(root) {
            rest.strip_prefix(b"/").unwrap_or(rest)
        } else {
            p.strip_prefix(b"/").unwrap_or(&p)
        };
        PathBuf::from(OsStr::from_bytes(rel))
    }

    /// The path an open of `inode` most likely came through: the name the kernel last looked it
    /// up by (differs from [`FsInner::path_of`] for hard links), if that name still leads to it.
    fn open_path(&self, inode: &Inode, full: bool) -> PathBuf {
        let remembered = inode.name.lock().ok().and_then(|n| n.clone());
        if let Some((parent, name)) = remembered
            && let Some(p) = self.inodes.get(parent)
        {
            let same = sys::with_cstr(&name, |c| {
                sys::file::fstatat(p.fd().as_fd(), c, libc::AT_SYMLINK_NOFOLLOW)
            })
            .is_ok_and(|st| st.st_dev == inode.dev && st.st_ino == inode.ino);
            if same {
                return self
                    .rule_path(Target::Child(parent, &name), full)
                    .into_owned();
            }
        }
        if full {
            self.path_of(inode)
        } else {
            self.name_of(inode)
        }
    }

    /// The path the rules see for `t`: the whole relative path when `full`, else only the
    /// file name (enough while every glob matches names, see [`Loaded::full_paths`]).
    fn rule_path<'a>(&self, t: Target<'a>, full: bool) -> Cow<'a, Path> {
        match t {
            Target::File(fh, n) => match self.handles.get(fh) {
                Some(h) if h.path.is_some() && (h.path_full || !full) => {
                    Cow::Owned(h.path.as_deref().map(Path::to_path_buf).unwrap_or_default())
                }
                _ => self.rule_path(Target::Node(n), full),
            },
            Target::Node(n) => match self.inodes.get(n) {
                Some(i) if full => Cow::Owned(self.path_of(&i)),
                Some(i) => Cow::Owned(self.name_of(&i)),
                None => Cow::Owned(PathBuf::new()),
            },
            Target::Child(_, name) if !full => Cow::Borrowed(Path::new(name)),
            Target::Child(parent, name) => {
                let base = match self.inodes.get(parent) {
                    Some(i) => self.path_of(&i),
                    None => PathBuf::new(),
                };
                Cow::Owned(if base.as_os_str().is_empty() {
                    PathBuf::from(name)
                } else {
                    base.join(name)
                })
            }
        }
    }

    /// The name the kernel last looked `inode` up by (kept current across renames), or the
    /// last component of its path if it has none.
    fn name_of(&self, inode: &Inode) -> PathBuf {
        if inode.nodeid == ROOT {
            return PathBuf::new();
        }
        if let Ok(n) = inode.name.lock()
            && let Some((_, name)) = &*n
        {
            return PathBuf::from(&**name);
        }
        self.path_of(inode)
    }

    /// Evaluate the rules for one request (the only place they are evaluated).
    pub(crate) fn verdict(&self, op: Op, caller: Caller, target: Target<'_>) -> Verdict {
        let rules = self.rules.load();
        let eval = |path: &Path| {
            rules.set.evaluate(&Call {
                op,
                path,
                pid: caller.pid,
                uid: caller.uid,
                gid: caller.gid,
            })
        };
        // Requests on an open file (every read and write of a direct-I/O file): borrow the
        // path kept with the handle instead of copying it.
        if rules.uses_paths
            && let Target::File(fh, _) = target
            && let Some(h) = self.handles.get(fh)
            && let Some(p) = h.path.as_deref()
            && (h.path_full || !rules.full_paths)
        {
            return eval(p);
        }
        let path = if rules.uses_paths {
            self.rule_path(target, rules.full_paths)
        } else {
            Cow::Borrowed(Path::new(""))
        };
        eval(&path)
    }

    /// Watch the backing file system for outside changes (see `watch`); from then on entries
    /// and attributes no rule can touch are cached for [`FsConfig::watched_ttl`]. An error
    /// says why not (the short TTL stays).
    pub(crate) fn start_watch(self: &Arc<Self>) -> io::Result<Watcher> {
        let root = self.inodes.root();
        let h = sys::file::file_handle(root.fd().as_fd())?;
        self.inodes.index_handle(h, root);
        let w = watch::start(&root.fd(), Arc::downgrade(self))?;
        self.watching.store(true, Ordering::Release);
        Ok(w)
    }

    /// Outside changes the watch has seen that concerned a node the kernel holds.
    pub(crate) fn outside_changes(&self) -> u64 {
        self.outside.load(Ordering::Relaxed)
    }

    /// An outside change (fanotify event): drop what the kernel caches of it.
    fn outside_change(&self, c: &watch::Change<'_>) {
        use nix::sys::fanotify::MaskFlags as M;
        let Some(n) = self.notifier.get() else { return };
        if c.mask.contains(M::FAN_Q_OVERFLOW) {
            tracing::warn!("watch of outside changes overflowed: dropping every cached entry");
            self.invalidate_all(&self.inodes.all());
            return;
        }
        let mut hit = false;
        if let Some((kind, h)) = c.object
            && let Some(inode) = self.inodes.by_handle(kind, h)
        {
            // Content changed: its page cache too; else the attributes only.
            let off = if c.mask.contains(M::FAN_MODIFY) {
                0
            } else {
                -1
            };
            let _ = n.inval_inode(INodeNo(inode.nodeid), off, 0);
            hit = true;
        }
        let names = M::FAN_CREATE | M::FAN_DELETE | M::FAN_MOVED_FROM | M::FAN_MOVED_TO;
        if c.mask.intersects(names)
            && let Some((kind, h, name)) = c.dir
            && let Some(dir) = self.inodes.by_handle(kind, h)
        {
            let _ = n.inval_entry(INodeNo(dir.nodeid), OsStr::from_bytes(name));
            let _ = n.inval_inode(INodeNo(dir.nodeid), -1, 0);
            hit = true;
        }
        if hit {
            self.outside.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Cache time for entries/attributes of `target`.
    fn ttl(&self, target: Target<'_>) -> Duration {
        let rules = self.rules.load();
        let touched = if rules.uses_paths {
            rules
                .set
                .may_touch_meta(&self.rule_path(target, rules.full_paths))
        } else {
            rules.set.may_touch_meta(Path::new(""))
        };
        if touched {
            Duration::ZERO
        } else if self.watching.load(Ordering::Acquire) && self.on_root_fs(target) {
            self.cfg.watched_ttl
        } else {
            self.cfg.ttl
        }
    }

    /// Is `target` on the backing root's file system (the one watched), and found by its file
    /// handle (a node split off by a rule update is not: a new lookup took its handle)? A child
    /// is judged by its directory (a child that is a mount point gets the watched TTL for its
    /// entry only: its attributes are asked for by node).
    fn on_root_fs(&self, target: Target<'_>) -> bool {
        let node = match target {
            Target::Node(n) | Target::File(_, n) | Target::Child(n, _) => n,
        };
        self.inodes
            .get(node)
            .is_some_and(|i| i.dev == self.inodes.root().dev && !i.detached.load(Ordering::Relaxed))
    }

    /// Should a new open of `inode` by `path` (known only while rules select by path) use direct
    /// I/O (rules could touch its data)?
    fn wants_direct(&self, path: Option<&Path>) -> bool {
        if !self.cfg.passthrough || !self.passthrough_ok.load(Ordering::Relaxed) {
            return true;
        }
        self.rules
            .load()
            .set
            .may_touch_data(path.unwrap_or(Path::new("")))
    }

    /// May a rule select FLUSH on a file opened by `path` (see [`FsInner::wants_direct`])?
    fn may_touch_flush(&self, path: Option<&Path>) -> bool {
        self.rules
            .load()
            .flush
            .may_match(path.unwrap_or(Path::new("")))
    }

    /// The path to keep with a new handle of `inode` (only while rules select by path), and
    /// whether it is the whole relative path.
    fn handle_path(
        &self,
        inode: &Inode,
        child: Option<(u64, &OsStr)>,
    ) -> (Option<Box<Path>>, bool) {
        let rules = self.rules.load();
        if !rules.uses_paths {
            return (None, false);
        }
        let full = rules.full_paths;
        let p = match child {
            Some((parent, name)) => self
                .rule_path(Target::Child(parent, name), full)
                .into_owned(),
            None => self.open_path(inode, full),
        };
        (Some(p.into_boxed_path()), full)
    }

    // ----- running out of fds -----

    /// The errno of a failed call that needed a new fd of the server ([`errno`]: EMFILE becomes
    /// ENFILE). Out of fds, the server also starts [`FsInner::reclaim_fds`].
    fn fd_errno(&self, e: io::Error) -> Errno {
        if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
            self.reclaim_fds();
        }
        errno(e)
    }

    /// Ask the kernel to drop its cached entries of the files it holds no open file of, so it
    /// forgets their inodes and the server closes their `O_PATH` fds (a caller that only looked
    /// files up, e.g. `find`, would otherwise keep the server's table full until the kernel
    /// evicts the entries by itself). Directories are left alone (a process's cwd, mounts on
    /// them). Runs on a thread of its own, one pass at a time: an entry invalidation waits for
    /// the directory's lock, which the request that ran out of fds may hold until it is
    /// answered. The kernel looks the names up again when they are next used.
    fn reclaim_fds(&self) {
        let Some(n) = self.notifier.get() else { return };
        if self.reclaiming.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut entries = Vec::new();
        for inode in self.inodes.all() {
            if inode.nodeid == ROOT || inode.kind == libc::S_IFDIR {
                continue;
            }
            let open = inode
                .open
                .lock()
                .map_or(true, |s| s.passthrough > 0 || s.direct > 0);
            if !open
                && let Ok(name) = inode.name.lock()
                && let Some((parent, name)) = &*name
            {
                entries.push((*parent, name.clone()));
            }
        }
        tracing::debug!(
            "out of fds: dropping {} cached entries of files not open",
            entries.len()
        );
        let (n, done) = (n.clone(), self.reclaiming.clone());
        let spawned = std::thread::Builder::new()
            .name("chaosfs-reclaim".into())
            .spawn(move || {
                for (parent, name) in entries {
                    let _ = n.inval_entry(INodeNo(parent), &name);
                }
                done.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.reclaiming.store(false, Ordering::Release);
        }
    }

    // ----- rule updates -----

    pub(crate) fn update_rules(&self, new: RuleSet) -> UpdateReport {
        let new = Arc::new(new);
        let loaded = Arc::new(Loaded::new(new.clone()));
        self.rules.store(loaded.clone());
        if !new.crash_mode() {
            // Out of crash mode (a plain recover ends here too): everything written is kept.
            self.crash.clear();
        }
        let mut report = UpdateReport::default();
        let all = self.inodes.all();
        for inode in &all {
            let (passthrough, noflush) = inode
                .open
                .lock()
                .map(|s| (s.passthrough > 0, s.noflush > 0))
                .unwrap_or((false, false));
            if !passthrough && !noflush {
                continue;
            }
            let path = self.path_of(inode);
            let rule_path = if new.uses_paths() {
                path.as_path()
            } else {
                Path::new("")
            };
            let data = passthrough && new.may_touch_data(rule_path);
            // Handles opened without FLUSH would hide their closes from a new flush rule.
            let flush = noflush && loaded.flush.may_match(rule_path);
            if data {
                // New opens by path must reach a kernel inode without a passthrough backing.
                self.inodes.detach(inode);
            }
            if data || flush {
                report.escaped.push(Escaped {
                    ino: reported_ino(inode),
                    path,
                });
            }
        }
        // Requests parked in a latency fault were delayed by the old rules: serve them now (as
        // docs/rules.md promises). First, so the entry invalidation below does not wait on a
        // directory lock one of them holds.
        self.sched.cancel_all();
        self.invalidate_all(&all);
        report
    }

    /// Drop the kernel's cached attributes and dentries of every inode it holds.
    fn invalidate_all(&self, all: &[Arc<Inode>]) {
        let Some(n) = self.notifier.get() else { return };
        let mut entries = Vec::new();
        for inode in all {
            let _ = n.inval_inode(INodeNo(inode.nodeid), -1, 0);
            if let Ok(name) = inode.name.lock()
                && let Some((parent, name)) = &*name
            {
                entries.push((*parent, name.clone()));
            }
        }
        if entries.is_empty() {
            return;
        }
        // Entry invalidation takes the parent directory's lock in the kernel, which a request
        // parked in a latency fault may hold: do it on a helper thread and wait a bounded time.
        let n = n.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("chaosfs-inval".into())
            .spawn(move || {
                for (parent, name) in entries {
                    let _ = n.inval_entry(INodeNo(parent), &name);
                }
                let _ = tx.send(());
            });
        if spawned.is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(2));
        }
    }
}
