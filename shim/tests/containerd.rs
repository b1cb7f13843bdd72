//! `ctr` on runtime `io.containerd.iochaos.v2`: runc's lifecycle unchanged (exit codes, exec,
//! pause/resume, ps, metrics, kill, delete), faults from the annotation before the workload's
//! first write, and the Chaos API through the shim's socket (status, update, recover).

mod common;

use std::path::Path;

use common::{Containerd, EIO_WRITES, SH, poll, stderr, stdout};
use iochaos_testsupport::chaosfs_mounts;

#[test]
fn ctr_lifecycle_and_faults_through_the_shim() {
    let (_dir, mut c) = Containerd::start_in_tempdir();

    // No annotation: runc's container, exit code and all.
    let out = c.run(
        "plain",
        None,
        &["--rm"],
        &[SH, "sh", "-c", "echo hi > /vol/plain; echo rc=$?; exit 3"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stdout(&out).contains("rc=0"), "{}", stdout(&out));
    assert_eq!(
        std::fs::read_to_string(c.volume.join("plain")).expect("plain"),
        "hi\n"
    );
    c.forget("plain");

    // The annotation: the workload's first write fails, reads do not; nothing left after.
    let out = c.run(
        "faulty",
        Some(EIO_WRITES),
        &["--rm"],
        &[
            SH,
            "sh",
            "-c",
            "echo x > /vol/faulty; echo rc=$?; cat /vol/plain; exit 7",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(7),
        "{:?} {}{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("rc=1\nhi\n"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("Input/output error"),
        "{}",
        stderr(&out)
    );
    c.forget("faulty");
    assert_eq!(c.journal(), Vec::<String>::new());

    // A bad annotation: the container is refused, and removed.
    let out = c.run(
        "bad",
        Some(r#"{"path":"vol","rules":[{"errno":"EIO"}]}"#),
        &["--rm"],
        &[SH, "true"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("dev.iochaos.spec"),
        "{}",
        stderr(&out)
    );
    let _ = c.ctr(&["container", "rm", "bad"]);
    c.forget("bad");
    assert_eq!(c.task_status("bad"), None);

    // A running container with faults from its start.
    let out = c.run(
        "live",
        Some(EIO_WRITES),
        &["-d"],
        &[SH, "sh", "-c", "exec /bin/busybox sleep 1000"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let exec = |id: &str, script: &str| {
        c.ctr(&[
            "task",
            "exec",
            "--exec-id",
            id,
            "live",
            SH,
            "sh",
            "-c",
            script,
        ])
    };
    let out = exec("e1", "echo y > /vol/live; echo rc=$?; exit 5");
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stdout(&out).contains("rc=1"), "{}", stdout(&out));

    let shim = engine::api::shim::client(&c.state, "default", "live")
        .expect("find")
        .expect("the shim serves the Chaos API");
    let st = shim.status().expect("status");
    assert_eq!(st.path, "/vol");
    assert_eq!(st.target.container.as_deref(), Some("live"));
    assert_eq!(st.target.namespace.as_deref(), Some("default"));
    assert!(st.rules[0].injected >= 1, "{st:?}");
    assert_eq!(c.journal(), vec![st.id.clone()]);
    let entry = c.journal_entry(&st.id);
    assert!(engine::api::shim::is_shim(st.server_pid), "{entry}");
    // The same injection on its own socket, as for `iochaos status ID`.
    let by_id = engine::api::ChaosClient::connect(&c.run_dir.join(format!("{}.sock", st.id)))
        .expect("connect")
        .status()
        .expect("status by id");
    assert_eq!(by_id.id, st.id);

    // Update: reads fail instead.
    let st = shim
        .update_rules(r#"{"path":"/vol","rules":[{"ops":["read"],"errno":"EACCES"}]}"#)
        .expect("update");
    assert_eq!(st.rules.len(), 1);
    let out = exec(
        "e2",
        "echo z > /vol/live; echo rc=$?; cat /vol/live || echo cat-failed",
    );
    assert!(
        stdout(&out).contains("rc=0") && stdout(&out).contains("cat-failed"),
        "{}",
        stdout(&out)
    );

    // runc's lifecycle: pause/resume, ps, metrics.
    c.ctr_ok(&["task", "pause", "live"]);
    assert_eq!(c.task_status("live").as_deref(), Some("PAUSED"));
    c.ctr_ok(&["task", "resume", "live"]);
    assert_eq!(c.task_status("live").as_deref(), Some("RUNNING"));
    let pids = c.ctr_ok(&["task", "ps", "live"]);
    let init: u32 = pids
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("ctr task ps: {pids}"));
    assert_eq!(chaosfs_mounts(init).len(), 1);
    c.ctr_ok(&["task", "metrics", "live"]);

    // Recover through the shim: the container runs on, without faults or mount.
    shim.recover().expect("recover");
    let out = exec("e3", "echo w > /vol/live; cat /vol/live");
    assert_eq!(stdout(&out), "w\n", "{}", stderr(&out));
    assert_eq!(chaosfs_mounts(init), Vec::<String>::new());
    poll("the journal entry to go", || {
        c.journal().is_empty().then_some(())
    });
    assert!(
        engine::api::shim::client(&c.state, "default", "live")
            .expect("find")
            .is_none()
    );

    // Kill and delete, with runc's exit status.
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", "live"]);
    poll("the task to stop", || {
        (c.task_status("live").as_deref() == Some("STOPPED")).then_some(())
    });
    let out = c.ctr(&["task", "rm", "live"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // ctr warns with the exit status runc's shim reported.
    assert!(stderr(&out).contains("exit code 137"), "{}", stderr(&out));
    c.ctr_ok(&["container", "rm", "live"]);
    c.forget("live");
    poll("the shims to exit", || c.shims().is_empty().then_some(()));
    assert!(!Path::new(&c.run_dir).join("live.sock").exists());
}
