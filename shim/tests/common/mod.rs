//! A private containerd (state, root, socket and journal in a tempdir) with
//! `containerd-shim-iochaos-v2` on its PATH, and busybox containers run with `ctr`. Privileged:
//! needs root, containerd (with containerd-shim-runc-v2), ctr, runc and busybox-static; fails
//! without them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const RUNTIME: &str = "io.containerd.iochaos.v2";

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test runs containerd and mounts: run it as root"
    );
}

/// Poll `f` until it returns Some, failing after 20 s.
pub fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub struct Containerd {
    daemon: Option<Child>,
    pub dir: PathBuf,
    pub sock: PathBuf,
    pub state: PathBuf,
    pub run_dir: PathBuf,
    pub rootfs: PathBuf,
    pub volume: PathBuf,
    containers: Vec<String>,
}

impl Containerd {
    /// containerd in `dir`, a busybox rootfs and a volume directory to bind at /vol.
    pub fn start(dir: &Path) -> Containerd {
        // Shims daemonize; as our orphans they are ours to reap (this machine's pid 1 may not
        // reap them). Each test binary runs one test, so reaping any child is safe.
        nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
        let rootfs = dir.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).expect("mkdir");
        std::fs::create_dir_all(rootfs.join("vol")).expect("mkdir");
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
            .expect("busybox (package busybox-static)");
        let volume = dir.join("volume");
        std::fs::create_dir_all(&volume).expect("mkdir");
        let mut c = Containerd {
            daemon: None,
            dir: dir.to_owned(),
            sock: dir.join("containerd.sock"),
            state: dir.join("state"),
            run_dir: dir.join("run"),
            rootfs,
            volume,
            containers: Vec::new(),
        };
        c.spawn();
        c
    }

    fn spawn(&mut self) {
        let shim_dir = Path::new(env!("CARGO_BIN_EXE_containerd-shim-iochaos-v2"))
            .parent()
            .expect("bin dir")
            .to_owned();
        let path = format!(
            "{}:{}",
            shim_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let _ = std::fs::remove_file(&self.sock);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("containerd.log"))
            .expect("log");
        let daemon = Command::new("containerd")
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--state")
            .arg(&self.state)
            .arg("--address")
            .arg(&self.sock)
            .args(["--config", "/dev/null"])
            .env("PATH", path)
            .env("IOCHAOS_RUN_DIR", &self.run_dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd must be installed (Debian package containerd)");
        self.daemon = Some(daemon);
        poll("containerd to answer", || {
            self.ctr(&["version"]).status.success().then_some(())
        });
    }

    /// Kill containerd (SIGKILL: no cleanup of its own) and start it again on the same state.
    pub fn restart(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.sock)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("ctr must be installed")
    }

    /// `ctr` that must succeed; its stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ctr run` on our runtime, with the volume at /vol and the annotation if `spec` is given.
    pub fn run(&mut self, id: &str, spec: Option<&str>, flags: &[&str], cmd: &[&str]) -> Output {
        let mount = format!(
            "type=bind,src={},dst=/vol,options=rbind:rw",
            self.volume.display()
        );
        let annotation = spec.map(|s| format!("dev.iochaos.spec={s}"));
        let mut args = vec!["run", "--runtime", RUNTIME, "--mount", &mount];
        if let Some(a) = &annotation {
            args.extend(["--annotation", a.as_str()]);
        }
        args.extend_from_slice(flags);
        let rootfs = self.rootfs.display().to_string();
        args.extend(["--rootfs", &rootfs, id]);
        args.extend_from_slice(cmd);
        self.containers.push(id.to_owned());
        self.ctr(&args)
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

    /// Processes whose command line names our containerd (its shims), as (pid, argv0).
    pub fn shims(&self) -> Vec<(u32, String)> {
        let needle = self.sock.display().to_string();
        let mut out = Vec::new();
        for d in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Some(pid) = d.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmd
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let name = Path::new(&args[0])
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.starts_with("containerd-shim") && args.contains(&needle) {
                out.push((pid, name));
            }
        }
        out
    }

    pub fn forget(&mut self, id: &str) {
        self.containers.retain(|c| c != id);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in std::mem::take(&mut self.containers) {
            let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
            for _ in 0..500 {
                let out = self.ctr(&["task", "rm", &id]);
                if out.status.success()
                    || String::from_utf8_lossy(&out.stderr).contains("not found")
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.ctr(&["container", "rm", &id]);
        }
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        // Shims of a failed test: runc's (its container dies with it) and ours.
        for (pid, _) in self.shims() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(5)),
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Mount points of type fuse.chaosfs in pid's mount namespace.
pub fn chaosfs_mounts(pid: u32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" - fuse.chaosfs "))
        .map(str::to_owned)
        .collect()
}
