//! The few unsafe calls of the `iochaos` binary.

use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sys::signal::SigSet;

/// Have the child unblock `signals` before it execs. iochaos blocks the signals it forwards in
/// every thread (so none of its FUSE threads is killed by them), and a child inherits the mask.
pub fn unblock_in_child(command: &mut Command, signals: SigSet) {
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // functions may be called; it calls pthread_sigmask (async-signal-safe per POSIX) on a
    // SigSet copied into the closure, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            signals.thread_unblock().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
}

/// Move this process into a new mount namespace (`unshare(CLONE_NEWNS)`).
pub fn unshare_mount_namespace() -> std::io::Result<()> {
    // SAFETY: rustix marks unshare unsafe for CLONE_FILES only (threads that share an fd table
    // must not see fds of one they no longer share); CLONE_NEWNS leaves the fd table alone.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }?;
    Ok(())
}

/// Start the child in a new session (`setsid`) before it execs: the injection server outlives
/// the CLI and must not get its terminal's signals.
pub fn new_session_in_child(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // functions may be called; setsid(2) is async-signal-safe and nothing is allocated.
    unsafe {
        command.pre_exec(|| {
            rustix::process::setsid()?;
            Ok(())
        });
    }
}
