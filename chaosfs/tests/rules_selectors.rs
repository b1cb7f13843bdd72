//! Each selector observed on a real ChaosFS mount: percent, after, every, times, glob, ops, uid,
//! comm and pid, with the per-rule counters. Needs root and /dev/fuse (fails without them).

mod rules_support;

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};

use rules_support::*;

#[test]
fn percent_is_roughly_right_and_counted() {
    let m = Mount::new(
        r#"{"seed": 11, "rules": [{"ops": ["read"], "percent": 50, "errno": "EIO"}]}"#,
        &[("f", b"x")],
    );
    let seen = pread_many(&m.path("f"), 1, 1000);
    let failed = seen.iter().filter(|e| e.is_some()).count();
    assert!(
        (400..=600).contains(&failed),
        "{failed} of 1000 failed at 50%"
    );
    assert!(seen.iter().flatten().all(|&e| e == libc::EIO));
    let s = m.stats();
    assert_eq!(s[0].matched, 1000);
    assert_eq!(s[0].injected, failed as u64);
}

#[test]
fn same_seed_same_faults_across_mounts() {
    let json = r#"{"seed": 99, "rules": [{"ops": ["read"], "percent": 30, "errno": "EIO"}]}"#;
    let a = {
        let m = Mount::new(json, &[("f", b"x")]);
        pread_many(&m.path("f"), 1, 300)
    };
    let b = {
        let m = Mount::new(json, &[("f", b"x")]);
        pread_many(&m.path("f"), 1, 300)
    };
    assert_eq!(a, b);
}

/// 1-based numbers of the reads that failed.
fn failing_reads(rule: &str, count: usize) -> Vec<usize> {
    let m = Mount::new(&format!(r#"{{"rules": [{rule}]}}"#), &[("f", b"x")]);
    pread_many(&m.path("f"), 1, count)
        .iter()
        .enumerate()
        .filter(|(_, e)| e.is_some())
        .map(|(i, _)| i + 1)
        .collect()
}

#[test]
fn after_every_times() {
    assert_eq!(
        failing_reads(r#"{"ops": ["read"], "after": 3, "errno": "EIO"}"#, 6),
        [4, 5, 6]
    );
    assert_eq!(
        failing_reads(r#"{"ops": ["read"], "every": 3, "errno": "EIO"}"#, 10),
        [3, 6, 9]
    );
    assert_eq!(
        failing_reads(r#"{"ops": ["read"], "times": 2, "errno": "EIO"}"#, 10),
        [1, 2]
    );
    assert_eq!(
        failing_reads(
            r#"{"ops": ["read"], "after": 2, "every": 2, "times": 2, "errno": "EIO"}"#,
            20
        ),
        [4, 6]
    );
}

#[test]
fn glob_selects_by_name_or_path() {
    let m = Mount::new(
        r#"{"rules": [{"ops": ["read"], "glob": "*.db", "errno": "EIO"},
                      {"ops": ["read"], "glob": "logs/*.log", "errno": "EROFS"}]}"#,
        &[
            ("a.db", b"x"),
            ("deep/er/b.db", b"x"),
            ("a.txt", b"x"),
            ("logs/x.log", b"x"),
            ("logs/sub/y.log", b"x"),
            ("x.log", b"x"),
        ],
    );
    let e = |p: &str| errno(pread(&m.path(p), 1));
    assert_eq!(e("a.db"), Some(libc::EIO));
    assert_eq!(e("deep/er/b.db"), Some(libc::EIO));
    assert_eq!(e("a.txt"), None);
    assert_eq!(e("logs/x.log"), Some(libc::EROFS));
    assert_eq!(e("logs/sub/y.log"), None);
    assert_eq!(e("x.log"), None);
}

#[test]
fn ops_select_syscalls() {
    let m = Mount::new(
        r#"{"rules": [{"ops": ["unlink"], "errno": "EBUSY"}, {"ops": ["mkdir"], "errno": "EEXIST"},
                      {"ops": ["rename"], "errno": "EXDEV"}]}"#,
        &[("f", b"x")],
    );
    assert_eq!(errno(std::fs::remove_file(m.path("f"))), Some(libc::EBUSY));
    assert_eq!(errno(std::fs::create_dir(m.path("d"))), Some(libc::EEXIST));
    assert_eq!(
        errno(std::fs::rename(m.path("f"), m.path("g"))),
        Some(libc::EXDEV)
    );
    assert_eq!(pread(&m.path("f"), 1).expect("read"), b"x");
    let s = m.stats();
    assert_eq!((s[0].injected, s[1].injected, s[2].injected), (1, 1, 1));
}

#[test]
fn uid_selects_the_callers_fsuid() {
    let m = Mount::new(
        r#"{"rules": [{"ops": ["read"], "uid": 4321, "errno": "EPERM"}]}"#,
        &[("f", b"x")],
    );
    let path = m.path("f");
    let f = File::open(&path).expect("open");
    assert_eq!(
        errno(f.read_at(&mut [0u8; 1], 0)),
        None,
        "uid 0 is not selected"
    );
    // FUSE sees the caller's fsuid, which is per thread: switch it in a thread of our own.
    let res = std::thread::spawn(move || {
        let old = nix::unistd::setfsuid(nix::unistd::Uid::from_raw(4321));
        let r = errno(f.read_at(&mut [0u8; 1], 0));
        nix::unistd::setfsuid(old);
        r
    })
    .join()
    .expect("thread");
    assert_eq!(res, Some(libc::EPERM));
    assert_eq!(m.stats()[0].injected, 1);
}

#[test]
fn comm_selects_processes_and_threads_by_name() {
    let m = Mount::new(
        r#"{"rules": [{"ops": ["read"], "comm": "cat", "errno": "EIO"},
                      {"ops": ["read"], "comm": "probe-thread", "errno": "ENOLINK"}]}"#,
        &[("f", b"hello\n")],
    );
    let p = m.path("f");
    let (ok, out, err) = run("cat", &[p.to_str().expect("utf-8")]);
    assert!(
        !ok && err.contains("Input/output error"),
        "cat: {out} {err}"
    );
    let (ok, out, err) = run("head", &["-c", "5", p.to_str().expect("utf-8")]);
    assert!(ok, "head is not cat: {err}");
    assert_eq!(out, "hello");
    assert_eq!(pread(&p, 6).expect("this process"), b"hello\n");
    let named = std::thread::Builder::new()
        .name("probe-thread".into())
        .spawn(move || errno(pread(&p, 6)))
        .expect("spawn")
        .join()
        .expect("join");
    assert_eq!(named, Some(libc::ENOLINK));
}

#[test]
fn pid_selects_a_process_and_its_threads() {
    let me = std::process::id();
    let m = Mount::new(
        &format!(r#"{{"rules": [{{"ops": ["read"], "pid": {me}, "errno": "EIO"}}]}}"#),
        &[("f", b"hello\n")],
    );
    let p = m.path("f");
    assert_eq!(errno(pread(&p, 6)), Some(libc::EIO));
    let p2 = p.clone();
    let from_thread = std::thread::spawn(move || errno(pread(&p2, 6)))
        .join()
        .expect("thread");
    assert_eq!(
        from_thread,
        Some(libc::EIO),
        "another thread of this process"
    );
    let (ok, out, err) = run("cat", &[p.to_str().expect("utf-8")]);
    assert!(ok, "another process is not selected: {err}");
    assert_eq!(out, "hello\n");

    // A child selected by its pid: it waits for a line on stdin, then execs cat (same pid).
    let mut child = Command::new("sh")
        .args(["-c", "read x; exec cat \"$0\"", p.to_str().expect("utf-8")])
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    m.update(&format!(
        r#"{{"rules": [{{"ops": ["read"], "pid": {}, "errno": "EIO"}}]}}"#,
        child.id()
    ));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Input/output error"),
        "{err}"
    );
    assert_eq!(pread(&p, 6).expect("we are not selected now"), b"hello\n");
}
