//! What iochaos refuses to inject into, and why (docs/inject.md, "What is refused").
//!
//! Every check here runs before anything changes: a refused request leaves no journal entry,
//! no mount and no stopped process.
//!
//! * **Targets.** PID 1 and iochaos's own ancestors are never targets (stopping them stops the
//!   system or the very command that waits for us). A target in the mount namespace of PID 1
//!   (a host process, not a container) is refused unless the caller allows it explicitly
//!   ([`HostNamespace::Allow`], the CLI's `--host-namespace`): the mount is namespace-wide, so
//!   every host process would see the faults and be scanned and stopped by the swap.
//! * **Paths.** The target's root, `/proc`, `/sys`, `/dev` and anything under them, any path
//!   on a kernel pseudo filesystem, and any path already on ChaosFS: faults there would break
//!   the machine's own plumbing, or stack ChaosFS on ChaosFS.
//! * **Nesting.** A path inside an injected path, or one that contains an injected path, in
//!   the same mount namespace: the inner mount would be served through (or hidden by) the
//!   outer one, and recovering either would leave the other's fds stranded.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::journal::Entry;
use crate::mountinfo::Mount;
use crate::target::{NsId, ProcStat, Target};

/// Whether a target in the host's mount namespace (that of PID 1) may be injected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostNamespace {
    /// Refuse it with [`Error::HostNamespace`] (the default; specs and annotations cannot
    /// change it).
    #[default]
    Refuse,
    /// Inject anyway (`iochaos inject --host-namespace`). PID 1 and iochaos's ancestors are
    /// still left out of the swap.
    Allow,
}

/// Directories whose whole subtree is refused, as the target sees them.
const REFUSED_TREES: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Filesystem types (mountinfo's field after the separator) that are the kernel's own
/// interfaces, not storage: never injected.
const PSEUDO_FS: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "cgroup",
    "cgroup2",
    "debugfs",
    "tracefs",
    "securityfs",
    "configfs",
    "fusectl",
    "bpf",
    "pstore",
    "efivarfs",
    "selinuxfs",
    "mqueue",
    "binfmt_misc",
    "autofs",
    "nsfs",
    "rpc_pipefs",
    "nfsd",
];

/// PID 1, this process and every ancestor of it: processes an injection never stops.
pub fn protected_pids() -> BTreeSet<u32> {
    let mut out = BTreeSet::from([1]);
    let mut pid = std::process::id();
    // The chain ends at PID 1 (or at 0 for a process whose parent is outside our pid
    // namespace). Bounded in case /proc changes under us.
    for _ in 0..4096 {
        out.insert(pid);
        match ProcStat::read(pid) {
            Ok(st) if st.ppid > 1 && !out.contains(&st.ppid) => pid = st.ppid,
            _ => break,
        }
    }
    out
}

/// Refuse PID 1 and iochaos's ancestors (checked before anything is read of the process: a
/// sandbox may not even let root look at its PID 1).
pub fn check_pid(pid: u32) -> Result<()> {
    if pid == 1 {
        return Err(Error::ProtectedProcess {
            pid: 1,
            why: "is the init process of its pid namespace",
        });
    }
    if protected_pids().contains(&pid) {
        return Err(Error::ProtectedProcess {
            pid,
            why: "is iochaos itself or one of its ancestors",
        });
    }
    Ok(())
}

/// Refuse PID 1, iochaos's ancestors, and (unless `host` allows it) a target in PID 1's mount
/// namespace.
pub fn check_target(target: &Target, host: HostNamespace) -> Result<()> {
    check_pid(target.pid)?;
    if host == HostNamespace::Refuse && target.mnt_ns == host_mount_namespace()? {
        return Err(Error::HostNamespace { pid: target.pid });
    }
    Ok(())
}

/// The host's mount namespace: PID 1's. Where PID 1 cannot be inspected (some sandboxes hide
/// their init from root: EACCES on `/proc/1/ns/mnt`), iochaos's own is taken instead, the
/// namespace a command run from a host shell is in.
pub fn host_mount_namespace() -> Result<NsId> {
    match NsId::of(1, "mnt") {
        Err(Error::Io { source, .. })
            if matches!(
                rustix::io::Errno::from_io_error(&source),
                Some(rustix::io::Errno::ACCESS | rustix::io::Errno::PERM)
            ) =>
        {
            tracing::debug!("pid 1's mount namespace cannot be read; taking ours as the host's");
            NsId::of(std::process::id(), "mnt")
        }
        other => other,
    }
}

/// Refuse a path (canonical, as the target sees it) that is the target's root, under
/// `/proc`, `/sys` or `/dev`, or on a pseudo filesystem or ChaosFS (`mount`: the mount the
/// path is on, when known).
pub fn check_path(path: &Path, mount: Option<&Mount>) -> Result<()> {
    let refuse = |reason: String| {
        Err(Error::PathRefused {
            path: path.to_owned(),
            reason,
        })
    };
    if path == Path::new("/") {
        return refuse("is the target's root directory; inject a directory below it".into());
    }
    if let Some(tree) = REFUSED_TREES.iter().find(|t| path.starts_with(t)) {
        return refuse(format!(
            "is under {tree}, the kernel's own interface, not storage"
        ));
    }
    if let Some(m) = mount {
        if PSEUDO_FS.contains(&m.fs_type.as_str()) {
            return refuse(format!(
                "is on a {} file system (mounted at {}), the kernel's own interface, not storage",
                m.fs_type,
                m.mount_point.display()
            ));
        }
        if m.fs_type == format!("fuse.{}", crate::ns::CHAOSFS_SUBTYPE) {
            return refuse(format!(
                "is on ChaosFS already (mounted at {} by {}): recover that first",
                m.mount_point.display(),
                m.source
            ));
        }
    }
    Ok(())
}

/// Refuse `path` when it is, contains or lies inside a path injected in the same mount
/// namespace.
pub fn check_nesting(path: &Path, mnt_ns: NsId, injected: &[Entry]) -> Result<()> {
    for e in injected.iter().filter(|e| e.target.mnt_ns == mnt_ns.ino) {
        let other = PathBuf::from(&e.path);
        if path == other {
            return Err(Error::AlreadyInjected {
                id: e.id.to_string(),
                path: path.to_owned(),
            });
        }
        let relation = if path.starts_with(&other) {
            "lies inside"
        } else if other.starts_with(path) {
            "contains"
        } else {
            continue;
        };
        return Err(Error::NestedInjection {
            path: path.to_owned(),
            relation,
            other,
            id: e.id.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{InjectionId, TargetRecord};

    fn mount(fs_type: &str, at: &str) -> Mount {
        let line = format!("40 22 0:35 / {at} rw - {fs_type} src rw\n");
        crate::mountinfo::MountInfo::parse(line.as_bytes())
            .expect("parse")
            .mounts
            .remove(0)
    }

    #[test]
    fn root_kernel_trees_and_pseudo_filesystems_are_refused() {
        for p in ["/", "/proc", "/proc/1", "/sys/fs", "/dev", "/dev/shm"] {
            let e = check_path(Path::new(p), None).expect_err(p);
            assert!(matches!(e, Error::PathRefused { .. }), "{p}: {e}");
        }
        // A directory named like a refused tree elsewhere is fine.
        check_path(Path::new("/data/proc"), None).expect("/data/proc");
        check_path(Path::new("/procfoo"), None).expect("/procfoo");
        let e = check_path(Path::new("/mnt/cg"), Some(&mount("cgroup2", "/mnt/cg")))
            .expect_err("cgroup2");
        assert!(e.to_string().contains("cgroup2"), "{e}");
        let e = check_path(Path::new("/data/x"), Some(&mount("fuse.chaosfs", "/data")))
            .expect_err("chaosfs");
        assert!(e.to_string().contains("ChaosFS already"), "{e}");
        check_path(Path::new("/data"), Some(&mount("ext4", "/"))).expect("ext4");
        check_path(Path::new("/data"), Some(&mount("tmpfs", "/data"))).expect("tmpfs");
    }

    #[test]
    fn nested_and_parent_paths_are_refused_in_the_same_namespace_only() {
        let ns = NsId { dev: 0, ino: 7 };
        let mut e = Entry::new(
            InjectionId::generate(),
            TargetRecord {
                pid: 10,
                start_time: 1,
                container: None,
                mnt_ns: 7,
                user_ns: 1,
            },
            "/data/db".into(),
            serde_json::json!({}),
        );
        let entries = [e.clone()];
        let inside = check_nesting(Path::new("/data/db/wal"), ns, &entries).expect_err("inside");
        assert!(inside.to_string().contains("lies inside"), "{inside}");
        let parent = check_nesting(Path::new("/data"), ns, &entries).expect_err("parent");
        assert!(parent.to_string().contains("contains"), "{parent}");
        let same = check_nesting(Path::new("/data/db"), ns, &entries).expect_err("same");
        assert!(matches!(same, Error::AlreadyInjected { .. }), "{same}");
        // Siblings and prefixes that are not path ancestors are fine.
        check_nesting(Path::new("/data/dbx"), ns, &entries).expect("sibling");
        check_nesting(Path::new("/data/logs"), ns, &entries).expect("sibling");
        // Another namespace is another tree.
        e.target.mnt_ns = 8;
        check_nesting(Path::new("/data/db/wal"), ns, &[e]).expect("other namespace");
    }

    #[test]
    fn protected_pids_hold_init_ourselves_and_our_parent() {
        let p = protected_pids();
        assert!(p.contains(&1));
        assert!(p.contains(&std::process::id()));
        let parent = ProcStat::read(std::process::id()).expect("stat").ppid;
        assert!(p.contains(&parent), "{p:?} lacks our parent {parent}");
    }
}
