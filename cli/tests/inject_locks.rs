//! A target's record locks and flocks stay visible to processes outside the injection: before
//! `iochaos inject`, while injected, and after `iochaos recover` (privileged: root, FUSE,
//! ptrace, python3; fails without them).

mod inject_common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use inject_common::{EIO_ON_WRITE, Env};

/// The target: in a private mount namespace, holds a POSIX write lock (`lockf`) on `w`, a
/// POSIX read lock on `r` and a `flock` on `fl`; on each line of input it takes its write lock
/// on `w` again (its own lock: granted) and answers "ok".
const TARGET: &str = r#"
import fcntl, os, struct, sys
d = sys.argv[1]
w = open(os.path.join(d, 'w'), 'r+'); r = open(os.path.join(d, 'r'), 'r')
fl = open(os.path.join(d, 'fl'), 'r')
fcntl.lockf(w, fcntl.LOCK_EX | fcntl.LOCK_NB)
fcntl.fcntl(r, fcntl.F_SETLK, struct.pack('hhqqi4x', fcntl.F_RDLCK, 0, 0, 0, 0))
fcntl.flock(fl, fcntl.LOCK_EX | fcntl.LOCK_NB)
print('locked', flush=True)
for line in sys.stdin:
    fcntl.lockf(w, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print('ok', flush=True)
"#;

/// The outsider (on the host: the backing files): for `w` and `r`, the type F_GETLK reports
/// for a whole-file write lock and whether F_SETLK of it fails with EAGAIN; for `fl`, whether
/// `flock(LOCK_EX|LOCK_NB)` fails with EWOULDBLOCK.
const OUTSIDER: &str = r#"
import errno, fcntl, os, struct, sys
d = sys.argv[1]
out = []
for n in ('w', 'r'):
    f = open(os.path.join(d, n), 'r+')
    wr = struct.pack('hhqqi4x', fcntl.F_WRLCK, 0, 0, 0, 0)
    out.append(str(struct.unpack('hhqqi4x', fcntl.fcntl(f, fcntl.F_GETLK, wr))[0]))
    try:
        fcntl.fcntl(f, fcntl.F_SETLK, wr)
        out.append('granted')
    except OSError as e:
        out.append(errno.errorcode[e.errno])
f = open(os.path.join(d, 'fl'), 'r')
try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    out.append('granted')
except OSError as e:
    out.append(errno.errorcode[e.errno])
print(' '.join(out))
"#;

/// What the outsider sees while the target holds all three locks.
const HELD: &str = "1 EAGAIN 0 EAGAIN EAGAIN";

struct Target {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Target {
    fn start(dir: &Path) -> Target {
        let mut child = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "python3",
                "-c",
                TARGET,
            ])
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning the target");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut t = Target {
            child,
            stdin,
            stdout,
        };
        assert_eq!(t.line(), "locked");
        t
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.stdout.read_line(&mut l).expect("reading the target");
        l.trim().to_owned()
    }

    /// The target takes its write lock again: its own lock, granted ("ok").
    fn relock(&mut self) -> String {
        writeln!(self.stdin, "again").expect("writing to the target");
        self.line()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn outsider(dir: &Path) -> String {
    let out = Command::new("python3")
        .args(["-c", OUTSIDER])
        .arg(dir)
        .output()
        .expect("spawning python3");
    iochaos_testsupport::expect_success(&out, "the outsider's lock checks")
        .trim()
        .to_owned()
}

#[test]
fn a_targets_locks_are_seen_from_outside_before_during_and_after_an_injection() {
    let env = Env::new();
    iochaos_testsupport::require_tools(&["python3", "unshare"]);
    let dir = env.path().join("vol");
    std::fs::create_dir(&dir).expect("mkdir");
    for n in ["w", "r", "fl"] {
        std::fs::write(dir.join(n), "data").expect("seeding");
    }
    let mut t = Target::start(&dir);
    let pid = t.child.id().to_string();
    let vol = dir.to_str().expect("utf-8 path");
    let before = (outsider(&dir), t.relock());
    env.inject(&["--pid", &pid], vol, EIO_ON_WRITE);
    let swapped: Vec<String> = env.status()[0]["swapped"]
        .as_array()
        .expect("swapped")
        .iter()
        .filter_map(|s| s["path"].as_str().map(str::to_owned))
        .collect();
    let during = (outsider(&dir), t.relock());
    env.ok(&["recover", "--pid", &pid]);
    let after = (outsider(&dir), t.relock());
    let held = (HELD.to_owned(), "ok".to_owned());
    assert_eq!(
        [before, during, after],
        [held.clone(), held.clone(), held],
        "(outsider: F_GETLK type and F_SETLK of w and r, flock of fl; target's relock) \
         before, during and after the injection"
    );
    // The record-locked files were on ChaosFS (the flocked one stays: its lock belongs to
    // the description).
    for n in ["w", "r"] {
        let p = format!("{vol}/{n}");
        assert!(swapped.contains(&p), "{p} not swapped: {swapped:?}");
    }
}
