//! `/proc/PID/mountinfo`: parsing (octal escapes, optional fields, propagation), the mount that
//! contains a path, and mount ids.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One line of mountinfo (proc(5)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mnt_id: u64,
    pub parent_id: u64,
    pub major: u32,
    pub minor: u32,
    /// The directory of the filesystem that forms this mount's root.
    pub root: PathBuf,
    /// The mount point, relative to the reading process's root.
    pub mount_point: PathBuf,
    /// Per-mount options (`rw,nosuid,...`).
    pub options: String,
    /// Peer group of a shared mount (`shared:N`).
    pub shared: Option<u64>,
    /// Peer group this mount receives from (`master:N`).
    pub master: Option<u64>,
    /// `propagate_from:N`.
    pub propagate_from: Option<u64>,
    pub unbindable: bool,
    /// Filesystem type, with subtype (`fuse.chaosfs`).
    pub fs_type: String,
    pub source: String,
    pub super_options: String,
}

impl Mount {
    /// A mount below which new mounts propagate to peers.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// For a FUSE mount, the connection number (`/sys/fs/fuse/connections/N`): the minor of its
    /// device number.
    pub fn fuse_connection(&self) -> Option<u32> {
        (self.fs_type == "fuse" || self.fs_type.starts_with("fuse.") || self.fs_type == "fuseblk")
            .then_some(self.minor)
    }
}

/// A parsed mountinfo table, in the kernel's order (later mounts are on top of earlier ones).
#[derive(Debug, Clone, Default)]
pub struct MountInfo {
    pub mounts: Vec<Mount>,
}

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

impl MountInfo {
    /// Read `/proc/<pid>/mountinfo`.
    pub fn read(pid: u32) -> Result<MountInfo> {
        let path = PathBuf::from(format!("/proc/{pid}/mountinfo"));
        let text = std::fs::read(&path).map_err(|e| {
            if rustix::io::Errno::from_io_error(&e) == Some(rustix::io::Errno::NOENT) {
                Error::NoSuchProcess { pid }
            } else {
                Error::io(&path, e)
            }
        })?;
        MountInfo::parse(&text).map_err(|(line, reason)| Error::Malformed {
            path,
            reason: format!("line {line}: {reason}"),
        })
    }

    /// Parse mountinfo text; the error is (1-based line, reason).
    pub fn parse(text: &[u8]) -> std::result::Result<MountInfo, (usize, &'static str)> {
        let mut mounts = Vec::new();
        for (i, line) in text.split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            mounts.push(parse_line(line).map_err(|r| (i + 1, r))?);
        }
        Ok(MountInfo { mounts })
    }

    /// The mount with this id.
    pub fn by_id(&self, mnt_id: u64) -> Option<&Mount> {
        self.mounts.iter().find(|m| m.mnt_id == mnt_id)
    }

    /// The mount that contains `path` (absolute, canonical, as seen by the reader): the longest
    /// mount point that is a prefix of it; among mounts stacked on the same point, the topmost
    /// (the last listed).
    pub fn containing(&self, path: &Path) -> Option<&Mount> {
        let mut best: Option<&Mount> = None;
        for m in &self.mounts {
            if path.starts_with(&m.mount_point)
                && best.is_none_or(|b| {
                    m.mount_point.components().count() >= b.mount_point.components().count()
                })
            {
                best = Some(m);
            }
        }
        best
    }

    /// The topmost mount whose mount point is exactly `path`.
    pub fn top_at(&self, path: &Path) -> Option<&Mount> {
        self.mounts.iter().rev().find(|m| m.mount_point == path)
    }
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

fn parse_line(line: &[u8]) -> std::result::Result<Mount, &'static str> {
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let sep = fields
        .iter()
        .position(|f| *f == b"-")
        .ok_or("no \" - \" separator")?;
    if sep < 6 {
        return Err("fewer than 6 fields before the separator");
    }
    if fields.len() < sep + 4 {
        return Err("fewer than 3 fields after the separator");
    }
    let num = |f: &[u8], what| -> std::result::Result<u64, &'static str> {
        std::str::from_utf8(f)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(what)
    };
    let (major, minor) = {
        let dev = std::str::from_utf8(fields[2]).map_err(|_| "bad device")?;
        let (a, b) = dev.split_once(':').ok_or("bad device")?;
        (
            a.parse().map_err(|_| "bad device")?,
            b.parse().map_err(|_| "bad device")?,
        )
    };
    let mut m = Mount {
        mnt_id: num(fields[0], "bad mount id")?,
        parent_id: num(fields[1], "bad parent id")?,
        major,
        minor,
        root: unescape(fields[3]).into(),
        mount_point: unescape(fields[4]).into(),
        options: lossy(fields[5]),
        shared: None,
        master: None,
        propagate_from: None,
        unbindable: false,
        fs_type: lossy(&unescape_bytes(fields[sep + 1])),
        source: lossy(&unescape_bytes(fields[sep + 2])),
        super_options: lossy(fields[sep + 3]),
    };
    for opt in &fields[6..sep] {
        let opt = std::str::from_utf8(opt).map_err(|_| "bad optional field")?;
        let (tag, value) = opt.split_once(':').unwrap_or((opt, ""));
        let value = || value.parse().map_err(|_| "bad optional field value");
        match tag {
            "shared" => m.shared = Some(value()?),
            "master" => m.master = Some(value()?),
            "propagate_from" => m.propagate_from = Some(value()?),
            "unbindable" => m.unbindable = true,
            _ => {} // fields this parser does not know are ignored, as proc(5) asks
        }
    }
    Ok(m)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn unescape(b: &[u8]) -> OsString {
    OsString::from_vec(unescape_bytes(b))
}

/// Undo the kernel's `\ooo` octal escapes (space, tab, newline, backslash).
fn unescape_bytes(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = b"\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
36 22 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
40 22 0:35 / /data rw,nosuid shared:7 master:3 propagate_from:2 unbindable - tmpfs tmpfs rw
41 40 0:36 / /data/with\\040space\\011tab\\134back rw - tmpfs my\\040src rw
42 40 0:50 / /data/sub rw,nosuid,nodev,relatime - fuse.chaosfs chaosfs rw,user_id=0,group_id=0,allow_other
43 22 0:37 / /data rw - tmpfs tmpfs rw
";

    #[test]
    fn parses_fields_escapes_and_propagation() {
        let mi = MountInfo::parse(SAMPLE).expect("parses");
        assert_eq!(mi.mounts.len(), 6);
        let root = &mi.mounts[0];
        assert_eq!(
            (root.mnt_id, root.parent_id, root.major, root.minor),
            (22, 1, 8, 1)
        );
        assert_eq!(root.shared, Some(1));
        assert_eq!(root.fs_type, "ext4");
        assert_eq!(root.source, "/dev/sda1");
        assert_eq!(root.super_options, "rw,errors=remount-ro");
        let m = &mi.mounts[1];
        assert_eq!(m.root, Path::new("/mnt1"));
        assert_eq!(m.master, Some(1));
        assert!(!m.is_shared());
        let d = mi.by_id(40).expect("id 40");
        assert_eq!(
            (d.shared, d.master, d.propagate_from, d.unbindable),
            (Some(7), Some(3), Some(2), true)
        );
        let e = mi.by_id(41).expect("id 41");
        assert_eq!(e.mount_point, Path::new("/data/with space\ttab\\back"));
        assert_eq!(e.source, "my src");
        let f = mi.by_id(42).expect("id 42");
        assert_eq!(f.fuse_connection(), Some(50));
        assert_eq!(d.fuse_connection(), None);
    }

    #[test]
    fn containing_is_longest_prefix_and_topmost() {
        let mi = MountInfo::parse(SAMPLE).expect("parses");
        let id = |p: &str| mi.containing(Path::new(p)).map(|m| m.mnt_id);
        assert_eq!(id("/etc/passwd"), Some(22));
        // /data is mounted twice: 43 is on top of 40.
        assert_eq!(id("/data"), Some(43));
        assert_eq!(id("/data/x"), Some(43));
        assert_eq!(id("/data/sub/y"), Some(42));
        // Component-wise prefix: /datax is not under /data.
        assert_eq!(id("/datax"), Some(22));
        assert_eq!(mi.top_at(Path::new("/data")).map(|m| m.mnt_id), Some(43));
    }

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

    #[test]
    fn malformed_lines_are_errors() {
        assert_eq!(
            MountInfo::parse(b"1 2 3\n").map(|_| ()),
            Err((1, "no \" - \" separator"))
        );
        assert!(MountInfo::parse(b"x 1 0:1 / / rw - tmpfs t rw\n").is_err());
        assert!(MountInfo::parse(b"1 1 0:1 / / rw shared:x - tmpfs t rw\n").is_err());
    }

    #[test]
    fn reads_our_own_mountinfo() {
        let mi = MountInfo::read(std::process::id()).expect("read");
        let root = mi.containing(Path::new("/")).expect("root mount");
        assert_eq!(root.mount_point, Path::new("/"));
        assert!(
            mi.containing(Path::new("/proc/self"))
                .is_some_and(|m| m.fs_type == "proc")
        );
    }
}
