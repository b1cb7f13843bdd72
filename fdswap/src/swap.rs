//! The swap: stop every target, run one stub per fd table, resume.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::{IoSlice, IoSliceMut};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::uio::{RemoteIoVec, process_vm_readv, process_vm_writev};
use nix::unistd::Pid;

use crate::CpuLatency;
use crate::arch::{self, Regs, hdr, status};
use crate::error::{Error, Result};
use crate::plan::{Item, Plan, ProcessPlan, ScanOptions, SkipReason, Skipped, scan_unit};
use crate::procfs;
use crate::program::{
    Arg, Call, Check, Desc, Header, Outcome, Program, Stub, on_fd, on_map, patch_header, step,
};
use crate::sys::{self, Kcmp};
use crate::tracer::{self, Seen, Tracee};

/// How to swap.
#[derive(Debug, Clone)]
pub struct SwapOptions {
    /// How long to wait for a thread to stop before giving up on its process.
    pub stop_timeout: Duration,
    /// Force the `int3` trap even when a harmless trap signal exists (tests only: it makes a
    /// tracer's death fatal for the target).
    pub force_int3: bool,
    /// Test hook: sleep this long while the stub thread sits at its trap, before reading the
    /// results (to kill the swapper there).
    pub pause_at_trap: Option<Duration>,
    /// At most this many open file descriptions per transaction (batch). Batches are otherwise
    /// only used when the target's fd limit leaves no room for one spare fd per description.
    pub max_batch: Option<usize>,
    /// Hold a [`crate::CpuLatency`] request for the time of the swap (default: yes).
    pub low_latency: bool,
}

impl Default for SwapOptions {
    fn default() -> Self {
        Self {
            stop_timeout: Duration::from_secs(5),
            force_int3: false,
            pause_at_trap: None,
            max_batch: None,
            low_latency: true,
        }
    }
}

/// One item that moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swapped {
    /// Process.
    pub pid: i32,
    /// What.
    pub item: Item,
    /// Path as the target sees it.
    pub path: PathBuf,
    /// The mount it was on.
    pub from_mnt: u64,
    /// The mount it is on now.
    pub to_mnt: u64,
}

/// What happened to one process.
#[derive(Debug)]
pub struct ProcessReport {
    /// Process.
    pub pid: i32,
    /// Moved items. When `error` is set, the failing fd table was rolled back (except batches
    /// committed before, listed here) and tables swapped before it stay swapped (listed here).
    pub swapped: Vec<Swapped>,
    /// Left alone.
    pub skipped: Vec<Skipped>,
    /// How long its threads were stopped.
    pub pause: Duration,
    /// How long the stubs ran.
    pub stub_time: Duration,
    /// Number of threads stopped.
    pub threads: usize,
    /// Why this process was not (fully) swapped.
    pub error: Option<Error>,
}

/// What a swap did.
#[derive(Debug)]
pub struct Report {
    /// One per process.
    pub processes: Vec<ProcessReport>,
    /// Wall time of the whole swap ([`swap`]: scan included).
    pub total: Duration,
}

impl Report {
    /// The first per-process error, if any.
    pub fn first_error(&self) -> Option<&Error> {
        self.processes.iter().find_map(|p| p.error.as_ref())
    }
    /// Every swapped item.
    pub fn swapped(&self) -> impl Iterator<Item = &Swapped> {
        self.processes.iter().flat_map(|p| p.swapped.iter())
    }
    /// Every skipped item.
    pub fn skipped(&self) -> impl Iterator<Item = &Skipped> {
        self.processes.iter().flat_map(|p| p.skipped.iter())
    }
    /// The longest pause of any process.
    pub fn max_pause(&self) -> Duration {
        self.processes
            .iter()
            .map(|p| p.pause)
            .max()
            .unwrap_or_default()
    }
}

/// Scan and swap `pids`: make each reopen what it holds under `options.path` through the mount
/// now on top of it (see [`ScanOptions`] for the filters). Must be called from one thread
/// (ptrace belongs to the calling thread).
pub fn swap(pids: &[i32], options: &ScanOptions, swap_options: &SwapOptions) -> Result<Report> {
    let started = Instant::now();
    let _latency = swap_options.low_latency.then(CpuLatency::hold);
    let plan = Plan::scan(pids, options)?;
    let mut report = swap_plan(&plan, swap_options)?;
    report.total = started.elapsed();
    Ok(report)
}

/// Swap what a [`Plan`] found. Items that changed since the scan are detected in the stopped
/// process (the stub compares each file with the scan) and the process is rolled back; fd
/// tables of threads that do not share the scanned one are scanned while stopped.
pub fn swap_plan(plan: &Plan, swap_options: &SwapOptions) -> Result<Report> {
    let started = Instant::now();
    let _latency = swap_options.low_latency.then(CpuLatency::hold);
    let stub = arch::assemble()?;
    // Build every program before anything is stopped: the pause is what targets feel.
    let mut prepared: Vec<Option<Prepared>> = plan
        .processes
        .iter()
        .map(|p| {
            let work = !p.fds.is_empty() || !p.maps.is_empty() || p.cwd.is_some();
            work.then(|| prepare(p, &stub, swap_options, false).ok())
                .flatten()
        })
        .collect();
    tracing::debug!(elapsed = ?started.elapsed(), "programs prepared");
    let mut tracees: Vec<(usize, Result<Tracee>)> = Vec::new();
    for (i, p) in plan.processes.iter().enumerate() {
        tracees.push((i, Tracee::seize(p.pid, swap_options.stop_timeout)));
    }
    let mut reports = Vec::new();
    let mut seen_tables: Vec<(i32, i32)> = Vec::new();
    let mut pending_release = Vec::new();
    for (i, tracee) in tracees {
        let p = &plan.processes[i];
        let mut report = ProcessReport {
            pid: p.pid,
            swapped: Vec::new(),
            skipped: p.skipped.clone(),
            pause: Duration::ZERO,
            stub_time: Duration::ZERO,
            threads: 0,
            error: None,
        };
        match tracee {
            Err(e) => report.error = Some(e),
            Ok(mut t) => {
                report.threads = t.threads.len();
                let t0 = Instant::now();
                if let Err(e) = swap_process(
                    &mut t,
                    p,
                    prepared[i].take(),
                    &plan.options,
                    &stub,
                    swap_options,
                    &mut seen_tables,
                    &mut report,
                ) {
                    report.error = Some(e);
                }
                report.stub_time = t0.elapsed();
                pending_release.push((reports.len(), t));
            }
        }
        reports.push(report);
    }
    for (r, mut t) in pending_release {
        if let Err(e) = t.release()
            && reports[r].error.is_none()
        {
            reports[r].error = Some(e);
        }
        reports[r].pause = t.stopped_at.elapsed();
    }
    Ok(Report {
        processes: reports,
        total: started.elapsed(),
    })
}

#[allow(clippy::too_many_arguments)]
fn swap_process(
    t: &mut Tracee,
    p: &ProcessPlan,
    mut prepared: Option<Prepared>,
    options: &ScanOptions,
    stub: &Stub,
    so: &SwapOptions,
    seen_tables: &mut Vec<(i32, i32)>,
    report: &mut ProcessReport,
) -> Result<()> {
    if t.exec_seen {
        return Err(Error::Exec { pid: t.pid });
    }
    // Units: one per fd table (and per fs_struct for cwd). The scanned thread's table first.
    let tids: Vec<i32> = t.threads.keys().copied().collect();
    let mut units: Vec<ProcessPlan> = Vec::new();
    let mut fs_reps: Vec<i32> = Vec::new();
    let main_tid = if tids.contains(&p.tid) {
        p.tid
    } else {
        tids[0]
    };
    let shares = |a: i32, b: i32, k: Kcmp| sys::kcmp_same(a, b, k).unwrap_or(false);
    let mut order = vec![main_tid];
    order.extend(tids.iter().copied().filter(|&x| x != main_tid));
    let mut first = true;
    for tid in order {
        let new_files = !seen_tables
            .iter()
            .any(|&(_, rep)| shares(rep, tid, Kcmp::Files));
        let new_fs = !fs_reps.iter().any(|&rep| shares(rep, tid, Kcmp::Fs));
        if !new_files && !new_fs && !first {
            continue;
        }
        let mut unit = if first && tid == p.tid {
            p.clone()
        } else {
            let mut u = scan_unit(t.pid, tid, options, first, new_fs)?;
            u.skipped
                .retain(|s| !matches!(s.item, Item::Fd(_)) || new_files);
            u
        };
        if !new_files {
            unit.fds.clear();
            unit.locks.clear();
        }
        if !new_fs {
            unit.cwd = None;
        }
        if !first {
            report.skipped.append(&mut unit.skipped);
        }
        if new_files {
            seen_tables.push((t.pid, tid));
        }
        if new_fs {
            fs_reps.push(tid);
        }
        first = false;
        units.push(unit);
    }
    // Mappings may have changed since the scan: keep those still there.
    if let Some(u) = units.first_mut()
        && revalidate_maps(t.pid, u, report)?
    {
        prepared = None;
    }
    if units.first().is_none_or(|u| u.tid != p.tid) {
        prepared = None;
    }
    for unit in &units {
        if unit.fds.is_empty() && unit.maps.is_empty() && unit.cwd.is_none() {
            continue;
        }
        if let Err(e) = run_unit(t, unit, stub, so, prepared.take()) {
            // Batches committed before a failure stay swapped: report them as such.
            if let Error::StubStep { kept, .. } = &e {
                for f in unit.fds.iter().filter(|f| kept.contains(&f.fd)) {
                    report.swapped.push(Swapped {
                        pid: t.pid,
                        item: Item::Fd(f.fd),
                        path: f.path.clone(),
                        from_mnt: f.from.mnt_id,
                        to_mnt: f.to.mnt_id,
                    });
                }
            }
            return Err(e);
        }
        for f in &unit.fds {
            report.swapped.push(Swapped {
                pid: t.pid,
                item: Item::Fd(f.fd),
                path: f.path.clone(),
                from_mnt: f.from.mnt_id,
                to_mnt: f.to.mnt_id,
            });
        }
        for m in &unit.maps {
            report.swapped.push(Swapped {
                pid: t.pid,
                item: Item::Map {
                    start: m.start,
                    end: m.end,
                },
                path: m.path.clone(),
                from_mnt: m.from.mnt_id,
                to_mnt: m.to.mnt_id,
            });
        }
        if let Some(c) = &unit.cwd {
            report.swapped.push(Swapped {
                pid: t.pid,
                item: Item::Cwd { tid: c.tid },
                path: c.path.clone(),
                from_mnt: c.from.mnt_id,
                to_mnt: c.to.mnt_id,
            });
        }
    }
    Ok(())
}

/// Drop mappings that changed since the scan; true if any did.
fn revalidate_maps(pid: i32, unit: &mut ProcessPlan, report: &mut ProcessReport) -> Result<bool> {
    if unit.maps.is_empty() {
        return Ok(false);
    }
    let before = unit.maps.len();
    let now = procfs::maps(pid)?;
    unit.maps.retain(|m| {
        let ok = now.iter().any(|l| {
            l.start == m.start
                && l.end == m.end
                && l.offset == m.offset
                && l.ino == m.from.ino
                && l.perms == m.perms
        });
        if !ok {
            report.skipped.push(Skipped {
                pid,
                item: Item::Map {
                    start: m.start,
                    end: m.end,
                },
                path: m.path.to_string_lossy().into_owned(),
                reason: SkipReason::Changed,
            });
        }
        ok
    });
    Ok(unit.maps.len() != before)
}

fn cstr(p: &Path) -> Vec<u8> {
    CString::new(p.as_os_str().as_bytes())
        .map(|c| c.into_bytes_with_nul())
        .unwrap_or_else(|_| b"\0".to_vec())
}

fn flock_bytes(write: bool, unlock_probe: bool, start: u64, end: Option<u64>) -> Vec<u8> {
    let ty: i16 = if unlock_probe || write {
        libc::F_WRLCK as i16
    } else {
        libc::F_RDLCK as i16
    };
    let ty = if unlock_probe && !write {
        libc::F_RDLCK as i16
    } else {
        ty
    };
    let len = end.map_or(0, |e| e.saturating_sub(start) + 1);
    let mut b = vec![0u8; 32];
    b[0..2].copy_from_slice(&ty.to_le_bytes());
    b[2..4].copy_from_slice(&(libc::SEEK_SET as i16).to_le_bytes());
    b[8..16].copy_from_slice(&start.to_le_bytes());
    b[16..24].copy_from_slice(&len.to_le_bytes());
    b
}

/// The op table of one unit, and which fds each batch commits.
/// What a group leaves for after the point of no return.
enum Opened<'a> {
    /// The new file is open in a spare fd: put it on these fds, then close the spare.
    Spare { new: usize, members: &'a Vec<usize> },
    /// The new file is on the fds already; the old description is kept open here.
    InPlace { saved: usize },
}

struct Built {
    program: Program,
    /// Per batch: the index of its commit op (`usize::MAX` for the last batch, which commits
    /// when the stub ends) and the fds it moves.
    batches: Vec<(usize, Vec<i32>)>,
}

/// Build the op table for one unit (see `program.rs` for how ops run and roll back, and
/// docs/fdswap.md for the order). `batch` bounds the descriptions per transaction: each keeps
/// its new file open in a spare fd until its batch commits, so a target near its hard
/// RLIMIT_NOFILE (which cannot be raised without CAP_SYS_RESOURCE) is done in several
/// transactions within the same stop.
/// Push an `openat(dirfd, path, flags)` step whose result must be an fd, closed again if a later
/// step fails; returns the step's index (its result is the new fd).
fn push_openat(pr: &mut Program, what: Desc, dirfd: Arg, path: usize, flags: i32) -> usize {
    let o = pr.push(
        what,
        Call::sys(
            libc::SYS_openat,
            &[dirfd, Arg::Data(path), Arg::Imm(flags as u64), Arg::Imm(0)],
        ),
        Check::NonNeg,
        None,
    );
    pr.ops[o].set_undo(Call::sys(libc::SYS_close, &[Arg::Result(o)]));
    o
}

/// Push "dup3 the file opened by step `from` onto `f`'s number, with its close-on-exec"; with
/// `undo_from`, undone by dup3 of that step's file (the saved old description) back onto it.
fn push_dup3_onto(pr: &mut Program, from: usize, f: &crate::FdItem, undo_from: Option<usize>) {
    let dup3 = |src: usize| {
        let cl = f.flags & libc::O_CLOEXEC;
        Call::sys(
            libc::SYS_dup3,
            &[Arg::Result(src), Arg::Imm(f.fd as u64), Arg::Imm(cl as u64)],
        )
    };
    pr.push(
        on_fd("dup3 onto", f.fd),
        dup3(from),
        Check::Eq(f.fd as u64),
        undo_from.map(dup3),
    );
}

/// `gaps`: the free fd numbers below the highest fd to reopen in place (see [`in_place_top`]),
/// as they are when the program runs; `None`: reopen nothing in place.
fn build(unit: &ProcessPlan, trapsig: i32, batch: usize, gaps: Option<&[i32]>) -> Built {
    use libc::*;
    let mut pr = Program::default();
    let empty = pr.data(b"\0".to_vec());
    let stx = pr.data(vec![0u8; 256]);
    let block: u64 = if trapsig > 0 {
        !(1u64 << (trapsig - 1))
    } else {
        !(1u64 << (SIGTRAP - 1))
    };
    let block_d = pr.data(block.to_le_bytes().to_vec());
    let orig_mask = pr.data(vec![0u8; 8]);
    let statx_mask = (STATX_INO | STATX_MNT_ID) as u64;
    let statx_flags = (AT_EMPTY_PATH | AT_STATX_DONT_SYNC) as u64;
    let imm = |v: i64| Arg::Imm(v as u64);

    pr.push(
        step("block signals"),
        Call::sys(
            SYS_rt_sigprocmask,
            &[
                imm(SIG_SETMASK as i64),
                Arg::Data(block_d),
                Arg::Data(orig_mask),
                imm(8),
            ],
        ),
        Check::NonNeg,
        Some(Call::sys(
            SYS_rt_sigprocmask,
            &[
                imm(SIG_SETMASK as i64),
                Arg::Data(orig_mask),
                imm(0),
                imm(8),
            ],
        )),
    );

    // Description groups, a file's groups kept together (a batch never splits a file's fds:
    // closing one drops the process's POSIX locks on the whole file).
    let mut groups: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, f) in unit.fds.iter().enumerate() {
        groups.entry(f.description).or_default().push(i);
    }
    let mut gl: Vec<Vec<usize>> = groups.into_values().collect();
    gl.sort_by_key(|m| {
        let f = &unit.fds[m[0]];
        (f.from.dev, f.from.ino, f.fd)
    });
    let file_of = |g: &Vec<usize>| {
        let f = &unit.fds[g[0]];
        (f.from.dev, f.from.ino)
    };
    let mut batches_g: Vec<Vec<usize>> = vec![Vec::new()];
    for g in 0..gl.len() {
        let cur = batches_g.last().map_or(0, Vec::len);
        let same_file = g > 0 && file_of(&gl[g]) == file_of(&gl[g - 1]);
        if cur >= batch.max(1) && !same_file {
            batches_g.push(Vec::new());
        }
        if let Some(b) = batches_g.last_mut() {
            b.push(g);
        }
    }

    // Locks: which fd (and group) carries each.
    struct L {
        fd: i32,
        group: usize,
        take: usize,
        probe: usize,
    }
    let mut locks = Vec::new();
    for l in &unit.locks {
        let carrier = gl.iter().enumerate().find_map(|(g, members)| {
            members.iter().find_map(|&i| {
                let f = &unit.fds[i];
                let a = f.flags & O_ACCMODE;
                let ok = if l.write {
                    a == O_WRONLY || a == O_RDWR
                } else {
                    a == O_RDONLY || a == O_RDWR
                };
                ((f.from.ino, f.from.dev) == (l.ino, l.dev) && ok).then_some((f.fd, g))
            })
        });
        if let Some((fd, group)) = carrier {
            let take = pr.data(flock_bytes(l.write, false, l.start, l.end));
            let probe = pr.data(flock_bytes(l.write, true, l.start, l.end));
            locks.push(L {
                fd,
                group,
                take,
                probe,
            });
        }
    }

    let check_file = |pr: &mut Program, fd: Arg, id: &sys::FileId, what: Desc| {
        pr.push(
            what,
            Call::sys(
                SYS_statx,
                &[
                    fd,
                    Arg::Data(empty),
                    Arg::Imm(statx_flags),
                    Arg::Imm(statx_mask),
                    Arg::Data(stx),
                ],
            ),
            Check::NonNeg,
            None,
        );
        pr.push(what, Call::compare_file(stx, id), Check::NonNeg, None);
    };

    let nb = batches_g.len();
    let mut batches = Vec::with_capacity(nb);
    for (b, members_b) in batches_g.iter().enumerate() {
        let last = b + 1 == nb;
        let in_batch = |g: usize| members_b.contains(&g);
        // On rollback, re-take the original locks last (closing the file dropped them).
        for l in locks.iter().filter(|l| in_batch(l.group)) {
            pr.push(
                on_fd("re-take the original lock on", l.fd),
                Call::nothing(),
                Check::None,
                Some(Call::sys(
                    SYS_fcntl,
                    &[imm(l.fd as i64), imm(F_SETLK as i64), Arg::Data(l.take)],
                )),
            );
        }
        // What each group leaves for after the point of no return: a spare new file to put on
        // its fds, or (reopened in place) the old description kept for a rollback.
        let mut opened: Vec<Opened<'_>> = Vec::new();
        let mut moved = Vec::new();
        // Reopening in place needs the fd being reopened to be the lowest free number when the
        // openat runs: fill the gaps below it first (O_PATH placeholders, whose close costs
        // nothing), so that every other fd the stub opens lands above.
        let in_place = |g: usize| gaps.is_some() && !unit.fds[gl[g][0]].old_close_costs;
        let mut placeholders = Vec::new();
        if let Some(gaps) = gaps.filter(|g| !g.is_empty())
            && members_b.iter().any(|&g| in_place(g))
        {
            let root = pr.data(b"/\0".to_vec());
            let src = push_openat(
                &mut pr,
                step("open a placeholder for the fd gaps"),
                imm(AT_FDCWD as i64),
                root,
                O_PATH | O_CLOEXEC,
            );
            pr.push(
                step("the placeholder in the first fd gap (fds changed since the scan?)"),
                Call::compare_result(src, gaps[0] as u64),
                Check::NonNeg,
                None,
            );
            placeholders.push(src);
            for &h in &gaps[1..] {
                let o = pr.push(
                    step("fill an fd gap"),
                    Call::sys(
                        SYS_fcntl,
                        &[Arg::Result(src), imm(F_DUPFD_CLOEXEC as i64), imm(h as i64)],
                    ),
                    Check::NonNeg,
                    None,
                );
                pr.ops[o].set_undo(Call::sys(SYS_close, &[Arg::Result(o)]));
                pr.push(
                    step("a placeholder in an fd gap (fds changed since the scan?)"),
                    Call::compare_result(o, h as u64),
                    Check::NonNeg,
                    None,
                );
                placeholders.push(o);
            }
        }
        // Directories holding two or more of this batch's files are opened once (O_PATH), and
        // the files relative to them: one path component to walk instead of all.
        let mut dir_count: HashMap<&Path, usize> = HashMap::new();
        for &g in members_b {
            if let Some(d) = unit.fds[gl[g][0]].path.parent() {
                *dir_count.entry(d).or_default() += 1;
            }
        }
        let mut dir_ops: HashMap<&Path, usize> = HashMap::new();
        for (d, _) in dir_count.iter().filter(|(_, n)| **n >= 2) {
            let dp = pr.data(cstr(d));
            let o = push_openat(
                &mut pr,
                step("open a parent directory"),
                imm(AT_FDCWD as i64),
                dp,
                O_PATH | O_DIRECTORY | O_CLOEXEC,
            );
            dir_ops.insert(d, o);
        }
        for &g in members_b {
            let members = &gl[g];
            let f0 = &unit.fds[members[0]];
            // The old description is still what the scan saw.
            check_file(
                &mut pr,
                imm(f0.fd as i64),
                &f0.from,
                on_fd("check (changed since the scan?) of", f0.fd),
            );
            pr.push(
                on_fd("F_GETFL (flags changed since the scan?) of", f0.fd),
                Call::sys(SYS_fcntl, &[imm(f0.fd as i64), imm(F_GETFL as i64)]),
                Check::Eq((f0.flags & !O_CLOEXEC) as u64),
                None,
            );
            for &i in members {
                let f = &unit.fds[i];
                pr.push(
                    on_fd("F_GETFD (close-on-exec changed since the scan?) of", f.fd),
                    Call::sys(SYS_fcntl, &[imm(f.fd as i64), imm(F_GETFD as i64)]),
                    Check::Eq(u64::from(f.flags & O_CLOEXEC != 0)),
                    None,
                );
            }
            let seekable = f0.flags & O_PATH == 0 && !f0.is_dir();
            let pos = seekable.then(|| {
                pr.push(
                    on_fd("lseek of", f0.fd),
                    Call::sys(
                        SYS_lseek,
                        &[imm(f0.fd as i64), imm(0), imm(SEEK_CUR as i64)],
                    ),
                    Check::NonNeg,
                    None,
                )
            });
            // Open the new one: same flags, through the mount now on top.
            let (dirfd, path) = match (f0.path.parent(), f0.path.file_name()) {
                (Some(d), Some(name)) if dir_ops.contains_key(d) => {
                    (Arg::Result(dir_ops[d]), pr.data(cstr(Path::new(name))))
                }
                _ => (imm(AT_FDCWD as i64), pr.data(cstr(&f0.path))),
            };
            let base = f0.flags & !(O_CLOEXEC | O_CREAT | O_EXCL | O_TRUNC | O_NOCTTY);
            let cl0 = f0.flags & O_CLOEXEC;
            let saved = in_place(g).then(|| {
                // Keep the old description, free the fd's number; the openat takes it.
                let s = pr.push(
                    on_fd("F_DUPFD_CLOEXEC of", f0.fd),
                    Call::sys(
                        SYS_fcntl,
                        &[imm(f0.fd as i64), imm(F_DUPFD_CLOEXEC as i64), imm(0)],
                    ),
                    Check::NonNeg,
                    None,
                );
                pr.ops[s].set_undo(Call::sys(SYS_close, &[Arg::Result(s)]));
                pr.push(
                    on_fd("close of", f0.fd),
                    Call::sys(SYS_close, &[imm(f0.fd as i64)]),
                    Check::None,
                    Some(Call::sys(
                        SYS_dup3,
                        &[Arg::Result(s), imm(f0.fd as i64), imm(cl0 as i64)],
                    )),
                );
                s
            });
            let oflags = if saved.is_some() {
                base | cl0
            } else {
                base | O_CLOEXEC
            };
            let n = push_openat(
                &mut pr,
                on_fd("openat through the new mount for", f0.fd),
                dirfd,
                path,
                oflags,
            );
            if saved.is_some() {
                pr.push(
                    on_fd(
                        "the new file at the number of (fds changed since the scan?)",
                        f0.fd,
                    ),
                    Call::compare_result(n, f0.fd as u64),
                    Check::NonNeg,
                    None,
                );
            }
            check_file(
                &mut pr,
                Arg::Result(n),
                &f0.to,
                on_fd("check of the new file for", f0.fd),
            );
            if let Some(pos) = pos {
                pr.push(
                    on_fd("lseek of the new file for", f0.fd),
                    Call::sys(
                        SYS_lseek,
                        &[Arg::Result(n), Arg::Result(pos), imm(SEEK_SET as i64)],
                    ),
                    Check::EqResult(pos),
                    None,
                );
            }
            // Nobody else holds a conflicting lock on the new file.
            for l in locks.iter().filter(|l| l.group == g) {
                pr.push(
                    on_fd("F_GETLK on the new file for", l.fd),
                    Call::sys(
                        SYS_fcntl,
                        &[Arg::Result(n), imm(F_GETLK as i64), Arg::Data(l.probe)],
                    ),
                    Check::NonNeg,
                    None,
                );
                pr.push(
                    on_fd("a conflicting lock on the new file for", l.fd),
                    Call::compare_data(l.probe, 0, F_UNLCK as u64),
                    Check::NonNeg,
                    None,
                );
            }
            match saved {
                Some(s) => {
                    // The other fds of the description: onto the new file now (undoable).
                    for &i in &members[1..] {
                        push_dup3_onto(&mut pr, n, &unit.fds[i], Some(s));
                    }
                    opened.push(Opened::InPlace { saved: s });
                }
                None => opened.push(Opened::Spare { new: n, members }),
            }
            moved.extend(members.iter().map(|&i| unit.fds[i].fd));
        }
        let mut parks = Vec::new();
        let mut temps = Vec::new();
        if last {
            let mv = (MREMAP_MAYMOVE | MREMAP_FIXED) as i64;
            for m in &unit.maps {
                let p = m.perms.as_bytes();
                let writable = p.get(1) == Some(&b'w');
                let mut prot = 0;
                if p.first() == Some(&b'r') {
                    prot |= PROT_READ;
                }
                if writable {
                    prot |= PROT_WRITE;
                }
                if p.get(2) == Some(&b'x') {
                    prot |= PROT_EXEC;
                }
                let path = pr.data(cstr(&m.path));
                // A read-only mapping is never reopened for writing.
                let acc = if writable { O_RDWR } else { O_RDONLY };
                let fd = push_openat(
                    &mut pr,
                    on_map("openat through the new mount for", m.start),
                    imm(AT_FDCWD as i64),
                    path,
                    acc | O_CLOEXEC,
                );
                check_file(
                    &mut pr,
                    Arg::Result(fd),
                    &m.to,
                    on_map("check of the new file for", m.start),
                );
                let len = m.end - m.start;
                let trial = pr.push(
                    on_map("mmap of the new file for", m.start),
                    Call::sys(
                        SYS_mmap,
                        &[
                            imm(0),
                            Arg::Imm(len),
                            imm(prot as i64),
                            imm(MAP_SHARED as i64),
                            Arg::Result(fd),
                            Arg::Imm(m.offset),
                        ],
                    ),
                    Check::NonNeg,
                    None,
                );
                pr.ops[trial].set_undo(Call::sys(SYS_munmap, &[Arg::Result(trial), Arg::Imm(len)]));
                let park = pr.push(
                    on_map("reserving space to park", m.start),
                    Call::sys(
                        SYS_mmap,
                        &[
                            imm(0),
                            Arg::Imm(len),
                            imm(PROT_NONE as i64),
                            imm((MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE) as i64),
                            imm(-1),
                            imm(0),
                        ],
                    ),
                    Check::NonNeg,
                    None,
                );
                pr.ops[park].set_undo(Call::sys(SYS_munmap, &[Arg::Result(park), Arg::Imm(len)]));
                pr.push(
                    on_map("parking", m.start),
                    Call::sys(
                        SYS_mremap,
                        &[
                            Arg::Imm(m.start),
                            Arg::Imm(len),
                            Arg::Imm(len),
                            imm(mv),
                            Arg::Result(park),
                        ],
                    ),
                    Check::EqResult(park),
                    Some(Call::sys(
                        SYS_mremap,
                        &[
                            Arg::Result(park),
                            Arg::Imm(len),
                            Arg::Imm(len),
                            imm(mv),
                            Arg::Imm(m.start),
                        ],
                    )),
                );
                pr.push(
                    on_map("moving the new mapping to", m.start),
                    Call::sys(
                        SYS_mremap,
                        &[
                            Arg::Result(trial),
                            Arg::Imm(len),
                            Arg::Imm(len),
                            imm(mv),
                            Arg::Imm(m.start),
                        ],
                    ),
                    Check::Eq(m.start),
                    Some(Call::sys(
                        SYS_mremap,
                        &[
                            Arg::Imm(m.start),
                            Arg::Imm(len),
                            Arg::Imm(len),
                            imm(mv),
                            Arg::Result(trial),
                        ],
                    )),
                );
                parks.push((park, len));
                temps.push(fd);
            }
            if let Some(c) = &unit.cwd {
                let dot = pr.data(b".\0".to_vec());
                let dflags = O_PATH | O_DIRECTORY | O_CLOEXEC;
                let saved_cwd = push_openat(
                    &mut pr,
                    step("open the current cwd"),
                    imm(AT_FDCWD as i64),
                    dot,
                    dflags,
                );
                check_file(
                    &mut pr,
                    Arg::Result(saved_cwd),
                    &c.from,
                    step("check of the cwd (changed since the scan?)"),
                );
                let path = pr.data(cstr(&c.path));
                let new_cwd = push_openat(
                    &mut pr,
                    step("openat through the new mount for the cwd"),
                    imm(AT_FDCWD as i64),
                    path,
                    dflags,
                );
                check_file(
                    &mut pr,
                    Arg::Result(new_cwd),
                    &c.to,
                    step("check of the new cwd"),
                );
                pr.push(
                    step("fchdir to the new cwd"),
                    Call::sys(SYS_fchdir, &[Arg::Result(new_cwd)]),
                    Check::NonNeg,
                    Some(Call::sys(SYS_fchdir, &[Arg::Result(saved_cwd)])),
                );
                temps.push(saved_cwd);
                temps.push(new_cwd);
            }
        }
        // Point of no return for this batch: every new file is open and checked. Put each on
        // its fds (dup3 closes the old description: one close per fd, and on FUSE one FLUSH
        // round trip each, the fewest possible) and close the spare, drop the temporaries,
        // then re-take the locks (closing any fd of a file drops the process's POSIX locks on
        // it). dup3 onto an open fd from an fd we opened cannot fail while every thread
        // sharing the table is stopped (EBUSY needs an open racing in another thread).
        pr.begin_final();
        for o in opened {
            match o {
                Opened::Spare { new, members } => {
                    for &i in members {
                        push_dup3_onto(&mut pr, new, &unit.fds[i], None);
                    }
                    pr.push(
                        on_fd("close of the spare new file for", unit.fds[members[0]].fd),
                        Call::sys(SYS_close, &[Arg::Result(new)]),
                        Check::None,
                        None,
                    );
                }
                Opened::InPlace { saved } => {
                    pr.push(
                        step("close a kept old description"),
                        Call::sys(SYS_close, &[Arg::Result(saved)]),
                        Check::None,
                        None,
                    );
                }
            }
        }
        for fd in temps
            .into_iter()
            .chain(dir_ops.into_values())
            .chain(placeholders)
        {
            pr.push(
                step("close a temporary fd"),
                Call::sys(SYS_close, &[Arg::Result(fd)]),
                Check::None,
                None,
            );
        }
        for (park, len) in parks {
            pr.push(
                step("unmap a parked old mapping"),
                Call::sys(SYS_munmap, &[Arg::Result(park), Arg::Imm(len)]),
                Check::NonNeg,
                None,
            );
        }
        for l in locks.iter().filter(|l| in_batch(l.group)) {
            pr.push(
                on_fd("take the POSIX lock again on", l.fd),
                Call::sys(
                    SYS_fcntl,
                    &[imm(l.fd as i64), imm(F_SETLK as i64), Arg::Data(l.take)],
                ),
                Check::NonNeg,
                None,
            );
        }
        if last {
            pr.push(
                step("restore the signal mask"),
                Call::sys(
                    SYS_rt_sigprocmask,
                    &[
                        imm(SIG_SETMASK as i64),
                        Arg::Data(orig_mask),
                        imm(0),
                        imm(8),
                    ],
                ),
                Check::NonNeg,
                None,
            );
            batches.push((usize::MAX, moved));
        } else {
            pr.end_final();
            let c = pr.push(step("commit a batch"), Call::commit(), Check::None, None);
            batches.push((c, moved));
        }
    }
    Built {
        program: pr,
        batches,
    }
}

/// Pick a trap signal the target neither catches nor blocks and whose default is to ignore it:
/// if the tracer dies, the trap is then a no-op. 0: none (use `int3`).
fn trap_signal(pid: i32, tid: i32) -> Result<i32> {
    let m = procfs::sig_masks(Path::new(&format!("/proc/{pid}/task/{tid}")))?;
    for s in [libc::SIGURG, libc::SIGWINCH, libc::SIGCHLD, libc::SIGCONT] {
        let bit = 1u64 << (s - 1);
        if m.caught & bit == 0 && m.blocked & bit == 0 {
            return Ok(s);
        }
    }
    Ok(0)
}

/// Where the trampoline goes: the zero padding at the end of the vDSO (after its section
/// headers; never executed or read by anyone). Written through `/proc/PID/mem`, which
/// copies the page on write for this process only.
struct Trampoline {
    mem: std::fs::File,
    at: u64,
    original: Vec<u8>,
}

impl Trampoline {
    fn place(pid: i32, tid: i32) -> Result<Option<Trampoline>> {
        let maps = procfs::maps(pid)?;
        let Some(v) = maps.iter().find(|m| m.path == "[vdso]") else {
            return Ok(None);
        };
        let at = v.end - arch::TRAMPOLINE_LEN as u64;
        let mut original = vec![0u8; arch::TRAMPOLINE_LEN];
        read_mem(tid, at, &mut original)?;
        // Free: zeros, or a trampoline an earlier (killed) swap left behind.
        let ours = original.starts_with(&arch::SYSCALL_INSN);
        if !ours && original.iter().any(|&b| b != 0) {
            return Ok(None);
        }
        let path = format!("/proc/{pid}/mem");
        let mem = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(crate::error::proc_err(&path))?;
        Ok(Some(Trampoline {
            mem,
            at,
            original: if ours {
                vec![0; arch::TRAMPOLINE_LEN]
            } else {
                original
            },
        }))
    }

    fn write(&self, code: &[u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.mem
            .write_all_at(code, self.at)
            .map_err(|e| Error::RemoteMemory {
                tid: 0,
                addr: self.at,
                source: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            })
    }

    fn restore(&self) -> Result<()> {
        self.write(&self.original)
    }
}

/// Find a `syscall` instruction in the vDSO (or any executable mapping).
fn find_syscall_insn(pid: i32, tid: i32) -> Result<u64> {
    let maps = procfs::maps(pid)?;
    let mut cands: Vec<&procfs::MapLine> = maps
        .iter()
        .filter(|m| m.perms.as_bytes().get(2) == Some(&b'x'))
        .collect();
    cands.sort_by_key(|m| m.path != "[vdso]");
    for m in cands {
        let len = ((m.end - m.start) as usize).min(1 << 20);
        let mut buf = vec![0u8; len];
        if read_mem(tid, m.start, &mut buf).is_err() {
            continue;
        }
        if let Some(i) = buf.windows(2).position(|w| w == arch::SYSCALL_INSN) {
            return Ok(m.start + i as u64);
        }
    }
    Err(Error::NoSyscallInstruction { pid })
}

fn read_mem(tid: i32, addr: u64, buf: &mut [u8]) -> Result<()> {
    let len = buf.len();
    let n = process_vm_readv(
        Pid::from_raw(tid),
        &mut [IoSliceMut::new(buf)],
        &[RemoteIoVec {
            base: addr as usize,
            len,
        }],
    )
    .map_err(|source| Error::RemoteMemory { tid, addr, source })?;
    if n != len {
        return Err(Error::RemoteMemory {
            tid,
            addr,
            source: Errno::EFAULT,
        });
    }
    Ok(())
}

fn write_mem(tid: i32, addr: u64, buf: &[u8]) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = process_vm_writev(
            Pid::from_raw(tid),
            &[IoSlice::new(&buf[done..])],
            &[RemoteIoVec {
                base: addr as usize + done,
                len: buf.len() - done,
            }],
        )
        .map_err(|source| Error::RemoteMemory { tid, addr, source })?;
        if n == 0 {
            return Err(Error::RemoteMemory {
                tid,
                addr,
                source: Errno::EFAULT,
            });
        }
        done += n;
    }
    Ok(())
}

/// Run one syscall in stopped thread `tid` at the `syscall` instruction `at`, leaving the thread
/// in the syscall-exit stop. Signals that arrive meanwhile are kept for re-queueing.
fn remote_syscall(
    t: &mut Tracee,
    tid: i32,
    base: &Regs,
    at: u64,
    nr: i64,
    name: &'static str,
    args: [u64; 6],
) -> Result<i64> {
    tracer::setregs(tid, arch::syscall_regs(base, at, nr, args))?;
    tracer::syscall_step(tid)?;
    let mut entered = false;
    loop {
        match t.wait(tid, None)? {
            Seen::Syscall if !entered => {
                entered = true;
                tracer::syscall_step(tid)?;
            }
            Seen::Syscall => break,
            Seen::Signal(_) => {
                t.keep_stray(tid);
                tracer::syscall_step(tid)?;
            }
            Seen::EventStop => tracer::syscall_step(tid)?,
            Seen::Exited => return Err(Error::Gone { pid: t.pid }),
        }
    }
    let r = arch::ret(&tracer::getregs(tid)?);
    if (-4095..0).contains(&r) {
        return Err(Error::RemoteSyscall {
            tid,
            name,
            errno: Errno::from_raw(-r as i32),
        });
    }
    Ok(r)
}

/// From a syscall-exit or signal stop, get `tid` back into a `PTRACE_EVENT_STOP`, where
/// restoring the registers makes the kernel apply the pending syscall restart on resume.
fn back_to_event_stop(t: &mut Tracee, tid: i32) -> Result<()> {
    tracer::interrupt(tid)?;
    tracer::cont(tid, None)?;
    loop {
        match t.wait(tid, None)? {
            Seen::EventStop => return Ok(()),
            Seen::Signal(_) => {
                t.keep_stray(tid);
                tracer::cont(tid, None)?;
            }
            Seen::Syscall => tracer::cont(tid, None)?,
            Seen::Exited => return Err(Error::Gone { pid: t.pid }),
        }
    }
}

/// Raise RLIMIT_NOFILE while the stub needs temporaries; restores on drop.
struct NofileGuard {
    pid: i32,
    old: Option<(u64, u64)>,
}

impl NofileGuard {
    /// Raise the soft limit to `needed` (and the hard one, if allowed); returns the guard and
    /// the soft limit in force.
    fn raise(pid: i32, needed: u64) -> Result<(Self, u64)> {
        let (cur, max) =
            sys::prlimit_nofile(pid, None).map_err(|source| Error::Rlimit { pid, source })?;
        if cur >= needed {
            return Ok((Self { pid, old: None }, cur));
        }
        let got = match sys::prlimit_nofile(pid, Some((needed, max.max(needed)))) {
            Ok(_) => needed,
            // No CAP_SYS_RESOURCE: the hard limit is as far as we go.
            Err(Errno::EPERM) if cur < max => {
                sys::prlimit_nofile(pid, Some((max, max)))
                    .map_err(|source| Error::Rlimit { pid, source })?;
                max
            }
            Err(Errno::EPERM) => return Ok((Self { pid, old: None }, cur)),
            Err(source) => return Err(Error::Rlimit { pid, source }),
        };
        Ok((
            Self {
                pid,
                old: Some((cur, max)),
            },
            got,
        ))
    }
}

impl Drop for NofileGuard {
    fn drop(&mut self) {
        if let Some(old) = self.old {
            let _ = sys::prlimit_nofile(self.pid, Some(old));
        }
    }
}

/// A unit's program, built and serialised before its process is stopped.
pub(crate) struct Prepared {
    built: Built,
    body: Vec<u8>,
    layout: crate::program::Layout,
    trapsig: i32,
    /// The fd gaps the program fills (see [`build`]).
    gaps: Option<Vec<i32>>,
    _nofile: NofileGuard,
}

/// At most this many fd gaps are filled to reopen files in place; a sparser table has its
/// files reopened through spare fds.
const MAX_GAPS: usize = 4096;

/// The highest fd to reopen in place: the lowest fd of each description whose old file is on
/// a filesystem with a quiet close ([`crate::FdItem::old_close_costs`] false).
fn in_place_top(unit: &ProcessPlan) -> Option<i32> {
    let mut first: HashMap<usize, (i32, bool)> = HashMap::new();
    for f in &unit.fds {
        let e = first
            .entry(f.description)
            .or_insert((f.fd, f.old_close_costs));
        if f.fd < e.0 {
            *e = (f.fd, f.old_close_costs);
        }
    }
    first
        .values()
        .filter(|(_, costs)| !costs)
        .map(|(fd, _)| *fd)
        .max()
}

/// The free fd numbers below the highest fd to reopen in place, if not too many: as the fd
/// table is now (`live`), or as the scan saw it (every fd it listed is in the plan, moving or
/// skipped).
fn fd_gaps(unit: &ProcessPlan, live: bool) -> Option<Vec<i32>> {
    let top = in_place_top(unit)?;
    let open: std::collections::HashSet<i32> = if live {
        let task = PathBuf::from(format!("/proc/{}/task/{}", unit.pid, unit.tid));
        procfs::fds(&task).ok()?.into_iter().collect()
    } else {
        let skipped = unit.skipped.iter().filter_map(|k| match k.item {
            Item::Fd(fd) => Some(fd),
            _ => None,
        });
        unit.fds.iter().map(|f| f.fd).chain(skipped).collect()
    };
    let gaps: Vec<i32> = (0..top).filter(|fd| !open.contains(fd)).collect();
    (gaps.len() <= MAX_GAPS).then_some(gaps)
}

/// Choose the trap signal, make room for the spare fds, build and serialise the program.
/// `stopped`: the process is stopped now (its fd table is read as it is, not taken from the
/// scan).
pub(crate) fn prepare(
    unit: &ProcessPlan,
    stub: &Stub,
    so: &SwapOptions,
    stopped: bool,
) -> Result<Prepared> {
    let pid = unit.pid;
    let trapsig = if so.force_int3 {
        0
    } else {
        trap_signal(pid, unit.tid)?
    };
    let ngroups = unit
        .fds
        .iter()
        .map(|f| f.description)
        .collect::<std::collections::HashSet<_>>()
        .len() as u64;
    let max_fd = unit
        .fds
        .iter()
        .map(|f| f.fd)
        .chain(unit.skipped.iter().filter_map(|s| match s.item {
            Item::Fd(fd) => Some(fd),
            _ => None,
        }))
        .max()
        .unwrap_or(0) as u64;
    // Spare fds: the new file of each group until its batch commits, maps and cwd.
    let dirs = unit
        .fds
        .iter()
        .filter_map(|f| f.path.parent())
        .collect::<std::collections::HashSet<_>>()
        .len() as u64;
    // (The placeholders in fd gaps take numbers below `max_fd`: no room needed for them.)
    let gaps = fd_gaps(unit, stopped);
    let base = max_fd + 1 + 2 * unit.maps.len() as u64 + dirs + 24;
    let (nofile, limit) = NofileGuard::raise(pid, base + ngroups)?;
    let batch = if limit >= base + ngroups {
        usize::MAX
    } else {
        limit.saturating_sub(base).max(1) as usize
    };
    let batch = so.max_batch.map_or(batch, |m| batch.min(m.max(1)));
    let built = build(unit, trapsig, batch, gaps.as_deref());
    let body = built.program.serialize();
    let layout = built.program.layout(stub.code.len());
    Ok(Prepared {
        built,
        body,
        layout,
        trapsig,
        gaps,
        _nofile: nofile,
    })
}

fn run_unit(
    t: &mut Tracee,
    unit: &ProcessPlan,
    stub: &Stub,
    so: &SwapOptions,
    prepared: Option<Prepared>,
) -> Result<()> {
    let pid = t.pid;
    let tid = unit.tid;
    let Some(th) = t.threads.get(&tid) else {
        return Err(Error::Gone { pid });
    };
    let orig = th.regs;
    // A program prepared before the stop is good if its trap signal still is.
    let still_good = |p: &Prepared| -> Result<bool> {
        if p.trapsig == 0 {
            return Ok(so.force_int3);
        }
        let m = procfs::sig_masks(Path::new(&format!("/proc/{pid}/task/{tid}")))?;
        let bit = 1u64 << (p.trapsig - 1);
        Ok(m.caught & bit == 0 && m.blocked & bit == 0)
    };
    // ... and if the fd gaps it fills are still the gaps (the table is stopped now).
    let mut prepared = match prepared {
        Some(p) if still_good(&p)? && p.gaps == fd_gaps(unit, true) => p,
        _ => {
            tracing::debug!(pid, tid, "program prepared again while stopped");
            prepare(unit, stub, so, true)?
        }
    };
    let trapsig = prepared.trapsig;
    let layout = prepared.layout;
    // The injected syscalls run in a trampoline that, should this process die, returns the
    // thread to where it was; without a place for one, any syscall instruction will do.
    let tramp = Trampoline::place(pid, tid)?;
    let at = match &tramp {
        Some(t) => {
            t.write(&arch::trampoline(&orig)?)?;
            t.at
        }
        None => find_syscall_insn(pid, tid)?,
    };

    let prot = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    let total = layout.total as u64;
    let mapped = remote_syscall(
        t,
        tid,
        &orig,
        at,
        libc::SYS_mmap,
        "mmap",
        [0, total, prot, flags, u64::MAX, 0],
    );
    // From here on the mapping must go and the registers come back, whatever happens. The
    // munmap runs on the original registers, so that the trampoline would restore all of them.
    let result = mapped.and_then(|addr| {
        let addr = addr as u64;
        let ran = run_stub(t, unit, stub, so, &mut prepared, addr, trapsig, &orig);
        let unmapped = remote_syscall(
            t,
            tid,
            &orig,
            at,
            libc::SYS_munmap,
            "munmap",
            [addr, total, 0, 0, 0, 0],
        );
        ran.and(unmapped.map(|_| ()))
    });
    let back = back_to_event_stop(t, tid).and_then(|()| tracer::setregs(tid, orig));
    drop(prepared);
    let untrampoline = tramp.as_ref().map_or(Ok(()), Trampoline::restore);
    result.and(back).and(untrampoline)
}

#[allow(clippy::too_many_arguments)]
fn run_stub(
    t: &mut Tracee,
    unit: &ProcessPlan,
    stub: &Stub,
    so: &SwapOptions,
    prepared: &mut Prepared,
    addr: u64,
    trapsig: i32,
    orig: &Regs,
) -> Result<()> {
    let pid = t.pid;
    let tid = unit.tid;
    let layout = prepared.layout;
    let (regs_block, ret_rip) = arch::return_block(orig);
    let mut code = stub.code.clone();
    code[stub.rip_slot..stub.rip_slot + 8].copy_from_slice(&ret_rip.to_le_bytes());
    patch_header(
        &mut prepared.body,
        &Header {
            tgid: pid,
            tid,
            trapsig,
            regs: regs_block,
        },
    );
    write_mem(tid, addr, &code)?;
    write_mem(tid, addr + layout.code_len as u64, &prepared.body)?;
    let stack_top = addr + layout.total as u64 - 64;
    tracer::setregs(
        tid,
        arch::stub_regs(
            orig,
            addr + stub.entry as u64,
            addr + layout.code_len as u64,
            stack_top,
        ),
    )?;
    tracer::cont(tid, None)?;
    let trap_sig = if trapsig > 0 {
        Signal::try_from(trapsig).ok()
    } else {
        Some(Signal::SIGTRAP)
    };
    let trap_rip = if trapsig > 0 {
        addr + stub.after_tgkill as u64
    } else {
        addr + stub.trap_ret as u64
    };
    loop {
        match t.wait(tid, None)? {
            Seen::Signal(sig) => {
                let r = tracer::getregs(tid)?;
                if Some(sig) == trap_sig && arch::ip(&r) == trap_rip {
                    break;
                }
                if trapsig == 0 || sig != Signal::try_from(trapsig).unwrap_or(Signal::SIGKILL) {
                    t.keep_stray(tid);
                }
                tracer::cont(tid, None)?;
            }
            Seen::EventStop | Seen::Syscall => tracer::cont(tid, None)?,
            Seen::Exited => return Err(Error::Gone { pid }),
        }
    }
    if let Some(d) = so.pause_at_trap {
        std::thread::sleep(d);
    }
    let mut h = vec![0u8; hdr::SIZE];
    read_mem(tid, addr + layout.code_len as u64, &mut h)?;
    let out = Outcome::parse(&h);
    let built = &prepared.built;
    let op_what = |i: u64| built.program.describe(i, unit);
    let errno = |r: i64| Errno::from_raw((-r) as i32);
    match out.status {
        status::DONE if out.final_errors == 0 => Ok(()),
        status::DONE => Err(Error::StubFinal {
            pid,
            step: op_what(out.final_index),
            errno: errno(out.final_result),
        }),
        status::ROLLED_BACK => Err(Error::StubStep {
            pid,
            step: op_what(out.fail_index),
            errno: errno(out.fail_result),
            kept: built
                .batches
                .iter()
                .filter(|(commit, _)| *commit < out.floor as usize)
                .flat_map(|(_, fds)| fds.iter().copied())
                .collect(),
        }),
        s => Err(Error::UnexpectedStop {
            tid,
            what: format!("stub status {s}"),
        }),
    }
}
