//! Restarts: containerd restarted under a running container keeps its faults and its shim; a
//! killed shim leaves no ChaosFS mount, FUSE connection, journal entry or runc shim behind.

mod common;

use std::path::Path;

use common::{Containerd, EIO_WRITES, SH, poll, stderr, stdout};

#[test]
fn restarts_leave_no_enotconn_behind() {
    let (_dir, mut c) = Containerd::start_in_tempdir();

    // containerd restart: it finds our shim through `address`, the faults stay live.
    let out = c.run("r1", Some(EIO_WRITES), &["-d"], &[SH, "sleep", "1000"]);
    assert!(out.status.success(), "{}", stderr(&out));
    c.restart();
    assert_eq!(c.task_status("r1").as_deref(), Some("RUNNING"));
    let out = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "r1",
        SH,
        "sh",
        "-c",
        "echo y > /vol/r1; echo rc=$?",
    ]);
    assert!(
        stdout(&out).contains("rc=1"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let st = engine::api::shim::client(&c.state, "default", "r1")
        .expect("find")
        .expect("shim")
        .status()
        .expect("status");
    assert!(st.rules[0].injected >= 1);
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", "r1"]);
    poll("r1 to stop", || {
        (c.task_status("r1").as_deref() == Some("STOPPED")).then_some(())
    });
    c.ctr_ok(&["task", "rm", "r1"]);
    c.ctr_ok(&["container", "rm", "r1"]);
    c.forget("r1");
    poll("r1's shims to exit", || c.shims().is_empty().then_some(()));
    assert!(c.journal().is_empty());

    // Our shim killed: containerd cleans up through `delete`; the FUSE connection is aborted,
    // the mount gone with the container, the runc shim gone.
    let out = c.run("r2", Some(EIO_WRITES), &["-d"], &[SH, "sleep", "1000"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = poll("the journal entry", || c.journal().pop());
    let entry = c.journal_entry(&id);
    let conn = entry["mount"]["fuse_connection"]
        .as_u64()
        .expect("fuse connection");
    let fusectl = Path::new("/sys/fs/fuse/connections").join(conn.to_string());
    assert!(fusectl.exists(), "{}", fusectl.display());
    let ours = iochaos_testsupport::json_pid(&entry["server_pid"]);
    assert!(engine::api::shim::is_shim(ours));
    iochaos_testsupport::kill(ours, iochaos_testsupport::Signal::KILL).expect("kill the shim");
    poll("the journal entry to go", || {
        c.journal().is_empty().then_some(())
    });
    poll("the FUSE connection to go", || {
        (!fusectl.exists()).then_some(())
    });
    poll("every shim to exit", || c.shims().is_empty().then_some(()));
    poll("the task to go", || {
        c.task_status("r2")
            .map_or(Some(()), |s| (s == "STOPPED").then_some(()))
    });
    let _ = c.ctr(&["task", "rm", "r2"]);
    c.ctr_ok(&["container", "rm", "r2"]);
    c.forget("r2");
    assert!(!c.log().contains("panicked"), "{}", c.log());
}
