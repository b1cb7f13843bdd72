//! A real containerd container: finding it through its task directory, every process in it,
//! resolving and mounting over its volume. Starts its own containerd (state in a tempdir) and
//! runs a busybox rootfs with `ctr run --rootfs` (privileged: needs root, containerd, ctr, runc
//! and busybox-static; fails without them).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{poll, require_root};
use engine::Error;
use engine::mountinfo::{MountInfo, SharedPolicy};
use engine::ns::{MountNs, MountSource, mount_over};
use engine::target::{ContainerdTask, Target};

struct Containerd {
    daemon: Child,
    sock: PathBuf,
    state: PathBuf,
    containers: Vec<String>,
}

impl Containerd {
    fn start(dir: &Path) -> Containerd {
        // The shims daemonize; as our orphans they are ours to reap (this machine's pid 1 may not
        // reap them). This test binary runs one test, so reaping any child is safe.
        nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
        let sock = dir.join("containerd.sock");
        let state = dir.join("state");
        let daemon = Command::new("containerd")
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--state")
            .arg(&state)
            .arg("--address")
            .arg(&sock)
            .args(["--config", "/dev/null"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("containerd.log")).expect("log"))
            .spawn()
            .expect("containerd must be installed (Debian package containerd)");
        let c = Containerd {
            daemon,
            sock,
            state,
            containers: Vec::new(),
        };
        poll("containerd's socket", || c.sock.exists().then_some(()));
        c
    }

    fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.sock)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("ctr must be installed")
    }

    fn run(&mut self, id: &str, rootfs: &Path, volume: &Path, cmd: &[&str]) {
        let mount = format!(
            "type=bind,src={},dst=/vol,options=rbind:rw",
            volume.display()
        );
        let rootfs = rootfs.display().to_string();
        let mut args = vec!["run", "-d", "--mount", &mount, "--rootfs", &rootfs, id];
        args.extend_from_slice(cmd);
        let out = self.ctr(&args);
        assert!(
            out.status.success(),
            "ctr run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.containers.push(id.to_owned());
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in std::mem::take(&mut self.containers) {
            let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
            // `task rm` waits for nothing: poll until the task is gone (or give up quietly).
            for _ in 0..500 {
                if self.ctr(&["task", "rm", &id]).status.success() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let _ = self.ctr(&["container", "rm", &id]);
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        // Reap the exiting shims (bounded: 5 s).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Ok(_) => {}
                Err(_) => break, // ECHILD: none left
            }
        }
    }
}

#[test]
fn container_found_through_its_task_dir_with_every_process() {
    require_root();
    let d = tempfile::tempdir().expect("tempdir");
    let dir = std::fs::canonicalize(d.path()).expect("canon");
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).expect("mkdir");
    std::fs::create_dir_all(rootfs.join("vol")).expect("mkdir");
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .expect("busybox (package busybox-static)");
    let volume = dir.join("volume");
    std::fs::create_dir(&volume).expect("mkdir");
    std::fs::write(volume.join("orig"), "original").expect("write");

    let mut c = Containerd::start(&dir);
    // init and one child: the whole container, not only init.
    c.run(
        "engine-test",
        &rootfs,
        &volume,
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "/bin/busybox sleep 1001 & exec /bin/busybox sleep 1000",
        ],
    );

    let e = ContainerdTask::find_in(&c.state, "default", "nope").expect_err("unknown");
    assert!(matches!(e, Error::UnknownContainer { .. }), "{e}");
    let e =
        ContainerdTask::find_in(&c.state, "other-ns", "engine-test").expect_err("other namespace");
    assert!(matches!(e, Error::UnknownContainer { .. }), "{e}");

    let task = ContainerdTask::find_in(&c.state, "default", "engine-test").expect("task");
    assert!(task.address.starts_with("unix://"), "{}", task.address);
    // With --rootfs, ctr puts the given directory in the spec.
    assert_eq!(
        task.config.root.as_ref().map(|r| PathBuf::from(&r.path)),
        Some(rootfs.clone())
    );
    assert!(!task.config.has_user_ns());
    let t = Target::from_container(&task).expect("target");
    assert_eq!(t.pid, task.init_pid);
    assert_eq!(
        t.container.as_ref().map(|c| c.id.as_str()),
        Some("engine-test")
    );
    assert!(!t.shares_our_mnt_ns);

    let procs = poll("both container processes", || {
        let p = t.processes().ok()?;
        (p.len() == 2).then_some(p)
    });
    assert!(procs.iter().any(|p| p.pid == task.init_pid));
    assert!(
        procs
            .iter()
            .all(|p| p.comm == "busybox" || p.comm == "sleep"),
        "{procs:?}"
    );

    // The volume, found and mounted over as the container sees it.
    let ns = MountNs::of_target(&t).expect("ns");
    let g = mount_over(
        &ns,
        Path::new("/vol/../vol/"),
        MountSource::Tmpfs,
        SharedPolicy::Refuse,
    )
    .expect("mount");
    assert_eq!(g.path(), Path::new("/vol"));
    let mi = MountInfo::read(task.init_pid).expect("mountinfo");
    assert_eq!(
        mi.top_at(Path::new("/vol")).map(|m| m.mnt_id),
        Some(g.mnt_id())
    );
    let root = PathBuf::from(format!("/proc/{}/root/vol", task.init_pid));
    assert!(!root.join("orig").exists());
    g.detach().expect("detach");
    assert_eq!(
        std::fs::read_to_string(root.join("orig")).expect("orig"),
        "original"
    );
    assert!(volume.join("orig").exists());
}
