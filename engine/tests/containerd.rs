//! A real containerd container: finding it through its task directory, every process in it,
//! resolving and mounting over its volume. Starts its own containerd (state in a tempdir) and
//! runs a busybox rootfs with `ctr run --rootfs` (privileged: needs root, containerd, ctr, runc
//! and busybox-static; fails without them).

mod common;

use std::path::{Path, PathBuf};

use common::{poll, require_root, tmpfs_over};
use engine::Error;
use engine::mountinfo::MountInfo;
use engine::ns::MountNs;
use engine::target::{ContainerdTask, Target};
use iochaos_testsupport::{Containerd, busybox_rootfs, expect_success};

#[test]
fn container_found_through_its_task_dir_with_every_process() {
    require_root();
    let d = tempfile::tempdir().expect("tempdir");
    let dir = std::fs::canonicalize(d.path()).expect("canon");
    let rootfs = dir.join("rootfs");
    busybox_rootfs(&rootfs, &["vol"], &[]);
    let volume = dir.join("volume");
    std::fs::create_dir(&volume).expect("mkdir");
    std::fs::write(volume.join("orig"), "original").expect("write");

    let mut c = Containerd::start(&dir);
    // init and one child: the whole container, not only init.
    let out = c.run(
        "engine-test",
        &rootfs,
        &[(&volume, "/vol")],
        &["-d"],
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "/bin/busybox sleep 1001 & exec /bin/busybox sleep 1000",
        ],
    );
    expect_success(&out, "ctr run");

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
    let g = tmpfs_over(&ns, Path::new("/vol/../vol/")).expect("mount");
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
