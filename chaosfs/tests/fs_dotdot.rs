//! The server never sends a request to its own mount. ChaosFS is mounted over its backing
//! directory, so from a child of the backing root a plain `..` lands on ChaosFS itself: a stat
//! of it is a GETATTR to this very server, which deadlocks it when the thread asking is the one
//! that would answer (here: one `/dev/fuse` thread; with io_uring, the queue of the asking
//! CPU). Listing a first-level directory (READDIRPLUS lists "..") used to do exactly that.

mod fs_support;

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chaosfs::Config;
use fs_support::*;

#[test]
fn listing_a_first_level_directory_with_one_thread_never_asks_the_mount_itself() {
    // A rule that can select getattr: attributes are not cached (TTL 0), so a stat of the
    // root always reaches the server.
    let m = mount_with(
        rules(r#"{"rules":[{"ops":["getattr"],"percent":0,"errno":"EIO"}]}"#),
        Config {
            n_threads: 1,
            ..Config::default()
        },
        |d| {
            fs::create_dir_all(d.join("a/b")).expect("prepare");
            fs::write(d.join("a/f"), b"f").expect("prepare");
        },
    );
    let mut ls = Command::new("ls")
        .arg("-la")
        .arg(m.join("a"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ls");
    // Not a timing assertion: a deadlocked server never answers, so after a minute the mount
    // is torn down (fusectl abort) to end the test with its failure instead of hanging.
    let started = Instant::now();
    while ls.try_wait().expect("waiting for ls").is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            drop(m);
            let _ = ls.kill();
            let _ = ls.wait();
            panic!("ls -la of a first-level directory deadlocked the one-thread server");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = ls.wait_with_output().expect("ls output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    for want in [".", "..", "b", "f"] {
        assert!(names.contains(&want), "{want} missing from {text}");
    }
}
