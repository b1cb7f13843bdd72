//! The swap: stop every target, run one stub per fd table, resume.
//!
//! `build.rs` builds a unit's program step by step, `run.rs` prepares it and runs it in the
//! stopped target, `remote.rs` holds the remote-syscall and remote-memory helpers.

mod build;
mod handoff;
mod remote;
mod run;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::CpuLatency;
use crate::arch;
use crate::error::{Error, Result};
use crate::plan::{FdItem, Item, Plan, ProcessPlan, ScanOptions, SkipReason, Skipped, scan_unit};
use crate::procfs;
use crate::program::Stub;
use crate::sys::{self, Kcmp};
use crate::tracer::Tracee;
use run::{HandIn, Prepared, prepare, run_unit};

/// How to swap.
#[derive(Debug, Clone)]
pub struct SwapOptions {
    /// How long to wait for a thread to stop before giving up on its process.
    pub stop_timeout: Duration,
    /// Trap with this signal whatever the target does with it (tests only: with one whose
    /// default action is fatal, such as SIGTRAP, a tracer's death mid-stub kills the target).
    pub force_trap_signal: Option<i32>,
    /// Test hook: sleep this long while the stub thread sits at its trap, before reading the
    /// results (to kill the swapper there).
    pub pause_at_trap: Option<Duration>,
    /// At most this many open file descriptions per transaction (batch); default 253. Each
    /// description of the current batch holds one extra fd in the target until the batch
    /// commits, so this bounds the fds the swap needs; a target whose fd limit leaves less
    /// room gets smaller batches.
    pub max_batch: Option<usize>,
    /// Hold a [`crate::CpuLatency`] request for the time of the swap (default: yes).
    pub low_latency: bool,
    /// Open the new files before the stop and hand them in (default: yes; see
    /// docs/fdswap.md). Off, or where it cannot be done, the stub opens them itself.
    pub handoff: bool,
}

impl Default for SwapOptions {
    fn default() -> Self {
        Self {
            stop_timeout: Duration::from_secs(5),
            force_trap_signal: None,
            pause_at_trap: None,
            max_batch: None,
            low_latency: true,
            handoff: true,
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
    /// How its new files were opened (`None`: no file was reopened).
    pub open_mode: Option<OpenMode>,
}

/// How a process's new files were opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// By fdswap before the stop, handed in over a unix socket (`SCM_RIGHTS`); files it
    /// could not pre-open were opened by the stub.
    Handoff,
    /// By the stub, while the process was stopped.
    InStubOpen,
}

impl std::fmt::Display for OpenMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OpenMode::Handoff => "handoff",
            OpenMode::InStubOpen => "in-stub open",
        })
    }
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
    // Open the new files while the targets run, and listen for their stubs.
    let mut hands: Vec<Option<HandIn>> = plan
        .processes
        .iter()
        .map(|p| swap_options.handoff.then(|| hand_in(p)).flatten())
        .collect();
    let mut prepared: Vec<Option<Prepared>> = plan
        .processes
        .iter()
        .zip(&hands)
        .map(|(p, h)| {
            let work = !p.fds.is_empty() || !p.maps.is_empty() || p.cwd.is_some();
            work.then(|| prepare(p, &stub, swap_options, false, h.as_ref()).ok())
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
    let mut pending_release: Vec<(usize, Tracee)> = Vec::new();
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
            open_mode: None,
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
                    hands[i].take(),
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
    let mut sent = Vec::new();
    for (r, mut t) in pending_release {
        if let Err(e) = t.release()
            && reports[r].error.is_none()
        {
            reports[r].error = Some(e);
        }
        reports[r].pause = t.stopped_at.elapsed();
        sent.append(&mut t.sent);
    }
    // Our copies of the handed-in files, closed now that the targets run (on a thread: on
    // ChaosFS forwarding locks each close is a FLUSH round trip).
    if !sent.is_empty() {
        std::thread::spawn(move || drop(sent));
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
    mut hand: Option<HandIn>,
    options: &ScanOptions,
    stub: &Stub,
    so: &SwapOptions,
    seen_tables: &mut Vec<(i32, i32)>,
    report: &mut ProcessReport,
) -> Result<()> {
    if t.exec_seen {
        return Err(Error::Exec { pid: t.pid });
    }
    let mut units = units_of(t, p, options, seen_tables, report)?;
    // Mappings may have changed since the scan: keep those still there.
    if let Some(u) = units.first_mut()
        && revalidate_maps(t.pid, u, report)?
    {
        prepared = None;
    }
    if units.first().is_none_or(|u| u.tid != p.tid) {
        prepared = None;
        hand = None;
    }
    for unit in &units {
        if unit.fds.is_empty() && unit.maps.is_empty() && unit.cwd.is_none() {
            continue;
        }
        match run_unit(t, unit, stub, so, prepared.take(), hand.take()) {
            Err(e) => {
                // Batches committed before a failure stay swapped: report them as such.
                if let Error::StubStep { kept, .. } = &e {
                    let kept = unit.fds.iter().filter(|f| kept.contains(&f.fd));
                    report.swapped.extend(kept.map(|f| fd_swapped(t.pid, f)));
                }
                return Err(e);
            }
            Ok(handed) if !unit.fds.is_empty() => {
                let mode = if handed {
                    OpenMode::Handoff
                } else {
                    OpenMode::InStubOpen
                };
                report.open_mode = report.open_mode.or(Some(mode));
            }
            Ok(_) => {}
        }
        report_swapped(t.pid, unit, report);
    }
    Ok(())
}

/// Pre-open the new file of each description of `p` (reopened in place or through a spare
/// fd) and listen in its network namespace; `None` when there is nothing to hand in or no
/// socket can be made there.
fn hand_in(p: &ProcessPlan) -> Option<HandIn> {
    let mut firsts: Vec<&FdItem> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for f in &p.fds {
        if seen.insert(f.description) {
            firsts.push(f);
        }
    }
    if firsts.is_empty() {
        return None;
    }
    let listener = match handoff::Listener::new(p.pid) {
        Ok(l) => l,
        Err(e) => {
            tracing::info!(pid = p.pid, error = %e, "no socket in its network namespace");
            return None;
        }
    };
    let files = handoff::preopen(p, &firsts);
    tracing::debug!(pid = p.pid, files = files.files.len(), "pre-opened");
    (!files.files.is_empty()).then_some(HandIn { files, listener })
}

/// The units of a stopped process: one per fd table (and per fs_struct for cwd), the scanned
/// thread's table first; tables of other threads are scanned now. `seen_tables` holds the
/// tables done already (threads of other processes may share them).
fn units_of(
    t: &Tracee,
    p: &ProcessPlan,
    options: &ScanOptions,
    seen_tables: &mut Vec<(i32, i32)>,
    report: &mut ProcessReport,
) -> Result<Vec<ProcessPlan>> {
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
    Ok(units)
}

fn fd_swapped(pid: i32, f: &FdItem) -> Swapped {
    Swapped {
        pid,
        item: Item::Fd(f.fd),
        path: f.path.clone(),
        from_mnt: f.from.mnt_id,
        to_mnt: f.to.mnt_id,
    }
}

/// Everything of a unit whose program ran to its end moved.
fn report_swapped(pid: i32, unit: &ProcessPlan, report: &mut ProcessReport) {
    report
        .swapped
        .extend(unit.fds.iter().map(|f| fd_swapped(pid, f)));
    for m in &unit.maps {
        report.swapped.push(Swapped {
            pid,
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
            pid,
            item: Item::Cwd { tid: c.tid },
            path: c.path.clone(),
            from_mnt: c.from.mnt_id,
            to_mnt: c.to.mnt_id,
        });
    }
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
