//! A private containerd driven with `ctr`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::poll;

/// A containerd of the test's own. Needs root and the Debian packages containerd (with
/// containerd-shim-runc-v2, ctr) and runc; the test fails without them.
pub struct Containerd {
    daemon: Option<Child>,
    /// The directory holding everything of this containerd.
    pub dir: PathBuf,
    /// Its socket (`ctr --address`).
    pub sock: PathBuf,
    /// Its `--state` directory (task directories live below it).
    pub state: PathBuf,
    env: Vec<(String, OsString)>,
    config: PathBuf,
    containers: Vec<String>,
}

impl Containerd {
    /// Start containerd in `dir`.
    pub fn start(dir: &Path) -> Containerd {
        Containerd::start_with_env(dir, Vec::new())
    }

    /// Start containerd in `dir` with extra environment (e.g. a `PATH` that finds a shim).
    ///
    /// Makes this process a child subreaper: the shims daemonize, and as our orphans they are
    /// ours to reap (this machine's pid 1 may not). A test binary using this must run one test,
    /// so that reaping any child is safe.
    pub fn start_with_env(dir: &Path, env: Vec<(String, OsString)>) -> Containerd {
        Containerd::start_with_config(dir, Path::new("/dev/null"), env)
    }

    /// [`Containerd::start_with_env`] with the configuration file `config` (e.g. one of
    /// [`crate::cri_config`]).
    pub fn start_with_config(
        dir: &Path,
        config: &Path,
        env: Vec<(String, OsString)>,
    ) -> Containerd {
        // Any pid sets the flag (the kernel takes it as a boolean).
        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
            .expect("PR_SET_CHILD_SUBREAPER");
        let mut c = Containerd {
            daemon: None,
            dir: dir.to_owned(),
            sock: dir.join("containerd.sock"),
            state: dir.join("state"),
            env,
            config: config.to_owned(),
            containers: Vec::new(),
        };
        c.spawn();
        c
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.sock);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("containerd.log"))
            .expect("containerd log file");
        let daemon = Command::new("containerd")
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--state")
            .arg(&self.state)
            .arg("--address")
            .arg(&self.sock)
            .arg("--config")
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd must be installed (Debian package containerd)");
        self.daemon = Some(daemon);
        poll("containerd to answer", Duration::from_secs(20), || {
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

    /// containerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// Run `ctr` against this containerd.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.sock)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("ctr must be installed (Debian package containerd)")
    }

    /// `ctr` that must succeed; its stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        crate::expect_success(&self.ctr(args), &format!("ctr {args:?}"))
    }

    /// `ctr run FLAGS --mount … --rootfs ROOTFS ID CMD…`: container `id` of `rootfs`, with each
    /// `(source, destination)` of `binds` bind-mounted read-write, removed when this is
    /// dropped. ctr's output (with `-d` in `flags`, once the task started).
    pub fn run(
        &mut self,
        id: &str,
        rootfs: &Path,
        binds: &[(&Path, &str)],
        flags: &[&str],
        cmd: &[&str],
    ) -> Output {
        let mounts: Vec<String> = binds
            .iter()
            .map(|(src, dst)| format!("type=bind,src={},dst={dst},options=rbind:rw", src.display()))
            .collect();
        let rootfs = rootfs.display().to_string();
        let mut args = vec!["run"];
        args.extend_from_slice(flags);
        for m in &mounts {
            args.extend(["--mount", m.as_str()]);
        }
        args.extend(["--rootfs", &rootfs, id]);
        args.extend_from_slice(cmd);
        self.track(id);
        self.ctr(&args)
    }

    /// Remove container `id` (and its task) when this is dropped.
    pub fn track(&mut self, id: &str) {
        if !self.containers.iter().any(|c| c == id) {
            self.containers.push(id.to_owned());
        }
    }

    /// The test removed container `id` itself.
    pub fn forget(&mut self, id: &str) {
        self.containers.retain(|c| c != id);
    }

    /// The init pid of task `id` in namespace `ns`, once its shim has written it.
    pub fn init_pid(&self, ns: &str, id: &str) -> u32 {
        let file = self
            .state
            .join("io.containerd.runtime.v2.task")
            .join(ns)
            .join(id)
            .join("init.pid");
        poll("init.pid", Duration::from_secs(20), || {
            std::fs::read_to_string(&file).ok()?.trim().parse().ok()
        })
    }

    /// Processes whose command line names this containerd (its shims), as (pid, argv0 name).
    pub fn shims(&self) -> Vec<(u32, String)> {
        let needle = self.sock.display().to_string();
        let shim = |pid: u32| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<String> = cmd
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let name = Path::new(args.first()?).file_name()?.to_string_lossy();
            (name.starts_with("containerd-shim") && args.contains(&needle))
                .then(|| (pid, name.into_owned()))
        };
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|d| d.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(shim)
            .collect()
    }
}

impl Drop for Containerd {
    /// Kill and remove the tracked containers, stop containerd, kill shims a failed test left,
    /// and reap every exited child (bounded: 5 s).
    fn drop(&mut self) {
        for id in std::mem::take(&mut self.containers) {
            let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
            // `task rm` waits for nothing: poll until the task is gone (or give up quietly).
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
        for (pid, _) in self.shims() {
            let _ = crate::kill(pid, crate::Signal::KILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            use rustix::process::{WaitOptions, waitpid};
            match waitpid(None, WaitOptions::NOHANG) {
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Ok(Some(_)) => {}
                Err(_) => break, // ECHILD: none left
            }
        }
    }
}
