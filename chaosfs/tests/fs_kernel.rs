//! Requests fuser 0.18 does not dispatch (FUSE_STATX, FUSE_SYNCFS, FUSE_TMPFILE) get ENOSYS and
//! the mount keeps serving; teardown never leaves a stale mount behind.

mod fs_support;

use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::time::Duration;

use chaosfs::Config;
use chaosfs::rules::RuleSet;
use fs_support::*;

#[test]
fn unknown_requests_keep_the_mount_serving() {
    let m = mount();
    fs::write(m.join("f"), b"f").expect("write");
    // std's metadata() uses statx(2): the kernel falls back to GETATTR after FUSE_STATX's ENOSYS.
    let md = fs::metadata(m.join("f")).expect("statx");
    assert_eq!(md.size(), 1);
    let created = md.created();
    assert!(
        created.is_ok() || created.is_err(),
        "birth time is optional"
    );
    // syncfs(2) sends FUSE_SYNCFS.
    let d = fs::File::open(m.path()).expect("open root");
    nix::unistd::syncfs(d.as_fd()).expect("syncfs");
    // O_TMPFILE sends FUSE_TMPFILE, which fuser 0.18 cannot dispatch: EOPNOTSUPP, as on a
    // file system without O_TMPFILE support.
    let r = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .open(m.path());
    assert_eq!(
        r.map_err(|e| e.raw_os_error()).err(),
        Some(Some(libc::EOPNOTSUPP))
    );
    // Still serving.
    fs::write(m.join("g"), b"still").expect("write after unknown requests");
    assert_eq!(fs::read(m.join("g")).expect("read"), b"still");
    assert_eq!(fs::metadata(m.join("f")).expect("stat").size(), 1);
}

fn is_mount_point(p: &std::path::Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let p = p.to_str().expect("utf8");
    info.lines().any(|l| l.split(' ').nth(4) == Some(p))
}

#[test]
fn unmount_with_open_files_leaves_no_stale_mount() {
    let m = mount_with(RuleSet::empty(), Config::default(), |d| {
        fs::write(d.join("under"), b"native").expect("prepare");
    });
    let path = m.path().to_path_buf();
    fs::write(m.join("held"), b"x").expect("write");
    let held = fs::File::open(m.join("held")).expect("open");
    assert!(is_mount_point(&path));
    let TestMount {
        mounted,
        backing_dir,
        dir,
    } = m;
    let mut mounted = mounted.expect("mounted");
    mounted.set_grace(Duration::from_millis(200));
    mounted.unmount().expect("unmount with a file still open");
    assert!(!is_mount_point(&path), "mount left behind");
    // The directory underneath is reachable again; no ENOTCONN.
    assert_eq!(
        fs::read(path.join("under")).expect("read native"),
        b"native"
    );
    assert_eq!(
        fs::read(path.join("held")).expect("file written through the mount"),
        b"x"
    );
    drop(held);
    drop(backing_dir);
    drop(dir);
}

#[test]
fn drop_on_panic_unmounts() {
    let captured = std::sync::Arc::new(std::sync::Mutex::new(None));
    let c = captured.clone();
    let r = std::panic::catch_unwind(move || {
        let m = mount();
        *c.lock().expect("lock") = Some(m.path().to_path_buf());
        panic!("test body failed");
    });
    assert!(r.is_err());
    let path = captured.lock().expect("lock").clone().expect("path");
    assert!(
        !is_mount_point(&path),
        "a panicking test left its mount behind"
    );
}

#[test]
fn server_stop_after_detach() {
    require_root_and_fuse();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = fs::canonicalize(dir.path()).expect("canon");
    let backing = nix::fcntl::open(
        &path,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY,
        nix::sys::stat::Mode::empty(),
    )
    .expect("O_PATH");
    let fuse = chaosfs::mount::open_fuse_device().expect("open /dev/fuse");
    chaosfs::mount::mount_fuse(fuse.as_fd(), &path, &chaosfs::MountOptions::default())
        .expect("mount");
    let conn = chaosfs::Connection::of_mount(&path).expect("connection");
    let server = chaosfs::Server::start(
        backing,
        fuse,
        RuleSet::empty(),
        Config {
            connection: Some(conn),
            ..Config::default()
        },
    )
    .expect("start");
    fs::write(path.join("x"), b"x").expect("write");
    assert!(conn.is_alive());
    chaosfs::mount::detach(&path).expect("detach");
    server.stop().expect("stop");
    let t = std::time::Instant::now();
    while conn.is_alive() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "connection still alive after stop"
        );
        std::thread::yield_now();
    }
    assert!(!is_mount_point(&path));
}
