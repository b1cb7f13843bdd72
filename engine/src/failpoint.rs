//! Kill points for the tests: `IOCHAOS_FAILPOINT=NAME` makes the process stop itself
//! (`SIGSTOP`, every thread) when it reaches the point named NAME, so a test can kill it there
//! (or let it go on with `SIGCONT`) instead of hoping to hit a window by timing. Unset (as in
//! every real use), [`hit`] costs one load of a cached value.
//!
//! Points: `checked` (inject: the target and path were checked under the journal lock, nothing
//! is written yet), `mounted` (inject: ChaosFS is mounted, the journal does not record the
//! mount yet), `swapping` (inject: the swap is about to start), `swapped` (inject: the swap is
//! done, the journal does not record it yet).

use std::sync::OnceLock;

fn armed() -> Option<&'static str> {
    static NAME: OnceLock<Option<String>> = OnceLock::new();
    NAME.get_or_init(|| std::env::var("IOCHAOS_FAILPOINT").ok())
        .as_deref()
}

/// Stop here if `IOCHAOS_FAILPOINT` names this point.
pub fn hit(name: &str) {
    if armed() == Some(name) {
        tracing::info!(failpoint = name, "stopping at the failpoint");
        // SIGSTOP stops every thread of the process, whichever thread it is sent to.
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::STOP);
    }
}
