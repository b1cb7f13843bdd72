//! `iochaos crash ID`: cut the power on a crash-mode injection (docs/crash.md) through its
//! server's Chaos API, and print what each file lost.

use std::time::Duration;

use anyhow::Context;
use engine::api::{ChaosClient, CrashOptions, CrashedFile};

use crate::inject::journal;
use crate::run::{Needs, check_privileges};
use crate::status::{entry, escape};

/// How long the server has to kill, roll back and recover.
const CRASH_TIMEOUT: Duration = Duration::from_secs(120);
/// How long to wait for the server to exit afterwards.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

pub fn crash(id: &str, opts: CrashOptions, json: bool) -> anyhow::Result<i32> {
    check_privileges(Needs::MountAndTrace)?;
    let journal = journal()?;
    let e = entry(&journal, id)?;
    let client = ChaosClient::connect(&journal.socket_path(&e.id))
        .with_context(|| format!("injection {}: its server does not answer", e.id))?
        .with_timeout(CRASH_TIMEOUT);
    let report = client
        .crash(opts)
        .with_context(|| format!("crashing injection {}", e.id))?;
    drop(client);
    if let Some(pid) = e.server_pid {
        engine::target::wait_exit(pid, EXIT_TIMEOUT);
    }
    if json {
        let mut v = serde_json::to_value(&report).context("encoding the crash report")?;
        if let Some(o) = v.as_object_mut() {
            o.insert("id".into(), serde_json::Value::String(e.id.to_string()));
        }
        crate::output::print_json(&v)?;
        return Ok(0);
    }
    println!(
        "{}: killed {} process(es), rolled back {} file(s)",
        e.id,
        report.killed.len(),
        report.files.len()
    );
    if let Some(seed) = report.seed {
        println!("  seed {seed}");
    }
    print_files(&report.files, false);
    for f in &report.recovered.failed {
        let (fd, reason) = crate::status::fd_entry(f);
        eprintln!("iochaos: {}: {fd} left on the old mount: {reason}", e.id);
    }
    Ok(0)
}

/// One line per file of what a crash dropped, on stdout (or stderr: `iochaos run`, whose
/// stdout is its command's).
pub fn print_files(files: &[CrashedFile], stderr: bool) {
    for f in files {
        let line = format!(
            "  {}: dropped {} bytes (size {} -> {}, {} bytes restored)",
            escape(&f.path),
            f.dropped_bytes,
            f.size_at_crash,
            f.durable_size,
            f.restored_bytes
        );
        let torn = f
            .writes
            .iter()
            .filter(|w| w.kept > 0 && w.kept < w.len)
            .count();
        let whole = f.writes.iter().filter(|w| w.kept == w.len).count();
        let line = if f.writes.is_empty() {
            line
        } else {
            format!(
                "{line}; of {} unsynced writes {whole} kept, {torn} torn ({} bytes kept)",
                f.writes.len(),
                f.kept_bytes
            )
        };
        if stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
}
