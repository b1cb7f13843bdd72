//! `iochaos demo`: faults appearing in, and disappearing from, a process that is already running.
//!
//! The demo starts a workload (this binary, `__demo-workload DIR`, in a private mount namespace
//! of its own so nothing propagates to the host) that opens a journal once and appends a record
//! through that fd every 200 ms, reporting each result and how long it took. Then it drives the
//! real CLI against the running workload, printing each command: `inject` (writes fail with EIO
//! — the open fd is moved onto ChaosFS under the running process), `update` (writes take 300 ms),
//! `status`, and `recover` (writes succeed again, the fd is back on the original filesystem).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::run::{Needs, check_privileges};

/// Kills and reaps the workload, and recovers the injection, whatever happens.
struct Session {
    exe: PathBuf,
    workload: Child,
    injection: Option<String>,
}

impl Session {
    /// Run `iochaos ARGS`, echoing the command; returns its stdout.
    fn iochaos(&self, args: &[&str]) -> anyhow::Result<String> {
        println!("── iochaos {} ──", args.join(" "));
        let start = Instant::now();
        let out = Command::new(&self.exe)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running iochaos {}", args[0]))?;
        if !out.status.success() {
            bail!(
                "iochaos {} failed: {}",
                args[0],
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        println!("   (returned in {:.1} ms)", ms(start.elapsed()));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(id) = self.injection.take() {
            let _ = Command::new(&self.exe)
                .args(["recover", &id])
                .stdout(Stdio::null())
                .status();
        }
        let _ = self.workload.kill();
        let _ = self.workload.wait();
    }
}

pub fn demo() -> anyhow::Result<()> {
    check_privileges(Needs::MountAndTrace)?;
    let base = std::env::temp_dir().join("iochaos-demo-XXXXXX");
    let dir = nix::unistd::mkdtemp(&base).context("creating the demo directory")?;
    let result = demo_in(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn demo_in(dir: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the iochaos binary")?;
    let d = dir
        .to_str()
        .context("the temporary directory is not UTF-8")?;
    // `unshare` execs the workload, so its pid is the workload's.
    let workload = Command::new("unshare")
        .args(["--mount", "--propagation", "private"])
        .arg(&exe)
        .arg("__demo-workload")
        .arg(dir)
        .stdin(Stdio::null())
        .spawn()
        .context("starting the workload (needs `unshare` from util-linux)")?;
    let pid = workload.id().to_string();
    let mut session = Session {
        exe,
        workload,
        injection: None,
    };
    println!(
        "workload pid {pid} keeps {d}/journal.log open and appends a record every 200 ms\n── no faults ──"
    );
    std::thread::sleep(Duration::from_millis(1200));

    let out = session.iochaos(&[
        "inject", "--pid", &pid, "--path", d, "--errno", "EIO", "--ops", "write",
    ])?;
    let id = out.trim().to_owned();
    session.injection = Some(id.clone());
    std::thread::sleep(Duration::from_secs(3));

    session.iochaos(&["update", &id, "--latency", "300ms", "--ops", "write"])?;
    std::thread::sleep(Duration::from_secs(3));
    print!("{}", indent(&session.iochaos(&["status", &id])?));

    session.iochaos(&["recover", &id])?;
    session.injection = None;
    std::thread::sleep(Duration::from_secs(2));

    if let Ok(Some(status)) = session.workload.try_wait() {
        bail!("the workload exited early: {status}");
    }
    drop(session);
    let journal = std::fs::read_to_string(dir.join("journal.log")).unwrap_or_default();
    println!(
        "workload stopped; the journal holds {} records, one per write the workload saw succeed",
        journal.lines().count()
    );
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("   {l}\n")).collect()
}

/// The workload: append a record every 200 ms through one open fd and report what happened.
pub fn workload(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join("journal.log");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    for n in 1.. {
        let start = Instant::now();
        let result = file.write_all(format!("record {n}\n").as_bytes());
        let took = start.elapsed();
        match result {
            Ok(()) => println!("   write {n:3}: ok       {:7.1} ms", ms(took)),
            Err(e) => println!("   write {n:3}: FAILED   {:7.1} ms  {e}", ms(took)),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
