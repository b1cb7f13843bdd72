//! The shim's only unsafe code: what its daemon child does between fork and exec.

use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The fd on which the daemon finds its listening socket (as runc's shim does).
pub const LISTENER_FD: RawFd = 3;

/// Make the child of `cmd` the leader of a new session (it outlives `start` and must not get
/// the signals of containerd's process group) with `listener` on fd [`LISTENER_FD`], inherited
/// across exec.
pub fn daemon_child(cmd: &mut Command, listener: RawFd) {
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // functions may be called (signal-safety(7)): setsid, dup2 and fcntl are, and the closure
    // allocates nothing. `listener` is an fd the parent keeps open until after spawn returns,
    // so it is open in the child.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if listener == LISTENER_FD {
                // dup2 onto itself keeps FD_CLOEXEC: clear it.
                let flags = libc::fcntl(listener, libc::F_GETFD);
                if flags < 0 || libc::fcntl(listener, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(listener, LISTENER_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
