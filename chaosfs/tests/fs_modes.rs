//! Open modes: kernel passthrough for files no rule can touch, direct I/O for the others, one mode
//! per inode while it is open (the kernel's rule), and rule updates that report escaped files.

mod fs_support;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;

use chaosfs::rules::RuleSet;
use chaosfs::{Config, OpenMode};
use fs_support::*;

fn ino(p: &std::path::Path) -> u64 {
    fs::metadata(p).expect("stat").ino()
}

fn read_all(f: &mut fs::File) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    f.seek(SeekFrom::Start(0))?;
    f.read_to_end(&mut v)?;
    Ok(v)
}

#[test]
fn untouched_files_open_in_passthrough_mode() {
    let m = mount();
    fs::write(m.join("f"), b"data").expect("write");
    let before = m.server().open_stats();
    let mut f = fs::File::open(m.join("f")).expect("open");
    assert_eq!(
        m.server().open_mode(ino(&m.join("f"))),
        Some(OpenMode::Passthrough)
    );
    assert_eq!(read_all(&mut f).expect("read"), b"data");
    let after = m.server().open_stats();
    assert_eq!(after.passthrough, before.passthrough + 1);
    assert_eq!(after.direct, before.direct);
}

#[test]
fn without_passthrough_every_file_uses_direct_io() {
    let cfg = Config {
        passthrough: false,
        ..Config::default()
    };
    let m = mount_with(RuleSet::empty(), cfg, |_| {});
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(m.join("d"))
        .expect("create");
    assert_eq!(
        m.server().open_mode(ino(&m.join("d"))),
        Some(OpenMode::Direct)
    );
    f.write_all(&vec![3u8; 300_000]).expect("write");
    assert_eq!(read_all(&mut f).expect("read").len(), 300_000);
    // Shared mmap still works with direct I/O (FUSE_DIRECT_IO_ALLOW_MMAP).
    let mut page = SharedPage::map(&f);
    assert_eq!(page.bytes()[0], 3);
    page.bytes()[0] = 9;
    page.sync();
    drop(page);
    assert_eq!(fs::read(m.backing("d")).expect("backing")[0], 9);
    let s = m.server().open_stats();
    assert!(s.direct >= 1 && s.passthrough == 0, "{s:?}");
}

/// Needs the rule engine (globs and errno actions).
#[test]
fn rule_touched_files_use_direct_io() {
    let m = mount_with(
        rules(r#"{"rules":[{"ops":["read"],"glob":"touched*","errno":"EIO"}]}"#),
        Config::default(),
        |d| {
            fs::write(d.join("touched"), b"t").expect("prepare");
            fs::write(d.join("plain"), b"p").expect("prepare");
        },
    );
    let mut t = fs::File::open(m.join("touched")).expect("open touched");
    assert_eq!(
        m.server().open_mode(ino(&m.join("touched"))),
        Some(OpenMode::Direct)
    );
    assert_eq!(
        read_all(&mut t).map_err(|e| e.raw_os_error()),
        Err(Some(libc::EIO))
    );
    let mut p = fs::File::open(m.join("plain")).expect("open plain");
    assert_eq!(
        m.server().open_mode(ino(&m.join("plain"))),
        Some(OpenMode::Passthrough)
    );
    assert_eq!(read_all(&mut p).expect("read plain"), b"p");
}

/// Needs the rule engine. Two names of one inode, one touched by a rule: opens never fail, and
/// an inode keeps one mode while it has open files.
#[test]
fn one_mode_per_open_inode() {
    let m = mount_with(
        rules(r#"{"rules":[{"ops":["read"],"glob":"touched","errno":"EIO"}]}"#),
        Config::default(),
        |d| {
            fs::write(d.join("plain"), b"shared").expect("prepare");
            fs::hard_link(d.join("plain"), d.join("touched")).expect("link");
        },
    );
    let i = ino(&m.join("plain"));
    let mut a = fs::File::open(m.join("plain")).expect("open plain");
    assert_eq!(m.server().open_mode(i), Some(OpenMode::Passthrough));
    let forced = m.server().open_stats().forced_passthrough;
    let mut b = fs::File::open(m.join("touched")).expect("open touched while plain is open");
    assert_eq!(m.server().open_stats().forced_passthrough, forced + 1);
    assert_eq!(read_all(&mut a).expect("read a"), b"shared");
    assert_eq!(
        read_all(&mut b).expect("read b (passthrough escapes the rule)"),
        b"shared"
    );
    drop((a, b));
    // Release is asynchronous: wait until the handles are gone.
    poll_until(|| m.server().open_mode(i).is_none());
    let mut t = fs::File::open(m.join("touched")).expect("open touched alone");
    assert_eq!(m.server().open_mode(i), Some(OpenMode::Direct));
    let mut p = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.join("plain"))
        .expect("open plain while direct");
    assert_eq!(m.server().open_mode(i), Some(OpenMode::Direct));
    assert_eq!(
        read_all(&mut t).map_err(|e| e.raw_os_error()),
        Err(Some(libc::EIO))
    );
    assert_eq!(
        read_all(&mut p).expect("plain read through direct io"),
        b"shared"
    );
}

fn poll_until(f: impl FnMut() -> bool) {
    iochaos_testsupport::wait_until("the condition", std::time::Duration::from_secs(10), f);
}

/// Needs the rule engine.
#[test]
fn update_rules_reports_escaped_passthrough_files() {
    let m = mount_with(RuleSet::empty(), Config::default(), |d| {
        fs::write(d.join("victim"), b"before").expect("prepare");
        fs::write(d.join("other"), b"other").expect("prepare");
    });
    let mut old = fs::File::open(m.join("victim")).expect("open");
    let _other = fs::File::open(m.join("other")).expect("open other");
    let i = ino(&m.join("victim"));
    assert_eq!(m.server().open_mode(i), Some(OpenMode::Passthrough));
    let report = m.server().update_rules(rules(
        r#"{"rules":[{"ops":["read"],"glob":"victim","errno":"EIO"}]}"#,
    ));
    assert_eq!(report.escaped.len(), 1, "{report:?}");
    assert_eq!(report.escaped[0].path, std::path::Path::new("victim"));
    assert_eq!(report.escaped[0].ino, i);
    // The old fd escapes the rule (passthrough) until reopened...
    assert_eq!(read_all(&mut old).expect("old fd"), b"before");
    // ...a reopen by path gets direct I/O and meets the rule, while the old fd is still open.
    let mut new = fs::File::open(m.join("victim")).expect("reopen");
    assert_eq!(
        read_all(&mut new).map_err(|e| e.raw_os_error()),
        Err(Some(libc::EIO))
    );
    assert_eq!(m.server().rules().stats().len(), 1);
}

/// Needs the rule engine: a file open without FLUSH (no flush rule could select it, whatever
/// its mode) is reported when new rules select flush on it, and a reopen meets the new rule.
#[test]
fn update_rules_reports_files_opened_without_flush() {
    let m = mount_with(
        rules(r#"{"rules":[{"ops":["read"],"glob":"d*","percent":0,"errno":"EIO"}]}"#),
        Config::default(),
        |d| {
            fs::write(d.join("direct"), b"x").expect("prepare");
            fs::write(d.join("plain"), b"x").expect("prepare");
        },
    );
    let held_direct = fs::File::open(m.join("direct")).expect("open");
    let held_plain = fs::File::open(m.join("plain")).expect("open");
    assert_eq!(
        m.server().open_mode(ino(&m.join("direct"))),
        Some(OpenMode::Direct)
    );
    let report = m.server().update_rules(rules(
        r#"{"rules":[{"ops":["flush"],"glob":"direct","errno":"EIO"}]}"#,
    ));
    let paths: Vec<_> = report.escaped.iter().map(|e| e.path.clone()).collect();
    assert_eq!(paths, [std::path::PathBuf::from("direct")], "{report:?}");
    let again = fs::File::open(m.join("direct")).expect("reopen");
    let e = nix::unistd::close(nix::unistd::dup(&again).expect("dup"))
        .expect_err("a close of the reopened file meets the flush rule");
    assert_eq!(e as i32, libc::EIO);
    drop((held_direct, held_plain, again));
}

/// Needs the rule engine: after an update, cached attributes are dropped at once.
#[test]
fn update_rules_invalidates_cached_attributes() {
    let m = mount_with(RuleSet::empty(), Config::default(), |d| {
        fs::write(d.join("a"), b"a").expect("prepare");
    });
    let before = fs::metadata(m.join("a")).expect("stat").mode();
    assert_eq!(before & 0o7777, 0o644);
    m.server()
        .update_rules(rules(r#"{"rules":[{"glob":"a","attr":{"perm":"0600"}}]}"#));
    let after = fs::metadata(m.join("a")).expect("stat").mode();
    assert_eq!(
        after & 0o7777,
        0o600,
        "cached attributes survived the rule update"
    );
    m.server().update_rules(RuleSet::empty());
    let again = fs::metadata(m.join("a")).expect("stat").mode();
    assert_eq!(again & 0o7777, 0o644);
}

/// Large reads of a rule-touched (direct I/O) file are spliced from the backing file, small,
/// unaligned or fault-altered ones copied: every way returns exactly the backing bytes.
#[test]
fn direct_io_reads_return_the_backing_bytes_whichever_way_they_are_sent() {
    use std::os::unix::fs::FileExt;
    let len: usize = 3 * (1 << 20) + 12_345;
    let data: Vec<u8> = (0..len)
        .map(|i| (i * 7 + i / 4096).to_le_bytes()[0])
        .collect();
    let d2 = data.clone();
    let m = mount_with(
        rules(r#"{"rules":[{"ops":["read"],"glob":"big","percent":0,"errno":"EIO"}]}"#),
        Config::default(),
        move |d| fs::write(d.join("big"), &d2).expect("prepare"),
    );
    let f = fs::File::open(m.join("big")).expect("open");
    assert_eq!(
        m.server().open_mode(ino(&m.join("big"))),
        Some(OpenMode::Direct)
    );
    for (off, size) in [
        (0, 1 << 20),            // whole spliced requests
        (4096, 1 << 20),         // page-aligned
        (12_345, 1 << 20),       // unaligned: copied
        (100, 70_000),           // unaligned, one request
        (len - 5000, 1 << 20),   // crosses the end of the file
        (len, 4096),             // at the end: nothing
        (0, len + 100),          // the whole file in one call
        (2 * (1 << 20), 65_536), // the smallest spliced size
    ] {
        let mut buf = vec![0u8; size];
        let mut got = 0;
        while got < size {
            let n = f
                .read_at(&mut buf[got..], (off + got) as u64)
                .expect("read");
            if n == 0 {
                break;
            }
            got += n;
        }
        let want = &data[off.min(len)..(off + size).min(len)];
        assert_eq!(got, want.len(), "length at {off}+{size}");
        assert!(buf[..got] == *want, "bytes differ at {off}+{size}");
    }
}
