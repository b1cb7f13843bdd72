//! A private mount namespace for this process (the swap testee, the benchmarks).

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

/// Move this (still single-threaded) process into a new mount namespace whose mounts do not
/// propagate back (`/` made recursively private): what is mounted here vanishes with the
/// process, whatever happens to it.
pub fn enter_private_mount_namespace() -> std::io::Result<()> {
    unshare(CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    Ok(())
}
