//! A private containerd (state, root, socket and journal in a tempdir) with
//! `containerd-shim-iochaos-v2` on its PATH, and busybox containers run with `ctr`. Privileged:
//! needs root, containerd (with containerd-shim-runc-v2), ctr, runc and busybox-static; fails
//! without them.
#![allow(dead_code)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

pub const RUNTIME: &str = "io.containerd.iochaos.v2";
/// The shell of the busybox containers.
pub const SH: &str = "/bin/busybox";
/// The annotation most tests use: every write under /vol fails with EIO.
pub const EIO_WRITES: &str = r#"{"path":"/vol","rules":[{"ops":["write"],"errno":"EIO"}]}"#;

pub fn require_root() {
    iochaos_testsupport::require_root("it runs containerd and mounts");
}

/// Poll `f` until it returns Some, failing after 20 s.
pub fn poll<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    iochaos_testsupport::poll(what, Duration::from_secs(20), f)
}

/// A private containerd ([`iochaos_testsupport::Containerd`]) whose PATH finds our shim, a
/// busybox rootfs, a volume to bind at /vol, and the journal directory of our injections.
pub struct Containerd {
    c: iochaos_testsupport::Containerd,
    pub run_dir: PathBuf,
    pub rootfs: PathBuf,
    pub volume: PathBuf,
}

impl std::ops::Deref for Containerd {
    type Target = iochaos_testsupport::Containerd;
    fn deref(&self) -> &Self::Target {
        &self.c
    }
}

impl std::ops::DerefMut for Containerd {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.c
    }
}

impl Containerd {
    /// [`Containerd::start`] in a fresh tempdir (needs root), which it returns too (to be
    /// dropped after the containerd).
    pub fn start_in_tempdir() -> (tempfile::TempDir, Containerd) {
        require_root();
        let d = tempfile::tempdir().expect("tempdir");
        let dir = std::fs::canonicalize(d.path()).expect("canon");
        let c = Containerd::start(&dir);
        (d, c)
    }

    /// containerd in `dir`, a busybox rootfs and a volume directory to bind at /vol.
    pub fn start(dir: &Path) -> Containerd {
        let rootfs = dir.join("rootfs");
        iochaos_testsupport::busybox_rootfs(&rootfs, &["vol"], &[]);
        let volume = dir.join("volume");
        std::fs::create_dir_all(&volume).expect("mkdir");
        let shim_dir = Path::new(env!("CARGO_BIN_EXE_containerd-shim-iochaos-v2"))
            .parent()
            .expect("bin dir")
            .to_owned();
        let path = format!(
            "{}:{}",
            shim_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let run_dir = dir.join("run");
        let env = vec![
            ("PATH".to_owned(), OsString::from(path)),
            (
                "IOCHAOS_RUN_DIR".to_owned(),
                run_dir.clone().into_os_string(),
            ),
        ];
        Containerd {
            c: iochaos_testsupport::Containerd::start_with_env(dir, env),
            run_dir,
            rootfs,
            volume,
        }
    }

    /// `ctr run` on our runtime, with the volume at /vol and the annotation if `spec` is given.
    pub fn run(&mut self, id: &str, spec: Option<&str>, flags: &[&str], cmd: &[&str]) -> Output {
        let annotation = spec.map(|s| format!("dev.iochaos.spec={s}"));
        let mut all = vec!["--runtime", RUNTIME];
        if let Some(a) = &annotation {
            all.extend(["--annotation", a.as_str()]);
        }
        all.extend_from_slice(flags);
        let (rootfs, volume) = (self.rootfs.clone(), self.volume.clone());
        self.c.run(id, &rootfs, &[(&volume, "/vol")], &all, cmd)
    }

    /// The task's status column in `ctr task ls` (None when it has no task).
    pub fn task_status(&self, id: &str) -> Option<String> {
        let out = self.ctr_ok(&["task", "ls"]);
        out.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id)).then(|| f.get(2).unwrap_or(&"").to_string())
        })
    }

    /// The journal's entries (file names without `.json`).
    pub fn journal(&self) -> Vec<String> {
        std::fs::read_dir(&self.run_dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_suffix(".json"))
                            .map(str::to_owned)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn journal_entry(&self, id: &str) -> serde_json::Value {
        let text = std::fs::read(self.run_dir.join(format!("{id}.json"))).expect("entry");
        serde_json::from_slice(&text).expect("entry json")
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
