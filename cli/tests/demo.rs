//! `iochaos demo` end to end: the README's first command must show faults appearing in a running
//! process and disappearing again, and every write the workload saw succeed must be on disk.
//! Needs root and /dev/fuse; fails loudly without them.

use std::process::Command;

#[test]
fn demo_shows_eio_then_latency_then_success_and_loses_nothing() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the demo mounts FUSE and traces its workload: run as root"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_iochaos"))
        .arg("demo")
        .output()
        .expect("spawning iochaos demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let writes: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("write "))
        .collect();
    let failed = writes.iter().filter(|l| l.contains("FAILED")).count();
    let ok = writes.iter().filter(|l| l.contains(": ok ")).count();
    let slow = writes
        .iter()
        .filter(|l| l.contains(": ok "))
        .filter_map(|l| l.split_whitespace().nth(3)?.parse::<f64>().ok())
        .filter(|ms| *ms >= 300.0)
        .count();
    assert!(failed > 0, "no write failed under EIO:\n{stdout}");
    assert!(
        writes
            .iter()
            .all(|l| !l.contains("FAILED") || l.contains("Input/output error")),
        "a write failed with something other than EIO:\n{stdout}"
    );
    assert!(slow > 0, "no write took the 300 ms latency:\n{stdout}");
    // After recover the last writes succeed quickly again.
    let last = writes.last().expect("the workload wrote");
    assert!(
        last.contains(": ok "),
        "last write did not succeed:\n{stdout}"
    );
    let records: usize = stdout
        .lines()
        .find_map(|l| {
            l.split("journal holds ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .expect("the demo reports the journal size");
    assert_eq!(
        records, ok,
        "every write seen to succeed, and only those, is on disk"
    );
}
