//! `iochaos inject docker://NAME` into real Docker containers (dockerd on
//! /var/run/docker.sock, as `.ci/run` starts it; a busybox image made here with `docker import`,
//! no registry): faults seen inside the container, `status` and `recover` by the same name, data
//! and mounts as before, and Docker's own words for unknown and stopped containers
//! (privileged: root, FUSE, dockerd; fails without them).

mod inject_common;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use inject_common::{EIO_ON_WRITE, Env, Log, busybox_rootfs, check_data, inject_update_recover};

/// The image every test runs: the busybox rootfs of [`busybox_rootfs`], imported once.
const IMAGE: &str = "iochaos-test-busybox:latest";

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("docker must be installed (docker.io; .ci/run installs it)")
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Import the test image unless dockerd has it (once per test binary: the tests run in
/// parallel).
fn image(env: &Env) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| import(env));
}

fn import(env: &Env) {
    if docker(&["image", "inspect", IMAGE]).status.success() {
        return;
    }
    let rootfs = busybox_rootfs(&env.path().join("image"));
    iochaos_testsupport::docker_import(&rootfs, &[], IMAGE);
}

/// A container removed (`docker rm -f`) when dropped, also when the test fails.
struct Container {
    name: String,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.name]);
    }
}

/// A unique container name for this test.
fn name(test: &str) -> String {
    format!("iochaos-{test}-{}", std::process::id())
}

/// Container `name` running the workload on /data (a volume at `vol`), logging to `log/log`:
/// a write every 10 ms through a new open and a held fd.
fn run(env: &Env, name: &str) -> (Container, PathBuf, Log) {
    image(env);
    let vol = env.path().join(format!("{name}-data"));
    let logdir = env.path().join(format!("{name}-log"));
    std::fs::create_dir_all(&vol).expect("mkdir");
    std::fs::create_dir_all(&logdir).expect("mkdir");
    let script = inject_common::workload_script("/data", "/log/log", "usleep 10000");
    let c = Container {
        name: name.to_owned(),
    };
    docker_ok(&[
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "none",
        "-v",
        &format!("{}:/data", vol.display()),
        "-v",
        &format!("{}:/log", logdir.display()),
        IMAGE,
        "/bin/sh",
        "-c",
        &script,
    ]);
    let log = Log(logdir.join("log"));
    log.wait_round(1);
    (c, vol, log)
}

fn init_pid(name: &str) -> u32 {
    docker_ok(&["inspect", "--format", "{{.State.Pid}}", name])
        .parse()
        .expect("a pid")
}

fn mountinfo(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo")
}

/// A write inside the container, through `docker exec`: its exit status.
fn exec_write(name: &str, file: &str) -> bool {
    docker(&["exec", name, "/bin/sh", "-c", &format!("echo x >> {file}")])
        .status
        .success()
}

#[test]
fn docker_by_name_inject_update_recover() {
    let env = Env::new();
    let n = name("byname");
    let (c, vol, log) = run(&env, &n);
    let pid = init_pid(&c.name);
    let mi_before = mountinfo(pid);
    let target = format!("docker://{n}");
    // Inject, update and recover by id (as every end-to-end test does), faults seen by the
    // container's own workload.
    inject_update_recover(&env, &[&target], "/data", &log);
    assert_eq!(mountinfo(pid), mi_before);

    // Again, by the container's short id this time; then status and recover by name.
    let id = docker_ok(&["inspect", "--format", "{{.Id}}", &n]);
    let short = format!("docker://{}", &id[..12]);
    let inj = env.inject(&[&short], "/data", EIO_ON_WRITE);
    assert!(
        !exec_write(&n, "/data/exec"),
        "a write through docker exec succeeded"
    );
    let st: serde_json::Value =
        serde_json::from_str(&env.ok(&["status", "--json", &target])).expect("status JSON");
    let st = st.as_array().expect("an array");
    assert_eq!(st.len(), 1, "{st:?}");
    assert_eq!(st[0]["id"], inj.as_str());
    assert_eq!(st[0]["target"]["container"], id.as_str());
    assert_eq!(st[0]["target"]["namespace"], "docker");
    let out = env.ok(&["recover", &target]);
    assert_eq!(out, inj);
    log.assert_recovered();
    assert!(exec_write(&n, "/data/exec"), "a write failed after recover");
    assert_eq!(mountinfo(pid), mi_before);
    assert!(env.status().is_empty());

    // `docker stop` while injected: the server sees the container's init exit, recovers and
    // removes its journal entry.
    env.inject(&[&target], "/data", EIO_ON_WRITE);
    let server = iochaos_testsupport::json_pid(&env.status()[0]["server_pid"]);
    docker_ok(&["stop", "-t", "1", &n]);
    inject_common::poll("the journal entry to go", 10, || {
        env.status().is_empty().then_some(())
    });
    env.assert_clean(&[server], None);
    check_data(&vol, &log);
}

#[test]
fn docker_unknown_ambiguous_stopped_and_invalid_containers() {
    let env = Env::new();
    image(&env);
    // Unknown: Docker's words, one line, exit 1, nothing changed.
    let (code, err) = env.inject_fails(
        &["docker://iochaos-no-such-container"],
        "/data",
        EIO_ON_WRITE,
    );
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("No such container"), "{err}");
    // Not running: a created, never started container.
    let n = name("stopped");
    let _c = Container { name: n.clone() };
    docker_ok(&["create", "--name", &n, IMAGE, "/bin/true"]);
    let (code, err) = env.inject_fails(&[&format!("docker://{n}")], "/data", EIO_ON_WRITE);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is not running"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // Status of a known container with no injection: one line, exit 1.
    let (code, err) = env.fails(&["status", &format!("docker://{n}")]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no injection"), "{err}");
    // Ambiguous: a one-digit id prefix two containers share (at most 17 containers for two
    // to share one of the 16 digits).
    let mut created: Vec<(Container, String)> = Vec::new();
    let prefix = loop {
        let n = name(&format!("amb{}", created.len()));
        let c = Container { name: n.clone() };
        let id = docker_ok(&["create", "--name", &n, IMAGE, "/bin/true"]);
        let first = id[..1].to_owned();
        if created.iter().any(|(_, p)| *p == first) {
            created.push((c, first.clone()));
            break first;
        }
        created.push((c, first));
    };
    let (code, err) = env.inject_fails(&[&format!("docker://{prefix}")], "/data", EIO_ON_WRITE);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("Multiple IDs found"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    drop(created);
    // A name Docker would never accept is refused before any request.
    let (code, err) = env.inject_fails(&["docker://../x"], "/data", EIO_ON_WRITE);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("invalid container"), "{err}");
    assert!(
        env.run_dir_entries().is_empty(),
        "{:?}",
        env.run_dir_entries()
    );
}
