//! A live [`Injection`] as the Chaos API serves it: status, rule updates, recover.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::api::{
    ChaosService, CrashOptions, CrashReport, FdEntry, RecoverReport, RuleStatus, Status,
    TargetStatus,
};
use crate::error::{Error, Result};
use crate::journal::Entry;
use crate::ns::MountGuard;
use crate::target::{FdInfo, processes_in_mnt_ns};

use super::{EscapedFile, FsServer, Injection, State, Swapper, fd_entries};

fn status_of<F: FsServer>(st: &State<F>) -> Status {
    let counters = st
        .server
        .as_ref()
        .map(|s| s.rule_counters())
        .unwrap_or_default();
    let mut status = status_from_entry(&st.entry);
    for (rule, (matched, injected)) in status.rules.iter_mut().zip(counters) {
        rule.matched = matched;
        rule.injected = injected;
    }
    status.skipped = st.skipped.clone();
    status.skipped.extend(st.escaped.iter().cloned());
    status
}

/// The status of an injection as its journal entry tells it (counters zero, no skipped list):
/// what `status` shows for an injection whose server does not answer.
pub fn status_from_entry(e: &Entry) -> Status {
    Status {
        id: e.id.to_string(),
        path: e.path.clone(),
        target: TargetStatus {
            pid: e.target.pid,
            container: e.target.container.as_ref().map(|c| c.id.clone()),
            namespace: e.target.container.as_ref().map(|c| c.namespace.clone()),
            mnt_ns: e.target.mnt_ns,
        },
        pids: e.pids.iter().map(|p| p.pid).collect(),
        server_pid: e.server_pid.unwrap_or_default(),
        spec: e.spec.clone(),
        rules: e.spec["rules"]
            .as_array()
            .map(|rules| {
                rules
                    .iter()
                    .map(|spec| RuleStatus {
                        spec: spec.clone(),
                        matched: 0,
                        injected: 0,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        swapped: fd_entries(&e.swapped),
        skipped: Vec::new(),
        created_unix: e.created_unix_ms / 1000,
        open_modes: e.open_modes.clone(),
    }
}

impl<F: FsServer, S: Swapper> ChaosService for Injection<F, S> {
    fn status(&self) -> Result<Status> {
        Ok(status_of(&*self.lock()?))
    }

    fn update_rules(&self, spec_json: &str) -> Result<Status> {
        let spec: Value =
            serde_json::from_str(spec_json).map_err(|e| Error::InvalidSpec(Box::new(e)))?;
        let mut st = self.lock()?;
        let Some(server) = st.server.as_ref() else {
            return Err(Error::Recovered {
                id: st.entry.id.to_string(),
            });
        };
        if let Some(p) = spec.get("path").and_then(Value::as_str)
            && p != st.entry.path
            && st.entry.spec.get("path").and_then(Value::as_str) != Some(p)
        {
            return Err(Error::InvalidSpec(
                format!(
                    "spec path {p:?} is not the injection's path {:?}",
                    st.entry.path
                )
                .into(),
            ));
        }
        let rules = server.parse_rules(&spec)?;
        // The journal first: a crash between the two must never leave rules live that
        // `status` and recover do not know about. A failed write changes nothing.
        let mut entry = st.entry.clone();
        entry.spec = spec;
        self.journal.update(&entry)?;
        let escaped = match st.server.as_ref() {
            Some(server) => server.update_rules(rules),
            None => Vec::new(),
        };
        st.escaped = match &st.guard {
            Some(g) if !escaped.is_empty() => escaped_fds(g, &st.entry.path, &escaped),
            _ => Vec::new(),
        };
        st.entry = entry;
        Ok(status_of(&st))
    }

    fn recover(&self) -> Result<RecoverReport> {
        self.recover_live()
    }

    fn crash(&self, opts: CrashOptions) -> Result<CrashReport> {
        self.crash_live(opts)
    }
}

/// The fds of the namespace's processes that hold one of `escaped` (files in a mode the current
/// rules cannot reach), for status.
fn escaped_fds(guard: &MountGuard, path: &str, escaped: &[EscapedFile]) -> Vec<FdEntry> {
    let Ok(procs) = processes_in_mnt_ns(guard.ns().id) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in procs {
        let dir = PathBuf::from(format!("/proc/{}", p.pid));
        for fd in procinfo::fds(&dir).unwrap_or_default() {
            if FdInfo::read(p.pid, fd).is_none_or(|i| i.mnt_id != guard.mnt_id()) {
                continue;
            }
            let Ok(st) = rustix::fs::statx(
                rustix::fs::CWD,
                dir.join("fd").join(fd.to_string()),
                rustix::fs::AtFlags::STATX_DONT_SYNC,
                rustix::fs::StatxFlags::INO,
            ) else {
                continue;
            };
            if let Some(e) = escaped.iter().find(|e| e.ino == st.stx_ino) {
                out.push(FdEntry {
                    pid: p.pid,
                    fd,
                    path: Path::new(path).join(&e.path).display().to_string(),
                    reason: Some(
                        "open in kernel passthrough mode before the rules changed: the new rules \
                         reach it once it is reopened"
                            .into(),
                    ),
                });
            }
        }
    }
    out
}
