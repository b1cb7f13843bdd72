//! Shared fixture of the `rules_*` integration tests: ChaosFS mounted for real over a temporary
//! directory, unmounted by a guard whatever happens. Needs root and /dev/fuse: fails loudly
//! without them, never skips.

#![allow(dead_code)]

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chaosfs::rules::{RuleSet, RuleStats, Spec};

/// Fail (not skip) when the machine cannot mount FUSE.
pub fn require_privileges() {
    iochaos_testsupport::require_root("the rules_* tests mount ChaosFS for real");
    iochaos_testsupport::require_fuse();
    iochaos_testsupport::require_fusectl();
}

/// The rules of `json`; `{"rules": []}` is the set without rules (a spec needs at least one
/// rule; the library's [`RuleSet::empty`] is how a server serves none).
pub fn ruleset(json: &str) -> RuleSet {
    if serde_json::from_str::<serde_json::Value>(json).ok()
        == Some(serde_json::json!({"rules": []}))
    {
        return RuleSet::empty();
    }
    let spec = Spec::from_json(json).unwrap_or_else(|e| panic!("spec {json}: {e}"));
    RuleSet::new(spec).unwrap_or_else(|e| panic!("rules {json}: {e}"))
}

/// A mounted ChaosFS over a temporary directory. Dropping it unmounts.
pub struct Mount {
    mounted: Option<chaosfs::Mounted>,
    dir: tempfile::TempDir,
}

impl Mount {
    /// Create the files `files` (relative path, content) in a fresh directory, then mount
    /// ChaosFS with `json` rules over it.
    pub fn new(json: &str, files: &[(&str, &[u8])]) -> Mount {
        require_privileges();
        let dir = tempfile::tempdir().expect("tempdir");
        // Other uids must reach the files (uid selector tests).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod tempdir");
        for (name, content) in files {
            let p = dir.path().join(name);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).expect("mkdir");
            }
            std::fs::write(&p, content).expect("seed file");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        }
        let mounted = chaosfs::mount_over(
            dir.path(),
            ruleset(json),
            chaosfs::server::Config::default(),
        )
        .unwrap_or_else(|e| panic!("mounting ChaosFS over {}: {e}", dir.path().display()));
        let m = Mount {
            mounted: Some(mounted),
            dir,
        };
        m.wait_mounted();
        m
    }

    fn wait_mounted(&self) {
        let me = self.dir.path().to_string_lossy().into_owned();
        wait_for("ChaosFS to show up in mountinfo", || {
            let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
            info.lines()
                .any(|l| l.split(' ').nth(4) == Some(me.as_str()) && l.contains("fuse"))
        });
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn mounted(&self) -> &chaosfs::Mounted {
        self.mounted.as_ref().expect("mounted")
    }

    /// Replace the rules while mounted.
    pub fn update(&self, json: &str) {
        let _ = self.mounted().server().update_rules(ruleset(json));
    }

    /// Per-rule counters of the rules in force.
    pub fn stats(&self) -> Vec<RuleStats> {
        self.mounted().server().stats()
    }

    /// Requests parked in a latency fault or being served after one.
    pub fn pending_delays(&self) -> usize {
        self.mounted().server().pending_delays()
    }

    /// Unmount now and return the directory (to look at what reached the backing files).
    pub fn unmount(mut self) -> tempfile::TempDir {
        if let Some(m) = self.mounted.take() {
            m.unmount().expect("unmount");
        }
        let dir = tempfile::tempdir().expect("placeholder");
        std::mem::replace(&mut self.dir, dir)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(m) = self.mounted.take()
            && let Err(e) = m.unmount()
        {
            eprintln!("unmounting {}: {e}", self.dir.path().display());
            // Best effort: detach lazily so the temp dir can go.
            let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// The errno of an I/O result (`None` on success).
pub fn errno<T>(r: io::Result<T>) -> Option<i32> {
    r.err().map(|e| e.raw_os_error().unwrap_or(-1))
}

/// One pread of `len` bytes at offset 0.
pub fn pread(path: &Path, len: usize) -> io::Result<Vec<u8>> {
    let f = File::open(path)?;
    let mut buf = vec![0u8; len];
    let n = f.read_at(&mut buf, 0)?;
    buf.truncate(n);
    Ok(buf)
}

/// `count` preads of `len` bytes on one open file: which ones failed, as errnos.
pub fn pread_many(path: &Path, len: usize, count: usize) -> Vec<Option<i32>> {
    let f = File::open(path).expect("open");
    let mut buf = vec![0u8; len];
    (0..count).map(|_| errno(f.read_at(&mut buf, 0))).collect()
}

/// Run a command with LC_ALL=C; (exit success, stdout, stderr).
pub fn run(cmd: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(cmd)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Wait (polling) until `cond` holds; panics with `what` after 10 s.
pub fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    iochaos_testsupport::wait_until(what, Duration::from_secs(10), cond);
}

/// Bytes that differ.
pub fn diff(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count() + a.len().abs_diff(b.len())
}

/// A recognisable content.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from(i * 31 % 251).expect("below 251"))
        .collect()
}

/// Open `path` write-only (it must exist).
pub fn open_write(path: &std::path::Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {} for writing: {e}", path.display()))
}
