//! Helpers shared by the integration tests of the iochaos crates. Not part of the product: every
//! crate has it as a dev-dependency only (chaosfs and fdswap too: it depends on neither).
//!
//! * [`require_root`], [`require_fuse`], [`require_fusectl`], [`require_tools`]: a privileged
//!   test fails (never skips) when what it needs is missing.
//! * [`poll`] / [`wait_until`]: wait for a condition with a deadline, never a fixed sleep.
//! * [`kill`] / [`json_pid`]: signal a pid (checked instead of cast) and pids out of JSON.
//! * [`busybox_rootfs`]: a minimal root filesystem of the static busybox.
//! * [`Runc`]: containers of a bundle run with `runc run -d`, deleted when dropped;
//!   [`add_user_namespace`] maps a config's root to host uid 100000.
//! * [`PRIVATE_MOUNT_NS_SH`]: `sh -c` in a private mount namespace (`unshare`).
//! * [`Containerd`]: a private containerd (root, state and socket in a test's tempdir) driven
//!   with `ctr`, which kills and removes every container it was told about, stops the daemon
//!   and reaps the shims when dropped — also when the test fails; [`cri_config`] and
//!   [`import_cri_image`] make it a CRI runtime (host-network pods, a local busybox image).

mod containerd;
mod cri;
mod rootfs;
mod runc;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

pub use containerd::Containerd;
pub use cri::{CRI_IMAGE, cri_config, docker_import, import_cri_image};
pub use rootfs::busybox_rootfs;
pub use runc::{Bind, Runc, add_user_namespace};
pub use rustix::process::{Pid, Signal};

/// The command line that runs `sh -c SCRIPT ARGS...` (append them) in a new mount namespace
/// whose mounts do not propagate back: `unshare --mount --propagation private sh -c`.
pub const PRIVATE_MOUNT_NS_SH: [&str; 6] =
    ["unshare", "--mount", "--propagation", "private", "sh", "-c"];

/// Fail the test unless it runs as root; `why` says what it does that needs root.
pub fn require_root(why: &str) {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root ({why}): run it as root"
    );
}

/// Fail the test unless /dev/fuse exists.
pub fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "this test mounts FUSE and needs /dev/fuse (modprobe fuse)"
    );
}

/// Fail the test unless fusectl is mounted at /sys/fs/fuse/connections (teardown aborts
/// connections through it; without it a failing test can leave a mount behind).
pub fn require_fusectl() {
    assert!(
        fusectl_mounted(),
        "this test needs fusectl mounted: mount -t fusectl none /sys/fs/fuse/connections \
         (.ci/run does)"
    );
}

/// Is fusectl mounted at /sys/fs/fuse/connections (so that it lists the live connections)?
pub fn fusectl_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some("/sys/fs/fuse/connections"))
}

/// Fail the test unless each of `tools` is an executable file on PATH.
pub fn require_tools(tools: &[&str]) {
    for t in tools {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
            .unwrap_or(false);
        assert!(found, "{t} is not installed (Debian package {t})");
    }
}

/// Poll `f` every 10 ms until it returns `Some`, failing the test after `timeout`.
pub fn poll<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// [`poll`] for a condition: wait until `cond` holds, failing the test after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    poll(what, timeout, || cond().then_some(()));
}

/// Fail the test unless the command that gave `out` succeeded (`what` names it); its stdout.
pub fn expect_success(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The mountinfo lines of the ChaosFS mounts (type `fuse.chaosfs`) in `pid`'s mount namespace;
/// none when `pid` is gone.
pub fn chaosfs_mounts(pid: u32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" - fuse.chaosfs "))
        .map(str::to_owned)
        .collect()
}

/// `pid` as a `Pid` (a `pid_t`); an error for a number no pid can be (0, or above
/// `PID_MAX_LIMIT`, 2^22), rather than wrapping to a negative one, which `kill(2)` would take
/// as a process group.
fn as_pid(pid: u32) -> std::io::Result<Pid> {
    i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

/// Send `sig` to process `pid` (`kill(2)`; no panic, so also for `Drop`).
pub fn kill(pid: u32, sig: Signal) -> std::io::Result<()> {
    Ok(rustix::process::kill_process(as_pid(pid)?, sig)?)
}

/// Send `sig` to process group `pgid` (`killpg(3)`; no panic, so also for `Drop`).
pub fn kill_group(pgid: u32, sig: Signal) -> std::io::Result<()> {
    Ok(rustix::process::kill_process_group(as_pid(pgid)?, sig)?)
}

/// A pid field of a JSON document (`server_pid` of `iochaos status --json`, `pid` of
/// `runc state`); panics if it is missing or no pid.
pub fn json_pid(v: &serde_json::Value) -> u32 {
    v.as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .expect("a pid field")
}
