//! Harness for the runtime tests: busybox bundles in temp dirs, runc/crun/podman commands,
//! guards that delete containers and stop leftover servers even when a test fails, and the
//! "nothing remains" check.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

use iochaos_testsupport::PRIVATE_MOUNT_NS_SH;

pub const HOOK: &str = env!("CARGO_BIN_EXE_iochaos-hook");
/// Every runtime command gets this long (seconds) before `timeout` kills it.
const TIMEOUT: &str = "120";

/// The spec most tests ask for: the first write under /data fails with ENOSPC.
pub const ENOSPC_SPEC: &str = r#"{"path":"/data","rules":[{"ops":["write"],"errno":"ENOSPC"}]}"#;
/// A workload that shows the mount it sees at /data and tries one write there.
pub const WORKLOAD: &str = "grep ' /data ' /proc/self/mountinfo; \
     echo hi > /data/f && echo WRITE-OK || echo WRITE-FAILED";

/// Root, /dev/fuse and the tool are required: fail loudly, never skip.
pub fn require(tools: &[&str]) {
    iochaos_testsupport::require_root("it drives real container runtimes");
    iochaos_testsupport::require_fuse();
    iochaos_testsupport::require_tools(tools);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Runc,
    /// crun refuses hybrid cgroup hosts ("cgroups in hybrid mode not supported"), which this
    /// machine is: every crun command runs in a private mount namespace with cgroup2 mounted
    /// on /sys/fs/cgroup, and with the cgroup manager disabled.
    Crun,
}

/// One test's world: a temp dir with the bundle, the runtime's state root, the journal
/// directory the hook uses (`IOCHAOS_RUN_DIR`), the admin config path, and the containers
/// created, deleted on drop.
pub struct Scene {
    pub dir: tempfile::TempDir,
    pub runtime: Runtime,
    containers: std::cell::RefCell<Vec<String>>,
    podman: std::cell::RefCell<Vec<String>>,
}

impl Scene {
    pub fn new(runtime: Runtime) -> Scene {
        let dir = tempfile::Builder::new()
            .prefix("iochaos-hook-test.")
            .tempdir()
            .expect("tempdir");
        iochaos_testsupport::busybox_rootfs(
            &dir.path().join("bundle/rootfs"),
            &["data", "proc", "dev", "sys", "tmp"],
            &["sh", "echo", "cat", "grep", "sleep", "ls", "ln"],
        );
        Scene {
            dir,
            runtime,
            containers: Default::default(),
            podman: Default::default(),
        }
    }

    pub fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle")
    }
    pub fn rootfs(&self) -> PathBuf {
        self.bundle().join("rootfs")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("hook.toml")
    }
    pub fn server_log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }
    fn state_root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The environment the hook is registered with (runtimes give hooks no other).
    pub fn hook_env(&self) -> Vec<String> {
        vec![
            format!("IOCHAOS_RUN_DIR={}", self.run_dir().display()),
            format!("IOCHAOS_HOOK_CONFIG={}", self.config_path().display()),
            format!("IOCHAOS_SERVER_LOG={}", self.server_log().display()),
            "IOCHAOS_LOG=info".into(),
        ]
    }

    /// Write config.json: `sh -c script`, the hook on createRuntime and poststop (plus the
    /// stages in `extra_stages`), and the annotation if given.
    pub fn write_config(&self, script: &str, annotation: Option<&str>, extra_stages: &[&str]) {
        let hook = |stage: &str| json!([{ "path": HOOK, "args": ["iochaos-hook", stage], "env": self.hook_env() }]);
        let mut hooks = serde_json::Map::new();
        for s in ["createRuntime", "poststop"].iter().chain(extra_stages) {
            hooks.insert((*s).to_owned(), hook(s));
        }
        let mut annotations = serde_json::Map::new();
        annotations.insert("test.iochaos/other".into(), json!("x"));
        if let Some(a) = annotation {
            annotations.insert("dev.iochaos.spec".into(), json!(a));
        }
        let config = json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": { "uid": 0, "gid": 0 },
                "args": ["sh", "-c", script],
                "env": ["PATH=/bin"],
                "cwd": "/",
                "capabilities": {
                    "bounding": ["CAP_KILL"], "effective": ["CAP_KILL"],
                    "permitted": ["CAP_KILL"]
                },
                "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }],
                "noNewPrivileges": true
            },
            "root": { "path": "rootfs", "readonly": false },
            "hostname": "hooktest",
            "mounts": [
                { "destination": "/proc", "type": "proc", "source": "proc" },
                { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                  "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
                { "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                  "options": ["nosuid", "nodev"] }
            ],
            "hooks": Value::Object(hooks),
            "annotations": Value::Object(annotations),
            "linux": {
                "namespaces": [
                    { "type": "pid" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" }
                ],
                "maskedPaths": ["/proc/kcore"],
                "readonlyPaths": ["/proc/sys"]
            }
        });
        std::fs::write(
            self.bundle().join("config.json"),
            serde_json::to_vec_pretty(&config).expect("json"),
        )
        .expect("config.json");
    }

    /// Change the config.json written by [`Scene::write_config`].
    pub fn edit_config(&self, edit: impl FnOnce(&mut Value)) {
        let path = self.bundle().join("config.json");
        let mut c: Value =
            serde_json::from_slice(&std::fs::read(&path).expect("config.json")).expect("json");
        edit(&mut c);
        std::fs::write(&path, serde_json::to_vec_pretty(&c).expect("json")).expect("config.json");
    }

    /// The runtime command, with its state root.
    pub fn runtime(&self) -> Command {
        let root = self.state_root();
        let mut c = Command::new("timeout");
        match self.runtime {
            Runtime::Runc => {
                c.args([TIMEOUT, "runc", "--root"]).arg(root);
            }
            Runtime::Crun => {
                c.arg(TIMEOUT)
                    .args(PRIVATE_MOUNT_NS_SH)
                    .arg(
                        "mount -t cgroup2 none /sys/fs/cgroup && \
                         exec crun --cgroup-manager=disabled --root \"$0\" \"$@\"",
                    )
                    .arg(root);
            }
        }
        c.stdin(Stdio::null());
        c
    }

    /// `run --bundle B ID`: create, start, wait, delete (poststop runs). Output of the runtime
    /// and the container.
    pub fn run(&self, id: &str) -> Output {
        self.containers.borrow_mut().push(id.to_owned());
        let out = self
            .runtime()
            .args(["run", "--bundle"])
            .arg(self.bundle())
            .arg(id)
            .output()
            .expect("running the runtime");
        show(&out);
        out
    }

    /// `create`: the hook injects. The container keeps the runtime's stdio, so both go to
    /// files (a pipe would stay open until the container exits): the container's output to
    /// `out`, stderr to `out.err`. Returns the exit status and the stderr so far.
    pub fn create(&self, id: &str, out: &Path) -> (std::process::ExitStatus, String) {
        self.containers.borrow_mut().push(id.to_owned());
        let f = std::fs::File::create(out).expect("output file");
        let err_path = out.with_extension("err");
        let e = std::fs::File::create(&err_path).expect("stderr file");
        let status = self
            .runtime()
            .args(["create", "--bundle"])
            .arg(self.bundle())
            .arg(id)
            .stdout(f)
            .stderr(e)
            .status()
            .expect("running the runtime");
        let err = std::fs::read_to_string(&err_path).unwrap_or_default();
        eprintln!("create {id}: {status}\n{err}");
        (status, err)
    }

    /// A container id unique to this scene (runc names cgroups after the id).
    pub fn id(&self, name: &str) -> String {
        let rt = match self.runtime {
            Runtime::Runc => "runc",
            Runtime::Crun => "crun",
        };
        let tag: String = self
            .dir
            .path()
            .extension()
            .map(|e| e.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        format!("hook-{rt}-{name}-{tag}")
    }

    /// The runtime's output for `args` (e.g. `["start", ID]`).
    pub fn runtime_call(&self, args: &[&str]) -> Output {
        self.runtime()
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("runtime {args:?}: {e}"))
    }

    pub fn start(&self, id: &str) {
        let out = self.runtime_call(&["start", id]);
        show(&out);
        assert!(out.status.success(), "start {id} failed");
    }

    /// The runtime's state of `id`, or None when it does not exist.
    pub fn state(&self, id: &str) -> Option<Value> {
        let out = self.runtime_call(&["state", id]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("state json"))
    }

    /// `delete ID` (poststop runs).
    pub fn delete(&self, id: &str) -> Output {
        let out = self.runtime_call(&["delete", id]);
        show(&out);
        out
    }

    /// `podman run --rm` with the hooks dir and `annotation`, on this scene's rootfs.
    pub fn podman_run(&self, name: &str, annotation: Option<&str>, script: &str) -> Output {
        self.podman.borrow_mut().push(name.to_owned());
        let hooks_dir = self.dir.path().join("hooks.d");
        std::fs::create_dir_all(&hooks_dir).expect("hooks.d");
        for stage in ["createRuntime", "poststop"] {
            let hook = json!({
                "version": "1.0.0",
                "hook": { "path": HOOK, "args": ["iochaos-hook", stage], "env": self.hook_env() },
                "when": { "annotations": { "^dev\\.iochaos\\.spec$": ".*" } },
                "stages": [stage]
            });
            std::fs::write(
                hooks_dir.join(format!("iochaos-{stage}.json")),
                serde_json::to_vec_pretty(&hook).expect("json"),
            )
            .expect("hook json");
        }
        let mut c = self.podman();
        c.args(["run", "--rm", "--name", name, "--network", "none"]);
        match self.runtime {
            Runtime::Runc => c.args(["--runtime", "runc"]),
            Runtime::Crun => c.args(["--runtime", "crun", "--cgroups", "disabled"]),
        }
        // The sandbox's hard RLIMIT_NOFILE/NPROC are below podman's defaults.
        .args([
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ])
        .arg("--hooks-dir")
        .arg(&hooks_dir);
        if let Some(a) = annotation {
            // podman splits --annotation values as CSV: quote the field, double the quotes.
            c.arg("--annotation")
                .arg(format!("\"dev.iochaos.spec={}\"", a.replace('"', "\"\"")));
        }
        c.arg("--rootfs")
            .arg(self.rootfs())
            .args(["sh", "-c", script]);
        let out = c.output().expect("running podman");
        show(&out);
        out
    }

    /// podman with this scene's storage. For crun, in a private mount namespace with cgroup2
    /// on /sys/fs/cgroup (see [`Runtime::Crun`]).
    fn podman(&self) -> Command {
        let mut c = Command::new("timeout");
        c.arg(TIMEOUT);
        if self.runtime == Runtime::Crun {
            c.args(PRIVATE_MOUNT_NS_SH)
                .args(["mount -t cgroup2 none /sys/fs/cgroup && exec \"$@\"", "sh"]);
        }
        c.args(["podman", "--root"])
            .arg(self.dir.path().join("storage"))
            .arg("--runroot")
            .arg(self.dir.path().join("podman-run"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "none"])
            .stdin(Stdio::null());
        c
    }

    /// Entries of the journal directory (journal entries, sockets), if it exists.
    pub fn run_dir_entries(&self) -> Vec<String> {
        match std::fs::read_dir(self.run_dir()) {
            Ok(d) => d
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Injection servers started for this scene (their request names its run dir).
    pub fn servers(&self) -> Vec<u32> {
        let needle = self.run_dir().display().to_string();
        let mut pids = Vec::new();
        for d in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Some(pid) = d.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd);
            if cmd.contains("__serve") && cmd.contains(&needle) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Nothing of an injection remains: no journal entry or socket, no server, and the FUSE
    /// connection `conn` (if known) is gone.
    pub fn assert_clean(&self, conn: Option<u32>) {
        assert_eq!(
            self.run_dir_entries(),
            Vec::<String>::new(),
            "left in {}",
            self.run_dir().display()
        );
        let servers = self.servers();
        assert!(
            servers.is_empty(),
            "injection servers left: {servers:?}\n--- where their threads wait ---\n{}\n--- server log ---\n{}",
            servers
                .iter()
                .map(|p| thread_stacks(*p))
                .collect::<String>(),
            std::fs::read_to_string(self.server_log()).unwrap_or_default()
        );
        if let Some(n) = conn
            && fusectl_mounted()
        {
            // The kernel lets the connection go once the last file and mount reference is
            // dropped, which can come a moment after the container's processes are reaped.
            let p = PathBuf::from(format!("/sys/fs/fuse/connections/{n}"));
            iochaos_testsupport::wait_until(
                &format!("FUSE connection {n} to be gone"),
                std::time::Duration::from_secs(10),
                || !p.exists(),
            );
        }
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        for id in self.containers.borrow().iter() {
            let _ = self
                .runtime()
                .args(["delete", "--force", id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        for name in self.podman.borrow().iter() {
            let _ = self
                .podman()
                .args(["rm", "--force", "--ignore", name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        for pid in self.servers() {
            // Ours (the request names our run dir): SIGTERM makes a server recover and exit.
            // In Drop: kill does not panic.
            let _ = iochaos_testsupport::kill(pid, iochaos_testsupport::Signal::TERM);
            engine::target::wait_exit(pid, std::time::Duration::from_secs(10));
        }
    }
}

pub fn show(out: &Output) {
    eprintln!(
        "status {}\n--- stdout\n{}--- stderr\n{}---",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The FUSE connection of the ChaosFS mount in a mountinfo line the workload printed
/// (`ID PARENT MAJ:MIN ...`): `/sys/fs/fuse/connections/N`, N = the device number.
pub fn chaosfs_connection(output: &str) -> Option<u32> {
    let line = output.lines().find(|l| l.contains("fuse.chaosfs"))?;
    let dev = line.split_whitespace().nth(2)?;
    let (maj, min) = dev.split_once(':')?;
    Some((maj.parse::<u32>().ok()? << 20) | min.parse::<u32>().ok()?)
}

pub use iochaos_testsupport::fusectl_mounted;

/// Each thread of `pid` with its name and kernel stack (root can read them): where a process
/// that should have exited is stuck.
fn thread_stacks(pid: u32) -> String {
    let mut out = String::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("{pid}: gone\n");
    };
    for t in tasks.flatten() {
        let p = t.path();
        let name = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        let stack = std::fs::read_to_string(p.join("stack")).unwrap_or_default();
        out.push_str(&format!(
            "{pid}/{} {}{}\n",
            t.file_name().to_string_lossy(),
            name,
            stack
        ));
    }
    out
}
