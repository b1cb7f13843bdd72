//! `iochaos inject` into real runc containers (`runc run -d` of a busybox bundle built here,
//! with bind-mounted volumes): a whole container, a plain directory of a read-only rootfs, a
//! killed server, two containers at once, 1,000 open files in 16 threads (privileged: root,
//! FUSE, runc, busybox-static; fails without them).

mod inject_common;

use std::path::{Path, PathBuf};

use iochaos_testsupport::Runc;

use inject_common::{
    EIO_ON_WRITE, Env, HOLDER_ARGS, HOLDER_ENV, Log, busybox_rootfs, check_data, fd_state,
    inject_update_recover, test_exe, workload_script,
};

/// Not a test: the holder process of `runc_thousand_files_in_16_threads` (ignored, so that a
/// plain `cargo test` does not count it as a passing test).
#[test]
#[ignore = "not a test: the holder process runc_thousand_files_in_16_threads runs"]
fn holder_process() {
    inject_common::holder_main();
}

/// A test's [`Env`] and runc with its state in there.
fn env_and_runc() -> (Env, Runc) {
    let env = Env::new();
    let runc = env.runc();
    (env, runc)
}

struct Dirs {
    bundle: PathBuf,
    vol: PathBuf,
    log: PathBuf,
}

fn dirs(env: &Env, name: &str) -> Dirs {
    let bundle = env.path().join(name);
    busybox_rootfs(&bundle);
    let vol = bundle.join("vol");
    let log = bundle.join("log");
    std::fs::create_dir_all(vol.join("b")).expect("mkdir");
    std::fs::create_dir_all(&log).expect("mkdir");
    Dirs { bundle, vol, log }
}

/// Two workload processes in the container: both write through new opens and a held fd.
fn two_workloads() -> String {
    format!(
        "{} & {}",
        workload_script("/vol/b", "/log/b", "usleep 20000"),
        workload_script("/vol", "/log/log", "usleep 20000")
    )
}

/// Container `id` running [`two_workloads`]: its directories, init pid and the log of its
/// workload on /vol.
fn start(env: &Env, runc: &mut Runc, id: &str) -> (Dirs, u32, Log) {
    let d = dirs(env, id);
    let script = two_workloads();
    let pid = runc.run(
        id,
        &d.bundle,
        &["/bin/sh", "-c", &script],
        true,
        &[(&d.vol, "/vol", false), (&d.log, "/log", false)],
        &[],
        |_| {},
    );
    let log = Log(d.log.join("log"));
    log.wait_round(1);
    Log(d.log.join("b")).wait_round(1);
    (d, pid, log)
}

fn mountinfo(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo")
}

/// The mappings of `pid`, without the heap and stack (they move by themselves).
fn maps(pid: u32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .expect("maps")
        .lines()
        .filter(|l| !l.ends_with("[heap]") && !l.ends_with("[stack]"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn runc_volume_inject_update_recover() {
    let (env, mut runc) = env_and_runc();
    let (d, pid, log) = start(&env, &mut runc, "vol1");
    let other = Log(d.log.join("b"));
    let mi_before = mountinfo(pid);
    let fd3_before = fd_state(pid, 3);
    let maps_before = maps(pid);
    // The second workload process (not init) is injected too.
    let other_at = other.last_round();
    let id = inject_update_recover(&env, &["--pid", &pid.to_string()], "/vol", &log);
    assert_eq!(id.len(), 12);
    let lines = other.lines();
    assert!(
        lines
            .iter()
            .any(|l| l.round > other_at && l.kind == 'H' && !l.ok),
        "the container's other process did not see the faults"
    );
    let at = other.last_round();
    other.wait_for('H', true, at);
    // As before: the same mounts and the held fd back on the original mount.
    assert_eq!(mountinfo(pid), mi_before);
    assert_eq!(fd_state(pid, 3), fd3_before);
    // No stub memory or other mapping left behind.
    assert_eq!(maps(pid), maps_before);
    runc.delete("vol1");
    check_data(&d.vol, &log);
    check_data(&d.vol.join("b"), &other);
}

/// A container with its own user namespace (its root is host uid 100000): inject from the
/// initial user namespace, the workload (a mapped uid) sees the faults, files it creates through
/// ChaosFS belong to its host ids, and recover leaves its mounts and fds as they were.
#[test]
fn runc_user_namespace_inject_update_recover() {
    let (env, mut runc) = env_and_runc();
    let d = dirs(&env, "userns");
    // The mapped root must reach and own its bundle and volumes.
    let mut p = d.bundle.clone();
    while p.starts_with(env.path()) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        if !p.pop() {
            break;
        }
    }
    let status = std::process::Command::new("chown")
        .args(["-R", "100000:100000"])
        .arg(&d.bundle)
        .status()
        .expect("chown");
    assert!(status.success());
    let script = workload_script("/vol", "/log/log", "usleep 20000");
    let pid = runc.run(
        "userns",
        &d.bundle,
        &["/bin/sh", "-c", &script],
        false,
        &[(&d.vol, "/vol", false), (&d.log, "/log", false)],
        &[],
        iochaos_testsupport::add_user_namespace,
    );
    let log = Log(d.log.join("log"));
    log.wait_round(1);
    // Really in its own user namespace, as the mapped uid.
    let own = std::fs::read_link(format!("/proc/{pid}/ns/user")).expect("userns");
    let host = std::fs::read_link("/proc/self/ns/user").expect("own userns");
    assert_ne!(own, host, "the container has no user namespace of its own");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert!(
        status.lines().any(|l| l.starts_with("Uid:\t100000")),
        "{status}"
    );
    let mi_before = mountinfo(pid);
    let fd3_before = fd_state(pid, 3);
    inject_update_recover(&env, &["--pid", &pid.to_string()], "/vol", &log);
    assert_eq!(mountinfo(pid), mi_before);
    assert_eq!(fd_state(pid, 3), fd3_before);
    runc.delete("userns");
    check_data(&d.vol, &log);
    // Everything the workload created (through ChaosFS or not) has its host ids.
    use std::os::unix::fs::MetadataExt;
    for e in std::fs::read_dir(&d.vol).expect("ls vol").flatten() {
        let md = e.metadata().expect("stat");
        assert_eq!((md.uid(), md.gid()), (100000, 100000), "{:?}", e.path());
    }
}

#[test]
fn runc_plain_directory_of_a_read_only_rootfs() {
    let (env, mut runc) = env_and_runc();
    let d = dirs(&env, "ro1");
    let data = d.bundle.join("rootfs/data");
    std::fs::write(data.join("f"), "hello\n").expect("write");
    let script = "i=0; while :; do i=$((i+1)); \
                  if cat /data/f > /dev/null; then echo R $i ok; else echo R $i err; fi; \
                  usleep 20000; done >> /log/log 2>/dev/null";
    let pid = runc.run(
        "ro1",
        &d.bundle,
        &["/bin/sh", "-c", script],
        true,
        &[(&d.log, "/log", false)],
        &[],
        |_| {},
    );
    let log = Log(d.log.join("log"));
    log.wait_round(2);
    let mi_before = mountinfo(pid);
    assert!(
        mi_before
            .lines()
            .any(|l| l.split(' ').nth(4) == Some("/") && l.contains(" ro,")),
        "the rootfs is not read-only:\n{mi_before}"
    );
    assert!(
        !mi_before
            .lines()
            .any(|l| l.split(' ').nth(4) == Some("/data"))
    );
    let id = env.inject(
        &["--pid", &pid.to_string()],
        "/data",
        &["--errno", "EIO", "--ops", "read"],
    );
    let at = log.last_round();
    let r = log.wait_for('R', false, at);
    // Nothing was created or moved in the container: the rootfs directory is untouched.
    assert_eq!(std::fs::read_dir(&data).expect("ls").count(), 1);
    env.ok(&["recover", &id]);
    log.wait_for('R', true, r);
    env.assert_clean(&[], Some(pid));
    assert_eq!(mountinfo(pid), mi_before);
}

#[test]
fn runc_server_sigkill_then_recover() {
    let (env, mut runc) = env_and_runc();
    let (d, pid, log) = start(&env, &mut runc, "kill1");
    let id = env.inject(&["--pid", &pid.to_string()], "/vol", &["--latency", "50ms"]);
    let st = env.status();
    let server = iochaos_testsupport::json_pid(&st[0]["server_pid"]);
    iochaos_testsupport::kill(server, iochaos_testsupport::Signal::KILL).expect("kill");
    let at = log.last_round();
    log.wait_for('R', false, at);
    env.ok(&["recover", &id]);
    log.assert_recovered();
    env.assert_clean(&[server], Some(pid));
    runc.delete("kill1");
    check_data(&d.vol, &log);
}

#[test]
fn runc_two_containers_at_once() {
    let (env, mut runc) = env_and_runc();
    let (da, pa, la) = start(&env, &mut runc, "two-a");
    let (db, pb, lb) = start(&env, &mut runc, "two-b");
    let ia = env.inject(&["--pid", &pa.to_string()], "/vol", EIO_ON_WRITE);
    let ib = env.inject(&["--pid", &pb.to_string()], "/vol", EIO_ON_WRITE);
    assert_ne!(ia, ib);
    for l in [&la, &lb] {
        let at = l.last_round();
        l.wait_for('W', false, at);
        l.wait_for('H', false, at);
    }
    assert_eq!(env.status().len(), 2);
    let servers: Vec<u32> = env
        .status()
        .iter()
        .map(|s| iochaos_testsupport::json_pid(&s["server_pid"]))
        .collect();
    env.ok(&["recover", "--all"]);
    for l in [&la, &lb] {
        let at = l.last_round();
        l.wait_for('W', true, at);
        l.wait_for('H', true, at);
    }
    env.assert_clean(&servers, Some(pa));
    env.assert_clean(&[], Some(pb));
    runc.delete("two-a");
    runc.delete("two-b");
    check_data(&da.vol, &la);
    check_data(&db.vol, &lb);
}

#[test]
fn runc_thousand_files_in_16_threads() {
    let (env, mut runc) = env_and_runc();
    let d = dirs(&env, "holder");
    let hold = d.bundle.join("hold");
    std::fs::create_dir_all(hold.join("vol")).expect("mkdir");
    let exe = test_exe();
    let holder_bin = d.bundle.join("rootfs/holder");
    std::fs::write(&holder_bin, b"").expect("mount point");
    let mut args = vec!["/holder"];
    args.extend(HOLDER_ARGS);
    let pid = runc.run(
        "holder",
        &d.bundle,
        &args,
        true,
        &[
            (&hold, "/hold", false),
            (Path::new("/usr"), "/usr", true),
            (&exe, "/holder", true),
        ],
        &[format!("{HOLDER_ENV}=/hold")],
        |_| {},
    );
    inject_common::thousand_files(&env, pid, &hold, "/hold/vol", Some(pid));
}
