//! `iochaos recover`: through the injection server's Chaos API when it answers, from the journal
//! and `/proc` alone when it does not (killed, crashed, hung).

use std::time::Duration;

use anyhow::{Context, bail};
use engine::adapters::fdswap::FdSwapper;
use engine::api::{ChaosClient, RecoverReport};
use engine::inject::recover_from_journal;
use engine::journal::{Entry, InjectionId, Journal};
use engine::target::NsId;

use crate::args::RecoverWhat;
use crate::inject::{journal, one_line};
use crate::progress::Progress;
use crate::run::{Needs, check_privileges};
use crate::status::fd_entry;

/// How long a server has to answer `Recover` (it swaps every fd back).
const RECOVER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for a recovered server to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// `recover CONTAINER` with CONTAINER in any syntax of [`crate::targets`]: its id and namespace
/// as the journal records them.
pub fn resolve(what: RecoverWhat) -> anyhow::Result<RecoverWhat> {
    Ok(match what {
        RecoverWhat::IdOrContainer {
            name,
            namespace,
            state_dir,
        } => {
            let n = crate::targets::resolve(&name, &namespace)?;
            RecoverWhat::IdOrContainer {
                namespace: n.lookup_namespace(&state_dir).to_owned(),
                name: n.id,
                state_dir,
            }
        }
        other => other,
    })
}

pub fn recover(what: RecoverWhat, json: bool) -> anyhow::Result<i32> {
    check_privileges(Needs::MountAndTrace)?;
    // Until everything is gone: every step wakes another thread or process (see CpuLatency).
    let _latency = engine::adapters::fdswap::CpuLatency::hold();
    let journal = journal()?;
    let entries = journal.list().context("reading the journal")?;
    let selected: Vec<Entry> = match &what {
        RecoverWhat::All => entries,
        RecoverWhat::Pid(pid) => {
            let ns = NsId::of(*pid, "mnt").ok();
            let v: Vec<Entry> = entries
                .into_iter()
                .filter(|e| {
                    e.target.pid == *pid
                        || e.pids.iter().any(|p| p.pid == *pid)
                        || ns.is_some_and(|n| n.ino == e.target.mnt_ns)
                })
                .collect();
            if v.is_empty() {
                bail!("no injection targets pid {pid}");
            }
            v
        }
        RecoverWhat::IdOrContainer {
            name,
            namespace,
            state_dir,
        } => {
            let by_id: Vec<Entry> = entries
                .iter()
                .filter(|e| e.id.as_str() == name)
                .cloned()
                .collect();
            if !by_id.is_empty() {
                by_id
            } else if let Some(shim) = crate::status::shim_for(name, namespace, state_dir)? {
                // The container's own shim made the injection: it recovers it and keeps
                // running the container.
                let shim = shim.with_timeout(RECOVER_TIMEOUT);
                let id = shim.status()?.id;
                let progress = Progress::start(format!("recovering container {namespace}/{name}"));
                let report = shim.recover().with_context(|| {
                    format!("recovering container {namespace}/{name} through its shim")
                })?;
                drop(progress);
                report_recovered(&id, &report);
                if json {
                    crate::output::print_json(&serde_json::Value::Array(vec![
                        crate::output::recovered_json(&id, &report)?,
                    ]))?;
                } else {
                    println!("{id}");
                }
                return Ok(0);
            } else {
                let v: Vec<Entry> = entries
                    .into_iter()
                    .filter(|e| {
                        e.target
                            .container
                            .as_ref()
                            .is_some_and(|c| c.id == *name && c.namespace == *namespace)
                    })
                    .collect();
                if v.is_empty() {
                    if InjectionId::parse(name).is_ok() {
                        bail!("no injection {name}");
                    }
                    bail!(
                        "no injection {name:?}: neither an injection id nor an injected container \
                         {namespace}/{name}"
                    );
                }
                v
            }
        }
    };
    let mut failed = Vec::new();
    let mut recovered = Vec::new();
    for e in &selected {
        let progress = Progress::start(format!(
            "recovering {}: moving {} fd(s) back",
            e.id,
            e.swapped.len()
        ));
        let result = recover_one(&journal, e);
        drop(progress);
        match result {
            Ok(report) => {
                report_recovered(&e.id, &report);
                if json {
                    recovered.push(crate::output::recovered_json(e.id.as_str(), &report)?);
                } else {
                    println!("{}", e.id);
                }
            }
            Err(err) => failed.push(format!("{}: {}", e.id, one_line(err.as_ref()))),
        }
    }
    if json {
        crate::output::print_json(&serde_json::Value::Array(recovered))?;
    }
    match failed.as_slice() {
        [] => Ok(0),
        [one] => bail!("recovering {one}"),
        many => bail!("recovering {}", many.join("; ")),
    }
}

/// Is `pid` the injection server of this journal (and not a process that reused its pid)? An
/// iochaos containerd shim serves the injections it made.
fn is_server(pid: u32) -> bool {
    if engine::api::shim::is_shim(pid) {
        return true;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut args = cmdline.split(|b| *b == 0);
    args.next();
    args.next() == Some(b"__serve".as_slice())
}

fn recover_one(
    journal: &Journal,
    e: &Entry,
) -> Result<RecoverReport, Box<dyn std::error::Error + Send + Sync>> {
    let server = e.server_pid.filter(|p| is_server(*p));
    let socket = journal.socket_path(&e.id);
    if server.is_some() {
        let answer = ChaosClient::connect(&socket)
            .map(|c| c.with_timeout(RECOVER_TIMEOUT))
            .and_then(|c| c.recover());
        match answer {
            Ok(report) => {
                // A shim serves on after recovering (it runs the container).
                if let Some(pid) = server.filter(|p| !engine::api::shim::is_shim(*p))
                    && !engine::target::wait_exit(pid, EXIT_TIMEOUT)
                {
                    tracing::warn!(pid, "the injection server did not exit after recovering");
                }
                return Ok(report);
            }
            // The server answered: its error stands (for "recovered already", it is on its
            // way out and removes the entry itself).
            Err(err @ engine::Error::Remote { .. }) => {
                if let Some(pid) = server.filter(|p| !engine::api::shim::is_shim(*p)) {
                    engine::target::wait_exit(pid, EXIT_TIMEOUT);
                }
                if !journal.entry_path(&e.id).exists() {
                    return Ok(RecoverReport::default());
                }
                return Err(Box::new(err));
            }
            Err(err) => {
                tracing::warn!(error = %err, "the injection server does not answer: killing it");
            }
        }
    }
    if let Some(pid) = server.filter(|p| is_server(*p) && !engine::api::shim::is_shim(*p)) {
        // A pid that is no pid_t (never the case for a real one) must not become a negative
        // number, which kill(2) takes as a process group.
        if let Some(raw) = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(raw, rustix::process::Signal::KILL);
        }
        engine::target::wait_exit(pid, EXIT_TIMEOUT);
    }
    let report = recover_from_journal(journal, &e.id, &FdSwapper::default())?;
    let _ = std::fs::remove_file(&socket);
    Ok(report)
}

/// The fds a recovery left on the old mount (stderr).
fn report_recovered(id: &impl std::fmt::Display, report: &RecoverReport) {
    for f in &report.failed {
        let (fd, reason) = fd_entry(f);
        eprintln!("iochaos: {id}: {fd} left on the old mount: {reason}");
    }
}
