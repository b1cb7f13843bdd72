//! Start-time injection: ChaosFS mounted while an OCI container is being created, before its
//! workload runs (the `iochaos-hook` OCI hook at `createRuntime`, or `prestart`).
//!
//! At `createRuntime` the runtime has created the container's namespaces and prepared its
//! mounts under the rootfs, but the init process has not called `pivot_root` yet (runc; crun
//! may have): its root is still the runtime's, and the container's root is the bundle's
//! rootfs as a path in the new mount namespace. [`oci_target`] finds that directory through
//! `/proc/PID/root` (a walk that crosses the mounts of the init's namespace), checks it is the
//! rootfs the runtime named, and makes it the target's root, so the path resolves as the
//! container will see it. The mount made there stays where it is across `pivot_root`.
//!
//! Nothing runs in the container yet, so there is nothing to swap in: [`StartSwapper`] skips
//! the swap at inject and swaps back with [`FdSwapper`] at recover (the workload has opened
//! files through ChaosFS by then).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustix::fs::{Mode, OFlags};

use crate::error::{Error, Result};
use crate::inject::{SwapOutcome, Swapper};
use crate::swap::FdSwapper;
use crate::target::{ContainerRef, Target};

/// The "namespace" recorded for a container named by an OCI hook (containerd containers
/// record their containerd namespace): `iochaos status` shows `oci/ID`.
pub const OCI_NAMESPACE: &str = "oci";

/// The target of an OCI container being created: init process `pid`, root `rootfs` (absolute,
/// as the runtime named it, i.e. a path in the runtime's and, before `pivot_root`, the init's
/// mount namespace), container id `id`.
pub fn oci_target(pid: u32, rootfs: &Path, id: &str) -> Result<Target> {
    if !rootfs.is_absolute() {
        return Err(Error::RelativePath {
            path: rootfs.to_owned(),
        });
    }
    let mut target = Target::from_pid(pid)?;
    target.container = Some(ContainerRef {
        id: id.to_owned(),
        namespace: OCI_NAMESPACE.to_owned(),
    });
    let want = std::fs::metadata(rootfs).map_err(|e| Error::io(rootfs, e))?;
    let same = |st: &rustix::fs::Stat| st.st_dev == want.dev() && st.st_ino == want.ino();
    let root = rustix::fs::fstat(target.root_fd())
        .map_err(|e| Error::sys(format!("fstat the root of pid {pid}"), e))?;
    if same(&root) {
        tracing::debug!(pid, "the init's root is the rootfs already");
        return Ok(target);
    }
    let inner =
        Path::new(&format!("/proc/{pid}/root")).join(rootfs.strip_prefix("/").unwrap_or(rootfs));
    let fd = rustix::fs::open(
        &inner,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io(&inner, e.into()))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| Error::io(&inner, e.into()))?;
    if !same(&st) {
        return Err(Error::Malformed {
            path: inner,
            reason: format!(
                "is not the container's rootfs {} (another directory is mounted there in pid \
                 {pid}'s mount namespace)",
                rootfs.display()
            ),
        });
    }
    // Same process after opening: the fd belongs to the init we were asked about.
    if !target.is_alive() {
        return Err(Error::NoSuchProcess { pid });
    }
    tracing::debug!(pid, rootfs = %rootfs.display(), "the rootfs, through the init's root");
    Ok(target.with_root(fd))
}

/// The [`Swapper`] of a start-time injection: nothing to move at inject (the workload has not
/// started; the runtime's init process holds nothing under the path and is not ptraced), the
/// fd swap back at recover.
#[derive(Debug, Clone, Default)]
pub struct StartSwapper(pub FdSwapper);

impl Swapper for StartSwapper {
    fn swap_in(
        &self,
        _pids: &[u32],
        _path: &Path,
        _to_mnt: u64,
        _read_ahead: fdswap::ReadAhead,
    ) -> Result<SwapOutcome> {
        Ok(SwapOutcome::default())
    }

    fn swap_out(&self, pids: &[u32], path: &Path, from_mnt: u64) -> Result<SwapOutcome> {
        self.0.swap_out(pids, path, from_mnt)
    }
}
