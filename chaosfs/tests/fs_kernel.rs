//! Requests beyond the everyday ones: O_TMPFILE (FUSE_TMPFILE), statx with birth time
//! (FUSE_STATX), syncfs (which never reaches the server on a /dev/fuse mount), and a request
//! the server does not implement (answered ENOSYS, the mount keeps serving); teardown never
//! leaves a stale mount behind.

mod fs_support;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::time::Duration;

use chaosfs::Config;
use chaosfs::rules::RuleSet;
use fs_support::*;

fn tmpfile_in(dir: &std::path::Path, extra: i32) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o640)
        .custom_flags(libc::O_TMPFILE | extra)
        .open(dir)
}

#[test]
fn o_tmpfile_works_and_can_be_linked() {
    let m = mount();
    fs::create_dir(m.join("d")).expect("mkdir");
    let mut f = tmpfile_in(&m.join("d"), 0).expect("O_TMPFILE through ChaosFS");
    f.write_all(b"unnamed data").expect("write");
    let md = f.metadata().expect("fstat");
    assert_eq!((md.nlink(), md.size()), (0, 12));
    assert_eq!(md.mode() & 0o7777, 0o640);
    // Nothing named appeared in the backing directory.
    assert_eq!(fs::read_dir(m.backing("d")).expect("ls").count(), 0);
    f.seek(SeekFrom::Start(0)).expect("seek");
    let mut back = String::new();
    f.read_to_string(&mut back).expect("read back");
    assert_eq!(back, "unnamed data");
    // Give it a name the way programs do: linkat through /proc/self/fd.
    let proc_path = format!("/proc/self/fd/{}", f.as_raw_fd());
    nix::unistd::linkat(
        nix::fcntl::AT_FDCWD,
        proc_path.as_str(),
        nix::fcntl::AT_FDCWD,
        &m.join("d/named"),
        nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
    )
    .expect("link the tmpfile");
    assert_eq!(
        fs::read(m.backing("d/named")).expect("backing"),
        b"unnamed data"
    );
    assert_eq!(f.metadata().expect("fstat").nlink(), 1);
    // O_EXCL makes it unlinkable, as on the backing file system.
    let g = tmpfile_in(&m.join("d"), libc::O_EXCL).expect("O_TMPFILE|O_EXCL");
    let r = nix::unistd::linkat(
        nix::fcntl::AT_FDCWD,
        format!("/proc/self/fd/{}", g.as_raw_fd()).as_str(),
        nix::fcntl::AT_FDCWD,
        &m.join("d/never"),
        nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
    );
    assert_eq!(r, Err(nix::errno::Errno::ENOENT));
    // Without write access O_TMPFILE fails as natively (EISDIR-free: EINVAL needs O_WRONLY/RDWR).
    let r = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_TMPFILE)
        .open(m.join("d"));
    assert_eq!(
        r.map_err(|e| e.raw_os_error()).err(),
        Some(Some(libc::EINVAL))
    );
}

#[test]
fn o_tmpfile_meets_create_rules() {
    // O_TMPFILE creates a file: a rule on "create" applies to it like to open(O_CREAT).
    let m = mount_with(
        rules(r#"{"rules":[{"ops":["create"],"errno":"EDQUOT"}]}"#),
        Config::default(),
        |d| fs::create_dir(d.join("d")).expect("mkdir"),
    );
    let r = tmpfile_in(&m.join("d"), 0);
    assert_eq!(
        r.map_err(|e| e.raw_os_error()).err(),
        Some(Some(libc::EDQUOT))
    );
    assert_eq!(fs::read_dir(m.backing("d")).expect("ls").count(), 0);
    assert_eq!(m.server().stats()[0].injected, 1);
}

#[test]
fn statx_birth_time_is_served() {
    let m = mount();
    fs::write(m.join("f"), b"f").expect("write");
    // std's metadata() uses statx(2) asking for the birth time, which sends FUSE_STATX.
    let md = fs::metadata(m.join("f")).expect("statx");
    let native = fs::metadata(m.backing("f")).expect("native statx");
    assert_eq!(md.size(), 1);
    assert_eq!(md.ino(), native.ino());
    match native.created() {
        Ok(t) => assert_eq!(md.created().expect("birth time through ChaosFS"), t),
        Err(_) => assert!(md.created().is_err()),
    }
}

/// syncfs(2) on ChaosFS returns 0 without asking the server: the kernel sends FUSE_SYNCFS only
/// when the connection has `sync_fs` set, which mainline Linux does for virtiofs alone (an
/// unprivileged /dev/fuse server could otherwise hang `sync`). So it does not sync the backing
/// file system, and a rule that FUSE_SYNCFS would meet (ChaosFS evaluates it as an fsync of
/// the root) never sees it — while the same rule fails an fsync(2) of a file.
#[test]
fn syncfs_returns_0_without_reaching_the_server() {
    let m = mount_with(
        rules(r#"{"rules":[{"ops":["fsync"],"errno":"EIO"}]}"#),
        Config::default(),
        |d| fs::write(d.join("f"), b"f").expect("prepare"),
    );
    let root = fs::File::open(m.path()).expect("open root");
    nix::unistd::syncfs(root.as_fd()).expect("syncfs returns 0 under an fsync rule");
    let f = fs::File::open(m.join("f")).expect("open f");
    nix::unistd::syncfs(f.as_fd()).expect("syncfs of a file's fd returns 0 too");
    assert_eq!(
        m.server().stats()[0].matched,
        0,
        "a request reached the server for syncfs"
    );
    // fsync(2) does reach it, and meets the rule.
    let r = f.sync_all();
    assert_eq!(r.map_err(|e| e.raw_os_error()), Err(Some(libc::EIO)));
    assert_eq!(m.server().stats()[0].matched, 1);
}

#[test]
fn unknown_requests_keep_the_mount_serving() {
    // A rule touching "f" makes its opens direct I/O; poll(2) on it sends FUSE_POLL, which the
    // server does not implement: ENOSYS, after which the kernel reports the default mask.
    let m = mount_with(
        rules(r#"{"rules":[{"ops":["read"],"glob":"f","percent":0,"errno":"EIO"}]}"#),
        Config::default(),
        |_| {},
    );
    fs::write(m.join("f"), b"f").expect("write");
    let f = fs::File::open(m.join("f")).expect("open");
    let mut p = [libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: `p` is one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(p.as_mut_ptr(), 1, 1000) };
    assert_eq!(n, 1);
    assert!(p[0].revents & libc::POLLIN != 0);
    // Still serving.
    fs::write(m.join("g"), b"still").expect("write after an unknown request");
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
    iochaos_testsupport::wait_until(
        "the connection to go after stop",
        Duration::from_secs(10),
        || !conn.is_alive(),
    );
    assert!(!is_mount_point(&path));
}
