//! Shared helpers of the `fs_*` integration tests: every test mounts ChaosFS for real over a
//! fresh temporary directory and unmounts it in `Drop`, even when the test panics.

#![allow(dead_code)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use chaosfs::rules::{RuleSet, Spec};
use chaosfs::{Config, Mounted, Server};

/// Fail loudly (never skip) when the privileges the tests need are missing.
pub fn require_root_and_fuse() {
    iochaos_testsupport::require_root("the fs_* tests mount FUSE file systems");
    iochaos_testsupport::require_fuse();
    // Teardown aborts connections through fusectl; without it a failing test can leave a
    // mount behind. Checked before anything is mounted.
    iochaos_testsupport::require_fusectl();
}

/// A ChaosFS mount over a temporary directory. Field order matters: the mount is dropped
/// (unmounted) before the directory is removed.
pub struct TestMount {
    pub mounted: Option<Mounted>,
    /// The directory underneath the mount, opened before mounting.
    pub backing_dir: std::fs::File,
    pub dir: tempfile::TempDir,
}

impl TestMount {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn server(&self) -> &Server {
        self.mounted.as_ref().expect("mounted").server()
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `rel` in the directory underneath the mount (bypassing ChaosFS), as a path that also
    /// works in child processes (through this process's fd of the directory).
    pub fn backing(&self, rel: &str) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.backing_dir.as_raw_fd()
        ))
        .join(rel)
    }

    /// Unmount explicitly, checking for errors.
    pub fn unmount(mut self) {
        if let Some(m) = self.mounted.take() {
            m.unmount().expect("unmount");
        }
    }
}

/// Mount ChaosFS over a fresh temporary directory, after `prepare` populated it natively.
pub fn mount_with(rules: RuleSet, cfg: Config, prepare: impl FnOnce(&Path)) -> TestMount {
    require_root_and_fuse();
    let dir = tempfile::Builder::new()
        .prefix("chaosfs-test")
        .tempdir_in(std::env::var_os("CHAOSFS_TEST_DIR").unwrap_or_else(|| "/tmp".into()))
        .expect("tempdir");
    prepare(dir.path());
    let parent_dev = std::fs::metadata(dir.path()).expect("stat tempdir").dev();
    let backing = std::fs::File::open(dir.path()).expect("open backing dir");
    let mounted = chaosfs::mount_over(dir.path(), rules, cfg).expect("mount_over");
    let m = TestMount {
        mounted: Some(mounted),
        backing_dir: backing,
        dir,
    };
    // Readiness: poll until the mount answers with its own device number.
    let mut tries = 0;
    loop {
        let dev = std::fs::metadata(m.path()).expect("stat mount").dev();
        if dev != parent_dev {
            break;
        }
        tries += 1;
        assert!(tries < 1_000_000, "mount never became visible");
        std::thread::yield_now();
    }
    m
}

pub fn mount() -> TestMount {
    mount_with(RuleSet::empty(), Config::default(), |_| {})
}

pub fn rules(json: &str) -> RuleSet {
    let spec: Spec = serde_json::from_str(json).expect("spec json");
    RuleSet::new(spec).expect("rule set")
}

/// Run `f` in a forked child process with the given credentials; returns its exit status.
pub fn run_as(uid: u32, gid: u32, script: &str) -> std::process::ExitStatus {
    use std::os::unix::process::CommandExt;
    std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .uid(uid)
        .gid(gid)
        .status()
        .expect("spawn sh")
}
