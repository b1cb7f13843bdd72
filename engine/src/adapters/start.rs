//! Start-time injection: ChaosFS mounted while an OCI container is being created, before its
//! workload runs (the `iochaos-hook` OCI hook at `createRuntime`, or `prestart`; the shim at
//! create). The target is [`crate::target::Target::from_oci_create`].
//!
//! Nothing runs in the container yet, so there is nothing to swap in: [`StartSwapper`] skips
//! the swap at inject and swaps back with [`FdSwapper`] at recover (the workload has opened
//! files through ChaosFS by then).

use std::path::Path;

use super::fdswap::FdSwapper;
use crate::error::Result;
use crate::inject::{SwapOutcome, Swapper};

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

    fn swap_out(
        &self,
        pids: &[u32],
        path: &Path,
        from_mnt: u64,
        locks: &[(u32, fdswap::PosixLock)],
    ) -> Result<SwapOutcome> {
        self.0.swap_out(pids, path, from_mnt, locks)
    }
}
