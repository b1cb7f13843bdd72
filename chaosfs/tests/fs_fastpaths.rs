//! The shortcuts taken for speed keep the rules' view exact: name globs see a file's current
//! name after a rename through the mount (no path is rebuilt per request), and a rule on
//! `flush` still meets every close of the files it selects (others skip FLUSH).

mod fs_support;

use std::fs;
use std::io::Write;

use chaosfs::Config;
use fs_support::*;

#[test]
fn name_glob_follows_rename_of_a_known_inode() {
    let m = mount_with(
        rules(r#"{"rules":[{"ops":["getattr","open"],"glob":"*.db","errno":"EIO"}]}"#),
        Config::default(),
        |d| fs::write(d.join("a.txt"), b"x").expect("prepare"),
    );
    // The kernel learns the inode under its first name.
    assert!(fs::metadata(m.join("a.txt")).is_ok());
    fs::rename(m.join("a.txt"), m.join("b.db")).expect("rename");
    let e = fs::File::open(m.join("b.db")).expect_err("open by the new name must fail");
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    // And back: the old name matches no rule again.
    fs::rename(m.join("b.db"), m.join("c.txt")).expect("rename back");
    assert!(fs::File::open(m.join("c.txt")).is_ok());
}

#[test]
fn flush_rule_still_meets_close_of_passthrough_files() {
    let m = mount_with(
        rules(r#"{"rules":[{"ops":["flush"],"glob":"*.log","errno":"EIO"}]}"#),
        Config::default(),
        |_| {},
    );
    // The rule touches no data, so both files are opened in passthrough mode.
    let mut f = fs::File::create(m.join("x.log")).expect("create x.log");
    f.write_all(b"data").expect("write");
    // Close a dup of the fd, which reports the FLUSH reply (dropping a File ignores it).
    let e = nix::unistd::close(nix::unistd::dup(&f).expect("dup"))
        .expect_err("close of a *.log file must meet the flush rule");
    assert_eq!(e as i32, libc::EIO);
    let mut g = fs::File::create(m.join("y.txt")).expect("create y.txt");
    g.write_all(b"data").expect("write");
    nix::unistd::close(nix::unistd::dup(&g).expect("dup")).expect("close of another file");
    let stats = m.server().stats();
    assert!(stats[0].injected >= 1);
    drop(f);
}
