//! Dry run: what a swap would move and what it leaves alone, read from `/proc` without stopping
//! anything.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::procfs::{self, LockLine};
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
}

impl ScanOptions {
    /// Move everything under `path` onto whatever mount `path` resolves to now.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            from_mnt: None,
            to_mnt: None,
        }
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
        let locks = procfs::locks()?;
        let mut processes = Vec::new();
        for &pid in pids {
            match scan_unit(pid, pid, options, &locks, true, true) {
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

/// Is mount `mnt_id` attached in `pid`'s mount namespace?
fn attached(pid: i32, mnt_id: u64) -> bool {
    let want = mnt_id.to_string();
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .map(|t| {
            t.lines()
                .any(|l| l.split(' ').next() == Some(want.as_str()))
        })
        .unwrap_or(true)
}

fn under(path: &Path, p: &Path) -> bool {
    path.starts_with(p)
}

fn resolve(pid: i32, path: &Path) -> std::result::Result<FileId, Errno> {
    let rel = path.strip_prefix("/").unwrap_or(path);
    sys::statx(&Path::new(&format!("/proc/{pid}/root")).join(rel))
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
    locks: &[LockLine],
    with_maps: bool,
    with_cwd: bool,
) -> Result<ProcessPlan> {
    let task = PathBuf::from(format!("/proc/{pid}/task/{tid}"));
    let view = View {
        root: procfs::link(&task.join("root"))?,
        detached: options
            .from_mnt
            .filter(|&m| !attached(pid, m))
            .map(|m| (m, options.path.as_path())),
    };
    let mut plan = ProcessPlan {
        pid,
        tid,
        ..Default::default()
    };
    let skip = |plan: &mut ProcessPlan, item, path: String, reason| {
        plan.skipped.push(Skipped {
            pid,
            item,
            path,
            reason,
        })
    };

    for fd in procfs::fds(&task)? {
        let Ok(text) = procfs::link(&task.join(format!("fd/{fd}"))) else {
            continue; // closed meanwhile
        };
        let item = Item::Fd(fd);
        if text.starts_with("socket:") {
            skip(&mut plan, item, text, SkipReason::Socket);
            continue;
        }
        if text.starts_with("pipe:") {
            skip(&mut plan, item, text, SkipReason::Pipe);
            continue;
        }
        if text.starts_with("anon_inode:") || !text.starts_with('/') {
            skip(&mut plan, item, text, SkipReason::AnonInode);
            continue;
        }
        let fd_path = task.join(format!("fd/{fd}"));
        // " (deleted)" is also printed for a dentry the filesystem invalidated (ChaosFS does
        // when its rules change) while the file still has links: the link count decides.
        let text = text.strip_suffix(" (deleted)").unwrap_or(&text);
        let view = view.of(text, || sys::statx_cached(&fd_path).ok().map(|f| f.mnt_id));
        let path = PathBuf::from(&view);
        if !under(&path, &options.path) {
            skip(&mut plan, item, view, SkipReason::OutsidePath);
            continue;
        }
        let Ok(from) = sys::statx_cached(&fd_path) else {
            continue;
        };
        if from.nlink == 0 {
            skip(&mut plan, item, view, SkipReason::Deleted);
            continue;
        }
        if !is_file_or_dir(from.mode) {
            skip(&mut plan, item, view, SkipReason::NotAFile);
            continue;
        }
        let Ok(info) = procfs::fdinfo(&task, fd) else {
            continue;
        };
        if let Some(k) = info.lock_kinds.iter().find(|k| *k != "POSIX") {
            skip(
                &mut plan,
                item,
                view,
                SkipReason::DescriptionLock(k.clone()),
            );
            continue;
        }
        if info.flags & libc::O_ASYNC != 0 {
            skip(&mut plan, item, view, SkipReason::Async);
            continue;
        }
        let from = FileId {
            mnt_id: info.mnt_id,
            ..from
        };
        let to = match resolve(pid, &path) {
            Ok(t) => t,
            Err(e) => {
                skip(&mut plan, item, view, SkipReason::Unresolvable(e));
                continue;
            }
        };
        if let Some(r) = check_move(options, &from, &to) {
            skip(&mut plan, item, view, r);
            continue;
        }
        let dir = from.mode & libc::S_IFMT == libc::S_IFDIR;
        if dir && info.pos != 0 {
            skip(
                &mut plan,
                item,
                view,
                SkipReason::DirectoryPosition(info.pos),
            );
            continue;
        }
        plan.fds.push(FdItem {
            fd,
            path,
            flags: info.flags,
            pos: info.pos,
            from,
            to,
            description: 0,
        });
    }

    group_descriptions(pid, &mut plan.fds);
    carry_locks(pid, locks, &mut plan);

    if with_cwd {
        scan_cwd(pid, tid, &task, &view, options, &mut plan);
    }
    if with_maps {
        scan_maps(pid, &view, options, &mut plan)?;
    }
    Ok(plan)
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

/// Attach the process's POSIX locks to the plan; when a locked file cannot move with all its
/// fds (one stays, or none can re-take the lock type), leave all its fds alone.
fn carry_locks(pid: i32, locks: &[LockLine], plan: &mut ProcessPlan) {
    let mine: Vec<&LockLine> = locks
        .iter()
        .filter(|l| l.kind == "POSIX" && l.pid == pid)
        .collect();
    if mine.is_empty() {
        return;
    }
    let mut stays: Vec<(u64, (u32, u32))> = Vec::new();
    for l in &mine {
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
    let reason = match resolve(pid, &path) {
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

fn scan_maps(pid: i32, v: &View<'_>, options: &ScanOptions, plan: &mut ProcessPlan) -> Result<()> {
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
        let to = match resolve(pid, &path) {
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
