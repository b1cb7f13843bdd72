//! fdswap benchmark: the target's pause (first thread stopped to last thread resumed) and the
//! whole swap time, for 1, 100, 1,000 and 10,000 fds with 1 and 64 threads, both directions
//! (inject: onto a bind mount on top; recover: back after a lazy unmount). Inject also shows the
//! CPU time the target's threads used during the swap and the time they waited for a CPU
//! (schedstat): on a busy machine the pause is that CPU time plus the wait. Inject's total is
//! the stop-and-swap only (the scan is done before); recover's total includes its scan.
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
    let pid = i32::try_from(child.id()).expect("a pid_t");
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

/// CPU time the target's threads ran and waited for a CPU (ns), from schedstat.
fn sched(pid: i32) -> (u64, u64) {
    let mut cpu = 0;
    let mut wait = 0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let s = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            let v: Vec<u64> = s
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            cpu += v.first().copied().unwrap_or(0);
            wait += v.get(1).copied().unwrap_or(0);
        }
    }
    (cpu, wait)
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
        "fdswap benchmark, median of {reps} runs. pause: target threads stopped; target cpu / cpu wait: \
         CPU time the target's threads ran / waited for a CPU during the swap; inject total: \
         stop + swap (scanned before); recover total: scan + stop + swap"
    );
    println!(
        "{:>7} {:>7} | {:>12} {:>12} {:>12} {:>12} | {:>12} {:>12}",
        "fds",
        "threads",
        "inject pause",
        "target cpu",
        "cpu wait",
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
            let (mut ip, mut ic, mut iw, mut it, mut rp, mut rt) =
                (vec![], vec![], vec![], vec![], vec![], vec![]);
            for _ in 0..reps {
                nsenter(t.pid, &["mount", "--bind", d, d]);
                let plan = fdswap::Plan::scan(&[t.pid], &ScanOptions::new(&dir)).expect("scan");
                let (c0, w0) = sched(t.pid);
                let r = fdswap::swap_plan(&plan, &SwapOptions::default()).expect("swap");
                let (c1, w1) = sched(t.pid);
                ic.push((c1 - c0) as f64 / 1e6);
                iw.push((w1 - w0) as f64 / 1e6);
                assert!(r.first_error().is_none(), "{:?}", r.first_error());
                assert_eq!(r.swapped().count(), fds);
                assert!(r.processes[0].threads >= threads);
                ip.push(ms(r.max_pause()));
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
                "{fds:>7} {threads:>7} | {:>9.2} ms {:>9.2} ms {:>9.2} ms {:>9.2} ms | {:>10.2} ms {:>10.2} ms",
                median(ip),
                median(ic),
                median(iw),
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
