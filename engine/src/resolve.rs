//! Resolving a user's path inside a target's root, the way the target would, never escaping it.
//!
//! Every lookup is an `openat2(root, ..., RESOLVE_IN_ROOT)`: absolute symlinks and `..` are
//! resolved against the target's root (like a `chroot`), so neither a symlink in the container
//! nor `..` can reach the host. The walk is done one component at a time so that the canonical
//! in-container path (symlinks expanded, `.`/`..` applied) is known, and the final fd is checked
//! against a one-shot kernel resolution of the user's path.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, StatxFlags};

use crate::error::{Error, Result};

/// Symlinks followed before giving up with `ELOOP` (the kernel's limit).
const MAX_SYMLINKS: usize = 40;

/// A path resolved inside a target's root.
#[derive(Debug)]
pub struct Resolved {
    /// `O_PATH` fd of the object the path names (the backing for a mount on top of it).
    pub fd: OwnedFd,
    /// The canonical path as the target sees it: absolute, no symlinks, no `.` or `..`.
    pub path: PathBuf,
    /// The mount the object is on (`STATX_MNT_ID`, the `mnt_id` of mountinfo and fdinfo).
    pub mnt_id: u64,
    pub is_dir: bool,
    pub dev: u64,
    pub ino: u64,
}

/// Resolve `path` (absolute, as the target sees it) inside `root` (the target's root directory,
/// e.g. an `O_PATH` fd of `/proc/PID/root`).
pub fn resolve_in_root(root: BorrowedFd<'_>, path: &Path) -> Result<Resolved> {
    if !path.is_absolute() {
        return Err(Error::RelativePath {
            path: path.to_owned(),
        });
    }
    let fail = |source: io::Error| Error::Resolve {
        path: path.to_owned(),
        source,
    };

    let mut todo: VecDeque<PathBuf> = components(path);
    let mut canon: Vec<PathBuf> = Vec::new();
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        if name.as_os_str() == ".." {
            canon.pop(); // never above the root, like RESOLVE_IN_ROOT
            continue;
        }
        let candidate: PathBuf = canon.iter().chain(std::iter::once(&name)).collect();
        // No symlink may be followed on the way (the prefix is canonical); a trailing symlink
        // is returned as itself (O_PATH|O_NOFOLLOW) so we can expand it here.
        let fd = open_in_root(
            root,
            &candidate,
            OFlags::NOFOLLOW,
            ResolveFlags::NO_SYMLINKS,
        )
        .map_err(fail)?;
        let st = rustix::fs::fstat(&fd).map_err(|e| fail(e.into()))?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(fail(io::Error::from(rustix::io::Errno::LOOP)));
            }
            let target = rustix::fs::readlinkat(&fd, "", Vec::new()).map_err(|e| fail(e.into()))?;
            let target = Path::new(OsStr::from_bytes(target.as_bytes())).to_owned();
            if target.is_absolute() {
                canon.clear();
            }
            for c in components(&target).into_iter().rev() {
                todo.push_front(c);
            }
            continue;
        }
        canon.push(name);
    }

    let rel: PathBuf = canon.iter().collect();
    let fd = open_in_root(root, &rel, OFlags::empty(), ResolveFlags::NO_SYMLINKS).map_err(fail)?;
    let st = rustix::fs::statx(
        &fd,
        "",
        AtFlags::EMPTY_PATH,
        StatxFlags::BASIC_STATS | StatxFlags::MNT_ID,
    )
    .map_err(|e| fail(e.into()))?;
    // The kernel's own resolution of the user's path must land on the same object; if not, the
    // tree changed under us.
    let check = open_in_root(root, path, OFlags::empty(), ResolveFlags::empty()).map_err(fail)?;
    let st2 = rustix::fs::fstat(&check).map_err(|e| fail(e.into()))?;
    let dev = rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor);
    if (st2.st_dev, st2.st_ino) != (dev, st.stx_ino) {
        return Err(fail(io::Error::other(
            "the path changed while it was being resolved",
        )));
    }
    Ok(Resolved {
        fd,
        path: Path::new("/").join(rel),
        mnt_id: st.stx_mnt_id,
        is_dir: FileType::from_raw_mode(st.stx_mode.into()) == FileType::Directory,
        dev,
        ino: st.stx_ino,
    })
}

/// Like [`resolve_in_root`], and the path must be a directory.
pub fn resolve_dir_in_root(root: BorrowedFd<'_>, path: &Path) -> Result<Resolved> {
    let r = resolve_in_root(root, path)?;
    if !r.is_dir {
        return Err(Error::NotADirectory { path: r.path });
    }
    Ok(r)
}

fn open_in_root(
    root: BorrowedFd<'_>,
    path: &Path,
    extra: OFlags,
    resolve: ResolveFlags,
) -> io::Result<OwnedFd> {
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    Ok(rustix::fs::openat2(
        root.as_fd(),
        path,
        OFlags::PATH | OFlags::CLOEXEC | extra,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | resolve,
    )?)
}

/// The normal components of a path, with `..` kept (as `..`) and `.` and `/` dropped.
fn components(p: &Path) -> VecDeque<PathBuf> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            Component::ParentDir => Some(PathBuf::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, symlink};

    fn open_dir(p: &Path) -> OwnedFd {
        rustix::fs::open(
            p,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("open root")
    }

    /// A fake container root:
    /// /data/file, /data/sub/, /abs -> /data (absolute), /rel -> data/sub (relative),
    /// /escape -> ../../../.. , /etc-link -> /etc, /loop -> /loop, /file-link -> /data/file
    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        let r = d.path();
        std::fs::create_dir_all(r.join("data/sub")).expect("mkdir");
        std::fs::write(r.join("data/file"), b"x").expect("write");
        symlink("/data", r.join("abs")).expect("symlink");
        symlink("data/sub", r.join("rel")).expect("symlink");
        symlink("../../../..", r.join("escape")).expect("symlink");
        symlink("/etc", r.join("etc-link")).expect("symlink");
        symlink("/loop", r.join("loop")).expect("symlink");
        symlink("/data/file", r.join("file-link")).expect("symlink");
        d
    }

    #[test]
    fn canonical_paths_follow_symlinks_inside_the_root() {
        let d = tree();
        let root = open_dir(d.path());
        let cases = [
            ("/data", "/data"),
            ("/abs", "/data"),
            ("/abs/sub/..", "/data"),
            ("/rel/../..", "/"),
            ("/rel/./", "/data/sub"),
            ("/../../data/sub", "/data/sub"),
            ("/escape", "/"),
            ("/escape/data", "/data"),
            ("/abs/../abs/sub", "/data/sub"),
        ];
        for (input, want) in cases {
            let r = resolve_in_root(root.as_fd(), Path::new(input)).expect(input);
            assert_eq!(r.path, Path::new(want), "{input}");
            let md = std::fs::metadata(d.path().join(want.trim_start_matches('/'))).expect("stat");
            assert_eq!((r.dev, r.ino), (md.dev(), md.ino()), "{input}");
            assert!(r.is_dir);
            assert!(r.mnt_id > 0);
        }
        let f = resolve_in_root(root.as_fd(), Path::new("/file-link")).expect("file");
        assert_eq!(f.path, Path::new("/data/file"));
        assert!(!f.is_dir);
        assert!(matches!(
            resolve_dir_in_root(root.as_fd(), Path::new("/file-link")),
            Err(Error::NotADirectory { path }) if path == Path::new("/data/file")
        ));
    }

    #[test]
    fn absolute_symlinks_never_reach_the_host() {
        let d = tree();
        let root = open_dir(d.path());
        // The host has /etc; the fake root does not.
        let e = resolve_in_root(root.as_fd(), Path::new("/etc-link")).expect_err("missing");
        assert!(
            matches!(&e, Error::Resolve { source, .. } if rustix::io::Errno::from_io_error(source) == Some(rustix::io::Errno::NOENT)),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "path /etc-link in the target: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn errors_are_clear() {
        let d = tree();
        let root = open_dir(d.path());
        assert!(matches!(
            resolve_in_root(root.as_fd(), Path::new("data")),
            Err(Error::RelativePath { .. })
        ));
        let e = resolve_in_root(root.as_fd(), Path::new("/loop")).expect_err("loop");
        assert!(
            matches!(&e, Error::Resolve { source, .. } if rustix::io::Errno::from_io_error(source) == Some(rustix::io::Errno::LOOP)),
            "{e}"
        );
        let e = resolve_in_root(root.as_fd(), Path::new("/data/nope/x")).expect_err("missing");
        assert!(
            matches!(&e, Error::Resolve { source, .. } if rustix::io::Errno::from_io_error(source) == Some(rustix::io::Errno::NOENT)),
            "{e}"
        );
    }

    #[test]
    fn resolves_in_a_process_root() {
        // /proc/PID/root of ourselves is "/": the resolver agrees with the host there.
        let root = open_dir(Path::new("/proc/self/root"));
        let r = resolve_in_root(root.as_fd(), Path::new("/proc/../etc/./")).expect("etc");
        assert_eq!(r.path, Path::new("/etc"));
        let md = std::fs::metadata("/etc").expect("stat");
        assert_eq!(r.ino, md.ino());
    }
}
