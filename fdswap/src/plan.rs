//! Dry run: what a swap would move and what it leaves alone, read from `/proc` without stopping
//! anything.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;

use crate::error::{Error, Result};
use crate::procfs::{self, LockLine, TaskFds};
use crate::sys::{self, FileId, Kcmp};

/// What to swap.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// The path P, absolute, as the target processes see it.
    pub path: PathBuf,
    /// Only move items currently on this mount id (e.g. the FUSE mount, for recover).
    pub from_mnt: Option<u64>,
    /// Only move items whose path now resolves to this mount id (e.g. the FUSE mount, for
    /// inject). Without it: whatever the path resolves to now, if that is another mount.
    pub to_mnt: Option<u64>,
    /// Which directories the scan may read before resolving the files in them (see
    /// [`ReadAhead`]). Default: all.
    pub read_ahead: ReadAhead,
}

impl ScanOptions {
    /// Move everything under `path` onto whatever mount `path` resolves to now.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            from_mnt: None,
            to_mnt: None,
            read_ahead: ReadAhead::default(),
        }
    }
}

/// Resolving each file's path through a FUSE mount costs a LOOKUP round trip per file. When a
/// directory on a FUSE filesystem holds [`ReadAhead::MIN_FILES`] or more of the files to
/// resolve, the scan first reads it with `getdents64` and a large buffer: a filesystem with
/// `READDIRPLUS` answers with entries *and* attributes, which the kernel caches as dentries, so
/// the resolves that follow need no request at all (1,000 files: one request instead of 1,000).
/// Reading stops once every wanted name was seen or after about twice as many entries as
/// wanted, so a huge directory costs no more than the lookups would have.
///
/// This decides which directories (relative to [`ScanOptions::path`], `""` for the path itself)
/// may be read: a filesystem that injects faults or latency into `readdir`, or that would not
/// let the kernel cache what it returns, should not be.
#[derive(Clone)]
pub struct ReadAhead(Option<Arc<DirFilter>>);

type DirFilter = dyn Fn(&Path) -> bool + Send + Sync;

impl ReadAhead {
    /// A directory is read ahead when it holds at least this many of the files to resolve.
    pub const MIN_FILES: usize = 16;

    /// Read no directory.
    pub fn never() -> Self {
        Self(None)
    }

    /// Read every directory (on FUSE) holding enough of the files.
    pub fn always() -> Self {
        Self(Some(Arc::new(|_| true)))
    }

    /// Read the directories `allow` says yes to.
    pub fn when(allow: impl Fn(&Path) -> bool + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(allow)))
    }

    fn allows(&self, dir: &Path) -> bool {
        self.0.as_ref().is_some_and(|f| f(dir))
    }
}

impl Default for ReadAhead {
    fn default() -> Self {
        Self::always()
    }
}

impl fmt::Debug for ReadAhead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "ReadAhead(some)"
        } else {
            "ReadAhead(never)"
        })
    }
}

/// Something a process holds: an fd, a mapping or its cwd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Item {
    /// A file descriptor.
    Fd(i32),
    /// A mapping `[start, end)`.
    Map {
        /// Start address.
        start: u64,
        /// End address.
        end: u64,
    },
    /// The working directory (of the threads sharing `tid`'s fs_struct).
    Cwd {
        /// A thread with this cwd.
        tid: i32,
    },
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Item::Fd(fd) => write!(f, "fd {fd}"),
            Item::Map { start, end } => write!(f, "mapping {start:x}-{end:x}"),
            Item::Cwd { tid } => write!(f, "cwd of thread {tid}"),
        }
    }
}

/// Why an item is left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// Not under P.
    OutsidePath,
    /// Deleted but still open (or mapped).
    Deleted,
    /// A socket.
    Socket,
    /// A pipe.
    Pipe,
    /// An anonymous inode (eventfd, epoll, timerfd, …).
    AnonInode,
    /// Under P but neither a regular file nor a directory (device node, FIFO, …).
    NotAFile,
    /// A `MAP_PRIVATE` mapping: private dirty pages would be lost.
    PrivateMapping,
    /// A directory fd whose read position (non-zero) cannot be restored on another filesystem.
    DirectoryPosition(u64),
    /// Already on the mount the path resolves to.
    AlreadyOnTarget,
    /// Not on the mount given as `from_mnt`.
    NotOnSourceMount(u64),
    /// The path now resolves to another mount than `to_mnt`.
    WrongTargetMount(u64),
    /// The path cannot be resolved in the target's namespace any more.
    Unresolvable(Errno),
    /// The path now names a file of another type.
    TypeChanged,
    /// The open file description carries a `flock`, OFD lock or lease, which belongs to it.
    DescriptionLock(String),
    /// The process holds POSIX locks on this file and another of its fds on it cannot move.
    LockedFileStays,
    /// `O_ASYNC` (owner and signal of the description cannot be carried over).
    Async,
    /// Changed between the scan and the stop (closed, reopened, unmapped).
    Changed,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutsidePath => f.write_str("outside the path"),
            Self::Deleted => f.write_str("deleted but open"),
            Self::Socket => f.write_str("socket"),
            Self::Pipe => f.write_str("pipe"),
            Self::AnonInode => f.write_str("anonymous inode"),
            Self::NotAFile => f.write_str("not a regular file or directory"),
            Self::PrivateMapping => f.write_str("private mapping"),
            Self::DirectoryPosition(p) => write!(f, "directory read position {p} not restorable"),
            Self::AlreadyOnTarget => f.write_str("already on the target mount"),
            Self::NotOnSourceMount(m) => write!(f, "on mount {m}, not the source mount"),
            Self::WrongTargetMount(m) => write!(f, "path resolves to mount {m}, not the target"),
            Self::Unresolvable(e) => write!(f, "path does not resolve: {e}"),
            Self::TypeChanged => f.write_str("path now names another file type"),
            Self::DescriptionLock(k) => write!(f, "{k} lock on the open file description"),
            Self::LockedFileStays => {
                f.write_str("POSIX-locked file with another fd that cannot move")
            }
            Self::Async => f.write_str("O_ASYNC"),
            Self::Changed => f.write_str("changed during the swap"),
        }
    }
}

/// An item left alone, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Process.
    pub pid: i32,
    /// The fd, mapping or cwd.
    pub item: Item,
    /// Its path (or `/proc` link text) as seen by the target.
    pub path: String,
    /// Why it stays.
    pub reason: SkipReason,
}

/// An fd to reopen.
#[derive(Debug, Clone)]
pub struct FdItem {
    /// The fd.
    pub fd: i32,
    /// Absolute path as the target sees it.
    pub path: PathBuf,
    /// `f_flags` (with `O_CLOEXEC` if close-on-exec), from fdinfo.
    pub flags: i32,
    /// Offset at scan time (the stub reads the live one).
    pub pos: u64,
    /// The file now.
    pub from: FileId,
    /// What the path resolves to now.
    pub to: FileId,
    /// Fds with the same `description` number share one open file description.
    pub description: usize,
    /// Closing an fd of the file costs the filesystem work, or may (FUSE sends a FLUSH round
    /// trip for every close, NFS writes back; any filesystem not known to be local counts):
    /// the swap then closes each old fd once and nothing more. When false, the new file is
    /// opened at the fd's own number instead, so that no fd of the new file is ever closed
    /// (see docs/fdswap.md).
    pub old_close_costs: bool,
}

impl FdItem {
    /// A directory.
    pub fn is_dir(&self) -> bool {
        self.from.mode & libc::S_IFMT == libc::S_IFDIR
    }
}

/// A shared mapping to remap.
#[derive(Debug, Clone)]
pub struct MapItem {
    /// Start.
    pub start: u64,
    /// End.
    pub end: u64,
    /// `rwxs`.
    pub perms: String,
    /// File offset.
    pub offset: u64,
    /// Path as the target sees it.
    pub path: PathBuf,
    /// The mapped file.
    pub from: FileId,
    /// What the path resolves to now.
    pub to: FileId,
}

/// The cwd to move.
#[derive(Debug, Clone)]
pub struct CwdItem {
    /// A thread using it.
    pub tid: i32,
    /// Path as the target sees it.
    pub path: PathBuf,
    /// The directory now.
    pub from: FileId,
    /// What the path resolves to now.
    pub to: FileId,
}

/// A POSIX record lock the process holds on a file whose fds move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PosixLock {
    /// Exclusive.
    pub write: bool,
    /// First byte.
    pub start: u64,
    /// Last byte (`None`: to EOF).
    pub end: Option<u64>,
    /// The file.
    pub dev: (u32, u32),
    /// The file.
    pub ino: u64,
}

/// What one fd table / fs / mm of a process would swap.
#[derive(Debug, Clone, Default)]
pub struct ProcessPlan {
    /// Process.
    pub pid: i32,
    /// The thread whose fd table and cwd were scanned.
    pub tid: i32,
    /// Fds to reopen.
    pub fds: Vec<FdItem>,
    /// Shared mappings to remap (empty when another plan of this process has them).
    pub maps: Vec<MapItem>,
    /// Cwd to move.
    pub cwd: Option<CwdItem>,
    /// POSIX locks to carry over.
    pub locks: Vec<PosixLock>,
    /// Left alone.
    pub skipped: Vec<Skipped>,
}

/// A dry run over several processes.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What was asked.
    pub options: ScanOptions,
    /// One entry per process.
    pub processes: Vec<ProcessPlan>,
}

impl Plan {
    /// Scan `pids` without stopping them. Processes that exit during the scan are left out.
    pub fn scan(pids: &[i32], options: &ScanOptions) -> Result<Plan> {
        if !options.path.is_absolute() {
            return Err(Error::RelativePath(options.path.clone()));
        }
        let mut processes = Vec::new();
        for &pid in pids {
            match scan_unit(pid, pid, options, true, true) {
                Ok(p) => processes.push(p),
                // Exited meanwhile: nothing to move.
                Err(Error::Proc { .. }) if !Path::new(&format!("/proc/{pid}")).exists() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Plan {
            options: options.clone(),
            processes,
        })
    }

    /// Number of fds, mappings and cwds that would move.
    pub fn len(&self) -> usize {
        self.processes
            .iter()
            .map(|p| p.fds.len() + p.maps.len() + usize::from(p.cwd.is_some()))
            .sum()
    }

    /// Nothing would move.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Turn `/proc` link text into the path the target sees: strip the target's root when it is not
/// `/` (a chroot in our own mount namespace). For a target in another mount namespace the kernel
/// already prints paths relative to that namespace's root, which is the target's root after
/// `pivot_root`.
fn target_view(text: &str, root: &str) -> String {
    if root != "/"
        && let Some(rest) = text.strip_prefix(root)
        && (rest.is_empty() || rest.starts_with('/'))
    {
        return if rest.is_empty() {
            "/".into()
        } else {
            rest.into()
        };
    }
    text.to_owned()
}

/// How to turn link text into the target's view of a path.
struct View<'a> {
    root: String,
    /// `from_mnt` is no longer attached (lazily unmounted for recover): the kernel prints paths
    /// on it relative to its root, which was mounted at the swap path.
    detached: Option<(u64, &'a Path)>,
}

impl View<'_> {
    fn of(&self, text: &str, mnt: impl FnOnce() -> Option<u64>) -> String {
        if let Some((m, p)) = self.detached
            && text.starts_with('/')
            && mnt() == Some(m)
        {
            let rel = text.trim_start_matches('/');
            return if rel.is_empty() {
                p.to_string_lossy().into_owned()
            } else {
                p.join(rel).to_string_lossy().into_owned()
            };
        }
        target_view(text, &self.root)
    }
}

/// Filesystem types of the mounts attached in `pid`'s mount namespace, by mount id (`None`:
/// mountinfo could not be read).
fn mount_types(pid: i32) -> Option<HashMap<u64, String>> {
    let text = std::fs::read(format!("/proc/{pid}/mountinfo")).ok()?;
    Some(
        text.split(|&b| b == b'\n')
            .filter_map(|l| procinfo::Mount::parse(l).ok())
            .map(|m| (m.mnt_id, m.fs_type))
            .collect(),
    )
}

/// Local filesystems whose `close` does no work of its own (no `->flush`, or a local one).
const QUIET_CLOSE: &[&str] = &[
    "ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "tmpfs", "ramfs", "overlay", "vfat", "exfat",
    "erofs", "squashfs",
];

fn under(path: &Path, p: &Path) -> bool {
    path.starts_with(p)
}

/// Resolves paths under P in the target's mount namespace, relative to P opened once through
/// `/proc/PID/root` (one component to walk per file instead of all of them).
struct Resolver<'a> {
    pid: i32,
    base: &'a Path,
    dir: Option<OwnedFd>,
}

impl<'a> Resolver<'a> {
    fn new(pid: i32, base: &'a Path) -> Self {
        let dir = openat(
            nix::fcntl::AT_FDCWD,
            &proc_root_path(pid, base),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ok();
        Self { pid, base, dir }
    }

    /// What `path` resolves to now (following symlinks, with its mount id).
    fn resolve(&self, path: &Path) -> std::result::Result<FileId, Errno> {
        match (&self.dir, path.strip_prefix(self.base)) {
            (Some(d), Ok(rel)) => sys::statx_at(d.as_fd(), rel, 0),
            _ => sys::statx(&proc_root_path(self.pid, path)),
        }
    }

    /// Read the directories holding many of `paths` (see [`ReadAhead`]).
    fn read_ahead<'p>(&self, paths: impl Iterator<Item = &'p Path>, policy: &ReadAhead) {
        let Some(base) = &self.dir else {
            return;
        };
        let mut by_dir: HashMap<&Path, HashSet<&OsStr>> = HashMap::new();
        for p in paths {
            if let (Some(d), Some(name)) = (p.parent(), p.file_name()) {
                by_dir.entry(d).or_default().insert(name);
            }
        }
        let mut buf = Vec::new();
        for (dir, mut wanted) in by_dir {
            let Ok(rel) = dir.strip_prefix(self.base) else {
                continue;
            };
            if wanted.len() < ReadAhead::MIN_FILES || !policy.allows(rel) {
                continue;
            }
            let name = if rel.as_os_str().is_empty() {
                Path::new(".")
            } else {
                rel
            };
            let Ok(fd) = openat(
                base.as_fd(),
                name,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) else {
                continue;
            };
            if !nix::sys::statfs::fstatfs(&fd)
                .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::FUSE_SUPER_MAGIC)
            {
                continue;
            }
            // A READDIRPLUS entry takes ~150 bytes plus its name: size the request for about
            // twice the wanted entries (the kernel caps it at the connection's max_pages).
            let want = wanted.len();
            let size = (2 * want * 192).clamp(16 << 10, 1 << 20);
            buf.resize(size, 0);
            let limit = 2 * want + 64;
            let mut seen = 0;
            while let Ok(len) = sys::getdents64(fd.as_fd(), &mut buf) {
                if len == 0 {
                    break;
                }
                for name in sys::dirent_names(&buf[..len]) {
                    seen += 1;
                    wanted.remove(OsStr::from_bytes(name));
                }
                if wanted.is_empty() || seen >= limit {
                    break;
                }
                // The kernel asks for READDIRPLUS again (rather than plain READDIR) after a
                // lookup in the directory: resolve one of the names still wanted.
                if let Some(n) = wanted.iter().next().copied() {
                    wanted.remove(n);
                    let _ = self.resolve(&dir.join(n));
                }
            }
        }
    }
}

fn proc_root_path(pid: i32, path: &Path) -> PathBuf {
    let rel = path.strip_prefix("/").unwrap_or(path);
    Path::new(&format!("/proc/{pid}/root")).join(rel)
}

/// Filter common to fds, maps and cwd: on the source mount, resolving elsewhere, same type.
fn check_move(options: &ScanOptions, from: &FileId, to: &FileId) -> Option<SkipReason> {
    if let Some(m) = options.from_mnt
        && from.mnt_id != m
    {
        return Some(SkipReason::NotOnSourceMount(from.mnt_id));
    }
    if to.mnt_id == from.mnt_id {
        return Some(SkipReason::AlreadyOnTarget);
    }
    if let Some(m) = options.to_mnt
        && to.mnt_id != m
    {
        return Some(SkipReason::WrongTargetMount(to.mnt_id));
    }
    if to.mode & libc::S_IFMT != from.mode & libc::S_IFMT {
        return Some(SkipReason::TypeChanged);
    }
    None
}

fn is_file_or_dir(mode: u32) -> bool {
    matches!(mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFDIR)
}

/// Scan the fd table and cwd of thread `tid` of `pid` (and the mappings, if `with_maps`).
pub(crate) fn scan_unit(
    pid: i32,
    tid: i32,
    options: &ScanOptions,
    with_maps: bool,
    with_cwd: bool,
) -> Result<ProcessPlan> {
    let task = PathBuf::from(format!("/proc/{pid}/task/{tid}"));
    let mounts = mount_types(pid);
    let view = View {
        root: procfs::link(&task.join("root"))?,
        detached: options
            .from_mnt
            .filter(|m| mounts.as_ref().is_some_and(|t| !t.contains_key(m)))
            .map(|m| (m, options.path.as_path())),
    };
    let close_costs = |mnt: u64| {
        mounts
            .as_ref()
            .and_then(|t| t.get(&mnt))
            .is_none_or(|t| !QUIET_CLOSE.contains(&t.as_str()))
    };
    let mut plan = ProcessPlan {
        pid,
        tid,
        ..Default::default()
    };
    let mut fds = TaskFds::open(&task)?;
    let links = read_links(&task, &fds)?;
    let resolver = Resolver::new(pid, &options.path);
    let table = read_table(&task, pid, &links, &view, &resolver, options)?;
    plan.skipped = table.skipped;
    let locks = posix_locks(&table.candidates, &table.outside, &mut fds);
    let movable = movable(table.candidates, &mut plan);
    let resolved = in_parallel(&movable, |chunk| {
        chunk
            .iter()
            .map(|c| resolver.resolve(&c.path))
            .collect::<Vec<_>>()
    });
    for (c, to) in movable.into_iter().zip(resolved.into_iter().flatten()) {
        add_fd(c, to, options, &close_costs, &mut plan);
    }
    group_descriptions(pid, &mut plan.fds);
    carry_locks(&locks, &mut plan);

    if with_cwd {
        scan_cwd(pid, tid, &task, &view, &resolver, options, &mut plan);
    }
    if with_maps {
        scan_maps(pid, &view, &resolver, options, &mut plan)?;
    }
    Ok(plan)
}

/// The link texts of a task's fds (the files under P, from the fd table alone: no
/// filesystem is asked anything yet). Six syscalls into /proc per fd all told: split over a
/// few threads when there are many. An fd closed meanwhile is left out.
fn read_links(task: &Path, fds: &TaskFds) -> Result<Vec<(i32, String)>> {
    let list = fds.list()?;
    Ok(in_parallel(&list, |chunk| {
        let fds = TaskFds::open(task)?;
        Ok(chunk
            .iter()
            .filter_map(|&fd| Some((fd, fds.link(fd).ok()?)))
            .collect::<Vec<_>>())
    })
    .into_iter()
    .collect::<Result<Vec<_>>>()?
    .into_iter()
    .flatten()
    .collect())
}

/// What the fd table shows.
struct Table {
    /// Files under P.
    candidates: Vec<Candidate>,
    /// Regular files outside P: one of them may be a file a candidate also holds (a hard
    /// link, another mount of it) and carry the process's POSIX locks on it.
    outside: Vec<i32>,
    skipped: Vec<Skipped>,
}

/// Read every fd of `links` (`statx` and fdinfo of those under P), split over threads. The
/// link texts name the directories to read ahead (see `ReadAhead`), which is done meanwhile,
/// on one more thread, as it mostly waits for the filesystem.
fn read_table(
    task: &Path,
    pid: i32,
    links: &[(i32, String)],
    view: &View<'_>,
    resolver: &Resolver<'_>,
    options: &ScanOptions,
) -> Result<Table> {
    let t0 = std::time::Instant::now();
    let (read, ahead) = std::thread::scope(|s| {
        let ahead = options.read_ahead.0.is_some().then(|| {
            let paths: Vec<PathBuf> = links
                .iter()
                .filter(|(_, t)| t.starts_with('/'))
                .map(|(_, t)| {
                    let t = t.strip_suffix(" (deleted)").unwrap_or(t);
                    PathBuf::from(view.of(t, || None))
                })
                .filter(|p| under(p, &options.path))
                .collect();
            std::thread::Builder::new()
                .name("fdswap-ahead".into())
                .spawn_scoped(s, move || {
                    resolver.read_ahead(paths.iter().map(PathBuf::as_path), &options.read_ahead);
                    t0.elapsed()
                })
        });
        let read = in_parallel(links, |chunk| read_fds(pid, task, chunk, view, options));
        let ahead = ahead.and_then(|h| h.ok()).map(|h| h.join());
        (read, ahead)
    });
    tracing::debug!(pid, task = %task.display(), fds = links.len(), read = ?t0.elapsed(), read_ahead = ?ahead, "fd table read");
    let mut table = Table {
        candidates: Vec::new(),
        outside: Vec::new(),
        skipped: Vec::new(),
    };
    for part in read {
        for seen in part? {
            match seen {
                Seen::Skip(k) => {
                    if k.reason == SkipReason::OutsidePath
                        && let Item::Fd(fd) = k.item
                    {
                        table.outside.push(fd);
                    }
                    table.skipped.push(k);
                }
                Seen::Candidate(c) => table.candidates.push(c),
            }
        }
    }
    Ok(table)
}

/// The POSIX locks on the candidates' files. They belong to the fd table; fdinfo lists each
/// under the description it was taken through, which may be an fd `outside` P. (`/proc/locks`
/// has them all, but reading it costs an RCU grace period: it write-locks the file lock
/// rwsem.)
fn posix_locks(candidates: &[Candidate], outside: &[i32], fds: &mut TaskFds) -> Vec<LockLine> {
    let mut locks: Vec<LockLine> = candidates
        .iter()
        .flat_map(|c| c.info.locks.iter().cloned())
        .collect();
    let files: HashSet<(u64, (u32, u32))> = candidates
        .iter()
        .map(|c| (c.from.ino, c.from.dev))
        .collect();
    for &fd in outside {
        if let Ok(f) = fds.stat(fd)
            && files.contains(&(f.ino, f.dev))
            && let Ok(info) = fds.info(fd)
        {
            locks.extend(info.locks);
        }
    }
    locks.retain(|l| l.kind == "POSIX");
    locks.sort_by_key(|l| (l.dev, l.ino, l.start, l.end, l.write));
    locks.dedup_by_key(|l| (l.dev, l.ino, l.start, l.end, l.write));
    locks
}

/// The candidates that can move; the others (description locks, `O_ASYNC`) go to
/// `plan.skipped`.
fn movable(candidates: Vec<Candidate>, plan: &mut ProcessPlan) -> Vec<Candidate> {
    let mut movable = Vec::with_capacity(candidates.len());
    for c in candidates {
        let reason = if let Some(k) = c.info.lock_kinds.iter().find(|k| *k != "POSIX") {
            SkipReason::DescriptionLock(k.clone())
        } else if c.info.flags & libc::O_ASYNC != 0 {
            SkipReason::Async
        } else {
            movable.push(c);
            continue;
        };
        plan.skipped.push(Skipped {
            pid: plan.pid,
            item: Item::Fd(c.fd),
            path: c.view,
            reason,
        });
    }
    movable
}

/// Add candidate `c`, resolved to `to` through the new mount, to the plan's fds, or to its
/// skipped items with the reason.
fn add_fd(
    c: Candidate,
    to: std::result::Result<FileId, Errno>,
    options: &ScanOptions,
    close_costs: &dyn Fn(u64) -> bool,
    plan: &mut ProcessPlan,
) {
    let Candidate {
        fd,
        path,
        view,
        from,
        info,
    } = c;
    let from = FileId {
        mnt_id: info.mnt_id,
        ..from
    };
    let to = to.map_err(SkipReason::Unresolvable).and_then(|to| {
        if let Some(r) = check_move(options, &from, &to) {
            return Err(r);
        }
        let dir = from.mode & libc::S_IFMT == libc::S_IFDIR;
        if dir && info.pos != 0 {
            return Err(SkipReason::DirectoryPosition(info.pos));
        }
        Ok(to)
    });
    match to {
        Err(reason) => plan.skipped.push(Skipped {
            pid: plan.pid,
            item: Item::Fd(fd),
            path: view,
            reason,
        }),
        Ok(to) => plan.fds.push(FdItem {
            fd,
            path,
            flags: info.flags,
            pos: info.pos,
            from,
            to,
            description: 0,
            old_close_costs: close_costs(from.mnt_id),
        }),
    }
}

/// A file under P an fd holds, as the fd table shows it.
struct Candidate {
    fd: i32,
    path: PathBuf,
    view: String,
    from: FileId,
    info: procfs::FdInfo,
}

/// What reading one fd found.
enum Seen {
    Skip(Skipped),
    Candidate(Candidate),
}

/// Read fds `list` (number, link text) of `task`: `statx` and fdinfo of each under P.
fn read_fds(
    pid: i32,
    task: &Path,
    list: &[(i32, String)],
    view: &View<'_>,
    options: &ScanOptions,
) -> Result<Vec<Seen>> {
    let mut fds = TaskFds::open(task)?;
    let mut out = Vec::with_capacity(list.len());
    let skip = |item, path: String, reason| {
        Seen::Skip(Skipped {
            pid,
            item,
            path,
            reason,
        })
    };
    for (fd, text) in list {
        let (fd, text) = (*fd, text.clone());
        let item = Item::Fd(fd);
        if text.starts_with("socket:") {
            out.push(skip(item, text, SkipReason::Socket));
            continue;
        }
        if text.starts_with("pipe:") {
            out.push(skip(item, text, SkipReason::Pipe));
            continue;
        }
        if text.starts_with("anon_inode:") || !text.starts_with('/') {
            out.push(skip(item, text, SkipReason::AnonInode));
            continue;
        }
        // " (deleted)" is also printed for a dentry the filesystem invalidated (ChaosFS does
        // when its rules change) while the file still has links: the link count decides.
        let text = text.strip_suffix(" (deleted)").unwrap_or(&text);
        let mut stat = None;
        let view = view.of(text, || {
            stat = fds.stat(fd).ok();
            stat.map(|f| f.mnt_id)
        });
        let path = PathBuf::from(&view);
        if !under(&path, &options.path) {
            out.push(skip(item, view, SkipReason::OutsidePath));
            continue;
        }
        let Some(from) = stat.or_else(|| fds.stat(fd).ok()) else {
            continue;
        };
        if from.nlink == 0 {
            out.push(skip(item, view, SkipReason::Deleted));
            continue;
        }
        if !is_file_or_dir(from.mode) {
            out.push(skip(item, view, SkipReason::NotAFile));
            continue;
        }
        let Ok(info) = fds.info(fd) else {
            continue;
        };
        out.push(Seen::Candidate(Candidate {
            fd,
            path,
            view,
            from,
            info,
        }));
    }
    Ok(out)
}

/// Below this many items, work is done on the calling thread only.
const PARALLEL_MIN: usize = 256;

/// `f` over consecutive chunks of `items`, on up to four threads (the calling one included);
/// the results in chunk order.
fn in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&[T]) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4);
    if threads < 2 || items.len() < PARALLEL_MIN {
        return vec![f(items)];
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|s| {
        let mut parts = items.chunks(chunk);
        let first = parts.next().unwrap_or_default();
        let f = &f;
        let handles: Vec<_> = parts
            .map(|c| {
                let h = std::thread::Builder::new()
                    .name("fdswap-scan".into())
                    .spawn_scoped(s, move || f(c));
                (c, h)
            })
            .collect();
        let mut out = vec![f(first)];
        for (c, h) in handles {
            // A chunk whose thread could not start (or panicked) is done here.
            out.push(match h {
                Ok(h) => h.join().unwrap_or_else(|_| f(c)),
                Err(_) => f(c),
            });
        }
        out
    })
}

/// Number the open file descriptions: fds with equal file, flags and offset are compared with
/// `kcmp(KCMP_FILE)`.
fn group_descriptions(pid: i32, fds: &mut [FdItem]) {
    // (inode, device, flags without O_CLOEXEC, offset)
    type Key = (u64, (u32, u32), i32, u64);
    let mut by_key: HashMap<Key, Vec<usize>> = HashMap::new();
    for (i, f) in fds.iter().enumerate() {
        by_key
            .entry((f.from.ino, f.from.dev, f.flags & !libc::O_CLOEXEC, f.pos))
            .or_default()
            .push(i);
    }
    let mut next = 0;
    let mut assigned = vec![usize::MAX; fds.len()];
    let mut keys: Vec<_> = by_key.into_values().collect();
    keys.sort();
    for members in keys {
        for (k, &i) in members.iter().enumerate() {
            if assigned[i] != usize::MAX {
                continue;
            }
            assigned[i] = next;
            for &j in &members[k + 1..] {
                if assigned[j] == usize::MAX
                    && sys::kcmp_same(pid, pid, Kcmp::File(fds[i].fd, fds[j].fd)).unwrap_or(false)
                {
                    assigned[j] = next;
                }
            }
            next += 1;
        }
    }
    for (f, d) in fds.iter_mut().zip(assigned) {
        f.description = d;
    }
}

/// Attach the fd table's POSIX locks (`mine`) to the plan; when a locked file cannot move with
/// all its fds (one stays, or none can re-take the lock type), leave all its fds alone.
fn carry_locks(mine: &[LockLine], plan: &mut ProcessPlan) {
    let pid = plan.pid;
    if mine.is_empty() {
        return;
    }
    let mut stays: Vec<(u64, (u32, u32))> = Vec::new();
    for l in mine {
        let key = (l.ino, l.dev);
        let movers: Vec<&FdItem> = plan
            .fds
            .iter()
            .filter(|f| (f.from.ino, f.from.dev) == key)
            .collect();
        if movers.is_empty() {
            continue;
        }
        // Any fd of this process on the file that is not moving (skipped) would keep the old
        // file open and the locks would split: leave the file alone.
        let skipped_same = plan.skipped.iter().any(|s| {
            matches!(s.item, Item::Fd(_))
                && movers
                    .first()
                    .is_some_and(|m| m.path.to_string_lossy() == s.path)
        });
        let acc = |f: &&FdItem| {
            let a = f.flags & libc::O_ACCMODE;
            if l.write {
                a == libc::O_WRONLY || a == libc::O_RDWR
            } else {
                a == libc::O_RDONLY || a == libc::O_RDWR
            }
        };
        if skipped_same || !movers.iter().any(acc) {
            stays.push(key);
        } else {
            plan.locks.push(PosixLock {
                write: l.write,
                start: l.start,
                end: l.end,
                dev: l.dev,
                ino: l.ino,
            });
        }
    }
    if stays.is_empty() {
        return;
    }
    let (keep, moved): (Vec<FdItem>, Vec<FdItem>) = std::mem::take(&mut plan.fds)
        .into_iter()
        .partition(|f| !stays.contains(&(f.from.ino, f.from.dev)));
    plan.fds = keep;
    plan.locks.retain(|l| !stays.contains(&(l.ino, l.dev)));
    for f in moved {
        plan.skipped.push(Skipped {
            pid,
            item: Item::Fd(f.fd),
            path: f.path.to_string_lossy().into_owned(),
            reason: SkipReason::LockedFileStays,
        });
    }
}

fn scan_cwd(
    pid: i32,
    tid: i32,
    task: &Path,
    v: &View<'_>,
    resolver: &Resolver<'_>,
    options: &ScanOptions,
    plan: &mut ProcessPlan,
) {
    let Ok(text) = procfs::link(&task.join("cwd")) else {
        return;
    };
    let text = text.strip_suffix(" (deleted)").unwrap_or(&text);
    let view = v.of(text, || {
        sys::statx_cached(&task.join("cwd")).ok().map(|f| f.mnt_id)
    });
    let path = PathBuf::from(&view);
    if !under(&path, &options.path) {
        return;
    }
    let item = Item::Cwd { tid };
    let Ok(from) = sys::statx_cached(&task.join("cwd")) else {
        return;
    };
    if from.nlink == 0 {
        plan.skipped.push(Skipped {
            pid,
            item,
            path: view,
            reason: SkipReason::Deleted,
        });
        return;
    }
    let reason = match resolver.resolve(&path) {
        Err(e) => SkipReason::Unresolvable(e),
        Ok(to) => match check_move(options, &from, &to) {
            Some(r) => r,
            None => {
                plan.cwd = Some(CwdItem {
                    tid,
                    path,
                    from,
                    to,
                });
                return;
            }
        },
    };
    plan.skipped.push(Skipped {
        pid,
        item,
        path: view,
        reason,
    });
}

fn scan_maps(
    pid: i32,
    v: &View<'_>,
    resolver: &Resolver<'_>,
    options: &ScanOptions,
    plan: &mut ProcessPlan,
) -> Result<()> {
    for m in procfs::maps(pid)? {
        if !m.path.starts_with('/') {
            continue;
        }
        let mf = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
        let text = m.path.strip_suffix(" (deleted)").unwrap_or(&m.path);
        let view = v.of(text, || {
            sys::statx_cached(Path::new(&mf)).ok().map(|f| f.mnt_id)
        });
        let path = PathBuf::from(&view);
        if !under(&path, &options.path) {
            continue;
        }
        let item = Item::Map {
            start: m.start,
            end: m.end,
        };
        let skip = |plan: &mut ProcessPlan, reason| {
            plan.skipped.push(Skipped {
                pid,
                item,
                path: view.clone(),
                reason,
            })
        };
        if !m.shared() {
            skip(plan, SkipReason::PrivateMapping);
            continue;
        }
        let Ok(from) = sys::statx_cached(Path::new(&format!(
            "/proc/{pid}/map_files/{:x}-{:x}",
            m.start, m.end
        ))) else {
            continue;
        };
        if from.nlink == 0 {
            skip(plan, SkipReason::Deleted);
            continue;
        }
        let to = match resolver.resolve(&path) {
            Ok(t) => t,
            Err(e) => {
                skip(plan, SkipReason::Unresolvable(e));
                continue;
            }
        };
        if let Some(r) = check_move(options, &from, &to) {
            skip(plan, r);
            continue;
        }
        plan.maps.push(MapItem {
            start: m.start,
            end: m.end,
            perms: m.perms.clone(),
            offset: m.offset,
            path,
            from,
            to,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_strips_chroot() {
        assert_eq!(target_view("/srv/jail/data/x", "/srv/jail"), "/data/x");
        assert_eq!(target_view("/srv/jailx/y", "/srv/jail"), "/srv/jailx/y");
        assert_eq!(target_view("/data/x", "/"), "/data/x");
    }
}
