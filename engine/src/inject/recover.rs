//! Recover: undo an injection, from its live server ([`Injection`]'s `recover`) or, with the
//! server gone, from the journal and `/proc` alone ([`recover_from_journal`]).

use std::path::{Path, PathBuf};

use crate::api::RecoverReport;
use crate::error::{Error, Result};
use crate::fdlimit::explain_shortage;
use crate::fusectl::FuseCtl;
use crate::journal::{Entry, InjectionId, Journal, ProcessRecord};
use crate::mountinfo::Mount;
use crate::ns::{self, MountNs};
use crate::target::{NsId, ProcStat, processes_in_mnt_ns};

use super::{FsServer, Injection, Swapper, fd_entries};

impl<F: FsServer, S: Swapper> Injection<F, S> {
    /// Release parked faults, detach the mount (new opens reach the original at once), swap
    /// everyone in the namespace back, stop the server, remove the journal entry. On a swap
    /// error the server keeps serving, so a retry can swap back what is left.
    pub(super) fn recover_live(&self) -> Result<RecoverReport> {
        let _latency = fdswap::CpuLatency::hold();
        let mut st = self.lock()?;
        // The fds held back since the swap-in are this one's: the detach and the scans below
        // need some, and ChaosFS may have taken every other one.
        if let Some(reserve) = st.fd_reserve.take() {
            tracing::debug!(fds = reserve.len(), "fd reserve released");
        }
        if let Some(server) = st.server.as_ref() {
            server.quiesce();
        }
        if let Some(guard) = st.guard.as_mut() {
            // What is open through ChaosFS keeps working. Not detached, nothing could move
            // back (the path still leads to ChaosFS): fail, the guard kept for a retry.
            guard
                .detach_in_place()
                .map_err(|e| explain_shortage(e, "recover: detaching the ChaosFS mount"))?;
        }
        if let Some(guard) = st.guard.take() {
            st.detached = Some((guard.mnt_id(), guard.ns().id));
        }
        let Some((mnt_id, ns_id)) = st.detached else {
            return Err(Error::Recovered {
                id: st.entry.id.to_string(),
            });
        };
        let t0 = std::time::Instant::now();
        let path = PathBuf::from(&st.entry.path);
        // Everyone in the namespace now, including processes started after the injection.
        let pids: Vec<u32> = processes_in_mnt_ns(ns_id)
            .map_err(|e| explain_shortage(e, "recover: listing the target's processes"))?
            .iter()
            .map(|p| p.pid)
            .collect();
        // Held by the server for the target (lock forwarding): taken again natively as the
        // swap closes the ChaosFS files (whose FLUSH makes the server let go of them).
        let locks = st
            .server
            .as_ref()
            .map(FsServer::forwarded_locks)
            .unwrap_or_default();
        tracing::debug!(?locks, "locks held through the filesystem");
        let outcome = self
            .swapper
            .swap_out(&pids, &path, mnt_id, &locks)
            .map_err(|e| explain_shortage(e, "recover: swapping back"))?;
        st.detached = None;
        tracing::debug!(elapsed = ?t0.elapsed(), "swapped back");
        if let Some(server) = st.server.take()
            && let Err(e) = server.stop()
        {
            // Detached and swapped back: nothing is left to undo.
            tracing::warn!(error = %e, "stopping the filesystem server");
        }
        tracing::debug!(elapsed = ?t0.elapsed(), "server stopped");
        self.journal.remove(&st.entry.id)?;
        tracing::info!(id = %st.entry.id, elapsed = ?t0.elapsed(), "recovered");
        Ok(RecoverReport {
            restored: fd_entries(&outcome.swapped),
            failed: outcome.skipped,
        })
    }
}

/// Recover an injection whose server is gone (killed, crashed), from its journal entry and
/// `/proc` alone: abort the FUSE connection so nothing can hang on it, detach the ChaosFS mount,
/// swap back whatever is still on it, remove the entry. Works when the target has exited.
///
/// The connection is aborted only while the journaled mount is still there and still carries
/// it: connection numbers are device minors that the kernel hands to the next FUSE mount as soon
/// as ours is gone, so aborting by number afterwards could kill someone else's filesystem.
pub fn recover_from_journal<S: Swapper>(
    journal: &Journal,
    id: &InjectionId,
    swapper: &S,
) -> Result<RecoverReport> {
    let _latency = fdswap::CpuLatency::hold();
    let entry = journal.read(id)?;
    let mut report = RecoverReport::default();
    if entry.mount.is_none() && entry.mount_source.is_none() {
        // Nothing was mounted yet (the server died before it got that far).
        journal.remove(id)?;
        return Ok(report);
    }
    if let Some(ns) = namespace_of(&entry)? {
        let path = PathBuf::from(&entry.path);
        if let Some((mnt_id, connection)) = journaled_mount(&entry, &ns, &path)? {
            report = undo_mount(&ns, &path, mnt_id, connection, swapper)?;
        }
    }
    journal.remove(id)?;
    Ok(report)
}

/// The injection's mount namespace, through any live process of it, if any is left.
fn namespace_of(entry: &Entry) -> Result<Option<MountNs>> {
    let target = ProcessRecord {
        pid: entry.target.pid,
        start_time: entry.target.start_time,
    };
    let ns = entry
        .pids
        .iter()
        .chain(std::iter::once(&target))
        .filter(|p| ProcStat::read(p.pid).is_ok_and(|s| s.start_time == p.start_time))
        .find_map(|p| {
            MountNs::of_pid(p.pid)
                .ok()
                .filter(|n| n.id.ino == entry.target.mnt_ns)
        });
    match ns {
        Some(ns) => Ok(Some(ns)),
        // Processes started after the injection: scan for the namespace.
        None => find_ns_by_inode(entry.target.mnt_ns),
    }
}

/// `(mount id, FUSE connection)` of the journaled mount, or (the server died between mounting
/// and journaling it) of the ChaosFS mount on the path that carries this injection's source.
fn journaled_mount(entry: &Entry, ns: &MountNs, path: &Path) -> Result<Option<(u64, Option<u32>)>> {
    Ok(match (&entry.mount, &entry.mount_source) {
        (Some(m), _) => Some((m.mnt_id, m.fuse_connection)),
        (None, Some(source)) => {
            ns::find_tagged(ns, path, source)?.map(|m| (m.mnt_id, m.fuse_connection()))
        }
        (None, None) => None,
    })
}

/// Abort the connection while the mount provably carries it, detach the mount, swap everyone
/// in the namespace back.
fn undo_mount<S: Swapper>(
    ns: &MountNs,
    path: &Path,
    mnt_id: u64,
    connection: Option<u32>,
    swapper: &S,
) -> Result<RecoverReport> {
    if let Some(conn) = connection {
        let ours = ns
            .mountinfo_all()?
            .by_id(mnt_id)
            .and_then(Mount::fuse_connection);
        if ours == Some(conn) {
            FuseCtl::open()?.abort(conn)?;
        }
    }
    ns::detach_at(ns, path, mnt_id)?;
    let pids: Vec<u32> = processes_in_mnt_ns(ns.id)?.iter().map(|p| p.pid).collect();
    // The server is gone, and the locks it held for the target with it.
    let outcome = swapper.swap_out(&pids, path, mnt_id, &[])?;
    Ok(RecoverReport {
        restored: fd_entries(&outcome.swapped),
        failed: outcome.skipped,
    })
}

fn find_ns_by_inode(ino: u64) -> Result<Option<MountNs>> {
    for pid in procinfo::pids()? {
        if NsId::of(pid, "mnt").is_ok_and(|n| n.ino == ino)
            && let Ok(ns) = MountNs::of_pid(pid)
            && ns.id.ino == ino
        {
            return Ok(Some(ns));
        }
    }
    Ok(None)
}
