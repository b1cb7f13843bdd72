//! `iochaos inject podman://NAME` into a real podman container (runc, its own storage in a
//! temporary directory that both podman and iochaos read through `CONTAINERS_STORAGE_CONF`):
//! faults seen by the container's workload, `status` and `recover` by the same name, data and
//! mounts as before (privileged: root, FUSE, podman, runc; fails without them).

mod inject_common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use inject_common::{EIO_ON_WRITE, Env, Log, busybox_rootfs, check_data};

/// podman's storage and configuration in a temporary directory; every container removed and
/// the storage reset on drop, also when the test fails.
struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Podman {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::write(
            root.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                root.join("storage").display(),
                root.join("run").display()
            ),
        )
        .expect("storage.conf");
        // No systemd here: cgroupfs, and no event journal.
        std::fs::write(
            root.join("containers.conf"),
            "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"none\"\n",
        )
        .expect("containers.conf");
        Podman { dir }
    }

    /// The environment that points podman (and iochaos's `podman inspect`) at this storage.
    fn env(&self) -> [(&'static str, PathBuf); 2] {
        [
            (
                "CONTAINERS_STORAGE_CONF",
                self.dir.path().join("storage.conf"),
            ),
            ("CONTAINERS_CONF", self.dir.path().join("containers.conf")),
        ]
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("podman")
            .envs(self.env())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("podman must be installed")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-af", "-t", "0"]);
        let _ = self.run(&["system", "reset", "-f"]);
    }
}

#[test]
fn podman_by_name_inject_update_recover() {
    iochaos_testsupport::require_tools(&["podman", "runc", "busybox"]);
    let env = Env::new();
    let podman = Podman::new();
    let rootfs = busybox_rootfs(&env.path());
    let vol = env.path().join("data");
    let logdir = env.path().join("logdir");
    std::fs::create_dir_all(&vol).expect("mkdir");
    std::fs::create_dir_all(&logdir).expect("mkdir");
    let script = inject_common::workload_script("/data", "/log/log", "usleep 10000");
    let name = format!("iochaos-podman-{}", std::process::id());
    podman.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--runtime",
        "runc",
        "--network",
        "none",
        // The sandbox's hard RLIMIT_NOFILE/NPROC are below podman's defaults.
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "-v",
        &format!("{}:/data", vol.display()),
        "-v",
        &format!("{}:/log", logdir.display()),
        "--rootfs",
        rootfs.to_str().expect("utf-8"),
        "/bin/sh",
        "-c",
        &script,
    ]);
    let log = Log(logdir.join("log"));
    log.wait_round(1);
    let pid: u32 = podman
        .ok(&["inspect", "--format", "{{.State.Pid}}", &name])
        .parse()
        .expect("a pid");
    let full_id = podman.ok(&["inspect", "--format", "{{.Id}}", &name]);
    let mi_before = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    let target = format!("podman://{name}");

    // iochaos asks podman with the same storage configuration.
    let with_env = |args: &[&str]| {
        let mut c = env.command(args);
        c.envs(podman.env());
        c.output().expect("iochaos")
    };
    let ok = |args: &[&str]| {
        let out = with_env(args);
        assert!(
            out.status.success(),
            "iochaos {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let mut inject = vec!["inject", target.as_str(), "--path", "/data"];
    inject.extend_from_slice(EIO_ON_WRITE);
    let id = ok(&inject);
    let st: serde_json::Value =
        serde_json::from_str(&ok(&["status", "--json", &target])).expect("status JSON");
    assert_eq!(st[0]["id"], id.as_str(), "{st}");
    assert_eq!(st[0]["target"]["namespace"], "podman");
    assert_eq!(st[0]["target"]["container"], full_id.as_str());
    assert_eq!(st[0]["target"]["pid"], pid);
    log.wait_for('W', false, log.last_round());
    assert_eq!(ok(&["recover", &target]), id);
    log.assert_recovered();
    assert!(env.status().is_empty());
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo"),
        mi_before
    );

    // Unknown name: podman's own words, one line, exit 1.
    let out = with_env(&["status", "podman://iochaos-no-such-container"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no such container"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    podman.ok(&["stop", "-t", "1", &name]);
    check_data(&vol, &log);
}
