//! `/proc/PID/mountinfo`: the parser is `iochaos-procinfo`'s ([`Mount`], [`MountInfo`]: octal
//! escapes, optional fields, propagation, the mount that contains a path); here, what iochaos
//! decides from it (refusing shared mounts).

use std::path::Path;

pub use procinfo::{Mount, MountInfo};

use crate::error::{Error, Result};

/// What to do when the target path lies in a shared mount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SharedPolicy {
    /// Refuse with [`Error::SharedMount`] (the default): the mount would show up in the
    /// peers, e.g. the host's volume directory.
    #[default]
    Refuse,
    /// Mount anyway; the ChaosFS mount (and its detach) propagates to every peer.
    Allow,
}

/// Decide whether mounting on `path`, which lies in `mount`, is allowed under `policy`.
pub fn check_propagation(mount: &Mount, path: &Path, policy: SharedPolicy) -> Result<()> {
    match (mount.shared, policy) {
        (Some(group), SharedPolicy::Refuse) => Err(Error::SharedMount {
            path: path.to_owned(),
            mount_point: mount.mount_point.clone(),
            mnt_id: mount.mnt_id,
            group,
        }),
        _ => Ok(()),
    }
}

/// Errors of the `/proc` readers ([`MountInfo::read`], [`crate::target::ProcStat::read`]).
impl From<procinfo::Error> for Error {
    fn from(e: procinfo::Error) -> Error {
        match e {
            procinfo::Error::NoSuchProcess { pid, .. } => Error::NoSuchProcess { pid },
            procinfo::Error::Io { path, source } => Error::io(path, source),
            procinfo::Error::Format { path, detail } => Error::Malformed {
                path,
                reason: detail,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_mount_is_refused_unless_allowed() {
        // The parser and its tests are iochaos-procinfo's; here one shared and one private mount.
        let shared = Mount::parse(b"40 22 0:35 / /data rw shared:7 master:3 - tmpfs tmpfs rw")
            .expect("shared line");
        let private =
            Mount::parse(b"41 40 0:36 / /data/x rw - tmpfs tmpfs rw").expect("private line");
        let e = check_propagation(&shared, Path::new("/data/x"), SharedPolicy::Refuse)
            .expect_err("shared");
        assert!(e.to_string().contains("shared with peer group 7"), "{e}");
        check_propagation(&shared, Path::new("/data/x"), SharedPolicy::Allow).expect("allowed");
        check_propagation(&private, Path::new("/x"), SharedPolicy::Refuse).expect("private");
    }
}
