//! Verdicts applied by the file system: latency without blocking other requests (and cancelled
//! at once), errno, data corruption and short transfers, attribute overrides, a full disk.
//! Every test here needs the real rule engine.

mod fs_support;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use chaosfs::Config;
use fs_support::*;

fn direct() -> Config {
    Config::default()
}

#[test]
fn latency_does_not_block_other_requests_and_cancels() {
    let m = mount_with(
        rules(r#"{"rules":[{"ops":["read"],"glob":"slow","latency":"1h"}]}"#),
        Config {
            n_threads: 2,
            ..direct()
        },
        |d| {
            fs::write(d.join("slow"), b"slow").expect("prepare");
            fs::write(d.join("fast"), b"fast").expect("prepare");
        },
    );
    let path = m.join("slow");
    // More parked requests than serving threads.
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let p = path.clone();
            std::thread::spawn(move || {
                let mut f = fs::File::open(&p).expect("open slow");
                // One read call: a second one (as fs::read makes to see EOF) would be delayed again.
                let mut buf = [0u8; 16];
                let n = f.read(&mut buf).expect("slow read");
                buf[..n].to_vec()
            })
        })
        .collect();
    iochaos_testsupport::wait_until("the reads to be parked", Duration::from_secs(10), || {
        m.server().pending_delays() == 4
    });
    for _ in 0..20 {
        assert_eq!(fs::read(m.join("fast")).expect("fast read"), b"fast");
        fs::write(m.join("new"), b"n").expect("write while others sleep");
    }
    // The fast requests were all served while the slow ones stayed parked (an hour each).
    assert_eq!(
        m.server().pending_delays(),
        4,
        "a parked read finished before the fast requests"
    );
    assert!(readers.iter().all(|r| !r.is_finished()));
    m.server().cancel_delays();
    // Released by the cancel (their hour is far off): each gets its data.
    iochaos_testsupport::wait_until(
        "cancel_delays to release the reads",
        Duration::from_secs(20),
        || readers.iter().all(|r| r.is_finished()),
    );
    for r in readers {
        assert_eq!(r.join().expect("reader"), b"slow");
    }
    let stats = m.server().stats();
    assert!(stats[0].injected >= 4, "{stats:?}");
}

#[test]
fn latency_delays_the_request() {
    let m = mount_with(
        rules(r#"{"rules":[{"ops":["getattr","lookup"],"glob":"lag","latency":"300ms"}]}"#),
        direct(),
        |d| fs::write(d.join("lag"), b"x").expect("prepare"),
    );
    let t = Instant::now();
    fs::metadata(m.join("lag")).expect("stat");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn errno_reaches_the_caller_and_touches_nothing() {
    let m = mount_with(
        rules(
            r#"{"rules":[{"ops":["write"],"glob":"*.db","errno":"ENOSPC"},{"ops":["unlink"],"glob":"keep","errno":"EACCES"}]}"#,
        ),
        direct(),
        |d| {
            fs::write(d.join("x.db"), b"old").expect("prepare");
            fs::write(d.join("keep"), b"k").expect("prepare");
        },
    );
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(m.join("x.db"))
        .expect("open");
    let e = f.write_all(b"new").expect_err("write must fail");
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    assert_eq!(fs::read(m.backing("x.db")).expect("backing"), b"old");
    let e = fs::remove_file(m.join("keep")).expect_err("unlink must fail");
    assert_eq!(e.raw_os_error(), Some(libc::EACCES));
    assert!(m.backing("keep").exists());
}

#[test]
fn corrupt_and_short_reads_and_writes() {
    let m = mount_with(
        rules(
            r#"{"rules":[
                {"ops":["read"],"glob":"zeroed","corrupt":"zeros"},
                {"ops":["read"],"glob":"short","short":10},
                {"ops":["write"],"glob":"wshort","short":4},
                {"ops":["write"],"glob":"wzero","corrupt":"zeros"}]}"#,
        ),
        direct(),
        |d| {
            fs::write(d.join("zeroed"), vec![0xAAu8; 100]).expect("prepare");
            fs::write(d.join("short"), vec![1u8; 100]).expect("prepare");
        },
    );
    assert_eq!(fs::read(m.join("zeroed")).expect("read"), vec![0u8; 100]);
    let mut f = fs::File::open(m.join("short")).expect("open");
    let mut buf = [0u8; 100];
    assert_eq!(f.read(&mut buf).expect("short read"), 10);
    let mut w = fs::File::create(m.join("wshort")).expect("create");
    assert_eq!(w.write(b"abcdefgh").expect("short write"), 4);
    drop(w);
    assert_eq!(fs::read(m.backing("wshort")).expect("backing"), b"abcd");
    let mut w = fs::File::create(m.join("wzero")).expect("create");
    assert_eq!(
        w.write(b"abcdefgh")
            .expect("corrupt write reports the full length"),
        8
    );
    drop(w);
    assert_eq!(fs::read(m.backing("wzero")).expect("backing"), vec![0u8; 8]);
}

#[test]
fn attr_override_and_full_disk() {
    let m = mount_with(
        rules(
            r#"{"rules":[{"glob":"odd","attr":{"uid":4242,"size":12345,"perm":"0600"}},{"full":true}]}"#,
        ),
        direct(),
        |d| fs::write(d.join("odd"), b"x").expect("prepare"),
    );
    let md = fs::metadata(m.join("odd")).expect("stat");
    assert_eq!(
        (md.uid(), md.size(), md.mode() & 0o7777),
        (4242, 12345, 0o600)
    );
    let st = nix::sys::statvfs::statvfs(m.path()).expect("statvfs");
    assert_eq!(st.blocks_available(), 0);
    assert_eq!(st.blocks_free(), 0);
    let e = fs::write(m.join("new"), b"x").expect_err("full disk");
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
}
