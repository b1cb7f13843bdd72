//! Dry run: what a swap would move and what it leaves alone, read from `/proc` without stopping
//! anything.

mod resolve;
mod scan;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::sys::FileId;
pub(crate) use scan::scan_unit;

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
    /// POSIX locks the processes hold through the filesystem they move off (a FUSE server
    /// that forwards locks holds them on its backing file), as (pid, lock on the file the path
    /// resolves to now). The kernel keeps no record of them on the old file, so the scan
    /// cannot find them; they are taken again on the new file right after the old one's last
    /// close (which makes the server release them). Default: none.
    pub forwarded_locks: Vec<(i32, PosixLock)>,
}

impl ScanOptions {
    /// Move everything under `path` onto whatever mount `path` resolves to now.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            from_mnt: None,
            to_mnt: None,
            read_ahead: ReadAhead::default(),
            forwarded_locks: Vec::new(),
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
    /// Held for the process by the old file's filesystem server, not by the kernel on the old
    /// file (see [`ScanOptions::forwarded_locks`]): a conflict check on the new file before
    /// the old one is closed would meet the server's own lock.
    pub forwarded: bool,
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
