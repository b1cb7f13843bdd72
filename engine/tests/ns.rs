//! Namespace entry and mounting against real processes in their own mount namespaces
//! (privileged: needs root; fails without it).

mod common;

use std::fs;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use common::{Helper, poll, require_root, tmpfs_over};
use engine::Error;
use engine::mountinfo::{MountInfo, SharedPolicy};
use engine::ns::{CHAOSFS_SUBTYPE, Detached, MountNs, MountSource, detach_at, mount_over};
use engine::target::Target;
use rustix::fs::{Mode, OFlags};

/// A host directory with `vol/orig` = "original", canonical (no symlinks in its path).
fn volume() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().expect("tempdir");
    let root = fs::canonicalize(d.path()).expect("canonicalize");
    fs::create_dir(root.join("vol")).expect("mkdir vol");
    fs::write(root.join("vol/orig"), "original").expect("write orig");
    (d, root)
}

/// As root, a [`volume`]'s `vol` and a helper in a private mount namespace.
fn private_volume() -> (tempfile::TempDir, PathBuf, Helper) {
    require_root();
    let (d, root) = volume();
    (d, root.join("vol"), Helper::private_ns())
}

fn read_at(dir: impl AsFd, name: &str) -> String {
    let fd = rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .expect("openat");
    let mut s = String::new();
    fs::File::from(fd).read_to_string(&mut s).expect("read");
    s
}

fn mount_ids(pid: u32) -> Vec<u64> {
    MountInfo::read(pid)
        .expect("mountinfo")
        .mounts
        .iter()
        .map(|m| m.mnt_id)
        .collect()
}

#[test]
fn tmpfs_over_a_directory_in_a_private_namespace_and_back() {
    let (_d, vol, h) = private_volume();
    let t = Target::from_pid(h.pid()).expect("target");
    assert!(!t.shares_our_mnt_ns);
    assert!(!t.own_user_ns);
    let procs = t.processes().expect("processes");
    assert_eq!(
        procs.iter().map(|p| p.pid).collect::<Vec<_>>(),
        vec![h.pid()]
    );
    assert_eq!(procs[0].threads, vec![h.pid()]);

    let ns = MountNs::of_target(&t).expect("ns");
    let guard = tmpfs_over(&ns, &vol).expect("mount");
    assert_eq!(guard.path(), vol);
    assert_eq!(guard.fuse_connection(), None);

    // The helper sees a tmpfs on the path; we (the host) do not.
    let mi = MountInfo::read(h.pid()).expect("mountinfo");
    let m = mi
        .by_id(guard.mnt_id())
        .expect("new mount in the helper's mountinfo");
    assert_eq!(
        (m.mount_point.as_path(), m.fs_type.as_str()),
        (vol.as_path(), "tmpfs")
    );
    assert_eq!(mi.top_at(&vol).map(|m| m.mnt_id), Some(guard.mnt_id()));
    assert!(!mount_ids(std::process::id()).contains(&guard.mnt_id()));
    assert!(
        !h.view(&vol.join("orig")).exists(),
        "original file hidden by the mount"
    );
    fs::write(h.view(&vol.join("new")), "via mount").expect("write through the mount");
    assert!(!vol.join("new").exists(), "host directory untouched");

    // The backing still reaches the original files; the namespace thread sees the mount.
    assert_eq!(read_at(guard.backing(), "orig"), "original");
    let inside = ns
        .run(|| {
            fs::read_to_string(vol.join("new")).map_err(|e| Error::Io {
                path: vol.join("new"),
                source: e,
            })
        })
        .expect("read inside");
    assert_eq!(inside, "via mount");

    let id = guard.mnt_id();
    guard.detach().expect("detach");
    assert!(!mount_ids(h.pid()).contains(&id));
    assert_eq!(
        fs::read_to_string(h.view(&vol.join("orig"))).expect("orig again"),
        "original"
    );
}

#[test]
fn dropped_guard_detaches() {
    require_root();
    let (_d, root) = volume();
    let h = Helper::private_ns();
    let ns = MountNs::of_pid(h.pid()).expect("ns");
    let id = {
        let g = tmpfs_over(&ns, &root.join("vol")).expect("mount");
        assert!(mount_ids(h.pid()).contains(&g.mnt_id()));
        g.mnt_id()
    };
    assert!(!mount_ids(h.pid()).contains(&id));
}

#[test]
fn detach_from_the_journal_without_a_guard() {
    let (_d, vol, h) = private_volume();
    let ns = MountNs::of_pid(h.pid()).expect("ns");
    let a = tmpfs_over(&ns, &vol).expect("mount a");
    let a_id = a.mnt_id();
    let _backing = a.leak().expect("leak a");
    assert!(mount_ids(h.pid()).contains(&a_id), "leaked mount stays");

    // Someone stacked a mount on top: not ours to detach.
    let b = tmpfs_over(&ns, &vol).expect("mount b");
    let e = detach_at(&ns, &vol, a_id).expect_err("a is covered");
    assert!(
        matches!(e, Error::MountNotOurs { expected, found, .. } if expected == a_id && found == b.mnt_id()),
        "{e}"
    );
    b.detach().expect("detach b");

    assert_eq!(
        detach_at(&ns, &vol, a_id).expect("detach a"),
        Detached::Detached
    );
    assert!(!mount_ids(h.pid()).contains(&a_id));
    assert_eq!(
        detach_at(&ns, &vol, a_id).expect("again"),
        Detached::AlreadyGone
    );
}

#[test]
fn shared_mount_is_refused_unless_allowed() {
    require_root();
    let (_d, root) = volume();
    let shared = root.join("vol");
    let script = format!(
        "mount -t tmpfs shared {s} && mkdir {s}/sub && mount --make-shared {s} && exec sleep 1000",
        s = shared.display()
    );
    let h = Helper::spawn(
        &[&iochaos_testsupport::PRIVATE_MOUNT_NS_SH[..], &[&script]].concat(),
        "sleep",
    );
    poll("the shared mount", || {
        let mi = MountInfo::read(h.pid()).ok()?;
        mi.top_at(&shared).filter(|m| m.is_shared()).map(|_| ())
    });
    let ns = MountNs::of_pid(h.pid()).expect("ns");
    let sub = shared.join("sub");
    let e = tmpfs_over(&ns, &sub).expect_err("refused");
    assert!(matches!(e, Error::SharedMount { .. }), "{e}");
    assert!(e.to_string().contains("refusing"), "{e}");
    let g = mount_over(&ns, &sub, MountSource::Tmpfs, SharedPolicy::Allow).expect("allowed");
    assert_eq!(g.under().mount_point, shared);
    g.detach().expect("detach");
}

#[test]
fn user_namespaced_target_is_mounted_from_the_host_user_namespace() {
    require_root();
    let (_d, root) = volume();
    let vol = root.join("vol");
    let h = Helper::unshared(&["--user", "--map-root-user"]);
    let t = Target::from_pid(h.pid()).expect("target");
    assert!(t.own_user_ns, "the helper has its own user namespace");
    let ns = MountNs::of_target(&t).expect("ns");
    let g = tmpfs_over(&ns, &vol).expect("mount");
    assert!(
        MountInfo::read(h.pid())
            .expect("mi")
            .by_id(g.mnt_id())
            .is_some()
    );
    assert!(!h.view(&vol.join("orig")).exists());
    g.detach().expect("detach");
    assert!(h.view(&vol.join("orig")).exists());
}

#[test]
fn paths_resolve_against_the_container_root() {
    require_root();
    let d = tempfile::tempdir().expect("tempdir");
    let rootfs = fs::canonicalize(d.path()).expect("canon").join("rootfs");
    iochaos_testsupport::busybox_rootfs(&rootfs, &["data"], &[]);
    fs::write(rootfs.join("data/file"), "in container").expect("write");
    std::os::unix::fs::symlink("/data", rootfs.join("link")).expect("symlink");
    // The host has no /data: a symlink resolved against the host's root would fail.
    assert!(!Path::new("/data/file").exists());
    let root_arg = format!("--root={}", rootfs.display());
    let h = Helper::spawn(
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            &root_arg,
            "/bin/busybox",
            "sleep",
            "1000",
        ],
        "busybox",
    );
    let ns = MountNs::of_pid(h.pid()).expect("ns");
    let inside = ns
        .run(|| {
            fs::read_to_string("/link/file").map_err(|e| Error::Io {
                path: "/link/file".into(),
                source: e,
            })
        })
        .expect("read inside");
    assert_eq!(inside, "in container");
    let g = tmpfs_over(&ns, Path::new("/link")).expect("mount");
    assert_eq!(g.path(), Path::new("/data"));
    let mi = MountInfo::read(h.pid()).expect("mountinfo");
    assert_eq!(
        mi.by_id(g.mnt_id()).map(|m| m.mount_point.clone()),
        Some(PathBuf::from("/data"))
    );
    assert!(rootfs.join("data/file").exists(), "host copy untouched");
    assert!(!h.view(Path::new("/data/file")).exists());
    g.detach().expect("detach");
    let e = tmpfs_over(&ns, Path::new("/nope")).expect_err("missing");
    assert_eq!(
        e.to_string(),
        "path /nope in the target: No such file or directory (os error 2)"
    );
}

#[test]
fn fuse_mount_over_a_directory_then_abort_and_detach() {
    require_root();
    assert!(Path::new("/dev/fuse").exists(), "this test needs /dev/fuse");
    let (_d, root) = volume();
    let vol = root.join("vol");
    let h = Helper::private_ns();
    let ns = MountNs::of_pid(h.pid()).expect("ns");
    let dev_fuse = rustix::fs::open("/dev/fuse", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .expect("open /dev/fuse");
    let g = mount_over(
        &ns,
        &vol,
        MountSource::Fuse {
            dev_fuse: dev_fuse.as_fd(),
            subtype: CHAOSFS_SUBTYPE,
            source: "iochaos:test",
        },
        SharedPolicy::Refuse,
    )
    .expect("fuse mount");
    let mi = MountInfo::read(h.pid()).expect("mountinfo");
    let m = mi.by_id(g.mnt_id()).expect("fuse mount listed");
    assert_eq!(m.fs_type, "fuse.chaosfs");
    for opt in [
        "user_id=0",
        "group_id=0",
        "default_permissions",
        "allow_other",
    ] {
        assert!(
            m.super_options.split(',').any(|o| o == opt),
            "{opt} in {}",
            m.super_options
        );
    }
    let conn = g.fuse_connection().expect("fuse connection");
    assert_eq!(conn, m.minor);

    // No server answers: abort the connection, after which access fails fast with ENOTCONN.
    let ctl = engine::fusectl::FuseCtl::open().expect("fusectl");
    assert!(ctl.exists(conn));
    assert!(ctl.abort(conn).expect("abort"));
    let err = ns
        .run(|| Ok(fs::metadata(vol.join("orig"))))
        .expect("run")
        .expect_err("aborted");
    assert_eq!(
        rustix::io::Errno::from_io_error(&err),
        Some(rustix::io::Errno::NOTCONN)
    );

    g.detach().expect("detach");
    drop(dev_fuse);
    poll("the FUSE connection to go", || {
        (!ctl.exists(conn)).then_some(())
    });
    assert_eq!(
        fs::read_to_string(h.view(&vol.join("orig"))).expect("orig"),
        "original"
    );
}
