//! `/proc/PID/mountinfo` (proc(5)): lines with octal escapes, optional fields and propagation;
//! the mount that contains a path.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result, pid_err};

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Mount id (the `mnt_id` of fdinfo and `STATX_MNT_ID`).
    pub mnt_id: u64,
    /// Id of the parent mount.
    pub parent_id: u64,
    /// Device major number (`st_dev`).
    pub major: u32,
    /// Device minor number (`st_dev`).
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
    /// `unbindable`.
    pub unbindable: bool,
    /// Filesystem type, with subtype (`fuse.chaosfs`).
    pub fs_type: String,
    /// Mount source.
    pub source: String,
    /// Per-superblock options.
    pub super_options: String,
}

impl Mount {
    /// Parse one line (without its newline).
    pub fn parse(line: &[u8]) -> std::result::Result<Mount, &'static str> {
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
        let (major, minor) = parse_dev(fields[2]).ok_or("bad device")?;
        let mut m = Mount {
            mnt_id: num(fields[0]).ok_or("bad mount id")?,
            parent_id: num(fields[1]).ok_or("bad parent id")?,
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

    /// A mount below which new mounts propagate to peers.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// A FUSE filesystem (`fuse`, `fuse.SUBTYPE`, `fuseblk`).
    pub fn is_fuse(&self) -> bool {
        self.fs_type == "fuse" || self.fs_type.starts_with("fuse.") || self.fs_type == "fuseblk"
    }

    /// For a FUSE mount, the connection number (`/sys/fs/fuse/connections/N`): the minor of its
    /// device number.
    pub fn fuse_connection(&self) -> Option<u32> {
        self.is_fuse().then_some(self.minor)
    }
}

/// A parsed mountinfo table, in the kernel's order (later mounts are on top of earlier ones).
#[derive(Debug, Clone, Default)]
pub struct MountInfo {
    /// The mounts, one per line.
    pub mounts: Vec<Mount>,
}

impl MountInfo {
    /// Read `/proc/<pid>/mountinfo`.
    pub fn read(pid: u32) -> Result<MountInfo> {
        let path = PathBuf::from(format!("/proc/{pid}/mountinfo"));
        let text = std::fs::read(&path).map_err(pid_err(pid, &path))?;
        MountInfo::parse(&text).map_err(|(line, reason)| Error::Format {
            path,
            detail: format!("line {line}: {reason}"),
        })
    }

    /// Parse mountinfo text; the error is (1-based line, reason).
    pub fn parse(text: &[u8]) -> std::result::Result<MountInfo, (usize, &'static str)> {
        let mut mounts = Vec::new();
        for (i, line) in text.split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            mounts.push(Mount::parse(line).map_err(|r| (i + 1, r))?);
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

fn num(f: &[u8]) -> Option<u64> {
    std::str::from_utf8(f).ok()?.parse().ok()
}

fn parse_dev(f: &[u8]) -> Option<(u32, u32)> {
    let (a, b) = std::str::from_utf8(f).ok()?.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn unescape(b: &[u8]) -> OsString {
    OsString::from_vec(unescape_bytes(b))
}

/// Undo the kernel's `\ooo` octal escapes (it writes space, tab, newline and backslash so).
/// Any byte value `\000`–`\377` is decoded; a backslash not followed by three octal digits, or
/// by a value above `\377` (which no byte has), stays as it is.
pub fn unescape_bytes(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(byte) = b.get(i + 1..i + 4).and_then(octal_byte)
        {
            out.push(byte);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Three octal digits as one byte; `None` for other text or a value over 255.
fn octal_byte(digits: &[u8]) -> Option<u8> {
    let mut v: u32 = 0;
    for &c in digits {
        let d = c.checked_sub(b'0').filter(|d| *d < 8)?;
        v = v * 8 + u32::from(d);
    }
    u8::try_from(v).ok()
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
    fn malformed_lines_are_errors() {
        assert_eq!(
            MountInfo::parse(b"1 2 3\n").map(|_| ()),
            Err((1, "no \" - \" separator"))
        );
        assert!(MountInfo::parse(b"x 1 0:1 / / rw - tmpfs t rw\n").is_err());
        assert!(MountInfo::parse(b"1 1 0:1 / / rw shared:x - tmpfs t rw\n").is_err());
    }

    #[test]
    fn escapes_cover_every_byte_and_only_bytes() {
        assert_eq!(unescape_bytes(br"/a\040b"), b"/a b");
        assert_eq!(unescape_bytes(b"/plain"), b"/plain");
        assert_eq!(unescape_bytes(br"/x\134"), b"/x\\");
        // The whole byte range, \000 to \377, and bytes above 0x7f.
        assert_eq!(unescape_bytes(br"\000\177\200\377"), [0, 0x7f, 0x80, 0xff]);
        // Above \377 is no byte: left as written, never wrapped (\400 is not \000).
        assert_eq!(unescape_bytes(br"/a\400"), br"/a\400");
        assert_eq!(unescape_bytes(br"\777x"), br"\777x");
        // Not three octal digits: left as written.
        assert_eq!(unescape_bytes(br"/a\08"), br"/a\08");
        assert_eq!(unescape_bytes(br"/a\9"), br"/a\9");
        assert_eq!(unescape_bytes(br"/a\04"), br"/a\04");
        assert_eq!(unescape_bytes(br"\"), br"\");
        // An escaped backslash does not start another escape.
        assert_eq!(unescape_bytes(br"\134040"), br"\040");
        let line = br"1 1 0:1 / /m\377\400 rw - tmpfs t rw";
        let m = Mount::parse(line).expect("parses");
        assert_eq!(m.mount_point.as_os_str().as_encoded_bytes(), b"/m\xff\\400");
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

    #[test]
    fn a_missing_process_is_no_such_process() {
        // Pid numbers stop well below this (pid_max is at most 2^22).
        let e = MountInfo::read(u32::MAX).expect_err("no such process");
        assert!(
            matches!(e, Error::NoSuchProcess { pid: u32::MAX, .. }),
            "{e:?}"
        );
    }
}
