//! Shared helpers of the `fs_*` integration tests: every test mounts ChaosFS for real over a
//! fresh temporary directory and unmounts it in `Drop`, even when the test panics.

#![allow(dead_code)]

mod py;
#[allow(unused_imports)] // not every test drives python
pub use py::{Py, py_path};

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

/// The first 4 KiB of a file mapped shared and writable; unmapped on drop.
pub struct SharedPage {
    ptr: std::ptr::NonNull<std::ffi::c_void>,
}

impl SharedPage {
    const LEN: usize = 4096;

    /// Map the first page of `f` (open read-write, at least 4 KiB long).
    pub fn map(f: &std::fs::File) -> SharedPage {
        use nix::sys::mman::{MapFlags, ProtFlags, mmap};
        use std::os::fd::AsFd;
        let len = std::num::NonZeroUsize::new(Self::LEN).expect("len");
        // SAFETY: a fresh shared mapping of a file the test owns; nothing else aliases it and
        // it lives until `drop` unmaps it.
        let ptr = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                f.as_fd(),
                0,
            )
        }
        .expect("mmap shared");
        SharedPage { ptr }
    }

    /// The mapped bytes.
    pub fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is LEN bytes, readable and writable, and only reachable through
        // `self`, borrowed mutably here.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().cast::<u8>(), Self::LEN) }
    }

    /// `msync(MS_SYNC)`: the stores reach the file.
    pub fn sync(&self) {
        // SAFETY: `ptr`/LEN describe the live mapping.
        unsafe { nix::sys::mman::msync(self.ptr, Self::LEN, nix::sys::mman::MsFlags::MS_SYNC) }
            .expect("msync");
    }
}

impl Drop for SharedPage {
    fn drop(&mut self) {
        // SAFETY: `ptr`/LEN describe the mapping made in `map`; no borrow of it outlives self.
        if let Err(e) = unsafe { nix::sys::mman::munmap(self.ptr, Self::LEN) } {
            eprintln!("munmap: {e}");
        }
    }
}
