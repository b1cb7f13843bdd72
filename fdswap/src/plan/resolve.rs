//! Where things are and will be: `/proc` link text as the target sees it, the mounts of its
//! namespace, and resolving paths under P through the mount now on top.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use rustix::fs::{AtFlags, Mode, OFlags, openat};

use super::ReadAhead;

/// `FUSE_SUPER_MAGIC` of linux/magic.h (rustix does not name it).
const FUSE_SUPER_MAGIC: rustix::fs::FsWord = 0x6573_5546;
use crate::sys::{self, FileId};

/// Turn `/proc` link text into the path the target sees: strip the target's root when it is not
/// `/` (a chroot in our own mount namespace). For a target in another mount namespace the kernel
/// already prints paths relative to that namespace's root, which is the target's root after
/// `pivot_root`.
pub(super) fn target_view(text: &str, root: &str) -> String {
    if root != "/"
        && let Some(rest) = text.strip_prefix(root)
        && (rest.is_empty() || rest.starts_with('/'))
    {
        return if rest.is_empty() {
            "/".into()
        } else {
            rest.into()
        };
    }
    text.to_owned()
}

/// How to turn link text into the target's view of a path.
pub(super) struct View<'a> {
    pub(super) root: String,
    /// `from_mnt` is no longer attached (lazily unmounted for recover): the kernel prints paths
    /// on it relative to its root, which was mounted at the swap path.
    pub(super) detached: Option<(u64, &'a Path)>,
}

impl View<'_> {
    pub(super) fn of(&self, text: &str, mnt: impl FnOnce() -> Option<u64>) -> String {
        if let Some((m, p)) = self.detached
            && text.starts_with('/')
            && mnt() == Some(m)
        {
            let rel = text.trim_start_matches('/');
            return if rel.is_empty() {
                p.to_string_lossy().into_owned()
            } else {
                p.join(rel).to_string_lossy().into_owned()
            };
        }
        target_view(text, &self.root)
    }
}

/// Filesystem types of the mounts attached in `pid`'s mount namespace, by mount id (`None`:
/// mountinfo could not be read).
pub(super) fn mount_types(pid: i32) -> Option<HashMap<u64, String>> {
    let text = std::fs::read(format!("/proc/{pid}/mountinfo")).ok()?;
    Some(
        text.split(|&b| b == b'\n')
            .filter_map(|l| procinfo::Mount::parse(l).ok())
            .map(|m| (m.mnt_id, m.fs_type))
            .collect(),
    )
}

/// Local filesystems whose `close` does no work of its own (no `->flush`, or a local one).
pub(super) const QUIET_CLOSE: &[&str] = &[
    "ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "tmpfs", "ramfs", "overlay", "vfat", "exfat",
    "erofs", "squashfs",
];

pub(super) fn under(path: &Path, p: &Path) -> bool {
    path.starts_with(p)
}

/// Resolves paths under P in the target's mount namespace, relative to P opened once through
/// `/proc/PID/root` (one component to walk per file instead of all of them).
pub(super) struct Resolver<'a> {
    pid: i32,
    base: &'a Path,
    dir: Option<OwnedFd>,
}

impl<'a> Resolver<'a> {
    pub(super) fn new(pid: i32, base: &'a Path) -> Self {
        let dir = openat(
            rustix::fs::CWD,
            proc_root_path(pid, base),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok();
        Self { pid, base, dir }
    }

    /// What `path` resolves to now (following symlinks, with its mount id).
    pub(super) fn resolve(&self, path: &Path) -> std::result::Result<FileId, Errno> {
        match (&self.dir, path.strip_prefix(self.base)) {
            (Some(d), Ok(rel)) => sys::statx_at(d.as_fd(), rel, AtFlags::empty()),
            _ => sys::statx(&proc_root_path(self.pid, path)),
        }
    }

    /// Read the directories holding many of `paths` (see [`ReadAhead`]).
    pub(super) fn read_ahead<'p>(&self, paths: impl Iterator<Item = &'p Path>, policy: &ReadAhead) {
        let Some(base) = &self.dir else {
            return;
        };
        let mut by_dir: HashMap<&Path, HashSet<&OsStr>> = HashMap::new();
        for p in paths {
            if let (Some(d), Some(name)) = (p.parent(), p.file_name()) {
                by_dir.entry(d).or_default().insert(name);
            }
        }
        let mut buf = Vec::new();
        for (dir, mut wanted) in by_dir {
            let Ok(rel) = dir.strip_prefix(self.base) else {
                continue;
            };
            if wanted.len() < ReadAhead::MIN_FILES || !policy.allows(rel) {
                continue;
            }
            let name = if rel.as_os_str().is_empty() {
                Path::new(".")
            } else {
                rel
            };
            let Ok(fd) = openat(
                base.as_fd(),
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            ) else {
                continue;
            };
            if !rustix::fs::fstatfs(&fd).is_ok_and(|s| s.f_type == FUSE_SUPER_MAGIC) {
                continue;
            }
            // A READDIRPLUS entry takes ~150 bytes plus its name: size the request for about
            // twice the wanted entries (the kernel caps it at the connection's max_pages).
            let want = wanted.len();
            let size = (2 * want * 192).clamp(16 << 10, 1 << 20);
            buf.resize(size, 0);
            let limit = 2 * want + 64;
            let mut seen = 0;
            while let Ok(len) = sys::getdents64(fd.as_fd(), &mut buf) {
                if len == 0 {
                    break;
                }
                for name in sys::dirent_names(&buf[..len]) {
                    seen += 1;
                    wanted.remove(OsStr::from_bytes(name));
                }
                if wanted.is_empty() || seen >= limit {
                    break;
                }
                // The kernel asks for READDIRPLUS again (rather than plain READDIR) after a
                // lookup in the directory: resolve one of the names still wanted.
                if let Some(n) = wanted.iter().next().copied() {
                    wanted.remove(n);
                    let _ = self.resolve(&dir.join(n));
                }
            }
        }
    }
}

pub(super) fn proc_root_path(pid: i32, path: &Path) -> PathBuf {
    let rel = path.strip_prefix("/").unwrap_or(path);
    Path::new(&format!("/proc/{pid}/root")).join(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_strips_chroot() {
        assert_eq!(target_view("/srv/jail/data/x", "/srv/jail"), "/data/x");
        assert_eq!(target_view("/srv/jailx/y", "/srv/jail"), "/srv/jailx/y");
        assert_eq!(target_view("/data/x", "/"), "/data/x");
    }
}
