//! Each rule action observed from real system calls on a real ChaosFS mount: the errno a call
//! saw, the delay it measured, the bytes it read back, the attributes stat shows, statfs of a
//! full disk. Needs root and /dev/fuse (fails without them).

mod rules_support;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::{Duration, Instant};

use rules_support::*;

#[test]
fn errno_on_read_write_open_and_stat() {
    let data = pattern(4096);
    let m = Mount::new(
        r#"{"rules": [
            {"ops": ["read"], "glob": "r", "errno": "EIO"},
            {"ops": ["write"], "glob": "w", "errno": "EDQUOT"},
            {"ops": ["open"], "glob": "o", "errno": "EACCES"},
            {"ops": ["stat", "lookup"], "glob": "s", "errno": "ESTALE"}
        ]}"#,
        &[
            ("r", &data),
            ("w", &data),
            ("o", &data),
            ("s", &data),
            ("ok", &data),
        ],
    );
    assert_eq!(errno(pread(&m.path("r"), 100)), Some(libc::EIO));
    let w = open_write(&m.path("w"));
    assert_eq!(errno(w.write_at(b"x", 0)), Some(libc::EDQUOT));
    assert_eq!(errno(File::open(m.path("o"))), Some(libc::EACCES));
    assert_eq!(errno(std::fs::metadata(m.path("s"))), Some(libc::ESTALE));
    // Everything else is untouched.
    assert_eq!(pread(&m.path("ok"), 4096).expect("read ok"), data);
    assert_eq!(pread(&m.path("w"), 4096).expect("read w"), data);
    assert!(std::fs::metadata(m.path("r")).is_ok());
    // A real program sees it too.
    let (ok, _, err) = run("cat", &[m.path("r").to_str().expect("utf-8")]);
    assert!(!ok && err.contains("Input/output error"), "cat: {err}");
}

#[test]
fn weighted_errno_gives_only_the_listed_errnos() {
    let m = Mount::new(
        r#"{"seed": 1, "rules": [{"ops": ["read"], "errno": {"EIO": 1, "EINTR": 1}}]}"#,
        &[("f", b"hello")],
    );
    let seen = pread_many(&m.path("f"), 5, 200);
    let eio = seen.iter().filter(|e| **e == Some(libc::EIO)).count();
    let eintr = seen.iter().filter(|e| **e == Some(libc::EINTR)).count();
    assert_eq!(eio + eintr, 200, "{seen:?}");
    assert!(
        eio > 50 && eintr > 50,
        "both errnos appear: {eio} EIO, {eintr} EINTR"
    );
}

#[test]
fn latency_delays_the_call() {
    let m = Mount::new(
        r#"{"rules": [{"ops": ["read"], "glob": "slow", "latency": "300ms"},
                      {"ops": ["fsync"], "latency": {"delay": "200ms", "jitter": "100ms"}}]}"#,
        &[("slow", b"slow data"), ("fast", b"fast data")],
    );
    let t = Instant::now();
    assert_eq!(pread(&m.path("slow"), 64).expect("slow read"), b"slow data");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "read took {:?}",
        t.elapsed()
    );

    let f = open_write(&m.path("fast"));
    let t = Instant::now();
    f.sync_all().expect("fsync");
    assert!(
        t.elapsed() >= Duration::from_millis(100),
        "fsync took {:?}",
        t.elapsed()
    );
    let stats = m.stats();
    assert_eq!(stats[0].injected, 1);
    assert!(stats[1].injected >= 1);
}

#[test]
fn attr_overrides_what_stat_shows() {
    let m = Mount::new(
        r#"{"rules": [{"glob": "a", "attr": {"perm": "0400", "uid": 4242, "gid": 4343,
                        "size": 123456, "mtime": "2001-02-03T04:05:06Z", "nlink": 7}},
                      {"glob": "k", "attr": {"kind": "fifo"}}]}"#,
        &[("a", b"12345"), ("b", b"12345"), ("k", b"x")],
    );
    let md = std::fs::metadata(m.path("a")).expect("stat a");
    assert_eq!(md.mode() & 0o7777, 0o400);
    assert_eq!((md.uid(), md.gid()), (4242, 4343));
    assert_eq!(md.size(), 123_456);
    assert_eq!(md.mtime(), 981_173_106);
    assert_eq!(md.nlink(), 7);
    assert!(md.is_file());
    let other = std::fs::metadata(m.path("b")).expect("stat b");
    assert_eq!((other.size(), other.uid()), (5, 0));
    let k = std::fs::symlink_metadata(m.path("k")).expect("stat k");
    assert_eq!(k.mode() & libc::S_IFMT, libc::S_IFIFO);
}

#[test]
fn corrupt_read_data() {
    let data = pattern(8192);
    let m = Mount::new(
        r#"{"seed": 5, "rules": [
            {"ops": ["read"], "glob": "flip", "corrupt": "bitflip"},
            {"ops": ["read"], "glob": "zero", "corrupt": {"mode": "zeros", "max_bytes": 16}},
            {"ops": ["read"], "glob": "rand", "corrupt": "random", "times": 1}
        ]}"#,
        &[("flip", &data), ("zero", &data), ("rand", &data)],
    );
    let got = pread(&m.path("flip"), 8192).expect("read flip");
    assert_eq!(got.len(), 8192);
    assert_eq!(diff(&got, &data), 1, "one byte with one flipped bit");
    let bits: u32 = got
        .iter()
        .zip(&data)
        .map(|(a, b)| (a ^ b).count_ones())
        .sum();
    assert_eq!(bits, 1);

    let got = pread(&m.path("zero"), 8192).expect("read zero");
    assert!(
        (1..=16).contains(&diff(&got, &data)),
        "{}",
        diff(&got, &data)
    );

    let got = pread(&m.path("rand"), 8192).expect("read rand");
    assert_eq!(diff(&got, &data), 8192, "every byte differs");
    // times: 1 — the next read is clean, and the backing file was never changed.
    assert_eq!(pread(&m.path("rand"), 8192).expect("read rand again"), data);
}

#[test]
fn corrupt_written_data_reaches_the_backing_file() {
    let m = Mount::new(
        r#"{"rules": [{"ops": ["write"], "glob": "w", "corrupt": {"mode": "bitflip", "max_bytes": 4}}]}"#,
        &[("w", b"")],
    );
    let data = pattern(4096);
    let f = open_write(&m.path("w"));
    assert_eq!(f.write_at(&data, 0).expect("write"), 4096);
    drop(f);
    let dir = m.unmount();
    let stored = std::fs::read(dir.path().join("w")).expect("backing");
    assert_eq!(stored.len(), 4096);
    assert_eq!(diff(&stored, &data), 4);
}

#[test]
fn short_reads_and_writes() {
    let data = pattern(4096);
    let m = Mount::new(
        r#"{"rules": [{"ops": ["read"], "glob": "r", "short": {"bytes": 100}},
                      {"ops": ["write"], "glob": "w", "short": {"fraction": 0.5}}]}"#,
        &[("r", &data), ("w", b"")],
    );
    {
        let f = File::open(m.path("r")).expect("open r");
        let mut buf = vec![0u8; 4096];
        let n = f.read_at(&mut buf, 0).expect("read");
        assert_eq!(n, 100);
        assert_eq!(&buf[..100], &data[..100]);

        let f = open_write(&m.path("w"));
        assert_eq!(f.write_at(&data, 0).expect("write"), 2048);
        // write_all retries and gets everything there in the end (a 1-byte write is served
        // whole).
        let mut f = open_write(&m.path("w"));
        f.write_all(&data).expect("write_all");
    }
    let mut back = Vec::new();
    let dir = m.unmount();
    File::open(dir.path().join("w"))
        .and_then(|mut f| f.read_to_end(&mut back))
        .expect("backing");
    assert_eq!(back, data);
}

#[test]
fn full_disk() {
    let m = Mount::new(r#"{"rules": [{"full": true}]}"#, &[("f", b"data")]);
    let st = nix::sys::statvfs::statvfs(m.root()).expect("statvfs");
    assert_eq!(st.blocks_available(), 0);
    assert_eq!(st.blocks_free(), 0);
    let f = open_write(&m.path("f"));
    assert_eq!(errno(f.write_at(b"more", 4)), Some(libc::ENOSPC));
    assert_eq!(errno(File::create(m.path("new"))), Some(libc::ENOSPC));
    assert_eq!(errno(std::fs::create_dir(m.path("d"))), Some(libc::ENOSPC));
    assert_eq!(
        errno(std::os::unix::fs::symlink("f", m.path("l"))),
        Some(libc::ENOSPC)
    );
    // Reading and deleting still work on a full disk.
    assert_eq!(pread(&m.path("f"), 16).expect("read"), b"data");
    std::fs::remove_file(m.path("f")).expect("unlink");
    let (ok, out, err) = run("df", &["-P", m.root().to_str().expect("utf-8")]);
    assert!(ok, "df: {err}");
    let avail = out.lines().nth(1).and_then(|l| l.split_whitespace().nth(3));
    assert_eq!(avail, Some("0"), "df: {out}");
}
