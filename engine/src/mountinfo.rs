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

    // The parser's own tests moved with it to iochaos-procinfo (src/mountinfo.rs).

    const SAMPLE: &[u8] = b"\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
36 22 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
40 22 0:35 / /data rw,nosuid shared:7 master:3 propagate_from:2 unbindable - tmpfs tmpfs rw
41 40 0:36 / /data/with\\040space\\011tab\\134back rw - tmpfs my\\040src rw
42 40 0:50 / /data/sub rw,nosuid,nodev,relatime - fuse.chaosfs chaosfs rw,user_id=0,group_id=0,allow_other
43 22 0:37 / /data rw - tmpfs tmpfs rw
";

    #[test]
    fn shared_mount_is_refused_unless_allowed() {
        let mi = MountInfo::parse(SAMPLE).expect("parses");
        let m = mi.by_id(40).expect("id 40");
        let e =
            check_propagation(m, Path::new("/data/x"), SharedPolicy::Refuse).expect_err("shared");
        assert!(e.to_string().contains("shared with peer group 7"), "{e}");
        check_propagation(m, Path::new("/data/x"), SharedPolicy::Allow).expect("allowed");
        check_propagation(
            mi.by_id(41).expect("41"),
            Path::new("/x"),
            SharedPolicy::Refuse,
        )
        .expect("private");
    }
}
