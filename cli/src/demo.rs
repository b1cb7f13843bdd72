//! `iochaos demo`: faults appearing and disappearing under a live workload, no runtime needed.
//!
//! The demo mounts ChaosFS over a fresh directory in a private mount namespace, starts a
//! workload process (this binary, `__demo-workload DIR`) that appends a record to a journal
//! every 200 ms and reports each result and how long it took, then changes the rules while the
//! workload keeps running: writes fail with EIO, then slow down, then succeed again.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use chaosfs::rules::{RuleSet, Spec};

use crate::run::{check_privileges, enter_private_mount_namespace};

const PHASE: Duration = Duration::from_secs(3);

/// The phases: a title and a JSON spec.
const PHASES: [(&str, &str); 3] = [
    (
        "writes fail with EIO",
        r#"{"rules":[{"ops":["write"],"errno":"EIO"}]}"#,
    ),
    (
        "writes slowed by 300 ms",
        r#"{"rules":[{"ops":["write"],"latency":"300ms"}]}"#,
    ),
    ("no faults", r#"{"rules":[]}"#),
];

pub fn demo() -> anyhow::Result<()> {
    check_privileges()?;
    let base = std::env::temp_dir().join("iochaos-demo-XXXXXX");
    let dir = nix::unistd::mkdtemp(&base).context("creating the demo directory")?;
    let result = demo_in(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn demo_in(dir: &Path) -> anyhow::Result<()> {
    let phases = PHASES
        .iter()
        .map(|(title, json)| Ok((*title, Spec::from_json(json)?)))
        .collect::<chaosfs::Result<Vec<_>>>()
        .context("built-in demo rules")?;

    enter_private_mount_namespace()?;
    let mounted = chaosfs::mount_over(dir, RuleSet::empty(), chaosfs::server::Config::default())
        .with_context(|| format!("mounting ChaosFS over {}", dir.display()))?;
    println!("ChaosFS mounted over {}", dir.display());

    let exe = std::env::current_exe().context("locating the iochaos binary")?;
    let mut workload = Command::new(exe)
        .arg("__demo-workload")
        .arg(dir)
        .stdin(Stdio::null())
        .spawn()
        .context("starting the workload")?;

    let mut outcome = Ok(());
    for (title, spec) in phases {
        println!("── {title} ──");
        let rules = RuleSet::new(spec).context("compiling demo rules")?;
        let server = mounted.server();
        server.update_rules(rules);
        server.cancel_delays();
        std::thread::sleep(PHASE);
        for (i, stats) in server.stats().iter().enumerate() {
            println!(
                "   rule {i}: {} writes matched, {} faults injected",
                stats.matched, stats.injected
            );
        }
        if let Ok(Some(status)) = workload.try_wait() {
            outcome = Err(anyhow::anyhow!("the workload exited early: {status}"));
            break;
        }
    }
    let _ = workload.kill();
    let _ = workload.wait();
    let journal = std::fs::read_to_string(dir.join("journal.log")).unwrap_or_default();
    mounted.unmount().context("unmounting ChaosFS")?;
    println!(
        "ChaosFS unmounted; the journal holds {} records, one per write the workload saw succeed",
        journal.lines().count()
    );
    outcome
}

/// The workload: append a record every 200 ms and report what happened.
pub fn workload(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join("journal.log");
    for n in 1.. {
        let start = Instant::now();
        let result = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(format!("record {n}\n").as_bytes()));
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
