//! `iochaos inject CONTAINER` against real containerd containers: the test starts its own
//! containerd (state in a tempdir, found with `--containerd-state`) and runs busybox containers
//! with `ctr run -d --rootfs … --mount …` (privileged: root, FUSE, containerd, ctr, runc,
//! busybox-static; fails without them). One test function: the shims it starts are its
//! children (it is their subreaper), and reaping them must not race with other tests.

mod inject_common;

use std::path::{Path, PathBuf};

use iochaos_testsupport::{Containerd, expect_success};

use inject_common::{
    EIO_ON_WRITE, Env, Log, busybox_rootfs, check_data, inject_update_recover, workload_script,
};

/// `ctr run -d` a busybox container of `dir/rootfs` with `dir/vol` at /vol and `dir/log` at
/// /log; returns its init pid.
fn run(c: &mut Containerd, id: &str, dir: &Path, script: &str) -> u32 {
    let (vol, log) = (dir.join("vol"), dir.join("log"));
    let out = c.run(
        id,
        &dir.join("rootfs"),
        &[(&vol, "/vol"), (&log, "/log")],
        &["-d"],
        &["/bin/sh", "-c", script],
    );
    expect_success(&out, "ctr run");
    c.init_pid("default", id)
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
    let pa = run(&mut c, "iochaos-a", &da, &script);
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
    let eio = &["--errno", "EIO"];
    let (code, err) = env.inject_fails(&["nope", "--containerd-state", &state], "/vol", eio);
    assert_eq!(code, 1);
    assert!(
        err.contains("unknown container") && err.trim_end().lines().count() == 1,
        "{err}"
    );
    let (code, err) = env.inject_fails(
        &[
            "iochaos-a",
            "--namespace",
            "other",
            "--containerd-state",
            &state,
        ],
        "/vol",
        eio,
    );
    assert_eq!(code, 1, "{err}");

    // Two containers at once; recover one by container name, the other by --all.
    let db = container_dir(&env, "b");
    let pb = run(&mut c, "iochaos-b", &db, &script);
    let lb = Log(db.join("log/log"));
    lb.wait_round(1);
    for (id, l) in [("iochaos-a", &la), ("iochaos-b", &lb)] {
        env.inject(&[id, "--containerd-state", &state], "/vol", EIO_ON_WRITE);
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
        .map(|s| iochaos_testsupport::json_pid(&s["server_pid"]))
        .collect();

    // SIGKILL the server of b, then recover everything.
    let sb = st
        .iter()
        .find(|s| s["target"]["container"] == "iochaos-b")
        .map(|s| iochaos_testsupport::json_pid(&s["server_pid"]))
        .expect("server of b");
    iochaos_testsupport::kill(sb, iochaos_testsupport::Signal::KILL).expect("kill");
    let at = lb.last_round();
    lb.wait_for('R', false, at);
    env.ok(&["recover", "iochaos-a"]);
    assert_eq!(env.status().len(), 1);
    env.ok(&["recover", "--all"]);
    for l in [&la, &lb] {
        l.assert_recovered();
    }
    env.assert_clean(&servers, Some(pa));
    env.assert_clean(&[], Some(pb));
    drop(c);
    check_data(&da.join("vol"), &la);
    check_data(&db.join("vol"), &lb);
}
