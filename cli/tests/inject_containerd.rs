//! `iochaos inject CONTAINER` against real containerd containers: the test starts its own
//! containerd (state in a tempdir, found with `--containerd-state`) and runs busybox containers
//! with `ctr run -d --rootfs … --mount …` (privileged: root, FUSE, containerd, ctr, runc,
//! busybox-static; fails without them). One test function: the shims it starts are its
//! children (it is their subreaper), and reaping them must not race with other tests.

mod inject_common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use inject_common::{
    Env, Log, busybox_rootfs, check_data, inject_update_recover, poll, workload_script,
};

struct Containerd {
    daemon: Child,
    sock: PathBuf,
    state: PathBuf,
    containers: Vec<String>,
}

impl Containerd {
    fn start(dir: &Path) -> Containerd {
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
        poll("containerd's socket", 20, || c.sock.exists().then_some(()));
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

    /// `ctr run -d` a busybox container with /vol and /log bind-mounted; returns its init pid.
    fn run(&mut self, id: &str, dir: &Path, script: &str) -> u32 {
        let rootfs = dir.join("rootfs");
        let vol = format!(
            "type=bind,src={},dst=/vol,options=rbind:rw",
            dir.join("vol").display()
        );
        let log = format!(
            "type=bind,src={},dst=/log,options=rbind:rw",
            dir.join("log").display()
        );
        let rootfs = rootfs.display().to_string();
        let out = self.ctr(&[
            "run", "-d", "--mount", &vol, "--mount", &log, "--rootfs", &rootfs, id, "/bin/sh",
            "-c", script,
        ]);
        assert!(
            out.status.success(),
            "ctr run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.containers.push(id.to_owned());
        let pid_file = self
            .state
            .join("io.containerd.runtime.v2.task/default")
            .join(id)
            .join("init.pid");
        poll("init.pid", 20, || {
            std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
        })
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in std::mem::take(&mut self.containers) {
            let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
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
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
}

fn container_dir(env: &Env, name: &str) -> PathBuf {
    let dir = env.path().join(name);
    busybox_rootfs(&dir);
    std::fs::create_dir_all(dir.join("vol")).expect("mkdir");
    std::fs::create_dir_all(dir.join("log")).expect("mkdir");
    dir
}

#[test]
fn containerd_containers_by_name() {
    let env = Env::new();
    let mut c = Containerd::start(&env.path());
    let state = c.state.display().to_string();
    let script = workload_script("/vol", "/log/log", "usleep 20000");

    // A container found by name through containerd's task directory.
    let da = container_dir(&env, "a");
    let pa = c.run("iochaos-a", &da, &script);
    let la = Log(da.join("log/log"));
    la.wait_round(1);
    inject_update_recover(
        &env,
        &[
            "iochaos-a",
            "--namespace",
            "default",
            "--containerd-state",
            &state,
        ],
        "/vol",
        &la,
    );
    env.assert_clean(&[], Some(pa));

    // Unknown container / namespace: one line, exit 1.
    let (code, err) = env.fails(&[
        "inject",
        "nope",
        "--containerd-state",
        &state,
        "--path",
        "/vol",
        "--errno",
        "EIO",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("unknown container") && err.trim_end().lines().count() == 1,
        "{err}"
    );
    let (code, err) = env.fails(&[
        "inject",
        "iochaos-a",
        "--namespace",
        "other",
        "--containerd-state",
        &state,
        "--path",
        "/vol",
        "--errno",
        "EIO",
    ]);
    assert_eq!(code, 1, "{err}");

    // Two containers at once; recover one by container name, the other by --all.
    let db = container_dir(&env, "b");
    let pb = c.run("iochaos-b", &db, &script);
    let lb = Log(db.join("log/log"));
    lb.wait_round(1);
    let target = |id: &'static str| -> Vec<String> {
        vec![id.into(), "--containerd-state".into(), state.clone()]
    };
    for (id, l) in [("iochaos-a", &la), ("iochaos-b", &lb)] {
        let mut args: Vec<String> = vec!["inject".into()];
        args.extend(target(id));
        args.extend(["--path", "/vol", "--errno", "EIO", "--ops", "write"].map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        env.ok(&args);
        let at = l.last_round();
        l.wait_for('W', false, at);
        l.wait_for('H', false, at);
    }
    let st = env.status();
    assert_eq!(st.len(), 2);
    assert!(st.iter().any(|s| s["target"]["container"] == "iochaos-a"));
    assert!(st.iter().any(|s| s["target"]["container"] == "iochaos-b"));
    let servers: Vec<u32> = st
        .iter()
        .map(|s| s["server_pid"].as_u64().expect("pid") as u32)
        .collect();

    // SIGKILL the server of b, then recover everything.
    let sb = st
        .iter()
        .find(|s| s["target"]["container"] == "iochaos-b")
        .and_then(|s| s["server_pid"].as_u64())
        .expect("server of b") as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sb),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let at = lb.last_round();
    lb.wait_for('R', false, at);
    env.ok(&["recover", "iochaos-a"]);
    assert_eq!(env.status().len(), 1);
    env.ok(&["recover", "--all"]);
    for l in [&la, &lb] {
        let at = l.last_round();
        l.wait_for('H', true, at);
        let r = l.wait_for('W', true, at);
        l.wait_round(r + 2);
        assert!(
            l.lines().iter().filter(|x| x.round > r).all(|x| x.ok),
            "errors after recover"
        );
    }
    env.assert_clean(&servers, Some(pa));
    env.assert_clean(&[], Some(pb));
    drop(c);
    check_data(&da.join("vol"), &la);
    check_data(&db.join("vol"), &lb);
}
