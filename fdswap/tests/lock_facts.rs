//! The kernel facts the lock hand-over of a swap is built on (docs/fdswap.md, "Locks"), checked
//! on this kernel with a real process (python3).

use std::process::Command;

/// One process, one file: a POSIX lock taken through fd `a`, probed with OFD locks through a
/// second description `b` of the same file (an OFD lock's owner is the description, a POSIX
/// lock's the fd table), and a third fd opened and closed.
const FACTS: &str = r#"
import fcntl, os, struct, errno, sys
F_OFD_GETLK, F_OFD_SETLK = 36, 37
p = sys.argv[1]
open(p, 'w').write('x' * 100)
def fl(t): return struct.pack('hhqqi4x', t, 0, 0, 0, 0)
def ofd(fd, cmd, t):
    try:
        return struct.unpack('hhqqi4x', fcntl.fcntl(fd, cmd, fl(t)))[0]
    except OSError as e:
        return -e.errno
a = os.open(p, os.O_RDWR); b = os.open(p, os.O_RDWR)
fcntl.lockf(a, fcntl.LOCK_EX)
print('ofd write vs own posix write:', ofd(b, F_OFD_SETLK, fcntl.F_WRLCK) == -errno.EAGAIN)
fcntl.lockf(a, fcntl.LOCK_UN)
fcntl.fcntl(a, fcntl.F_SETLK, fl(fcntl.F_RDLCK))
print('ofd read vs own posix read granted:', ofd(b, F_OFD_SETLK, fcntl.F_RDLCK) == fcntl.F_RDLCK)
ofd(b, F_OFD_SETLK, fcntl.F_UNLCK)
fcntl.lockf(a, fcntl.LOCK_EX)
print('own posix lock seen by ofd getlk:', ofd(b, F_OFD_GETLK, fcntl.F_WRLCK) == fcntl.F_WRLCK)
c = os.open(p, os.O_RDONLY)
os.close(c)
print('close of another fd dropped it:', ofd(b, F_OFD_GETLK, fcntl.F_WRLCK) == fcntl.F_UNLCK)
"#;

#[test]
fn ofd_and_posix_locks_of_one_process_conflict_and_any_close_drops_posix_locks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = Command::new("python3")
        .args(["-c", FACTS])
        .arg(tmp.path().join("f"))
        .output()
        .expect("python3 must be installed for this test");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "ofd write vs own posix write: True",
            "ofd read vs own posix read granted: True",
            "own posix lock seen by ofd getlk: True",
            "close of another fd dropped it: True",
        ]
    );
}
