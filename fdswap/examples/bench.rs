//! fdswap benchmark: the target's pause (first thread stopped to last thread resumed) and the
//! whole swap time (scan included), for 1, 100, 1,000 and 10,000 fds with 1 and 64 threads,
//! both directions (inject: onto a bind mount on top; recover: back after a lazy unmount).
//!
//! Needs root. Run `bench/fdswap.sh` (builds in release mode and runs this).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fdswap::{ScanOptions, SwapOptions, swap};

struct Target {
    child: Child,
    pid: i32,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn testee() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join("fdswap-testee")
}

fn spawn(dir: &Path, fds: usize, threads: usize) -> Target {
    let mut child = Command::new(testee())
        .arg("serve")
        .arg(dir)
        .args(["--unshare", "--fds", &fds.to_string()])
        .args(["--threads", &(threads - 1).to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn fdswap-testee (build it: cargo build --release -p fdswap --bins)");
    let out = child.stdout.take().expect("stdout");
    for l in BufReader::new(out).lines() {
        if l.expect("read").starts_with("READY") {
            break;
        }
    }
    let pid = child.id() as i32;
    Target { child, pid }
}

fn nsenter(pid: i32, args: &[&str]) {
    let st = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m"])
        .args(args)
        .status()
        .expect("nsenter");
    assert!(st.success(), "{args:?}");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    assert!(nix::unistd::geteuid().is_root(), "the benchmark needs root");
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    println!(
        "fdswap benchmark: median of {reps} runs; pause = target threads stopped, total = scan + swap"
    );
    println!(
        "{:>7} {:>7} | {:>12} {:>12} {:>12} | {:>12} {:>12}",
        "fds",
        "threads",
        "inject pause",
        "(in stub)",
        "inject total",
        "recover pause",
        "recover total"
    );
    for &threads in &[1usize, 64] {
        for &fds in &[1usize, 100, 1000, 10000] {
            let tmp = tempfile::tempdir().expect("tempdir");
            let dir = tmp.path().join("data");
            std::fs::create_dir_all(&dir).expect("mkdir");
            let mut t = spawn(&dir, fds, threads);
            let d = dir.to_str().expect("utf8");
            let (mut ip, mut is, mut it, mut rp, mut rt) = (vec![], vec![], vec![], vec![], vec![]);
            for _ in 0..reps {
                nsenter(t.pid, &["mount", "--bind", d, d]);
                let r =
                    swap(&[t.pid], &ScanOptions::new(&dir), &SwapOptions::default()).expect("swap");
                assert!(r.first_error().is_none(), "{:?}", r.first_error());
                assert_eq!(r.swapped().count(), fds);
                assert!(r.processes[0].threads >= threads);
                ip.push(ms(r.max_pause()));
                is.push(ms(r.processes[0].stub_time));
                it.push(ms(r.total));
                let upper = r.swapped().next().map(|s| s.to_mnt);
                nsenter(t.pid, &["umount", "-l", d]);
                let back = ScanOptions {
                    from_mnt: upper,
                    ..ScanOptions::new(&dir)
                };
                let r = swap(&[t.pid], &back, &SwapOptions::default()).expect("swap back");
                assert!(r.first_error().is_none(), "{:?}", r.first_error());
                assert_eq!(r.swapped().count(), fds);
                rp.push(ms(r.max_pause()));
                rt.push(ms(r.total));
            }
            println!(
                "{fds:>7} {threads:>7} | {:>9.2} ms {:>9.2} ms {:>9.2} ms | {:>10.2} ms {:>10.2} ms",
                median(ip),
                median(is),
                median(it),
                median(rp),
                median(rt)
            );
            if let Some(stdin) = t.child.stdin.as_mut() {
                let _ = writeln!(stdin, "quit");
            }
        }
    }
}
