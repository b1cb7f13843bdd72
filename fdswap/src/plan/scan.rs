//! Scanning one unit (a thread's fd table, its cwd and the process's mappings), step by step:
//! link texts, `statx` and fdinfo of each fd, the POSIX locks, resolution through the new
//! mount, description groups.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use super::resolve::{QUIET_CLOSE, Resolver, View, mount_types, under};
use super::{
    CwdItem, FdItem, Item, MapItem, PosixLock, ProcessPlan, ScanOptions, SkipReason, Skipped,
};
use crate::error::Result;
use crate::procfs::{self, LockLine, TaskFds};
use crate::sys::{self, FileId, Kcmp};

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
    carry_forwarded_locks(&options.forwarded_locks, &mut plan);

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
                forwarded: false,
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

/// Attach the locks the old file's filesystem holds for this process (given by the file they
/// are on now, the one its path resolves to) to the fds that move onto that file.
fn carry_forwarded_locks(held: &[(i32, PosixLock)], plan: &mut ProcessPlan) {
    for (_, l) in held.iter().filter(|(pid, _)| *pid == plan.pid) {
        let Some(f) = plan
            .fds
            .iter()
            .find(|f| (f.to.ino, f.to.dev) == (l.ino, l.dev))
        else {
            continue;
        };
        plan.locks.push(PosixLock {
            dev: f.from.dev,
            ino: f.from.ino,
            forwarded: true,
            ..l.clone()
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
