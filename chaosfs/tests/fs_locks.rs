//! Locks forwarded to the backing file (`Config::forward_locks`): a lock taken through ChaosFS
//! is seen by a process outside the mount on the backing file, an outsider's lock blocks a
//! SETLKW through ChaosFS until released (and an interrupt ends the wait), flock likewise, and
//! SQLite in WAL mode shared between a process on the mount and one outside keeps its
//! exclusion. Two real processes each time (python3). Needs root, /dev/fuse, python3.

mod fs_support;

use std::process::Command;
use std::time::Duration;

use chaosfs::Config;
use chaosfs::rules::RuleSet;
use fs_support::*;

fn locks() -> Config {
    Config {
        forward_locks: true,
        ..Config::default()
    }
}

/// Wait until `py` blocks in syscall `nr` (its main thread, as `/proc/PID/syscall` shows).
fn wait_in_syscall(py: &Py, nr: i64) {
    let want = format!("{nr} ");
    iochaos_testsupport::wait_until("the caller to block", Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{}/syscall", py.pid()))
            .is_ok_and(|s| s.starts_with(&want))
    });
}

/// F_GETLK of a whole-file write lock from `py` on its fd `f`: prints the holder's type and pid.
const GETLK: &str = "r = fcntl.fcntl(f, fcntl.F_GETLK, struct.pack('hhqqi', fcntl.F_WRLCK, 0, 0, 0, 0)); t, _, _, _, p = struct.unpack('hhqqi', r); print(t, p)";

#[test]
fn an_outsider_sees_a_lock_taken_through_chaosfs() {
    let m = mount_with(RuleSet::empty(), locks(), |d| {
        std::fs::write(d.join("db"), b"data").expect("prepare");
    });
    let mut target = Py::start();
    let mut outsider = Py::start();
    target.ok(&format!("f = open({}, 'r+')", py_path(&m.join("db"))));
    outsider.ok(&format!("f = open({}, 'r+')", py_path(&m.backing("db"))));
    outsider.send(GETLK);
    assert_eq!(outsider.answer(), format!("{} 0", libc::F_UNLCK));
    assert_eq!(outsider.answer(), "ok");
    target.ok("fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)");
    // The outsider cannot take it, and F_GETLK on the backing file reports it (held by an open
    // file description of the server: pid -1).
    assert!(
        outsider
            .run("fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)")
            .contains("BlockingIOError"),
        "the outsider got the lock the target holds"
    );
    outsider.send(GETLK);
    assert_eq!(outsider.answer(), format!("{} -1", libc::F_WRLCK));
    assert_eq!(outsider.answer(), "ok");
    // Closing the file through ChaosFS drops the lock (FLUSH), as close(2) does natively. The
    // server runs inside this test process, whose other tests fork children: until such a
    // child execs it holds a copy of the server's lock fd, which keeps the open file
    // description (and its OFD lock) alive for those microseconds. So the outsider tries until
    // it gets the lock; it never would if the FLUSH had not dropped it.
    target.ok("f.close()");
    iochaos_testsupport::wait_until(
        "the outsider to get the lock the target's close dropped",
        std::time::Duration::from_secs(10),
        || outsider.run("fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)") == "ok",
    );
    // Now the target sees the outsider's lock through ChaosFS, with its pid.
    target.ok(&format!("f = open({}, 'r+')", py_path(&m.join("db"))));
    target.send(GETLK);
    assert_eq!(
        target.answer(),
        format!("{} {}", libc::F_WRLCK, outsider.pid())
    );
    assert_eq!(target.answer(), "ok");
}

#[test]
fn an_outsiders_lock_blocks_setlkw_until_released_and_an_interrupt_ends_the_wait() {
    let m = mount_with(RuleSet::empty(), locks(), |d| {
        std::fs::write(d.join("db"), b"data").expect("prepare");
    });
    let mut target = Py::start();
    let mut outsider = Py::start();
    target.ok(&format!("f = open({}, 'r+')", py_path(&m.join("db"))));
    outsider.ok(&format!("f = open({}, 'r+')", py_path(&m.backing("db"))));
    outsider.ok("fcntl.lockf(f, fcntl.LOCK_EX)");
    // The target waits (SETLKW): its answer comes only after the outsider unlocks.
    target.send("fcntl.lockf(f, fcntl.LOCK_EX)");
    wait_in_syscall(&target, libc::SYS_fcntl);
    outsider.ok("fcntl.lockf(f, fcntl.LOCK_UN)");
    assert_eq!(target.answer(), "ok", "SETLKW after the outsider's unlock");
    assert!(
        outsider
            .run("fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)")
            .contains("BlockingIOError"),
        "the target's lock, granted after the wait, is a real one"
    );
    target.ok("f.close()");
    // An interrupt (a signal with a handler) ends a wait with EINTR; the mount serves on.
    outsider.ok("fcntl.lockf(f, fcntl.LOCK_EX)");
    target.ok("import signal; signal.signal(signal.SIGUSR1, lambda *a: None); signal.siginterrupt(signal.SIGUSR1, True)");
    target.ok(&format!("f = open({}, 'r+')", py_path(&m.join("db"))));
    target.send("fcntl.lockf(f, fcntl.LOCK_EX)");
    wait_in_syscall(&target, libc::SYS_fcntl);
    iochaos_testsupport::kill(target.pid(), iochaos_testsupport::Signal::USR1).expect("SIGUSR1");
    // Python retries EINTR after running the handler (PEP 475): the wait starts again, so
    // the lock is still not granted; the first wait's interrupt was answered.
    iochaos_testsupport::wait_until("the interrupt", Duration::from_secs(10), || {
        m.server().interrupt_stats().answered >= 1
    });
    outsider.ok("fcntl.lockf(f, fcntl.LOCK_UN)");
    assert_eq!(target.answer(), "ok");
}

#[test]
fn flock_is_forwarded_both_ways() {
    let m = mount_with(RuleSet::empty(), locks(), |d| {
        std::fs::write(d.join("lk"), b"").expect("prepare");
    });
    let mut target = Py::start();
    let mut outsider = Py::start();
    target.ok(&format!("f = open({}, 'r')", py_path(&m.join("lk"))));
    outsider.ok(&format!("f = open({}, 'r')", py_path(&m.backing("lk"))));
    target.ok("fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)");
    assert!(
        outsider
            .run("fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)")
            .contains("BlockingIOError")
    );
    target.ok("fcntl.flock(f, fcntl.LOCK_UN)");
    outsider.ok("fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)");
    // Shared with shared is fine, exclusive waits for the outsider.
    target.ok("fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)");
    target.ok("fcntl.flock(f, fcntl.LOCK_UN)");
    target.send("fcntl.flock(f, fcntl.LOCK_EX)");
    wait_in_syscall(&target, libc::SYS_flock);
    outsider.ok("fcntl.flock(f, fcntl.LOCK_UN)");
    assert_eq!(target.answer(), "ok");
    // Closing the last fd of the file drops the flock: the kernel sends RELEASE (with its
    // flock-unlock flag) in the background after close() returned, so the outsider waits for
    // it (a blocking flock; the alarm only ends a test that would otherwise hang).
    target.ok("f.close()");
    outsider.ok("import signal; signal.alarm(60); fcntl.flock(f, fcntl.LOCK_EX); signal.alarm(0)");
}

/// A second path to a directory that does not go through the ChaosFS mounted over it later: a
/// private bind mount, unmounted on drop. (SQLite resolves the symlinks of a database path, so
/// `TestMount::backing`'s `/proc/PID/fd/N` path would lead it back onto the mount.)
struct Bind {
    dir: tempfile::TempDir,
}

impl Bind {
    fn new() -> Bind {
        Bind {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn of(&self, src: &std::path::Path) {
        for args in [
            vec![
                "--bind".as_ref(),
                src.as_os_str(),
                self.dir.path().as_os_str(),
            ],
            vec!["--make-private".as_ref(), self.dir.path().as_os_str()],
        ] {
            let out = Command::new("mount").args(args).output().expect("mount");
            iochaos_testsupport::expect_success(&out, "mount --bind");
        }
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        // Lazily: the killed python processes may not have closed their files yet.
        let _ = Command::new("umount")
            .arg("--lazy")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn sqlite_wal_shared_between_the_mount_and_outside_keeps_exclusion() {
    let outside = Bind::new();
    let m = mount_with(RuleSet::empty(), locks(), |d| outside.of(d));
    let mut target = Py::start();
    let mut outsider = Py::start();
    target.ok(&format!(
        "c = sqlite3.connect({}, timeout=30, isolation_level=None)",
        py_path(&m.join("t.db"))
    ));
    target.ok("c.execute('pragma journal_mode=wal'); c.execute('create table t(k integer primary key, n integer)'); c.execute('insert into t values (1, 0)')");
    outsider.ok(&format!(
        "c = sqlite3.connect({}, timeout=30, isolation_level=None)",
        py_path(&outside.dir.path().join("t.db"))
    ));
    // The outsider holds the write lock (WAL: a lock on a byte of the -shm file): the target
    // must not get it through ChaosFS meanwhile ("database is locked" at once: no busy
    // timeout). Without forwarding it would, as its lock would be local to the mount.
    outsider.ok("c.execute('begin immediate'); c.execute('update t set n = n + 1')");
    target.ok("c.execute('pragma busy_timeout=0')");
    assert!(
        target
            .run("c.execute('begin immediate')")
            .contains("locked"),
        "the target got the write lock the outsider holds"
    );
    // And the other way round.
    outsider.ok("c.execute('commit')");
    target.ok("c.execute('begin immediate'); c.execute('update t set n = n + 1')");
    outsider.ok("c.execute('pragma busy_timeout=0')");
    assert!(
        outsider
            .run("c.execute('begin immediate')")
            .contains("locked"),
        "the outsider got the write lock the target holds"
    );
    target.ok("c.execute('commit')");
    target.ok("c.execute('pragma busy_timeout=30000')");
    outsider.ok("c.execute('pragma busy_timeout=30000')");
    // Both increment 200 times each, interleaved.
    let inc = "for _ in range(200): c.execute('begin immediate'); c.execute('update t set n = n + 1'); c.execute('commit')";
    target.send(inc);
    outsider.send(inc);
    assert_eq!(target.answer(), "ok");
    assert_eq!(outsider.answer(), "ok");
    outsider.send("print(c.execute('select n from t').fetchone()[0], c.execute('pragma integrity_check').fetchone()[0])");
    assert_eq!(
        outsider.answer(),
        "402 ok",
        "lost updates or a damaged database"
    );
    assert_eq!(outsider.answer(), "ok");
}
