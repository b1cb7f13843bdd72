//! fdswap behind [`Swapper`]: the target's fds, cwds and shared mappings move onto ChaosFS at
//! inject and back at recover.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fdswap::{
    Item, Plan, ProcessPlan, ProcessReport, ReadAhead, Report, ScanOptions, SkipReason, SwapOptions,
};

use rustix::io::Errno;

pub use fdswap::CpuLatency;

use crate::api::FdEntry;
use crate::error::{Error, Result};
use crate::inject::{SwapOutcome, Swapper};
use crate::journal::{ProcessOpenMode, SwappedFd};
use crate::target::is_running;

/// The fd swap of the `fdswap` crate. Each call runs on one thread from start to end (ptrace
/// belongs to the thread that attached): a fresh one with a file table of its own that holds
/// neither `/dev/fuse` nor the starter's pipe
/// (`sys::on_private_fd_table` says why).
#[derive(Debug, Clone)]
pub struct FdSwapper {
    pub options: SwapOptions,
}

impl Default for FdSwapper {
    fn default() -> Self {
        FdSwapper {
            options: SwapOptions {
                stop_timeout: Duration::from_secs(5),
                ..SwapOptions::default()
            },
        }
    }
}

/// fdswap names processes by `i32`, the engine by `u32`: pids are positive (at most
/// `pid_max`, 2^22), so the bits mean the same number either way.
fn host_pid(pid: i32) -> u32 {
    pid.cast_unsigned()
}

/// A pid for fdswap; `None` for a number no process can have (above `i32::MAX`).
fn fdswap_pid(pid: u32) -> Option<i32> {
    i32::try_from(pid).ok()
}

/// How many times a process whose swap was rolled back is tried.
const ATTEMPTS: usize = 3;

/// fds the user wants to hear about: under the path but left alone. Items outside the path and
/// items with nothing to do (already where they belong) are not news.
fn reportable(r: &SkipReason) -> bool {
    !matches!(
        r,
        SkipReason::OutsidePath
            | SkipReason::AlreadyOnTarget
            | SkipReason::NotOnSourceMount(_)
            | SkipReason::Socket
            | SkipReason::Pipe
            | SkipReason::AnonInode
    )
}

fn item_fd(item: &Item) -> (i32, Option<u64>) {
    match item {
        Item::Fd(fd) => (*fd, None),
        Item::Cwd { .. } => (-1, None),
        Item::Map { start, .. } => (-2, Some(*start)),
    }
}

/// A process ended or replaced its program during the swap: nothing of it is left to move.
/// A short-lived child (a shell's `sleep`) may also die between two ptrace requests, which then
/// fail with ESRCH: what counts is that it is gone.
fn gone(pid: i32, e: &fdswap::Error) -> bool {
    matches!(e, fdswap::Error::Gone { .. } | fdswap::Error::Exec { .. })
        || !is_running(host_pid(pid))
}

/// The stub's final close of an old description on a dead FUSE connection reports the failed
/// flush (ENOTCONN, EIO); close(2) has released the fd all the same, and the swap is complete.
fn closed_anyway(e: &fdswap::Error) -> bool {
    matches!(e, fdswap::Error::StubFinal { step, errno, .. }
    if step.starts_with("close")
        && matches!(
            Errno::from_io_error(&std::io::Error::from(*errno)),
            Some(Errno::NOTCONN | Errno::IO)
        ))
}

fn outcome(plan: &Plan, report: &Report) -> SwapOutcome {
    let mut scanned: HashMap<(i32, i32), (u32, u64)> = HashMap::new();
    for p in &plan.processes {
        for f in &p.fds {
            scanned.insert((p.pid, f.fd), (f.flags.cast_unsigned(), f.pos));
        }
    }
    let swapped = report
        .swapped()
        .map(|s| {
            let (fd, addr) = item_fd(&s.item);
            let (flags, offset) = scanned.get(&(s.pid, fd)).copied().unwrap_or_default();
            SwappedFd {
                pid: host_pid(s.pid),
                fd,
                path: s.path.display().to_string(),
                flags,
                offset,
                orig_mnt_id: s.from_mnt,
                addr,
            }
        })
        .collect();
    let mut skipped: Vec<FdEntry> = report
        .skipped()
        .filter(|k| reportable(&k.reason))
        .map(|k| FdEntry {
            pid: host_pid(k.pid),
            fd: item_fd(&k.item).0,
            path: k.path.clone(),
            reason: Some(k.reason.to_string()),
        })
        .collect();
    for p in &report.processes {
        if let Some(e) = &p.error
            && !gone(p.pid, e)
            && !closed_anyway(e)
        {
            skipped.push(FdEntry {
                pid: host_pid(p.pid),
                fd: -3,
                path: String::new(),
                reason: Some(format!("process not swapped: {e}")),
            });
        }
    }
    // A process tried again reports what it left alone again.
    let mut seen = HashSet::new();
    skipped.retain(|k| seen.insert((k.pid, k.fd, k.path.clone(), k.reason.clone())));
    let open_modes = report
        .processes
        .iter()
        .filter_map(|p| {
            Some(ProcessOpenMode {
                pid: host_pid(p.pid),
                mode: p.open_mode?.to_string(),
            })
        })
        .collect();
    SwapOutcome {
        swapped,
        skipped,
        open_modes,
    }
}

impl FdSwapper {
    /// Scan and swap; a process whose stub failed and was rolled back (typically: an fd it
    /// opened or closed between the scan and the stop, like a shell's redirection) is scanned
    /// and swapped again, up to [`ATTEMPTS`] times.
    fn run(&self, pids: &[u32], options: ScanOptions) -> Result<(Plan, Report)> {
        let mut todo = pids.to_vec();
        let mut plan = Plan {
            options: options.clone(),
            processes: Vec::new(),
        };
        let mut report = Report {
            processes: Vec::new(),
            total: Duration::ZERO,
        };
        for attempt in 1..=ATTEMPTS {
            let (p, r) = self.run_once(&todo, options.clone())?;
            plan.processes.extend(p.processes);
            report.total += r.total;
            todo.clear();
            for mut pr in r.processes {
                let again = attempt < ATTEMPTS;
                if again && matches!(pr.error, Some(fdswap::Error::StubStep { .. })) {
                    tracing::debug!(pid = pr.pid, error = ?pr.error, "rolled back: again");
                    todo.push(host_pid(pr.pid));
                } else if again && pr.skipped.iter().any(|k| k.reason == SkipReason::Changed) {
                    // What moved stays moved; what changed under the stop is tried again.
                    tracing::debug!(pid = pr.pid, "items changed during the swap: again");
                    pr.skipped.retain(|k| k.reason != SkipReason::Changed);
                    todo.push(host_pid(pr.pid));
                    report.processes.push(pr);
                } else {
                    report.processes.push(pr);
                }
            }
            if todo.is_empty() {
                break;
            }
        }
        Ok((plan, report))
    }

    fn run_once(&self, pids: &[u32], options: ScanOptions) -> Result<(Plan, Report)> {
        let t0 = std::time::Instant::now();
        let pids: Vec<i32> = pids.iter().filter_map(|&p| fdswap_pid(p)).collect();
        // Scanned one by one: a process that exits during the scan (short-lived children come
        // and go all the time) is left out rather than failing the whole scan.
        let mut plan = Plan {
            options: options.clone(),
            processes: Vec::new(),
        };
        for pid in pids {
            match Plan::scan(&[pid], &options) {
                Ok(p) => plan.processes.extend(p.processes),
                Err(e) if !std::path::Path::new(&format!("/proc/{pid}")).exists() => {
                    tracing::debug!(pid, error = %e, "process exited during the scan");
                }
                Err(fdswap::Error::Proc { source, .. })
                    if matches!(
                        Errno::from_io_error(&source),
                        Some(Errno::NOENT | Errno::SRCH)
                    ) =>
                {
                    tracing::debug!(pid, "process exited during the scan");
                }
                Err(e) => return Err(e.into()),
            }
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            let mut reasons: HashMap<String, usize> = HashMap::new();
            for k in plan.processes.iter().flat_map(|p| &p.skipped) {
                *reasons.entry(format!("{:?}", k.reason)).or_default() += 1;
            }
            tracing::debug!(items = plan.len(), ?reasons, elapsed = ?t0.elapsed(), "scanned");
        }
        // Processes with nothing to move are not stopped at all.
        let (active, idle): (Vec<ProcessPlan>, Vec<ProcessPlan>) = plan
            .processes
            .iter()
            .cloned()
            .partition(|p| !(p.fds.is_empty() && p.maps.is_empty() && p.cwd.is_none()));
        let mut report = if active.is_empty() {
            Report {
                processes: Vec::new(),
                total: Duration::ZERO,
            }
        } else {
            let active = Plan {
                options: plan.options.clone(),
                processes: active,
            };
            fdswap::swap_plan(&active, &self.options)?
        };
        report
            .processes
            .extend(idle.into_iter().map(|p| ProcessReport {
                pid: p.pid,
                swapped: Vec::new(),
                skipped: p.skipped,
                pause: Duration::ZERO,
                stub_time: Duration::ZERO,
                threads: 0,
                error: None,
                open_mode: None,
            }));
        tracing::debug!(
            total = ?report.total,
            max_pause = ?report.max_pause(),
            swapped = report.swapped().count(),
            open_modes = ?report.processes.iter().map(|p| (p.pid, p.open_mode)).collect::<Vec<_>>(),
            "swap"
        );
        Ok((plan, report))
    }
}

impl Swapper for FdSwapper {
    fn swap_in(
        &self,
        pids: &[u32],
        path: &Path,
        to_mnt: u64,
        read_ahead: ReadAhead,
    ) -> Result<SwapOutcome> {
        if pids.is_empty() {
            return Ok(SwapOutcome::default());
        }
        let options = ScanOptions {
            path: PathBuf::from(path),
            from_mnt: None,
            to_mnt: Some(to_mnt),
            read_ahead,
            forwarded_locks: Vec::new(),
        };
        let (plan, mut report) = crate::sys::on_private_fd_table(|| self.run(pids, options))?;
        // A process that could not be moved would keep bypassing the faults: fail the injection
        // (the caller swaps back whatever did move).
        if let Some(i) = report
            .processes
            .iter()
            .position(|p| p.error.as_ref().is_some_and(|e| !gone(p.pid, e)))
        {
            let p = report.processes.swap_remove(i);
            if let Some(e) = p.error {
                return Err(Error::SwapProcess {
                    pid: host_pid(p.pid),
                    source: e,
                });
            }
        }
        Ok(outcome(&plan, &report))
    }

    fn swap_out(
        &self,
        pids: &[u32],
        path: &Path,
        from_mnt: u64,
        locks: &[(u32, fdswap::PosixLock)],
    ) -> Result<SwapOutcome> {
        if pids.is_empty() {
            return Ok(SwapOutcome::default());
        }
        // Back onto the original filesystem: nothing to read ahead there.
        let options = ScanOptions {
            path: PathBuf::from(path),
            from_mnt: Some(from_mnt),
            to_mnt: None,
            read_ahead: ReadAhead::never(),
            forwarded_locks: locks
                .iter()
                .filter_map(|(pid, l)| Some((fdswap_pid(*pid)?, l.clone())))
                .collect(),
        };
        let (plan, report) = crate::sys::on_private_fd_table(|| self.run(pids, options))?;
        Ok(outcome(&plan, &report))
    }
}
