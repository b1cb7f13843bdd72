//! ChaosFS without rules behaves like the directory it covers: the same results, errnos, inode
//! numbers and ownership as the same operations done natively.

mod fs_support;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirEntryExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use fs_support::*;
use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};

fn errno_of<T>(r: std::io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

/// A fixed script of operations; returns a log of results to compare between native and mount.
fn script(root: &Path) -> Vec<String> {
    let mut log = Vec::new();
    let p = |rel: &str| root.join(rel);
    log.push(format!("mkdir d: {:?}", errno_of(fs::create_dir(p("d")))));
    log.push(format!(
        "mkdir d again: {:?}",
        errno_of(fs::create_dir(p("d")))
    ));
    log.push(format!(
        "write d/f: {:?}",
        errno_of(fs::write(p("d/f"), b"0123456789"))
    ));
    log.push(format!("read d/f: {:?}", fs::read(p("d/f")).ok()));
    log.push(format!(
        "open missing: {:?}",
        errno_of(fs::File::open(p("nope")))
    ));
    log.push(format!(
        "rmdir nonempty: {:?}",
        errno_of(fs::remove_dir(p("d")))
    ));
    log.push(format!(
        "unlink dir: {:?}",
        errno_of(fs::remove_file(p("d")))
    ));
    log.push(format!(
        "rename: {:?}",
        errno_of(fs::rename(p("d/f"), p("g")))
    ));
    log.push(format!("read g: {:?}", fs::read(p("g")).ok()));
    log.push(format!("mkdir e: {:?}", errno_of(fs::create_dir(p("e")))));
    fs::write(p("e/x"), b"x").ok();
    log.push(format!(
        "rename dir over nonempty: {:?}",
        errno_of(fs::rename(p("d"), p("e")))
    ));
    log.push(format!(
        "rename file over dir: {:?}",
        errno_of(fs::rename(p("g"), p("e")))
    ));
    log.push(format!(
        "symlink: {:?}",
        errno_of(std::os::unix::fs::symlink("g", p("s")))
    ));
    log.push(format!("readlink: {:?}", fs::read_link(p("s")).ok()));
    log.push(format!("read via symlink: {:?}", fs::read(p("s")).ok()));
    log.push(format!(
        "hard link: {:?}",
        errno_of(fs::hard_link(p("g"), p("h")))
    ));
    log.push(format!(
        "nlink: {:?}",
        fs::metadata(p("g")).map(|m| m.nlink()).ok()
    ));
    log.push(format!(
        "truncate: {:?}",
        errno_of(
            fs::OpenOptions::new()
                .write(true)
                .open(p("g"))
                .and_then(|f| f.set_len(3))
        )
    ));
    log.push(format!("read h: {:?}", fs::read(p("h")).ok()));
    log.push(format!(
        "chmod: {:?}",
        errno_of(fs::set_permissions(
            p("h"),
            fs::Permissions::from_mode(0o640)
        ))
    ));
    log.push(format!(
        "mode: {:o}",
        fs::metadata(p("g")).map(|m| m.mode()).unwrap_or(0)
    ));
    log.push(format!("unlink h: {:?}", errno_of(fs::remove_file(p("h")))));
    log.push(format!(
        "nlink after: {:?}",
        fs::metadata(p("g")).map(|m| m.nlink()).ok()
    ));
    log.push(format!(
        "mkfifo: {:?}",
        nix::unistd::mkfifo(&p("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644)).err()
    ));
    log.push(format!(
        "fifo type: {:?}",
        fs::symlink_metadata(p("fifo"))
            .map(|m| m.file_type().is_fifo_like())
            .ok()
    ));
    log.push(format!("seek+read: {:?}", {
        let mut f = fs::File::open(p("g")).expect("open g");
        f.seek(SeekFrom::Start(1)).ok();
        let mut s = String::new();
        f.read_to_string(&mut s).map(|_| s).ok()
    }));
    log.push(format!(
        "rmdir e/: {:?}",
        errno_of(fs::remove_dir_all(p("e")))
    ));
    log.push(format!("rmdir d: {:?}", errno_of(fs::remove_dir(p("d")))));
    let mut names: Vec<(String, bool)> = fs::read_dir(root)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        e.file_type().map(|t| t.is_dir()).unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    log.push(format!("listing: {names:?}"));
    log
}

trait FifoLike {
    fn is_fifo_like(&self) -> bool;
}
impl FifoLike for fs::FileType {
    fn is_fifo_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_fifo()
    }
}

#[test]
fn fs_ops_match_native() {
    let native = tempfile::tempdir().expect("tempdir");
    let expected = script(native.path());
    let m = mount();
    let got = script(m.path());
    assert_eq!(got, expected);
    m.unmount();
}

#[test]
fn st_ino_matches_backing() {
    let m = mount_with(
        chaosfs::rules::RuleSet::empty(),
        chaosfs::Config::default(),
        |d| {
            fs::write(d.join("pre"), b"x").expect("prepare");
        },
    );
    fs::write(m.join("post"), b"y").expect("write");
    fs::create_dir(m.join("dir")).expect("mkdir");
    for name in ["pre", "post", "dir"] {
        let through = fs::symlink_metadata(m.join(name)).expect("stat through");
        let under = fs::symlink_metadata(m.backing(name)).expect("stat backing");
        assert_eq!(through.ino(), under.ino(), "{name}: st_ino");
        assert_eq!(through.size(), under.size(), "{name}: size");
        assert_eq!(through.mtime_nsec(), under.mtime_nsec(), "{name}: mtime");
    }
    let root_through = fs::metadata(m.path()).expect("stat root");
    let root_under = fs::metadata(m.backing("")).expect("stat backing root");
    assert_eq!(root_through.ino(), root_under.ino(), "root st_ino");
    // readdir's d_ino agrees with stat.
    for e in fs::read_dir(m.path()).expect("readdir") {
        let e = e.expect("entry");
        assert_eq!(e.ino(), fs::symlink_metadata(e.path()).expect("stat").ino());
    }
}

#[test]
fn unlink_and_rename_while_open() {
    let m = mount();
    fs::create_dir(m.join("dir")).expect("mkdir");
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(m.join("dir/file"))
        .expect("create");
    f.write_all(b"still here").expect("write");
    fs::rename(m.join("dir"), m.join("moved")).expect("rename dir");
    assert_eq!(f.metadata().expect("fstat after rename").len(), 10);
    fs::remove_file(m.join("moved/file")).expect("unlink");
    let md = f.metadata().expect("fstat after unlink");
    assert_eq!(md.nlink(), 0);
    assert_eq!(md.len(), 10);
    f.seek(SeekFrom::Start(0)).expect("seek");
    let mut s = String::new();
    f.read_to_string(&mut s).expect("read after unlink");
    assert_eq!(s, "still here");
    f.write_all(b"!").expect("write after unlink");
    // No hidden leftovers: the directory is empty and can be removed while the file is open.
    fs::remove_dir(m.join("moved")).expect("rmdir with unlinked open file");
    drop(f);
}

#[test]
fn rename_noreplace_and_exchange() {
    let m = mount();
    fs::write(m.join("a"), b"A").expect("a");
    fs::write(m.join("b"), b"B").expect("b");
    let r = renameat2(
        AT_FDCWD,
        &m.join("a"),
        AT_FDCWD,
        &m.join("b"),
        RenameFlags::RENAME_NOREPLACE,
    );
    assert_eq!(r, Err(nix::errno::Errno::EEXIST));
    renameat2(
        AT_FDCWD,
        &m.join("a"),
        AT_FDCWD,
        &m.join("b"),
        RenameFlags::RENAME_EXCHANGE,
    )
    .expect("exchange");
    assert_eq!(fs::read(m.join("a")).expect("read a"), b"B");
    assert_eq!(fs::read(m.join("b")).expect("read b"), b"A");
    renameat2(
        AT_FDCWD,
        &m.join("a"),
        AT_FDCWD,
        &m.join("c"),
        RenameFlags::RENAME_NOREPLACE,
    )
    .expect("noreplace to new");
    assert_eq!(fs::read(m.backing("c")).expect("backing c"), b"B");
    let r = renameat2(
        AT_FDCWD,
        &m.join("a"),
        AT_FDCWD,
        &m.join("b"),
        RenameFlags::RENAME_EXCHANGE,
    );
    assert_eq!(r, Err(nix::errno::Errno::ENOENT));
}

#[repr(C, align(4096))]
struct Page([u8; 8192]);

#[test]
fn o_direct_and_o_append() {
    let m = mount();
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.join("direct"))
        .expect("open O_DIRECT");
    let mut page = Box::new(Page([7u8; 8192]));
    f.write_all(&page.0).expect("O_DIRECT write");
    f.seek(SeekFrom::Start(4096)).expect("seek");
    page.0 = [0u8; 8192];
    let n = f.read(&mut page.0[..4096]).expect("O_DIRECT read");
    assert_eq!(n, 4096);
    assert!(page.0[..4096].iter().all(|&b| b == 7));
    drop(f);
    assert_eq!(fs::read(m.backing("direct")).expect("backing").len(), 8192);

    fs::write(m.join("log"), b"one\n").expect("write");
    let mut a = fs::OpenOptions::new()
        .append(true)
        .open(m.join("log"))
        .expect("append 1");
    let mut b = fs::OpenOptions::new()
        .append(true)
        .open(m.join("log"))
        .expect("append 2");
    a.write_all(b"two\n").expect("a");
    b.write_all(b"three\n").expect("b");
    a.write_all(b"four\n").expect("a2");
    assert_eq!(
        fs::read_to_string(m.backing("log")).expect("backing"),
        "one\ntwo\nthree\nfour\n"
    );
}

#[test]
fn shared_mmap_write_lands_in_backing_file() {
    let m = mount();
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(m.join("map"))
        .expect("create");
    f.set_len(4096).expect("set_len");
    let mut page = SharedPage::map(&f);
    page.bytes()[..5].copy_from_slice(b"mmap!");
    page.sync();
    drop(page);
    let data = fs::read(m.backing("map")).expect("read backing");
    assert_eq!(&data[..5], b"mmap!");
}

#[test]
fn created_files_belong_to_the_caller() {
    let native = tempfile::tempdir().expect("tempdir");
    let m = mount();
    let setup = |root: &Path| {
        fs::set_permissions(root, fs::Permissions::from_mode(0o1777)).expect("chmod root");
        fs::create_dir(root.join("sgid")).expect("mkdir sgid");
        std::os::unix::fs::chown(root.join("sgid"), Some(0), Some(4321)).expect("chown sgid");
        fs::set_permissions(root.join("sgid"), fs::Permissions::from_mode(0o2777))
            .expect("chmod sgid");
    };
    setup(native.path());
    setup(m.path());
    let script = "umask 022 && touch f && mkdir d && ln -s f l && mkfifo p && touch sgid/f && mkdir sgid/d \
                  && (umask 077; touch masked) && ln f hard";
    let run = |root: &Path| {
        let st = run_as(1000, 1000, &format!("cd '{}' && {script}", root.display()));
        assert!(st.success(), "script failed in {}", root.display());
    };
    run(native.path());
    run(m.path());
    for name in ["f", "d", "l", "p", "sgid/f", "sgid/d", "masked", "hard"] {
        let want = fs::symlink_metadata(native.path().join(name)).expect("native stat");
        let through = fs::symlink_metadata(m.join(name)).expect("stat through");
        let under = fs::symlink_metadata(m.backing(name)).expect("stat backing");
        for got in [&through, &under] {
            assert_eq!(
                (got.uid(), got.gid()),
                (want.uid(), want.gid()),
                "{name}: owner"
            );
            assert_eq!(
                got.mode(),
                want.mode(),
                "{name}: mode {:o} vs {:o}",
                got.mode(),
                want.mode()
            );
        }
    }
}

#[test]
fn default_acl_overrides_umask() {
    let native = tempfile::tempdir().expect("tempdir");
    let m = mount();
    for root in [native.path(), m.path()] {
        fs::create_dir(root.join("acl")).expect("mkdir");
        let st = std::process::Command::new("setfacl")
            .args(["-d", "-m", "u::rwx,g::rwx,o::rwx"])
            .arg(root.join("acl"))
            .status()
            .expect("setfacl");
        assert!(st.success(), "setfacl in {}", root.display());
        let st = run_as(
            0,
            0,
            &format!(
                "cd '{}/acl' && umask 077 && touch f && mkdir d",
                root.display()
            ),
        );
        assert!(st.success());
    }
    for name in ["acl/f", "acl/d"] {
        let want = fs::metadata(native.path().join(name))
            .expect("native")
            .mode();
        let got = fs::metadata(m.join(name)).expect("through").mode();
        assert_eq!(got, want, "{name}: {got:o} vs {want:o}");
    }
}

#[test]
fn xattrs_pass_through() {
    let m = mount();
    fs::write(m.join("x"), b"x").expect("write");
    let run = |args: &[&str]| {
        std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .expect("run")
    };
    let p = m.join("x");
    let p = p.to_str().expect("utf8");
    assert!(
        run(&["setfattr", "-n", "user.color", "-v", "blue", p])
            .status
            .success()
    );
    let out = run(&["getfattr", "--only-values", "-n", "user.color", p]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "blue");
    let under = run(&[
        "getfattr",
        "--only-values",
        "-n",
        "user.color",
        m.backing("x").to_str().expect("utf8"),
    ]);
    assert_eq!(String::from_utf8_lossy(&under.stdout), "blue");
    let list = run(&["getfattr", "-d", p]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("user.color"));
    assert!(run(&["setfattr", "-x", "user.color", p]).status.success());
    let missing = run(&["getfattr", "-n", "user.color", p]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("No such attribute"),
        "{missing:?}"
    );
}

#[test]
fn fallocate_punch_hole_and_seek_hole() {
    use nix::fcntl::{FallocateFlags, fallocate};
    use nix::unistd::{Whence, lseek};
    let m = mount();
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(m.join("sparse"))
        .expect("create");
    fallocate(f.as_fd(), FallocateFlags::empty(), 0, 1 << 20).expect("fallocate");
    (&f).write_all(&[1u8; 1 << 20]).expect("fill");
    fallocate(
        f.as_fd(),
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        0,
        512 << 10,
    )
    .expect("punch hole");
    assert_eq!(
        lseek(f.as_fd(), 0, Whence::SeekData).expect("SEEK_DATA"),
        512 << 10
    );
    assert_eq!(lseek(f.as_fd(), 0, Whence::SeekHole).expect("SEEK_HOLE"), 0);
    assert_eq!(f.metadata().expect("fstat").len(), 1 << 20);
    let r = fallocate(f.as_fd(), FallocateFlags::FALLOC_FL_PUNCH_HOLE, 0, 4096);
    assert_eq!(
        r,
        Err(nix::errno::Errno::EOPNOTSUPP),
        "punch without keep-size: native errno"
    );
}

#[test]
fn chattr_flags_ioctl() {
    let m = mount();
    fs::write(m.join("attr"), b"x").expect("write");
    let p = m.join("attr");
    let st = std::process::Command::new("chattr")
        .arg("+d")
        .arg(&p)
        .status()
        .expect("chattr");
    assert!(st.success(), "chattr +d through the mount");
    let lsattr = |p: &Path| {
        let out = std::process::Command::new("lsattr")
            .arg("-d")
            .arg(p)
            .output()
            .expect("lsattr");
        assert!(out.status.success(), "lsattr {}: {out:?}", p.display());
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_owned()
    };
    let through = lsattr(&p);
    let under = lsattr(&m.backing("attr"));
    assert_eq!(through, under);
    assert!(through.contains('d'), "{through}");
    let out = std::process::Command::new("lsattr")
        .arg("-v")
        .arg(&p)
        .output()
        .expect("lsattr -v");
    assert!(out.status.success(), "FS_IOC_GETVERSION: {out:?}");
}

#[test]
fn copy_file_range_and_fsync() {
    let m = mount();
    fs::write(m.join("src"), vec![5u8; 100_000]).expect("src");
    let mut src = fs::File::open(m.join("src")).expect("open src");
    let mut dst = fs::File::create(m.join("dst")).expect("create dst");
    // std::io::copy uses copy_file_range(2) between regular files on Linux.
    let n = usize::try_from(std::io::copy(&mut src, &mut dst).expect("copy_file_range"))
        .expect("100 kB fit a usize");
    assert_eq!(n, 100_000);
    dst.sync_all().expect("fsync");
    dst.sync_data().expect("fdatasync");
    let d = fs::File::open(m.path()).expect("open dir");
    d.sync_all().expect("fsyncdir");
    assert_eq!(fs::read(m.backing("dst")).expect("dst").len(), n);
}

#[test]
fn deep_paths_beyond_path_max() {
    let m = mount();
    let name = "d".repeat(200);
    let mut dir = fs::File::open(m.path()).expect("open root");
    for _ in 0..30 {
        nix::sys::stat::mkdirat(
            dir.as_fd(),
            name.as_str(),
            nix::sys::stat::Mode::from_bits_truncate(0o755),
        )
        .expect("mkdirat");
        let fd = nix::fcntl::openat(
            dir.as_fd(),
            name.as_str(),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )
        .expect("openat");
        dir = fs::File::from(fd);
    }
    let fd = nix::fcntl::openat(
        dir.as_fd(),
        "leaf",
        nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_WRONLY,
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .expect("create leaf 6000 bytes deep");
    let mut leaf = fs::File::from(fd);
    leaf.write_all(b"deep").expect("write leaf");
    let st = nix::sys::stat::fstatat(dir.as_fd(), "leaf", nix::fcntl::AtFlags::empty())
        .expect("stat leaf");
    assert_eq!(st.st_size, 4);
}

#[test]
fn large_directory_listing() {
    let m = mount();
    let mut want = Vec::new();
    for i in 0..3000 {
        let n = format!("file-{i:05}-{}", "x".repeat(i % 50));
        fs::write(m.join(&n), b"").expect("create");
        want.push(n);
    }
    want.sort();
    for _ in 0..2 {
        let mut got: Vec<String> = fs::read_dir(m.path())
            .expect("readdir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        got.sort();
        assert_eq!(got, want);
    }
    let ls = std::process::Command::new("ls")
        .arg("-la")
        .arg(m.path())
        .output()
        .expect("ls");
    assert!(ls.status.success());
    assert_eq!(
        String::from_utf8_lossy(&ls.stdout).lines().count(),
        3000 + 3
    );
}

#[test]
fn utimens_now_and_omit() {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    let m = mount();
    fs::write(m.join("t"), b"t").expect("write");
    let p = m.join("t");
    utimensat(
        AT_FDCWD,
        &p,
        &TimeSpec::new(1000, 5),
        &TimeSpec::new(2000, 7),
        UtimensatFlags::NoFollowSymlink,
    )
    .expect("set both");
    let md = fs::metadata(&p).expect("stat");
    assert_eq!(
        (md.atime(), md.atime_nsec(), md.mtime(), md.mtime_nsec()),
        (1000, 5, 2000, 7)
    );
    utimensat(
        AT_FDCWD,
        &p,
        &TimeSpec::UTIME_OMIT,
        &TimeSpec::new(3000, 0),
        UtimensatFlags::NoFollowSymlink,
    )
    .expect("omit atime");
    let md = fs::metadata(&p).expect("stat");
    assert_eq!((md.atime(), md.mtime()), (1000, 3000));
    utimensat(
        AT_FDCWD,
        &p,
        &TimeSpec::UTIME_NOW,
        &TimeSpec::UTIME_OMIT,
        UtimensatFlags::NoFollowSymlink,
    )
    .expect("now atime");
    let md = fs::metadata(&p).expect("stat");
    assert!(md.atime() > 1_600_000_000);
    assert_eq!(md.mtime(), 3000);
    let under = fs::metadata(m.backing("t")).expect("backing");
    assert_eq!((under.atime(), under.mtime()), (md.atime(), md.mtime()));
    // A non-owner with write access may only set "now".
    fs::set_permissions(&p, fs::Permissions::from_mode(0o666)).expect("chmod");
    let path = p.display();
    assert!(
        run_as(1000, 1000, &format!("touch '{path}'")).success(),
        "touch as non-owner"
    );
    assert!(
        !run_as(1000, 1000, &format!("touch -d @5 '{path}'")).success(),
        "explicit time as non-owner"
    );
}

#[test]
fn link_count_and_ctime_are_fresh() {
    let m = mount();
    fs::write(m.join("n"), b"n").expect("write");
    let before = fs::metadata(m.join("n")).expect("stat");
    fs::hard_link(m.join("n"), m.join("n2")).expect("link");
    for (name, want) in [("n", 2), ("n2", 2)] {
        let through = fs::metadata(m.join(name)).expect("stat");
        let under = fs::metadata(m.backing(name)).expect("backing");
        assert_eq!(through.nlink(), want, "{name} after link");
        assert_eq!(
            (through.ctime(), through.ctime_nsec()),
            (under.ctime(), under.ctime_nsec()),
            "{name} ctime after link"
        );
    }
    assert!(
        fs::metadata(m.join("n")).expect("stat").ctime_nsec() != before.ctime_nsec()
            || fs::metadata(m.join("n")).expect("stat").ctime() != before.ctime()
    );
    fs::write(m.join("victim"), b"v").expect("victim");
    fs::rename(m.join("n2"), m.join("victim")).expect("rename over");
    fs::remove_file(m.join("victim")).expect("unlink");
    let through = fs::metadata(m.join("n")).expect("stat");
    let under = fs::metadata(m.backing("n")).expect("backing");
    assert_eq!(through.nlink(), 1);
    assert_eq!(
        (through.ctime(), through.ctime_nsec()),
        (under.ctime(), under.ctime_nsec()),
        "ctime after unlink"
    );
}
