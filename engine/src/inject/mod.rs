//! Inject and recover: the orchestration of targets, mounts, the journal, the filesystem server
//! and the fd swap.
//!
//! The two moving parts that live in other crates enter through the traits defined here, so
//! that wiring them in is an `impl` each (see [`crate::adapters`]):
//! * [`FsLauncher`] / [`FsServer`]: the filesystem server (ChaosFS).
//! * [`Swapper`]: the fd swap (fdswap).
//!
//! [`inject`] checks everything first (`check.rs`), then journals, mounts, starts the server,
//! swaps, and journals again (`apply.rs`); any failure undoes what was done. The returned
//! [`Injection`] implements [`crate::api::ChaosService`] (`service.rs`), so it is what the
//! injection server serves on `/run/iochaos/<id>.sock`. Recover (`recover.rs`) undoes it; with
//! the server gone, [`recover_from_journal`] works from the journal and `/proc` alone.

mod apply;
mod check;
mod crash;
mod recover;
mod service;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::Value;

use crate::api::{CrashedFile, FdEntry};
use crate::error::{Error, Result};
use crate::journal::{Entry, InjectionId, Journal, ProcessOpenMode, SwappedFd};
use crate::mountinfo::SharedPolicy;
use crate::ns::MountGuard;
use crate::policy::HostNamespace;
use crate::target::{ContainerRef, ContainerdTask, NsId, Target};

pub use apply::inject;
pub use crash::kill_now;
pub use recover::recover_from_journal;
pub use service::status_from_entry;

/// What is mounted over the path: a FUSE connection the launcher will serve, or (tests,
/// dry runs) a tmpfs.
#[derive(Debug)]
pub enum Device {
    /// An open `/dev/fuse`.
    Fuse(OwnedFd),
    /// No server: an empty tmpfs.
    Tmpfs,
}

/// Starts the filesystem that serves the mount (wiring:
/// [`crate::adapters::chaosfs::ChaosLauncher`]).
pub trait FsLauncher {
    type Server: FsServer;
    /// The device to mount (called before mounting).
    fn device(&self) -> Result<Device>;
    /// Serve what is [`Mounted`] over the path with the rules of `spec`. Returns once faults are
    /// live (the FUSE INIT handshake is done).
    fn start(&self, mounted: Mounted, spec: &Value) -> Result<Self::Server>;
}

/// What the mount step hands to [`FsLauncher::start`].
#[derive(Debug)]
pub struct Mounted {
    /// The directory under the mount (what the filesystem passes through to).
    pub backing: OwnedFd,
    /// The device mounted over the path ([`Device::Fuse`] or not).
    pub device: Device,
    /// The FUSE connection number of the mount.
    pub connection: Option<u32>,
}

/// A file open in a mode the current rules cannot reach (ChaosFS: kernel passthrough, opened
/// before the rules changed): its reads and writes bypass the rules until the process holding
/// it reopens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscapedFile {
    /// `st_ino` as seen through the mount.
    pub ino: u64,
    /// Path relative to the mount root.
    pub path: PathBuf,
}

/// A running filesystem server (wiring: [`crate::adapters::chaosfs::ChaosServer`]).
pub trait FsServer: Send + Sync + 'static {
    /// Rules checked and ready to go live.
    type Rules: Send;
    /// Check the rules of `spec` (already valid JSON; the rule engine validates) without making
    /// them live: `update` journals them between this and [`FsServer::update_rules`].
    fn parse_rules(&self, spec: &Value) -> Result<Self::Rules>;
    /// Make `rules` live. Returns the files open in a mode the new rules cannot reach until
    /// they are reopened.
    fn update_rules(&self, rules: Self::Rules) -> Vec<EscapedFile>;
    /// Recover begins: stop injecting and release requests held in latency faults, so that no
    /// thread of the target is still waiting on a fault when it is swapped back.
    fn quiesce(&self) {}
    /// Which directories under the mount the swap may read before resolving the files in them
    /// ([`fdswap::ReadAhead`]): those no rule can touch the metadata of. Default: none.
    fn read_ahead(&self) -> fdswap::ReadAhead {
        fdswap::ReadAhead::never()
    }
    /// The POSIX locks processes hold through the filesystem (one that forwards locks to the
    /// backing files): (pid, lock on the backing file). The swap back takes them again on
    /// the original files. Default: none.
    fn forwarded_locks(&self) -> Vec<(u32, fdswap::PosixLock)> {
        Vec::new()
    }
    /// `(matched, injected)` per rule, in spec order.
    fn rule_counters(&self) -> Vec<(u64, u64)>;
    /// Crash mode: roll every file back to its last durable state and refuse every later
    /// change (docs/crash.md). Called once every process of the target is dead. What each
    /// file lost, paths relative to the mount root. Default: nothing is kept to roll back.
    fn crash(&self, opts: chaosfs::CrashOptions) -> Vec<CrashedFile> {
        let _ = opts;
        Vec::new()
    }
    /// Crash mode: `kill` is what a `crash` rule runs when it cuts the power (before the
    /// filesystem rolls back). Default: no crash rule can fire.
    fn on_power_cut(&self, _kill: Box<dyn Fn() + Send + Sync>) {}
    /// Stop serving (the mount is already detached and the fds swapped back).
    fn stop(self) -> Result<()>;
}

/// What a swap moved and what it left alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwapOutcome {
    pub swapped: Vec<SwappedFd>,
    pub skipped: Vec<FdEntry>,
    /// Per process whose files moved: how they were opened.
    pub open_modes: Vec<ProcessOpenMode>,
}

/// Moves the target's fds, cwds and shared mappings between the original mount and ChaosFS
/// (wiring: [`crate::adapters::fdswap::FdSwapper`], [`crate::adapters::start::StartSwapper`]).
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
    /// `locks`: what the filesystem holds for them ([`FsServer::forwarded_locks`]), taken
    /// again on the original files.
    fn swap_out(
        &self,
        pids: &[u32],
        path: &Path,
        from_mnt: u64,
        locks: &[(u32, fdswap::PosixLock)],
    ) -> Result<SwapOutcome>;
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
    /// A container a runtime named (`docker://`, `podman://`): injected by its init pid, recorded
    /// as `container` (the runtime's name as namespace, the full id) so that `status` and
    /// `recover` find it by name again.
    Runtime {
        pid: u32,
        container: ContainerRef,
    },
    /// An OCI container being created (runtime hook at `createRuntime`/`prestart`): its init
    /// process, which may not have pivoted into the container's root yet, and that root as a
    /// path in the init's mount namespace (the bundle's `root.path`, absolute). See
    /// [`Target::from_oci_create`].
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
        TargetSpec::Runtime { pid, container } => {
            let mut target = Target::from_pid(*pid)?;
            target.container = Some(container.clone());
            Ok(target)
        }
        TargetSpec::OciCreate { pid, rootfs, id } => Target::from_oci_create(*pid, rootfs, id),
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
    /// fds held back for recover (see [`crate::fdlimit`]), released when it begins.
    fd_reserve: Option<crate::fdlimit::FdReserve>,
}

impl<F: FsServer, S: Swapper> std::fmt::Debug for Injection<F, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injection")
            .field("journal", &self.journal)
            .finish()
    }
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

    /// Crash mode: when a `crash` rule fires, SIGKILL every process of the target at once
    /// (the filesystem then rolls back, and the target-exit watch recovers).
    pub fn kill_on_power_cut(&self) -> Result<()> {
        let st = self.lock()?;
        let (Some(server), Some(guard)) = (st.server.as_ref(), st.guard.as_ref()) else {
            return Ok(());
        };
        let ns = guard.ns().id;
        let id = st.entry.id.to_string();
        server.on_power_cut(Box::new(move || match crash::kill_now(ns) {
            Ok(pids) => tracing::info!(id, killed = pids.len(), "crash rule: power cut"),
            Err(e) => tracing::warn!(id, error = %e, "crash rule: killing the target failed"),
        }));
        Ok(())
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

/// What the Chaos API reports for fds a swap moved.
fn fd_entries(swapped: &[SwappedFd]) -> Vec<FdEntry> {
    swapped
        .iter()
        .map(|s| FdEntry {
            pid: s.pid,
            fd: s.fd,
            path: s.path.clone(),
            reason: None,
        })
        .collect()
}
