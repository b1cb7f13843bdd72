//! Helpers for the privileged tests: real processes in their own mount namespaces.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// These tests mount and enter namespaces: they need root and fail (never skip) without it.
pub fn require_root() {
    iochaos_testsupport::require_root("it enters namespaces and mounts");
}

/// Poll `f` until it returns Some, failing after 10 s.
pub fn poll<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    iochaos_testsupport::poll(what, Duration::from_secs(10), f)
}

/// A helper process, killed and reaped on drop.
pub struct Helper {
    pub child: Child,
}

impl Helper {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Spawn `args` and wait until the process runs `comm` in a mount namespace other than ours.
    pub fn spawn(args: &[&str], comm: &str) -> Helper {
        let child = Command::new(args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {args:?}: {e}"));
        let h = Helper { child };
        let pid = h.pid();
        let ours = std::fs::read_link("/proc/self/ns/mnt").expect("our mnt ns");
        poll(
            &format!("{args:?} to run {comm} in a new mount namespace"),
            || {
                let c = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
                let ns = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()?;
                (c.trim() == comm && ns != ours).then_some(())
            },
        );
        h
    }

    /// `sleep` in a private copy of our mount namespace.
    pub fn private_ns() -> Helper {
        Helper::unshared(&[])
    }

    /// `sleep` in a private copy of our mount namespace, `unshare` given `flags` as well (e.g.
    /// a user namespace).
    pub fn unshared(flags: &[&str]) -> Helper {
        let tail = ["--mount", "--propagation", "private", "sleep", "1000"];
        Helper::spawn(&[&["unshare"], flags, &tail].concat(), "sleep")
    }

    /// The helper's view of a path (through /proc/PID/root).
    pub fn view(&self, p: &Path) -> std::path::PathBuf {
        Path::new(&format!("/proc/{}/root", self.pid()))
            .join(p.strip_prefix("/").expect("absolute"))
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tmpfs over `path` in `ns` (shared mounts refused).
pub fn tmpfs_over(ns: &engine::ns::MountNs, path: &Path) -> engine::Result<engine::ns::MountGuard> {
    engine::ns::mount_over(
        ns,
        path,
        engine::ns::MountSource::Tmpfs,
        engine::mountinfo::SharedPolicy::Refuse,
    )
}
