//! The one thing the hook does that needs `unsafe`: start its server in a new session.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Start the child in a new session (`setsid`) before it execs: the injection server outlives
/// the hook and the runtime that ran it, and must not get their terminal's signals.
pub fn new_session_in_child(command: &mut Command) {
    // SAFETY: the closure runs in the forked child between fork and exec, where only
    // async-signal-safe functions may be called; it calls only setsid(2), which is
    // async-signal-safe, and allocates nothing (the error path builds an io::Error from an
    // errno value, which does not allocate).
    unsafe {
        command.pre_exec(|| {
            rustix::process::setsid()?;
            Ok(())
        });
    }
}
