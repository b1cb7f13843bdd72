//! End-to-end tests against real processes (see `common` and the `fdswap-testee` binary).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use fdswap::{Item, OpenMode, Plan, ScanOptions, SkipReason, SwapOptions, swap, swap_plan};

const SWAPPED_FDS: &[&str] = &[
    "append",
    "append_dup",
    "readonly_pos3",
    "cloexec_nonblock",
    "direct",
    "locked",
    "dir",
];

fn lock_line_for(pid: i32) -> Option<String> {
    proc_locks()
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some(&pid.to_string()))
        .map(str::to_owned)
}

/// A temporary directory and its `lower/` subdirectory, made.
fn tmp_with_lower() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let lower = tmp.path().join("lower");
    std::fs::create_dir_all(&lower).expect("mkdir");
    (tmp, lower)
}

/// A testee holding `n` files `lower/many/f*` (spawned with `--fds n` and `args`), and an
/// upper layer `upper/many` with the same names (empty files, other inodes).
fn layered(n: usize, args: &[&str]) -> (tempfile::TempDir, PathBuf, PathBuf, Testee) {
    let (tmp, lower) = tmp_with_lower();
    let upper = tmp.path().join("upper");
    std::fs::create_dir_all(upper.join("many")).expect("mkdir");
    let n_arg = n.to_string();
    let args: Vec<&str> = ["--fds", n_arg.as_str()]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    let t = Testee::spawn(&lower, &args);
    for k in 0..n {
        std::fs::write(upper.join(format!("many/f{k}")), b"").expect("write");
    }
    (tmp, lower, upper, t)
}

/// Bind `upper/many` over `lower_many` in the testee's mount namespace.
fn mount_upper_many(t: &Testee, upper: &Path, lower_many: &Path) {
    t.bind(&upper.join("many"), lower_many);
}

/// The testee's "many" set is all on mount `mnt`, and the testee still answers.
fn assert_on_and_alive(t: &mut Testee, mnt: u64) {
    assert!(all_on(t.pid, mnt));
    assert_eq!(t.ask("ping", "PONG"), "PONG");
}

/// Every fd of the testee's "many" set is on mount `mnt`.
fn all_on(pid: i32, mnt: u64) -> bool {
    many_fds(pid)
        .iter()
        .all(|&fd| fdinfo(pid, fd).mnt_id == mnt)
}

/// No thread of `pid` is stopped or traced any more.
fn assert_untraced(pid: i32) {
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let p = e.expect("task").path();
        let status = std::fs::read_to_string(p.join("status")).unwrap_or_default();
        assert!(
            status.is_empty() || status.contains("TracerPid:\t0"),
            "{}: {status}",
            p.display()
        );
    }
}

/// Some thread of `pid` is traced (by the swapper).
fn traced(pid: i32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .any(|s| {
            s.lines()
                .any(|l| l.starts_with("TracerPid:") && l != "TracerPid:\t0")
        })
}

/// Recover-style: detach the mount on top of `dir` lazily, swap back from mount `from`.
fn swap_back(t: &Testee, dir: &Path, from: u64) -> fdswap::Report {
    t.umount_lazy(dir);
    let back = ScanOptions {
        from_mnt: Some(from),
        ..ScanOptions::new(dir)
    };
    swap(&[t.pid], &back, &SwapOptions::default()).expect("swap back")
}

#[test]
fn swap_onto_upper_mount_and_back() {
    require_root();
    let tmp = tempfile::tempdir().expect("tempdir");
    let lower = tmp.path().join("lower");
    let upper = tmp.path().join("upper");
    std::fs::create_dir_all(&lower).expect("mkdir");
    std::fs::create_dir_all(&upper).expect("mkdir");
    let mut t = Testee::spawn(&lower, &["--full", "--sleep-ms", "2000"]);
    let pid = t.pid;

    let before: HashMap<&str, Info> = SWAPPED_FDS
        .iter()
        .map(|n| (*n, fdinfo(pid, t.fd(n))))
        .collect();
    let lower_mnt = before["append"].mnt_id;
    let deleted_before = fdinfo(pid, t.fd("deleted"));
    assert!(
        lock_line_for(pid)
            .expect("lock held")
            .contains(&format!(":{} ", ino(&lower.join("lock.db"))))
    );

    // The "upper" layer: same file names, different inodes, so we can tell where I/O lands.
    copy_files(&lower, &upper);
    let upper_mnt = t.bind(&upper, &lower);
    assert_ne!(upper_mnt, lower_mnt);

    let report = swap(&[pid], &ScanOptions::new(&lower), &SwapOptions::default()).expect("swap");
    assert!(report.first_error().is_none(), "{:?}", report.first_error());
    assert_eq!(report.processes[0].open_mode, Some(OpenMode::Handoff));
    let pause = report.max_pause();
    eprintln!("pause {pause:?}, total {:?}", report.total);

    // fds: same flags and offsets, now on the upper mount and the upper files.
    for n in SWAPPED_FDS {
        let fd = t.fd(n);
        let after = fdinfo(pid, fd);
        let b = &before[n];
        assert_eq!(after.mnt_id, upper_mnt, "{n}: mount");
        assert_eq!(after.pos, b.pos, "{n}: offset");
        assert_eq!(after.flags, b.flags, "{n}: flags");
        assert!(
            report.swapped().any(|s| s.item == Item::Fd(fd)),
            "{n} reported"
        );
    }
    assert_eq!(fdinfo(pid, t.fd("readonly_pos3")).pos, 3);
    assert_ne!(before["append"].flags & libc::O_APPEND as u32, 0);
    assert_ne!(before["direct"].flags & libc::O_DIRECT as u32, 0);
    assert_ne!(before["cloexec_nonblock"].flags & libc::O_CLOEXEC as u32, 0);
    assert_eq!(before["append_dup"].flags & libc::O_CLOEXEC as u32, 0);
    // Left alone and reported: the deleted file, pipes, the socket, the private mapping.
    assert_eq!(fdinfo(pid, t.fd("deleted")), deleted_before);
    let reasons: Vec<(Item, SkipReason)> = report
        .skipped()
        .map(|s| (s.item, s.reason.clone()))
        .collect();
    assert!(reasons.contains(&(Item::Fd(t.fd("deleted")), SkipReason::Deleted)));
    assert!(reasons.iter().any(|(_, r)| *r == SkipReason::Pipe));
    assert!(reasons.iter().any(|(_, r)| *r == SkipReason::Socket));
    assert!(reasons.iter().any(|(_, r)| *r == SkipReason::AnonInode));
    let private = t.maps["private"];
    assert!(reasons.contains(&(
        Item::Map {
            start: private,
            end: private + 4096
        },
        SkipReason::PrivateMapping
    )));
    // The POSIX lock moved to the upper file.
    let lock = lock_line_for(pid).expect("lock still held");
    assert!(
        lock.contains(&format!(":{} 0 99", ino(&upper.join("lock.db")))),
        "{lock}"
    );
    // Mappings: the shared one now maps the upper file, the private one the lower file.
    let m = maps(pid);
    let shared = t.maps["shared"];
    let line = m
        .lines()
        .find(|l| l.starts_with(&format!("{shared:x}-")))
        .expect("shared map");
    assert!(
        line.contains(&format!(" {} ", ino(&upper.join("shared.map")))),
        "{line}"
    );
    let line = m
        .lines()
        .find(|l| l.starts_with(&format!("{private:x}-")))
        .expect("private map");
    assert!(
        line.contains(&format!(" {} ", ino(&lower.join("private.map")))) || line.contains("lower"),
        "{line}"
    );
    // cwd.
    assert_eq!(
        fdswap::statx(Path::new(&format!("/proc/{pid}/cwd")))
            .expect("cwd")
            .mnt_id,
        upper_mnt
    );

    // It keeps working, and its I/O lands on the upper files (the lower ones are untouched).
    let w = t.ask("write", "OK write");
    assert!(w.starts_with("OK write 1 1 cwd_a_len=6"), "{w}");
    assert_eq!(std::fs::read(upper.join("a.txt")).expect("read"), b"helloW");
    assert_eq!(std::fs::read(lower.join("a.txt")).expect("read"), b"hello");
    assert_eq!(std::fs::read(upper.join("lock.db")).expect("read")[0], b'L');
    assert_eq!(
        std::fs::read(upper.join("shared.map")).expect("read")[100],
        b'M'
    );
    assert_eq!(
        std::fs::read(lower.join("shared.map")).expect("read")[100],
        0
    );
    // A shared description stays shared: the dup sees the append's offset.
    assert_eq!(fdinfo(pid, t.fd("append")).pos, 6);
    assert_eq!(fdinfo(pid, t.fd("append_dup")).pos, 6);

    // Blocked threads: no EINTR, sleeps not cut short. That says something only if the swap
    // came while they slept: no sleeper had reported before the testee answered after it.
    assert!(
        !t.seen
            .iter()
            .any(|l| l.starts_with("T nanosleep") || l.starts_with("T futex_timed")),
        "the sleepers woke before the swap: {:?}",
        t.seen
    );
    t.ask("wake", "WOKE");
    let results = t.thread_reports(6);
    assert_eq!(results["read"], "ok 1");
    // Woken by the waker, never EINTR: 0, or EAGAIN when the restarted wait re-entered the
    // kernel only after the waker had changed the word (a loaded machine can delay a resumed
    // thread that long; futex callers loop on EAGAIN as on a wake-up).
    assert!(
        results["futex"] == "0 0" || results["futex"] == format!("-1 {}", libc::EAGAIN),
        "futex wait ended with {}",
        results["futex"]
    );
    assert_eq!(results["epoll"], "1 0");
    assert_eq!(results["accept"], "ok");
    let nano: Vec<u64> = results["nanosleep"]
        .split(' ')
        .map(|x| x.parse().expect("n"))
        .collect();
    assert_eq!(
        &nano[..2],
        &[0, 0],
        "nanosleep returned early or with an error"
    );
    assert!(nano[2] >= 2000, "nanosleep cut short: {nano:?}");
    let ft: Vec<i64> = results["futex_timed"]
        .split(' ')
        .map(|x| x.parse().expect("n"))
        .collect();
    assert_eq!(
        &ft[..2],
        &[-1, libc::ETIMEDOUT as i64],
        "timed futex: {ft:?}"
    );
    assert!(ft[2] >= 2000, "timed futex cut short: {ft:?}");

    // Recover: detach the upper mount lazily, swap back onto the original mount.
    t.umount_lazy(&lower);
    assert_eq!(t.top_mount(&lower), lower_mnt);
    let opts = ScanOptions {
        from_mnt: Some(upper_mnt),
        ..ScanOptions::new(&lower)
    };
    let report = swap(&[pid], &opts, &SwapOptions::default()).expect("swap back");
    assert!(report.first_error().is_none(), "{:?}", report.first_error());
    // Recover's new files too are opened before the stop and handed in (through spare fds:
    // the old files are on a detached mount, whose close may cost).
    assert_eq!(report.processes[0].open_mode, Some(OpenMode::Handoff));
    for n in SWAPPED_FDS {
        let after = fdinfo(pid, t.fd(n));
        assert_eq!(after.mnt_id, lower_mnt, "{n}: back on the original mount");
        assert_eq!(after.flags, before[n].flags, "{n}: flags");
    }
    assert_eq!(fdinfo(pid, t.fd("append")).pos, 6);
    assert_eq!(
        fdswap::statx(Path::new(&format!("/proc/{pid}/cwd")))
            .expect("cwd")
            .mnt_id,
        lower_mnt
    );
    let lock = lock_line_for(pid).expect("lock still held");
    assert!(
        lock.contains(&format!(":{} 0 99", ino(&lower.join("lock.db")))),
        "{lock}"
    );
    let w = t.ask("write", "OK write");
    assert!(w.starts_with("OK write 1 1 cwd_a_len=6"), "{w}");
    assert_eq!(std::fs::read(lower.join("a.txt")).expect("read"), b"helloW");
    assert_eq!(std::fs::read(upper.join("a.txt")).expect("read"), b"helloW");
    assert!(t.alive());
}

#[test]
fn dry_run_lists_without_stopping() {
    require_root();
    let (_tmp, lower) = tmp_with_lower();
    let t = Testee::spawn(&lower, &["--full", "--sleep-ms", "100"]);
    t.bind(&lower, &lower);
    let plan = Plan::scan(&[t.pid], &ScanOptions::new(&lower)).expect("scan");
    let p = &plan.processes[0];
    let mut fds: Vec<i32> = p.fds.iter().map(|f| f.fd).collect();
    fds.sort();
    let mut want: Vec<i32> = SWAPPED_FDS.iter().map(|n| t.fd(n)).collect();
    want.sort();
    assert_eq!(fds, want);
    assert_eq!(p.maps.len(), 1);
    assert_eq!(p.maps[0].start, t.maps["shared"]);
    assert!(p.cwd.is_some());
    assert_eq!(p.locks.len(), 1);
    assert!(p.locks[0].write && p.locks[0].start == 0 && p.locks[0].end == Some(99));
    let a = p
        .fds
        .iter()
        .find(|f| f.fd == t.fd("append"))
        .expect("append");
    let d = p
        .fds
        .iter()
        .find(|f| f.fd == t.fd("append_dup"))
        .expect("dup");
    assert_eq!(a.description, d.description, "dup shares the description");
    let b = p
        .fds
        .iter()
        .find(|f| f.fd == t.fd("readonly_pos3"))
        .expect("b");
    assert_ne!(a.description, b.description);
    let skip: HashMap<Item, SkipReason> = p
        .skipped
        .iter()
        .map(|s| (s.item, s.reason.clone()))
        .collect();
    assert_eq!(skip[&Item::Fd(t.fd("deleted"))], SkipReason::Deleted);
    assert_eq!(skip[&Item::Fd(0)], SkipReason::Pipe);
    assert_eq!(
        skip[&Item::Map {
            start: t.maps["private"],
            end: t.maps["private"] + 4096
        }],
        SkipReason::PrivateMapping
    );
    // Nothing was stopped or attached.
    let status = std::fs::read_to_string(format!("/proc/{}/status", t.pid)).expect("status");
    assert!(status.contains("TracerPid:\t0"));
}

#[test]
fn many_fds_and_threads() {
    require_root();
    let (_tmp, lower) = tmp_with_lower();
    let mut t = Testee::spawn(&lower, &["--fds", "2000", "--threads", "32"]);
    let top = t.bind(&lower, &lower);
    let report = swap(&[t.pid], &ScanOptions::new(&lower), &SwapOptions::default()).expect("swap");
    assert!(report.first_error().is_none(), "{:?}", report.first_error());
    assert_eq!(report.swapped().count(), 2000);
    assert!(report.processes[0].threads >= 33);
    let many = many_fds(t.pid);
    assert_eq!(many.len(), 2000);
    for fd in many {
        assert_eq!(fdinfo(t.pid, fd).mnt_id, top);
    }
    assert_eq!(t.ask("ping", "PONG"), "PONG");
    eprintln!("2000 fds, 33 threads: pause {:?}", report.max_pause());
}

#[test]
fn failure_half_way_rolls_back() {
    failure_half_way(false);
}

/// The same, with every file reopened through a spare fd (as when the old files are on FUSE).
#[test]
fn failure_half_way_rolls_back_spare_fds() {
    failure_half_way(true);
}

fn failure_half_way(spare: bool) {
    require_root();
    let (_tmp, lower, upper, mut t) = layered(50, &[]);
    let lower_many = lower.join("many");
    mount_upper_many(&t, &upper, &lower_many);
    let mut plan = Plan::scan(&[t.pid], &ScanOptions::new(&lower)).expect("scan");
    assert_eq!(plan.len(), 50);
    for f in plan.processes.iter_mut().flat_map(|p| p.fds.iter_mut()) {
        assert!(!f.old_close_costs, "ext4 closes quietly");
        f.old_close_costs = spare;
    }
    // The 40th file vanishes between the scan and the swap: its openat fails in the stub.
    std::fs::remove_file(upper.join("many/f39")).expect("rm");
    let many = many_fds(t.pid);
    assert_eq!(many.len(), 50);
    let before: Vec<Info> = many.iter().map(|&fd| fdinfo(t.pid, fd)).collect();
    let masks = sig_blocked(t.pid);
    let report = swap_plan(&plan, &SwapOptions::default()).expect("swap");
    let err = report.first_error().expect("must fail").to_string();
    assert!(
        err.contains("openat") && err.contains("f39") && err.contains("ENOENT"),
        "{err}"
    );
    assert_eq!(sig_blocked(t.pid), masks, "signal masks after the rollback");
    assert!(err.contains("rolled back"), "{err}");
    assert_eq!(report.swapped().count(), 0);
    let after: Vec<Info> = many.iter().map(|&fd| fdinfo(t.pid, fd)).collect();
    assert_eq!(before, after, "every fd back on the original file");
    let n = std::fs::read_dir(format!("/proc/{}/fd", t.pid))
        .expect("fd dir")
        .count();
    assert_eq!(t.ask("ping", "PONG"), "PONG");
    // No temporaries left open, no stub memory left mapped.
    assert_eq!(
        n,
        std::fs::read_dir(format!("/proc/{}/fd", t.pid))
            .expect("fd dir")
            .count()
    );
    assert!(!maps(t.pid).contains("rwxp"), "stub mapping left behind");
}

/// Start a swapper process that stops at the stub's trap, SIGKILL it there. Returns the
/// signal the target died of, if it did, and its threads' signal masks before the swap.
#[allow(clippy::type_complexity)]
fn kill_swapper_at_trap() -> (
    Testee,
    tempfile::TempDir,
    Option<i32>,
    Vec<(String, String)>,
) {
    let (tmp, lower) = tmp_with_lower();
    let t = Testee::spawn(&lower, &["--full", "--sleep-ms", "100"]);
    t.bind(&lower, &lower);
    let masks = sig_blocked(t.pid);
    let mut cmd = Command::new(TESTEE);
    cmd.args([
        "swap",
        &t.pid.to_string(),
        lower.to_str().expect("utf8"),
        "--pause-at-trap",
        "10000",
    ]);
    let mut swapper = cmd.spawn().expect("spawn swapper");
    // The stub has run when the main thread sits stopped in the trap with the mapping present.
    let pid = t.pid;
    wait_for("the stub trap", Duration::from_secs(10), || {
        let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = st
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or("");
        maps(pid).contains("rwxp")
            && state == "t"
            && std::fs::read_to_string(format!("/proc/{pid}/syscall"))
                .map(|s| !s.starts_with("running"))
                .unwrap_or(false)
    });
    std::thread::sleep(Duration::from_millis(50));
    swapper.kill().expect("SIGKILL the swapper");
    let _ = swapper.wait();
    let mut t = t;
    let code = {
        let t0 = Instant::now();
        loop {
            if let Ok(Some(st)) = t.child.try_wait() {
                use std::os::unix::process::ExitStatusExt;
                break st.signal();
            }
            if t0.elapsed() > Duration::from_millis(500) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    (t, tmp, code, masks)
}

#[test]
fn sigkill_of_the_swapper_at_the_trap_leaves_the_target_alive() {
    require_root();
    let (mut t, tmp, died, masks) = kill_swapper_at_trap();
    assert_eq!(died, None, "target died");
    assert!(t.alive());
    // (Threads of `--full` come and go: the ones still there.)
    for (tid, m) in sig_blocked(t.pid) {
        if let Some((_, before)) = masks.iter().find(|(k, _)| *k == tid) {
            assert_eq!(&m, before, "thread {tid}: signal mask");
        }
    }
    assert_eq!(t.ask("ping", "PONG"), "PONG");
    // The stub had finished: the fds are on the new mount, and the process carries on.
    let lower = tmp.path().join("lower");
    assert_eq!(fdinfo(t.pid, t.fd("append")).mnt_id, t.top_mount(&lower));
    let w = t.ask("write", "OK write");
    assert!(w.starts_with("OK write 1 1"), "{w}");
    t.ask("wake", "WOKE");
    for (k, r) in t.thread_reports(6) {
        let f: Vec<&str> = r.split(' ').collect();
        assert!(
            f.get(1) != Some(&"4") && !r.contains("err"),
            "{k}: EINTR or error: {r}"
        );
    }
    // Status is consistent: no tracer any more.
    let status = std::fs::read_to_string(format!("/proc/{}/status", t.pid)).expect("status");
    assert!(status.contains("TracerPid:\t0"));
}

#[test]
fn fatal_trap_would_kill_the_target_control() {
    // Negative control for the tracer-death tests: with a trap whose default action is fatal
    // (SIGTRAP, what an `int3` raises), a swapper killed while the stub runs leaves the target
    // to take it untraced, and it dies. This is why fdswap traps only with a signal the thread
    // does not catch and whose default action is to ignore it, and never with `int3`.
    require_root();
    let (_tmp, lower) = tmp_with_lower();
    let mut t = Testee::spawn(&lower, &["--fds", "12000"]);
    t.bind(&lower, &lower);
    let mut swapper = Command::new(TESTEE)
        .args([
            "swap",
            &t.pid.to_string(),
            lower.to_str().expect("utf8"),
            "--trap-signal",
            &libc::SIGTRAP.to_string(),
        ])
        .spawn()
        .expect("spawn swapper");
    let pid = t.pid;
    wait_for("the stub to run", Duration::from_secs(30), || in_stub(pid));
    swapper.kill().expect("kill");
    let _ = swapper.wait();
    use std::os::unix::process::ExitStatusExt;
    let st = wait_exit(&mut t.child, Duration::from_secs(10))
        .expect("the target survived an untraced SIGTRAP?");
    assert_eq!(st.signal(), Some(libc::SIGTRAP), "{st:?}");
}

#[test]
fn sigkill_of_the_swapper_mid_stub_leaves_the_target_alive() {
    kill_the_swapper_mid_stub(&["--fds", "12000", "--threads", "4"], 6);
}

/// A thread that blocks every signal (dash does around vfork) has no harmless trap signal
/// unblocked: the stub must still end in a trap that an untraced thread survives, and leave
/// the mask as it was.
#[test]
fn sigkill_of_the_swapper_mid_stub_with_every_signal_blocked() {
    kill_the_swapper_mid_stub(&["--fds", "12000", "--threads", "2", "--block-all"], 4);
}

/// The blocked signal mask (`SigBlk`) of each thread of `pid`.
fn sig_blocked(pid: i32) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .filter_map(|e| {
            let e = e.ok()?;
            let st = std::fs::read_to_string(e.path().join("status")).ok()?;
            let blk = st.lines().find(|l| l.starts_with("SigBlk:"))?.to_owned();
            Some((e.file_name().to_string_lossy().into_owned(), blk))
        })
        .collect();
    v.sort();
    v
}

/// SIGKILL a swapper `rounds` times, early (injecting the mmap) and at various points of the
/// stub: the target lives on, each fd wholly on one of the two mounts, every thread's signal
/// mask as it was.
fn kill_the_swapper_mid_stub(args: &[&str], rounds: u64) {
    require_root();
    let (_tmp, lower) = tmp_with_lower();
    let mut t = Testee::spawn(&lower, args);
    let mut top = t.bind(&lower, &lower);
    let many = many_fds(t.pid);
    let orig = fdinfo(t.pid, many[0]).mnt_id;
    let masks = sig_blocked(t.pid);
    for round in 0..rounds {
        let mut swapper = Command::new(TESTEE)
            .args(["swap", &t.pid.to_string(), lower.to_str().expect("utf8")])
            .spawn()
            .expect("spawn swapper");
        let pid = t.pid;
        if round == 0 {
            wait_for("the stub mapping", Duration::from_secs(30), || {
                stub_range(pid).is_some() || matches!(swapper.try_wait(), Ok(Some(_)))
            });
        } else {
            wait_for("the stub to run", Duration::from_secs(30), || {
                in_stub(pid) || matches!(swapper.try_wait(), Ok(Some(_)))
            });
            std::thread::sleep(Duration::from_millis(3 * (round - 1)));
        }
        swapper.kill().expect("kill");
        let _ = swapper.wait();
        if let Some(st) = wait_exit(&mut t.child, Duration::from_millis(300)) {
            panic!("round {round}: the target died: {st:?}");
        }
        assert_eq!(
            t.ask("ping", "PONG"),
            "PONG",
            "round {round}: target not alive"
        );
        // Each fd wholly on one of the two mounts. The stub runs to its end, but its batches
        // still waiting for their files see the dead swapper's socket close: those roll back,
        // the batches before stay moved (docs/fdswap.md, "When fdswap itself is SIGKILLed").
        let on_top = many
            .iter()
            .filter(|&&fd| {
                let m = fdinfo(t.pid, fd).mnt_id;
                assert!(m == top || m == orig, "round {round}: fd {fd} on mount {m}");
                m == top
            })
            .count();
        assert!(
            on_top % 253 == 0 || on_top == many.len(),
            "round {round}: {on_top} fds moved, not whole batches"
        );
        assert_eq!(sig_blocked(t.pid), masks, "round {round}: signal masks");
        eprintln!("round {round}: {on_top} fds on the new mount");
        // Put them back on the old mount for the next round.
        if on_top > 0 {
            let r = swap_back(&t, &lower, top);
            assert!(r.first_error().is_none(), "{:?}", r.first_error());
            assert_eq!(
                sig_blocked(t.pid),
                masks,
                "round {round}: masks after swap back"
            );
            top = t.bind(&lower, &lower);
        }
    }
}

/// A swap of a process whose threads block every signal: the fds move and every thread's
/// mask is what it was.
#[test]
fn every_signal_blocked_swap_keeps_the_mask() {
    require_root();
    let (_tmp, lower) = tmp_with_lower();
    let mut t = Testee::spawn(&lower, &["--fds", "40", "--threads", "2", "--block-all"]);
    let masks = sig_blocked(t.pid);
    let harmless = [libc::SIGURG, libc::SIGWINCH, libc::SIGCHLD, libc::SIGCONT];
    let blocked = |m: &str| {
        let w = u64::from_str_radix(m.trim_start_matches("SigBlk:").trim(), 16).expect("hex");
        harmless.iter().all(|&s| w & (1 << (s - 1)) != 0)
    };
    assert!(masks.iter().all(|(_, m)| blocked(m)), "{masks:?}");
    let top = t.bind(&lower, &lower);
    let r = swap(&[t.pid], &ScanOptions::new(&lower), &SwapOptions::default()).expect("swap");
    assert!(r.first_error().is_none(), "{:?}", r.first_error());
    for fd in many_fds(t.pid) {
        assert_eq!(fdinfo(t.pid, fd).mnt_id, top, "fd {fd}");
    }
    assert_eq!(sig_blocked(t.pid), masks);
    assert_eq!(t.ask("ping", "PONG"), "PONG");
}

/// A process that catches every signal whose default action is to ignore it (a Go program)
/// has no trap signal its death would leave harmless: it is refused with the reason, nothing
/// changed.
#[test]
fn every_harmless_signal_caught_is_refused() {
    require_root();
    let (_tmp, lower) = tmp_with_lower();
    let mut t = Testee::spawn(&lower, &["--fds", "40", "--catch-all"]);
    let masks = sig_blocked(t.pid);
    let many = many_fds(t.pid);
    let orig = fdinfo(t.pid, many[0]).mnt_id;
    t.bind(&lower, &lower);
    let r = swap(&[t.pid], &ScanOptions::new(&lower), &SwapOptions::default()).expect("swap");
    let err = r.first_error().expect("must be refused").to_string();
    assert!(
        err.contains("SIGURG") && err.contains("SIGCONT") && err.contains("catches"),
        "{err}"
    );
    assert_eq!(r.swapped().count(), 0);
    for fd in many {
        assert_eq!(fdinfo(t.pid, fd).mnt_id, orig, "fd {fd}");
    }
    assert!(!maps(t.pid).contains("rwxp"), "stub mapping left behind");
    assert_eq!(sig_blocked(t.pid), masks);
    assert_eq!(t.ask("ping", "PONG"), "PONG");
}

#[test]
fn threads_and_forks_coming_and_going() {
    require_root();
    let (_tmp, lower) = tmp_with_lower();
    let mut t = Testee::spawn(&lower, &["--fds", "200", "--churn", "--threads", "8"]);
    let orig = fdinfo(t.pid, many_fds(t.pid)[0]).mnt_id;
    for round in 0..5 {
        let top = t.bind(&lower, &lower);
        let r = swap(&[t.pid], &ScanOptions::new(&lower), &SwapOptions::default()).expect("swap");
        assert!(
            r.first_error().is_none(),
            "round {round}: {:?}",
            r.first_error()
        );
        assert!(all_on(t.pid, top));
        let r = swap_back(&t, &lower, top);
        assert!(
            r.first_error().is_none(),
            "round {round}: {:?}",
            r.first_error()
        );
        assert_on_and_alive(&mut t, orig);
    }
    // Nothing left stopped or traced.
    assert_untraced(t.pid);
}

#[test]
fn a_thread_that_cannot_stop_fails_its_process_cleanly() {
    require_root();
    let (_tmp, lower) = tmp_with_lower();
    // One thread sits in vfork() for 3 s: PTRACE_INTERRUPT cannot stop it meanwhile.
    let mut t = Testee::spawn(&lower, &["--fds", "10", "--vfork-ms", "3000"]);
    t.bind(&lower, &lower);
    let orig = fdinfo(t.pid, many_fds(t.pid)[0]).mnt_id;
    let so = SwapOptions {
        stop_timeout: Duration::from_millis(300),
        ..SwapOptions::default()
    };
    let opts = ScanOptions::new(&lower);
    let pid = t.pid;
    let swapper = std::thread::spawn(move || swap(&[pid], &opts, &so));
    // While the swap still waits for the stuck thread, the others already run again: once
    // the swapper has seized the testee, a ping is answered before the swap returns.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !traced(pid) {
        assert!(Instant::now() < deadline, "the swapper never attached");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(t.ask("ping", "PONG"), "PONG");
    assert!(
        !swapper.is_finished(),
        "the swap should still wait for the stuck thread"
    );
    let r = swapper.join().expect("join").expect("swap");
    let err = r.first_error().expect("must time out").to_string();
    assert!(err.contains("did not stop"), "{err}");
    // Nothing changed, nothing stays traced once the stuck thread could stop.
    assert_on_and_alive(&mut t, orig);
    assert_untraced(t.pid);
}

#[test]
fn several_processes_in_one_swap() {
    require_root();
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    std::fs::create_dir_all(&a).expect("mkdir");
    std::fs::create_dir_all(&b).expect("mkdir");
    let mut ta = Testee::spawn(&a, &["--fds", "50", "--threads", "3"]);
    let mut tb = Testee::spawn(&b, &["--fds", "70"]);
    // Each testee has its own mount namespace: mount the same way in both, swap the parent.
    let p = tmp.path().to_str().expect("utf8");
    for t in [&ta, &tb] {
        t.mount(&["--bind", p, p]);
    }
    let r = swap(
        &[ta.pid, tb.pid],
        &ScanOptions::new(tmp.path()),
        &SwapOptions::default(),
    )
    .expect("swap");
    assert!(r.first_error().is_none(), "{:?}", r.first_error());
    assert_eq!(r.processes.len(), 2);
    assert_eq!(r.processes[0].swapped.len(), 50);
    assert_eq!(r.processes[1].swapped.len(), 70);
    for t in [&mut ta, &mut tb] {
        let top = t.top_mount(tmp.path());
        assert_on_and_alive(t, top);
    }
}

#[test]
fn a_thread_with_its_own_fd_table_and_cwd() {
    require_root();
    let (_tmp, lower) = tmp_with_lower();
    let mut t = Testee::spawn(&lower, &["--fds", "20", "--own-tables", "--threads", "2"]);
    let top = t.bind(&lower, &lower);
    let (tid, fd) = (t.fd("own_tid"), t.fd("own_fd"));
    let task_fdinfo = |fd: i32| {
        let s = std::fs::read_to_string(format!("/proc/{}/task/{tid}/fdinfo/{fd}", t.pid))
            .expect("fdinfo");
        s.lines()
            .find_map(|l| l.strip_prefix("mnt_id:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .expect("mnt_id")
    };
    assert_ne!(task_fdinfo(fd), top);
    let r = swap(&[t.pid], &ScanOptions::new(&lower), &SwapOptions::default()).expect("swap");
    assert!(r.first_error().is_none(), "{:?}", r.first_error());
    // The main table and the thread's own table both moved, and both cwds.
    assert!(all_on(t.pid, top));
    assert_eq!(task_fdinfo(fd), top);
    let cwd = |task: i32| {
        fdswap::statx(Path::new(&format!("/proc/{}/task/{task}/cwd", t.pid)))
            .expect("cwd")
            .mnt_id
    };
    assert_eq!(cwd(tid), top);
    assert!(r.swapped().any(|s| s.item == Item::Cwd { tid }));
    assert!(
        r.swapped()
            .any(|s| s.item == Item::Fd(fd) && s.path.ends_with("own/own.txt"))
    );
    assert_eq!(t.ask("ping", "PONG"), "PONG");
}

#[test]
fn a_failing_batch_rolls_back_alone() {
    require_root();
    let (_tmp, lower, upper, mut t) = layered(300, &[]);
    let lower_many = lower.join("many");
    let orig = fdinfo(t.pid, many_fds(t.pid)[0]).mnt_id;
    mount_upper_many(&t, &upper, &lower_many);
    let top = t.top_mount(&lower_many);
    let plan = Plan::scan(&[t.pid], &ScanOptions::new(&lower)).expect("scan");
    // Batches go in inode order: make the file with the highest inode vanish.
    let last = (0..300)
        .max_by_key(|k| ino(&lower.join(format!("many/f{k}"))))
        .expect("a file");
    std::fs::remove_file(upper.join(format!("many/f{last}"))).expect("rm");
    let so = SwapOptions {
        max_batch: Some(100),
        ..SwapOptions::default()
    };
    let report = swap_plan(&plan, &so).expect("swap");
    let err = report.first_error().expect("must fail");
    let fdswap::Error::StubStep { kept, .. } = err else {
        panic!("{err}");
    };
    assert_eq!(kept.len(), 200, "{err}");
    assert!(err.to_string().contains("except 200 fds"), "{err}");
    assert_eq!(report.swapped().count(), 200);
    let mut on_top = 0;
    for fd in many_fds(t.pid) {
        let m = fdinfo(t.pid, fd).mnt_id;
        assert!(m == top || m == orig);
        on_top += usize::from(m == top);
    }
    assert_eq!(on_top, 200);
    assert_eq!(t.ask("ping", "PONG"), "PONG");
}

#[test]
fn a_target_in_its_own_pid_namespace() {
    // Like a container's init: pid 1 in its pid namespace, so the ids the tracer knows are not
    // the ones the target uses. The stub's trap must still reach the tracer.
    require_root();
    let (_tmp, lower) = tmp_with_lower();
    let mut t = Testee::spawn_in_pid_ns(&lower, &["--fds", "20", "--threads", "2"]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", t.pid)).expect("status");
    let nspid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .expect("NSpid");
    assert!(nspid.trim_end().ends_with("\t1"), "{nspid}");
    let top = t.bind(&lower, &lower);
    let r = swap(&[t.pid], &ScanOptions::new(&lower), &SwapOptions::default()).expect("swap");
    assert!(r.first_error().is_none(), "{:?}", r.first_error());
    assert_on_and_alive(&mut t, top);
}

/// Files are reopened at their own fd numbers, the gaps below them filled for the time of the
/// stub; fds opened and closed between the scan and the stop change the gaps, and the swap
/// still moves everything, leaving no placeholder behind.
#[test]
fn fd_gaps_changing_between_scan_and_swap() {
    require_root();
    let (_tmp, lower, upper, mut t) = layered(50, &[]);
    let many = many_fds(t.pid);
    assert_eq!(many.len(), 50);
    // Gaps among the files (fds 10th and 20th closed), then the upper layer.
    for fd in [many[10], many[20]] {
        assert_eq!(t.ask(&format!("close {fd}"), "CLOSED"), "CLOSED 0");
    }
    let lower_many = lower.join("many");
    mount_upper_many(&t, &upper, &lower_many);
    let mut upper_mnt = t.top_mount(&lower_many);
    let mut opened = -1;
    for round in 0..2 {
        let plan = Plan::scan(&[t.pid], &ScanOptions::new(&lower_many)).expect("scan");
        let moving: Vec<i32> = plan.processes[0].fds.iter().map(|f| f.fd).collect();
        assert_eq!(moving.len(), 48, "round {round}");
        // Between the scan and the stop: a gap filled (round 0), the same gap made again
        // (round 1).
        if round == 0 {
            let l = t.ask("open-null", "OPENED");
            opened = l["OPENED ".len()..].parse().expect("fd");
        } else {
            assert_eq!(t.ask(&format!("close {opened}"), "CLOSED"), "CLOSED 0");
        }
        let before: Vec<Info> = moving.iter().map(|&fd| fdinfo(t.pid, fd)).collect();
        let n_before = std::fs::read_dir(format!("/proc/{}/fd", t.pid))
            .expect("fd dir")
            .count();
        let report = swap_plan(&plan, &SwapOptions::default()).expect("swap");
        assert!(report.first_error().is_none(), "{:?}", report.first_error());
        assert_eq!(report.swapped().count(), 48, "round {round}");
        for (fd, b) in moving.iter().zip(&before) {
            let a = fdinfo(t.pid, *fd);
            assert_eq!(a.mnt_id, upper_mnt, "fd {fd} moved");
            assert_eq!(
                (a.pos, a.flags),
                (b.pos, b.flags),
                "fd {fd} flags and offset"
            );
        }
        assert_eq!(
            n_before,
            std::fs::read_dir(format!("/proc/{}/fd", t.pid))
                .expect("fd dir")
                .count(),
            "no placeholder or spare fd left"
        );
        if round == 0 {
            assert_eq!(
                std::fs::read_link(format!("/proc/{}/fd/{opened}", t.pid)).expect("link"),
                Path::new("/dev/null"),
                "the fd opened meanwhile is untouched"
            );
        }
        assert_eq!(t.ask("ping", "PONG"), "PONG");
        // Back to the lower files for the next round (P is where the upper one was mounted).
        let r = swap_back(&t, &lower_many, upper_mnt);
        assert!(r.first_error().is_none(), "{:?}", r.first_error());
        assert_eq!(r.swapped().count(), 48, "{:?}", r.processes[0].skipped);
        mount_upper_many(&t, &upper, &lower_many);
        upper_mnt = t.top_mount(&lower_many);
    }
}

/// A thread that opens and closes an fd all the time: the fd gaps change between the scan and
/// the stop, and the swap (which fills the gaps as they are once the process is stopped) moves
/// everything every time.
#[test]
fn fd_gaps_churning_in_another_thread() {
    require_root();
    let (_tmp, lower, upper, mut t) = layered(200, &["--fd-churn"]);
    let many = many_fds(t.pid);
    for fd in [many[0], many[50], many[150]] {
        assert_eq!(t.ask(&format!("close {fd}"), "CLOSED"), "CLOSED 0");
    }
    let lower_many = lower.join("many");
    for _ in 0..10 {
        mount_upper_many(&t, &upper, &lower_many);
        let upper_mnt = t.top_mount(&lower_many);
        let r = swap(
            &[t.pid],
            &ScanOptions::new(&lower_many),
            &SwapOptions::default(),
        )
        .expect("swap");
        assert!(r.first_error().is_none(), "{:?}", r.first_error());
        assert_eq!(r.swapped().count(), 197);
        assert!(all_on(t.pid, upper_mnt));
        let r = swap_back(&t, &lower_many, upper_mnt);
        assert!(r.first_error().is_none(), "{:?}", r.first_error());
        assert_eq!(r.swapped().count(), 197);
    }
    assert_eq!(t.ask("ping", "PONG"), "PONG");
    assert_eq!(many_fds(t.pid).len(), 197, "no spare fd left");
    let placeholders = std::fs::read_dir(format!("/proc/{}/fd", t.pid))
        .expect("fd dir")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l == Path::new("/"))
        .count();
    assert_eq!(placeholders, 0, "no placeholder left");
}

/// fd, link text, offset and flags of each fd of the testee's "many" set.
fn many_state(pid: i32) -> Vec<(i32, String, u64, u32)> {
    many_fds(pid)
        .into_iter()
        .map(|fd| {
            let i = fdinfo(pid, fd);
            (fd, link(pid, fd), i.pos, i.flags)
        })
        .collect()
}

/// The soft and hard RLIMIT_NOFILE of `pid`, from /proc/PID/limits.
fn nofile_limits(pid: i32) -> (u64, u64) {
    let l = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = l
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (v[0], v[1])
}

/// The slots of `pid`'s fd table (`FDSize`): the kernel grows it, in powers of two, to hold
/// the highest fd number ever used, and never shrinks it.
fn fd_table_size(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix("FDSize:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("FDSize")
}

/// A target holding 10,000 files with `RLIMIT_NOFILE` 20,000 soft and hard (the hard limit
/// cannot be raised here: no CAP_SYS_RESOURCE): swapped and back, every fd keeps its path,
/// offset and flags, and the swap never needed more than a batch of extra fds in the target
/// (its fd table, 16,384 slots for 10,000 fds, did not grow).
#[test]
fn ten_thousand_fds_under_a_limit_of_twenty_thousand() {
    require_root();
    let (_tmp, lower) = tmp_with_lower();
    let mut t = Testee::spawn(&lower, &["--fds", "10000", "--varied", "--nofile", "20000"]);
    // The swapper cannot raise the hard limit here (no CAP_SYS_RESOURCE) or, where it can,
    // must not need to: the swap fits in what the target has.
    assert_eq!(nofile_limits(t.pid), (20000, 20000));
    let before = many_state(t.pid);
    assert_eq!(before.len(), 10000);
    let orig = fdinfo(t.pid, before[0].0).mnt_id;
    let slots = fd_table_size(t.pid);
    assert_eq!(slots, 16384);
    let top = t.bind(&lower, &lower);
    let report = swap(&[t.pid], &ScanOptions::new(&lower), &SwapOptions::default()).expect("swap");
    assert!(report.first_error().is_none(), "{:?}", report.first_error());
    assert_eq!(report.swapped().count(), 10000);
    assert_eq!(report.processes[0].open_mode, Some(OpenMode::Handoff));
    assert_eq!(many_state(t.pid), before, "paths, offsets and flags kept");
    assert_eq!(fd_table_size(t.pid), slots, "extra fds beyond a batch");
    assert_on_and_alive(&mut t, top);
    let back = swap_back(&t, &lower, top);
    assert!(back.first_error().is_none(), "{:?}", back.first_error());
    assert_eq!(back.swapped().count(), 10000);
    assert_eq!(back.processes[0].open_mode, Some(OpenMode::Handoff));
    assert_eq!(many_state(t.pid), before, "paths, offsets and flags kept");
    assert_eq!(fd_table_size(t.pid), slots, "extra fds beyond a batch");
    assert_on_and_alive(&mut t, orig);
    assert_eq!(nofile_limits(t.pid), (20000, 20000));
}

/// Where the target may not make a socket (a seccomp filter: `socket` fails with EPERM), the
/// stub cannot receive pre-opened files: it opens them itself, and the report says so.
#[test]
fn no_socket_in_the_target_falls_back_to_in_stub_opens() {
    require_root();
    let (_tmp, lower) = tmp_with_lower();
    let mut t = Testee::spawn(&lower, &["--fds", "300", "--varied", "--no-socket"]);
    let before = many_state(t.pid);
    let top = t.bind(&lower, &lower);
    let report = swap(&[t.pid], &ScanOptions::new(&lower), &SwapOptions::default()).expect("swap");
    assert!(report.first_error().is_none(), "{:?}", report.first_error());
    assert_eq!(report.swapped().count(), 300);
    assert_eq!(report.processes[0].open_mode, Some(OpenMode::InStubOpen));
    assert_eq!(many_state(t.pid), before, "paths, offsets and flags kept");
    assert_on_and_alive(&mut t, top);
    // The filter is there: the testee itself cannot make a socket.
    assert_eq!(t.ask("socket", "SOCKET"), "SOCKET EPERM");
}
