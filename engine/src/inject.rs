//! Inject and recover: the orchestration of targets, mounts, the journal, the filesystem server
//! and the fd swap.
//!
//! The two moving parts that live in other crates enter through traits, so that wiring them in
//! is an `impl` each:
//! * [`FsLauncher`] / [`FsServer`]: the ChaosFS server (`chaosfs::server::Server`).
//! * [`Swapper`]: the fd swap (`fdswap::swap`).
//!
//! [`inject`] journals first, then mounts, starts the server, swaps, and journals again; any
//! failure undoes what was done. The returned [`Injection`] implements [`ChaosService`], so it
//! is what the injection server serves on `/run/iochaos/<id>.sock`. [`recover_from_journal`]
//! undoes an injection whose server is gone, from the journal and `/proc` alone.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::Value;

use crate::api::{ChaosService, FdEntry, RecoverReport, RuleStatus, Status, TargetStatus};
use crate::chaos::EscapedFile;
use crate::error::{Error, Result};
use crate::fusectl::FuseCtl;
use crate::journal::{
    Entry, InjectionId, Journal, MountRecord, ProcessRecord, SwappedFd, TargetRecord,
};
use crate::mountinfo::{Mount, MountInfo, SharedPolicy};
use crate::ns::{self, CHAOSFS_SUBTYPE, MountGuard, MountNs, MountSource};
use crate::policy::{self, HostNamespace};
use crate::resolve::resolve_dir_in_root;
use crate::target::{ContainerdTask, NsId, ProcStat, Target, processes_in_mnt_ns};

/// What is mounted over the path: a FUSE connection the launcher will serve, or (tests,
/// dry runs) a tmpfs.
#[derive(Debug)]
pub enum Device {
    /// An open `/dev/fuse`.
    Fuse(OwnedFd),
    /// No server: an empty tmpfs.
    Tmpfs,
}

/// Starts the filesystem that serves the mount. Wiring: `chaosfs::mount::open_fuse_device`
/// for [`FsLauncher::device`] and `chaosfs::server::Server::start` for [`FsLauncher::start`].
pub trait FsLauncher {
    type Server: FsServer;
    /// The device to mount (called before mounting).
    fn device(&self) -> Result<Device>;
    /// Serve `device` (already mounted over the path, [`Device::Fuse`] or not) from `backing`
    /// (the directory under the mount) with the rules of `spec`. Returns once faults are live
    /// (the FUSE INIT handshake is done). `connection` is the FUSE connection number.
    fn start(
        &self,
        backing: OwnedFd,
        device: Device,
        spec: &Value,
        connection: Option<u32>,
    ) -> Result<Self::Server>;
}

/// A running filesystem server (wiring: `chaosfs::server::Server`).
pub trait FsServer: Send + Sync + 'static {
    /// Replace the rules with those of `spec` (already valid JSON; the rule engine validates).
    /// Returns the files open in a mode the new rules cannot reach (ChaosFS: kernel
    /// passthrough) until they are reopened.
    fn update_rules(&self, spec: &Value) -> Result<Vec<EscapedFile>>;
    /// Recover begins: stop injecting and release requests held in latency faults, so that no
    /// thread of the target is still waiting on a fault when it is swapped back.
    fn quiesce(&self) {}
    /// Which directories under the mount the swap may read before resolving the files in them
    /// ([`fdswap::ReadAhead`]): those no rule can touch the metadata of. Default: none.
    fn read_ahead(&self) -> fdswap::ReadAhead {
        fdswap::ReadAhead::never()
    }
    /// `(matched, injected)` per rule, in spec order.
    fn rule_counters(&self) -> Vec<(u64, u64)>;
    /// Stop serving (the mount is already detached and the fds swapped back).
    fn stop(self) -> Result<()>;
}

/// What a swap moved and what it left alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwapOutcome {
    pub swapped: Vec<SwappedFd>,
    pub skipped: Vec<FdEntry>,
}

/// Moves the target's fds, cwds and shared mappings between the original mount and ChaosFS
/// (wiring: `fdswap::swap` with `fdswap::ScanOptions { path, to_mnt, from_mnt }`).
pub trait Swapper: Send + Sync + 'static {
    /// Make `pids` reopen what they hold under `path` (canonical, as they see it) through the
    /// mount `to_mnt` now on top of it, reading ahead the directories `read_ahead` allows.
    fn swap_in(
        &self,
        pids: &[u32],
        path: &Path,
        to_mnt: u64,
        read_ahead: fdswap::ReadAhead,
    ) -> Result<SwapOutcome>;
    /// Make `pids` reopen what they hold on mount `from_mnt` under `path` through whatever
    /// `path` resolves to now (the original, once the ChaosFS mount is detached).
    fn swap_out(&self, pids: &[u32], path: &Path, from_mnt: u64) -> Result<SwapOutcome>;
}

/// What to inject into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    Pid(u32),
    Container {
        id: String,
        namespace: String,
        /// containerd's state directory (default `/run/containerd`).
        state_dir: PathBuf,
    },
    /// An OCI container being created (runtime hook at `createRuntime`/`prestart`): its init
    /// process, which may not have pivoted into the container's root yet, and that root as a
    /// path in the init's mount namespace (the bundle's `root.path`, absolute). See
    /// [`crate::starttime`].
    OciCreate {
        pid: u32,
        rootfs: PathBuf,
        id: String,
    },
}

/// An injection request (the CLI's `inject`, or the Chaos API's caller).
#[derive(Debug, Clone)]
pub struct InjectRequest {
    pub target: TargetSpec,
    /// The path, as the target sees it.
    pub path: PathBuf,
    /// The JSON spec (design.md).
    pub spec: Value,
    pub shared: SharedPolicy,
    /// Whether a target in the host's mount namespace is allowed (only the CLI's
    /// `--host-namespace` sets it; specs and annotations cannot).
    pub host_namespace: HostNamespace,
}

/// Find the target a spec names.
pub fn find_target(spec: &TargetSpec) -> Result<Target> {
    match spec {
        TargetSpec::Pid(pid) => Target::from_pid(*pid),
        TargetSpec::Container {
            id,
            namespace,
            state_dir,
        } => Target::from_container(&ContainerdTask::find_in(state_dir, namespace, id)?),
        TargetSpec::OciCreate { pid, rootfs, id } => crate::starttime::oci_target(*pid, rootfs, id),
    }
}

/// A live injection, served over the Chaos API.
pub struct Injection<F: FsServer, S: Swapper> {
    id: InjectionId,
    journal: Journal,
    swapper: S,
    state: Mutex<State<F>>,
}

struct State<F> {
    entry: Entry,
    skipped: Vec<FdEntry>,
    /// Files the current rules cannot reach until reopened (see [`FsServer::update_rules`]).
    escaped: Vec<FdEntry>,
    guard: Option<MountGuard>,
    /// Set once the mount is detached (mount id, namespace), until the swap back succeeded.
    detached: Option<(u64, NsId)>,
    server: Option<F>,
}

impl<F: FsServer, S: Swapper> std::fmt::Debug for Injection<F, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injection")
            .field("journal", &self.journal)
            .finish()
    }
}

/// Inject: journal, mount, serve, swap. On success faults are live for every process of the
/// target's mount namespace. On failure everything done so far is undone and the journal entry
/// removed.
pub fn inject<L: FsLauncher, S: Swapper>(
    journal: &Journal,
    launcher: &L,
    swapper: S,
    req: &InjectRequest,
) -> Result<Injection<L::Server, S>> {
    let t0 = std::time::Instant::now();
    // Mount, FUSE handshake, scan and swap are chains of wake-ups: keep idle CPUs out of deep
    // idle states until the injection is done (see `fdswap::CpuLatency`).
    let _latency = fdswap::CpuLatency::hold();
    if let TargetSpec::Pid(pid) | TargetSpec::OciCreate { pid, .. } = &req.target {
        policy::check_pid(*pid)?;
    }
    let target = find_target(&req.target)?;
    let mns = MountNs::of_target(&target)?;
    // Errors about the path come before anything changes. An injected path is refused before
    // it is resolved: resolving it goes through the faults. From the check until the entry is
    // written, no other injection may check: two at once would both find the path free.
    policy::check_target(&target, req.host_namespace)?;
    let lock = journal.lock()?;
    let injected = journal.list()?;
    let lexical: PathBuf = req.path.components().collect();
    if !lexical
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        policy::check_nesting(&lexical, target.mnt_ns, &injected)?;
    }
    let crate::resolve::Resolved {
        path: canonical,
        mnt_id: path_mnt_id,
        ..
    } = resolve_dir_in_root(target.root_fd(), &req.path)?;
    policy::check_nesting(&canonical, target.mnt_ns, &injected)?;
    // By mount id: valid whatever the target's root is (a hook's init may not have pivoted).
    let mountinfo = MountInfo::read(target.pid)?;
    policy::check_path(&canonical, mountinfo.by_id(path_mnt_id))?;
    let mut procs = target.processes()?;
    if req.host_namespace == HostNamespace::Allow {
        // PID 1 and our ancestors are never stopped: they keep the original files.
        let protected = policy::protected_pids();
        procs.retain(|p| {
            let keep = !protected.contains(&p.pid);
            if !keep {
                tracing::info!(pid = p.pid, comm = %p.comm, "left out of the swap (protected)");
            }
            keep
        });
    }
    let pids: Vec<u32> = procs.iter().map(|p| p.pid).collect();
    // Before the namespace thread of the mount: see there.
    reserve_fd_slots(&pids, target.root_fd());
    tracing::debug!(elapsed = ?t0.elapsed(), "target, path and processes found");
    let mut entry = Entry::new(
        InjectionId::generate(),
        TargetRecord {
            pid: target.pid,
            start_time: target.start_time,
            container: target.container.clone(),
            mnt_ns: target.mnt_ns.ino,
            user_ns: target.user_ns.ino,
        },
        canonical.to_string_lossy().into_owned(),
        req.spec.clone(),
    );
    entry.pids = procs
        .iter()
        .map(|p| ProcessRecord {
            pid: p.pid,
            start_time: p.start_time,
        })
        .collect();
    entry.server_pid = Some(std::process::id());
    // The intent to mount: recovery finds the mount by its source even if this process dies
    // before the mount is journaled.
    let mount_source = ns::mount_source_of(entry.id.as_str());
    entry.mount_source = Some(mount_source.clone());
    crate::failpoint::hit("checked");
    // Durable after the last update below (see `Journal::create_pending`).
    journal.create_pending(&entry)?;
    drop(lock);

    let id = entry.id.clone();
    let undo_journal = |e: Error| {
        if let Err(j) = journal.remove(&id) {
            tracing::warn!(error = %j, "could not remove the journal entry");
        }
        e
    };
    let device = launcher.device().map_err(undo_journal)?;
    let source = match &device {
        Device::Fuse(fd) => MountSource::Fuse {
            dev_fuse: fd.as_fd(),
            subtype: CHAOSFS_SUBTYPE,
            source: &mount_source,
        },
        Device::Tmpfs => MountSource::Tmpfs,
    };
    let guard = ns::mount_over(&mns, &canonical, source, req.shared).map_err(undo_journal)?;
    tracing::debug!(elapsed = ?t0.elapsed(), "mounted");
    crate::failpoint::hit("mounted");
    entry.mount = Some(MountRecord {
        mnt_id: guard.mnt_id(),
        under_mnt_id: guard.under().mnt_id,
        fuse_connection: guard.fuse_connection(),
    });
    // From here on, dropping `guard` on an error detaches the mount.
    journal.update_pending(&entry).map_err(undo_journal)?;
    let backing = guard
        .backing()
        .try_clone_to_owned()
        .map_err(|e| undo_journal(Error::sys("duplicating the backing fd", e)))?;
    let server = launcher
        .start(backing, device, &req.spec, guard.fuse_connection())
        .map_err(undo_journal)?;
    tracing::debug!(elapsed = ?t0.elapsed(), "serving");
    crate::failpoint::hit("swapping");
    let outcome = match swapper.swap_in(&pids, &canonical, guard.mnt_id(), server.read_ahead()) {
        Ok(o) => o,
        Err(e) => {
            // fdswap rolled back the process it failed in; the others may have moved: detach,
            // then move them back before the server stops.
            let mnt_id = guard.mnt_id();
            if let Err(d) = guard.detach() {
                tracing::warn!(error = %d, "could not detach the mount");
            }
            if let Err(s) = swapper.swap_out(&pids, &canonical, mnt_id) {
                tracing::warn!(error = %s, "could not swap back after a failed injection");
            }
            if let Err(s) = server.stop() {
                tracing::warn!(error = %s, "could not stop the filesystem server");
            }
            return Err(undo_journal(e));
        }
    };
    tracing::debug!(elapsed = ?t0.elapsed(), "swapped");
    entry.swapped = outcome.swapped;
    // Faults are live: the fsyncs need not delay telling the caller.
    journal.update_pending(&entry)?;
    journal.sync_in_background(&entry.id);
    tracing::info!(id = %entry.id, path = %canonical.display(), pid = target.pid, "injected");
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
        }),
    })
}

impl<F: FsServer, S: Swapper> Injection<F, S> {
    /// The injection id.
    pub fn id(&self) -> InjectionId {
        self.id.clone()
    }

    /// The target's mount namespace, until the injection is recovered.
    pub fn mnt_ns(&self) -> Option<NsId> {
        let st = self.lock().ok()?;
        st.guard
            .as_ref()
            .map(|g| g.ns().id)
            .or(st.detached.map(|(_, ns)| ns))
    }

    /// The journal entry as it stands.
    pub fn entry(&self) -> Result<Entry> {
        Ok(self.lock()?.entry.clone())
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State<F>>> {
        self.state.lock().map_err(|_| {
            Error::sys(
                "injection state",
                std::io::Error::other("a thread panicked holding it"),
            )
        })
    }
}

fn status_of<F: FsServer>(st: &State<F>) -> Status {
    let counters = st
        .server
        .as_ref()
        .map(|s| s.rule_counters())
        .unwrap_or_default();
    let mut status = status_from_entry(&st.entry);
    for (rule, (matched, injected)) in status.rules.iter_mut().zip(counters) {
        rule.matched = matched;
        rule.injected = injected;
    }
    status.skipped = st.skipped.clone();
    status.skipped.extend(st.escaped.iter().cloned());
    status
}

/// The status of an injection as its journal entry tells it (counters zero, no skipped list):
/// what `status` shows for an injection whose server does not answer.
pub fn status_from_entry(e: &Entry) -> Status {
    Status {
        id: e.id.to_string(),
        path: e.path.clone(),
        target: TargetStatus {
            pid: e.target.pid,
            container: e.target.container.as_ref().map(|c| c.id.clone()),
            namespace: e.target.container.as_ref().map(|c| c.namespace.clone()),
            mnt_ns: e.target.mnt_ns,
        },
        pids: e.pids.iter().map(|p| p.pid).collect(),
        server_pid: e.server_pid.unwrap_or_default(),
        spec: e.spec.clone(),
        rules: e.spec["rules"]
            .as_array()
            .map(|rules| {
                rules
                    .iter()
                    .map(|spec| RuleStatus {
                        spec: spec.clone(),
                        matched: 0,
                        injected: 0,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        swapped: e
            .swapped
            .iter()
            .map(|s| FdEntry {
                pid: s.pid,
                fd: s.fd,
                path: s.path.clone(),
                reason: None,
            })
            .collect(),
        skipped: Vec::new(),
        created_unix: e.created_unix_ms / 1000,
    }
}

impl<F: FsServer, S: Swapper> ChaosService for Injection<F, S> {
    fn status(&self) -> Result<Status> {
        Ok(status_of(&*self.lock()?))
    }

    fn update_rules(&self, spec_json: &str) -> Result<Status> {
        let spec: Value =
            serde_json::from_str(spec_json).map_err(|e| Error::InvalidSpec(Box::new(e)))?;
        let mut st = self.lock()?;
        if st.server.is_none() {
            return Err(Error::Recovered {
                id: st.entry.id.to_string(),
            });
        }
        if let Some(p) = spec.get("path").and_then(Value::as_str)
            && p != st.entry.path
            && st.entry.spec.get("path").and_then(Value::as_str) != Some(p)
        {
            return Err(Error::InvalidSpec(
                format!(
                    "spec path {p:?} is not the injection's path {:?}",
                    st.entry.path
                )
                .into(),
            ));
        }
        let escaped = match st.server.as_ref() {
            Some(server) => server.update_rules(&spec)?,
            None => Vec::new(),
        };
        st.escaped = match &st.guard {
            Some(g) if !escaped.is_empty() => escaped_fds(g, &st.entry.path, &escaped),
            _ => Vec::new(),
        };
        st.entry.spec = spec;
        let entry = st.entry.clone();
        self.journal.update(&entry)?;
        Ok(status_of(&st))
    }

    fn recover(&self) -> Result<RecoverReport> {
        let _latency = fdswap::CpuLatency::hold();
        let mut st = self.lock()?;
        if let Some(server) = st.server.as_ref() {
            server.quiesce();
        }
        if let Some(guard) = st.guard.take() {
            let ids = (guard.mnt_id(), guard.ns().id);
            // New opens reach the original at once; what is open through ChaosFS keeps working.
            if let Err(e) = guard.detach() {
                // The guard is gone; its drop retried the detach once more.
                tracing::warn!(error = %e, "detaching the ChaosFS mount");
            }
            st.detached = Some(ids);
        }
        let Some((mnt_id, ns_id)) = st.detached else {
            return Err(Error::Recovered {
                id: st.entry.id.to_string(),
            });
        };
        let t0 = std::time::Instant::now();
        let path = PathBuf::from(&st.entry.path);
        // Everyone in the namespace now, including processes started after the injection. On
        // an error the server keeps serving, so a retry can swap back what is left.
        let pids: Vec<u32> = processes_in_mnt_ns(ns_id)?.iter().map(|p| p.pid).collect();
        let outcome = self.swapper.swap_out(&pids, &path, mnt_id)?;
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
            restored: outcome
                .swapped
                .iter()
                .map(|s| FdEntry {
                    pid: s.pid,
                    fd: s.fd,
                    path: s.path.clone(),
                    reason: None,
                })
                .collect(),
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
    // Any live process of the injection's mount namespace lets us in.
    let ns = entry
        .pids
        .iter()
        .chain(std::iter::once(&ProcessRecord {
            pid: entry.target.pid,
            start_time: entry.target.start_time,
        }))
        .filter(|p| ProcStat::read(p.pid).is_ok_and(|s| s.start_time == p.start_time))
        .find_map(|p| {
            MountNs::of_pid(p.pid)
                .ok()
                .filter(|n| n.id.ino == entry.target.mnt_ns)
        });
    let ns = match ns {
        Some(ns) => Some(ns),
        // Processes started after the injection: scan for the namespace.
        None => find_ns_by_inode(entry.target.mnt_ns)?,
    };
    if let Some(ns) = ns {
        let path = PathBuf::from(&entry.path);
        // The journaled mount, or (the server died between mounting and journaling it) the
        // ChaosFS mount on the path that carries this injection's source.
        let mount = match (&entry.mount, &entry.mount_source) {
            (Some(m), _) => Some((m.mnt_id, m.fuse_connection)),
            (None, Some(source)) => {
                ns::find_tagged(&ns, &path, source)?.map(|m| (m.mnt_id, m.fuse_connection()))
            }
            (None, None) => None,
        };
        if let Some((mnt_id, connection)) = mount {
            if let Some(conn) = connection {
                let ours = ns
                    .mountinfo_all()?
                    .by_id(mnt_id)
                    .and_then(Mount::fuse_connection);
                if ours == Some(conn) {
                    FuseCtl::open()?.abort(conn)?;
                }
            }
            ns::detach_at(&ns, &path, mnt_id)?;
            let pids: Vec<u32> = processes_in_mnt_ns(ns.id)?.iter().map(|p| p.pid).collect();
            let outcome = swapper.swap_out(&pids, &path, mnt_id)?;
            report.restored = outcome
                .swapped
                .iter()
                .map(|s| FdEntry {
                    pid: s.pid,
                    fd: s.fd,
                    path: s.path.clone(),
                    reason: None,
                })
                .collect();
            report.failed = outcome.skipped;
        }
    }
    journal.remove(id)?;
    Ok(report)
}

/// Grow this process's fd table now to what the filesystem server will hold: ChaosFS keeps an
/// `O_PATH` fd per file the kernel looked up and one per open handle, about two per file the
/// target holds. Left to itself the kernel doubles the table as fds are opened (64, 128, …),
/// and once threads exist each doubling waits for an RCU grace period (5–17 ms on a 2-CPU VM,
/// several of them inside the scan and the target's pause). Called while this process has no
/// other thread (the injection server, before any: not even a joined thread that may not have
/// released the table yet), the growth costs nothing; the table never shrinks. Best effort.
fn reserve_fd_slots(pids: &[u32], any_fd: std::os::fd::BorrowedFd<'_>) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let held: usize = pids
        .iter()
        .filter_map(|p| std::fs::read_dir(format!("/proc/{p}/fd")).ok())
        .map(Iterator::count)
        .sum();
    let lim = getrlimit(Resource::Nofile);
    let (soft, hard) = (
        lim.current.unwrap_or(u64::MAX),
        lim.maximum.unwrap_or(u64::MAX),
    );
    // ChaosFS raises the soft limit to the hard one when it starts: do it first.
    let soft = if soft < hard
        && setrlimit(
            Resource::Nofile,
            rustix::process::Rlimit {
                current: lim.maximum,
                maximum: lim.maximum,
            },
        )
        .is_ok()
    {
        hard
    } else {
        soft
    };
    let want = (2 * held + 256) as u64;
    let cap = soft.min(1 << 20);
    let slot = want.min(cap.saturating_sub(1));
    if let Ok(slot) = i32::try_from(slot)
        && slot > 64
    {
        // The fd lands at `slot` (or above): the table now covers it. Dropped at once.
        let _ = rustix::io::fcntl_dupfd_cloexec(any_fd, slot);
    }
}

fn find_ns_by_inode(ino: u64) -> Result<Option<MountNs>> {
    let dir = std::fs::read_dir("/proc").map_err(|e| Error::io("/proc", e))?;
    for d in dir.flatten() {
        let Some(pid) = d.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if NsId::of(pid, "mnt").is_ok_and(|n| n.ino == ino)
            && let Ok(ns) = MountNs::of_pid(pid)
            && ns.id.ino == ino
        {
            return Ok(Some(ns));
        }
    }
    Ok(None)
}

/// The fds of the namespace's processes that hold one of `escaped` (files in a mode the current
/// rules cannot reach), for status.
fn escaped_fds(guard: &MountGuard, path: &str, escaped: &[EscapedFile]) -> Vec<FdEntry> {
    let Ok(procs) = processes_in_mnt_ns(guard.ns().id) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in procs {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/fd", p.pid)) else {
            continue;
        };
        for d in dir.flatten() {
            let Some(fd) = d.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if crate::swap::fdinfo(p.pid, fd).is_none_or(|(_, _, m)| m != guard.mnt_id()) {
                continue;
            }
            let Ok(st) = rustix::fs::statx(
                rustix::fs::CWD,
                d.path(),
                rustix::fs::AtFlags::STATX_DONT_SYNC,
                rustix::fs::StatxFlags::INO,
            ) else {
                continue;
            };
            if let Some(e) = escaped.iter().find(|e| e.ino == st.stx_ino) {
                out.push(FdEntry {
                    pid: p.pid,
                    fd,
                    path: Path::new(path).join(&e.path).display().to_string(),
                    reason: Some(
                        "open in kernel passthrough mode before the rules changed: the new rules \
                         reach it once it is reopened"
                            .into(),
                    ),
                });
            }
        }
    }
    out
}
