//! Inject, steps 2–4, once everything is checked ([`super::check`]): journal, mount and serve,
//! swap, journal again. A failure at any step undoes the steps before it.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::fdlimit::FdReserve;
use crate::journal::{Entry, Journal, MountRecord};
use crate::ns::{self, CHAOSFS_SUBTYPE, MountGuard, MountNs, MountSource};
use crate::target::processes_in_mnt_ns;

use super::check::{Checked, check};
use super::{
    Device, FsLauncher, FsServer, InjectRequest, Injection, Mounted, State, SwapOutcome, Swapper,
};

/// Inject: journal, mount, serve, swap. On success faults are live for every process of the
/// target's mount namespace. On failure everything done so far is undone and the journal entry
/// removed.
pub fn inject<L: FsLauncher, S: Swapper>(
    journal: &Journal,
    launcher: &L,
    swapper: S,
    req: &InjectRequest,
) -> Result<Injection<L::Server, S>> {
    let t0 = Instant::now();
    // Mount, FUSE handshake, scan and swap are chains of wake-ups: keep idle CPUs out of deep
    // idle states until the injection is done (see `fdswap::CpuLatency`).
    let _latency = fdswap::CpuLatency::hold();
    let checked = check(journal, req)?;
    let pids: Vec<u32> = checked.procs.iter().map(|p| p.pid).collect();
    // Before the namespace thread of the mount: see there.
    reserve_fd_slots(&pids, checked.target.root_fd());
    tracing::debug!(elapsed = ?t0.elapsed(), "target, path and processes found");
    let mut entry = checked.entry(&req.spec);
    crate::failpoint::hit("checked");
    // Durable after the last update below (see `Journal::create_pending`).
    journal.create_pending(&entry)?;
    let Checked {
        target,
        mns,
        path,
        lock,
        ..
    } = checked;
    drop(lock);

    let id = entry.id.clone();
    let undo_journal = |e: Error| {
        if let Err(j) = journal.remove(&id) {
            tracing::warn!(error = %j, "could not remove the journal entry");
        }
        e
    };
    let (guard, server) = mount_and_serve(journal, launcher, req, (&mns, &path), &mut entry, t0)
        .map_err(undo_journal)?;
    tracing::debug!(elapsed = ?t0.elapsed(), "serving");
    // Before the target's files are on ChaosFS: what ChaosFS may take ends this much short of
    // the limit, so that recover has what it needs.
    let fd_reserve = FdReserve::take();
    crate::failpoint::hit("swapping");
    let (guard, server, outcome) =
        swap_in(&swapper, &pids, &path, guard, server).map_err(undo_journal)?;
    tracing::debug!(elapsed = ?t0.elapsed(), "swapped");
    crate::failpoint::hit("swapped");
    entry.swapped = outcome.swapped;
    entry.open_modes = outcome.open_modes;
    // Faults are live: the fsyncs need not delay telling the caller. Should the journal fail
    // now, the target is on a server that is about to stop: swap it back first.
    if let Err(e) = journal.update_pending(&entry) {
        undo_swap(&swapper, &pids, &path, guard, server);
        return Err(undo_journal(e));
    }
    journal.sync_in_background(&entry.id);
    tracing::info!(id = %entry.id, path = %path.display(), pid = target.pid, "injected");
    Ok(Injection {
        id: entry.id.clone(),
        journal: journal.clone(),
        swapper,
        state: Mutex::new(State {
            entry,
            skipped: outcome.skipped,
            escaped: Vec::new(),
            guard: Some(guard),
            detached: None,
            server: Some(server),
            fd_reserve: Some(fd_reserve),
        }),
    })
}

/// Mount the launcher's device over `path` in `mns`, journal the mount, start the server.
/// On an error the mount is detached (the guard's drop); the journal entry is the caller's.
fn mount_and_serve<L: FsLauncher>(
    journal: &Journal,
    launcher: &L,
    req: &InjectRequest,
    (mns, path): (&MountNs, &Path),
    entry: &mut Entry,
    t0: Instant,
) -> Result<(MountGuard, L::Server)> {
    let device = launcher.device()?;
    let mount_source = entry.mount_source.clone().unwrap_or_default();
    let source = match &device {
        Device::Fuse(fd) => MountSource::Fuse {
            dev_fuse: fd.as_fd(),
            subtype: CHAOSFS_SUBTYPE,
            source: &mount_source,
        },
        Device::Tmpfs => MountSource::Tmpfs,
    };
    let guard = ns::mount_over(mns, path, source, req.shared)?;
    tracing::debug!(elapsed = ?t0.elapsed(), "mounted");
    crate::failpoint::hit("mounted");
    entry.mount = Some(MountRecord {
        mnt_id: guard.mnt_id(),
        under_mnt_id: guard.under().mnt_id,
        fuse_connection: guard.fuse_connection(),
    });
    journal.update_pending(entry)?;
    let mounted = Mounted {
        backing: guard
            .backing()
            .try_clone_to_owned()
            .map_err(|e| Error::sys("duplicating the backing fd", e))?,
        device,
        connection: guard.fuse_connection(),
    };
    let server = launcher.start(mounted, &req.spec)?;
    Ok((guard, server))
}

/// Move `pids` onto the mount. On an error, fdswap rolled back the process it failed in, but
/// others may have moved: undo the swap ([`undo_swap`]).
fn swap_in<F: FsServer, S: Swapper>(
    swapper: &S,
    pids: &[u32],
    path: &Path,
    guard: MountGuard,
    server: F,
) -> Result<(MountGuard, F, SwapOutcome)> {
    match swapper.swap_in(pids, path, guard.mnt_id(), server.read_ahead()) {
        Ok(outcome) => Ok((guard, server, outcome)),
        Err(e) => {
            undo_swap(swapper, pids, path, guard, server);
            Err(e)
        }
    }
}

/// A failure once the swap (or part of it) is done: detach, move everyone in the namespace back
/// (`pids`, and any process started since: it inherited its parent's fds on the mount), then
/// stop the server. Best effort: each failure is logged.
fn undo_swap<F: FsServer, S: Swapper>(
    swapper: &S,
    pids: &[u32],
    path: &Path,
    guard: MountGuard,
    server: F,
) {
    let mnt_id = guard.mnt_id();
    let mut all: Vec<u32> = processes_in_mnt_ns(guard.ns().id)
        .map(|p| p.iter().map(|p| p.pid).collect())
        .unwrap_or_default();
    let extra: Vec<u32> = pids.iter().copied().filter(|p| !all.contains(p)).collect();
    all.extend(extra);
    if let Err(d) = guard.detach() {
        tracing::warn!(error = %d, "could not detach the mount");
    }
    let locks = server.forwarded_locks();
    if let Err(s) = swapper.swap_out(&all, path, mnt_id, &locks) {
        tracing::warn!(error = %s, "could not swap back after a failed injection");
    }
    if let Err(s) = server.stop() {
        tracing::warn!(error = %s, "could not stop the filesystem server");
    }
}

/// Grow this process's fd table now to what the filesystem server will hold: ChaosFS keeps an
/// `O_PATH` fd per file the kernel looked up and one per open handle, about two per file the
/// target holds. Left to itself the kernel doubles the table as fds are opened (64, 128, …),
/// and once threads exist each doubling waits for an RCU grace period (5–17 ms on a 2-CPU VM,
/// several of them inside the scan and the target's pause). Called while this process has no
/// other thread (the injection server, before any: not even a joined thread that may not have
/// released the table yet), the growth costs nothing; the table never shrinks. Best effort.
fn reserve_fd_slots(pids: &[u32], any_fd: BorrowedFd<'_>) {
    let held: usize = pids
        .iter()
        .filter_map(|p| std::fs::read_dir(format!("/proc/{p}/fd")).ok())
        .map(Iterator::count)
        .sum();
    // ChaosFS raises the soft limit to the hard one when it starts: do it first.
    let soft = crate::fdlimit::raise_soft_limit().unwrap_or(u64::MAX);
    // Two per fd held and some room; a count of fds that does not fit in u64 cannot exist.
    let want = u64::try_from(held)
        .unwrap_or(u64::MAX)
        .saturating_mul(2)
        .saturating_add(256);
    let cap = soft.min(1 << 20);
    let slot = want.min(cap.saturating_sub(1));
    if let Ok(slot) = i32::try_from(slot)
        && slot > 64
    {
        // The fd lands at `slot` (or above): the table now covers it. Dropped at once.
        let _ = rustix::io::fcntl_dupfd_cloexec(any_fd, slot);
    }
}
