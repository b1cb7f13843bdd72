//! Inject, step 1: everything is checked and found before anything changes — the target, the
//! path inside it, the processes to move — and the journal entry that will record it all.

use std::path::{Component, PathBuf};

use crate::error::Result;
use crate::journal::{Entry, InjectionId, Journal, JournalLock, ProcessRecord, TargetRecord};
use crate::mountinfo::MountInfo;
use crate::ns::{self, MountNs};
use crate::policy::{self, HostNamespace};
use crate::resolve::{Resolved, resolve_dir_in_root};
use crate::target::{Process, Target};

use super::{InjectRequest, TargetSpec, find_target};

/// What the checks found. The journal lock is held: no other injection may check until this
/// one's entry is written (two at once would both find the path free).
pub(super) struct Checked {
    pub target: Target,
    pub mns: MountNs,
    /// The path, canonical as the target sees it.
    pub path: PathBuf,
    /// The processes to move (every one of the mount namespace but the protected).
    pub procs: Vec<Process>,
    pub lock: JournalLock,
}

/// Find the target and the path and refuse what iochaos never injects. Errors about the path
/// come before anything changes.
pub(super) fn check(journal: &Journal, req: &InjectRequest) -> Result<Checked> {
    if let TargetSpec::Pid(pid)
    | TargetSpec::Runtime { pid, .. }
    | TargetSpec::OciCreate { pid, .. } = &req.target
    {
        policy::check_pid(*pid)?;
    }
    let target = find_target(&req.target)?;
    let mns = MountNs::of_target(&target)?;
    policy::check_target(&target, req.host_namespace)?;
    let lock = journal.lock()?;
    let injected = journal.list()?;
    // An injected path is refused before it is resolved: resolving it goes through the faults.
    let lexical: PathBuf = req.path.components().collect();
    if !lexical
        .components()
        .any(|c| matches!(c, Component::ParentDir))
    {
        policy::check_nesting(&lexical, target.mnt_ns, &injected)?;
    }
    let Resolved {
        path,
        mnt_id: path_mnt_id,
        ..
    } = resolve_dir_in_root(target.root_fd(), &req.path)?;
    policy::check_nesting(&path, target.mnt_ns, &injected)?;
    // By mount id: valid whatever the target's root is (a hook's init may not have pivoted).
    let mountinfo = MountInfo::read(target.pid)?;
    policy::check_path(&path, mountinfo.by_id(path_mnt_id))?;
    let mut procs = target.processes()?;
    if req.host_namespace == HostNamespace::Allow {
        // PID 1 and our ancestors are never stopped: they keep the original files.
        let protected = policy::protected_pids();
        procs.retain(|p| {
            let keep = !protected.contains(&p.pid);
            if !keep {
                tracing::info!(pid = p.pid, comm = %p.comm, "left out of the swap (protected)");
            }
            keep
        });
    }
    Ok(Checked {
        target,
        mns,
        path,
        procs,
        lock,
    })
}

impl Checked {
    /// The journal entry of the injection about to be made, with this process as its server
    /// and the intent to mount: recovery finds the mount by its source even if this process
    /// dies before the mount is journaled.
    pub fn entry(&self, spec: &serde_json::Value) -> Entry {
        let t = &self.target;
        let mut entry = Entry::new(
            InjectionId::generate(),
            TargetRecord {
                pid: t.pid,
                start_time: t.start_time,
                container: t.container.clone(),
                mnt_ns: t.mnt_ns.ino,
                user_ns: t.user_ns.ino,
            },
            self.path.to_string_lossy().into_owned(),
            spec.clone(),
        );
        entry.pids = self
            .procs
            .iter()
            .map(|p| ProcessRecord {
                pid: p.pid,
                start_time: p.start_time,
            })
            .collect();
        entry.server_pid = Some(std::process::id());
        entry.mount_source = Some(ns::mount_source_of(entry.id.as_str()));
        entry
    }
}
