//! Entering a target's mount namespace, and mounting over a path in it.
//!
//! `setns(CLONE_NEWNS)` fails in a thread that shares its fs info (root, cwd, umask) with
//! others, and changing root/cwd would change them for the whole process. So every entry runs
//! on a fresh, dedicated thread that first calls `unshare(CLONE_FS)`, then `setns` into the
//! target's mount namespace and `chroot`s to the target's root: inside, paths mean what they
//! mean to the target. File descriptors are shared by all threads, so an fd opened inside (the
//! backing of a mount, a new mount) is usable by the caller afterwards.
//!
//! **User namespaces.** We do not enter the target's user namespace. Root in the initial user
//! namespace holds every capability in every descendant user namespace, so `setns` into a
//! user-namespaced container's mount namespace and `move_mount` there succeed without it (the
//! tests check this against a real user-namespaced process). Staying in the initial user
//! namespace is also what a FUSE server running as host root wants: the kernel reports request
//! credentials in the user namespace the filesystem was mounted from, so the server sees host
//! uids and creates files with the ownership the native filesystem would record. (Entering a
//! user namespace would also need a single-threaded process, i.e. a forked child.)
//!
//! **Mounting.** The new mount API (`fsopen`/`fsconfig`/`fsmount`/`move_mount`) attaches the
//! mount onto the exact directory the resolver opened (an `O_PATH` fd), so a path swapped by the
//! container between resolution and mount cannot redirect it. The guard detaches the mount by
//! its own root (`umount2("/proc/thread-self/fd/N", MNT_DETACH)` on the fd `fsmount` returned),
//! so it never detaches a mount that is not its own.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, StatxFlags};
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, UnmountFlags, fsconfig_create,
    fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount,
};

use crate::error::{Error, Result};
use crate::mountinfo::{Mount, MountInfo, SharedPolicy, check_propagation};
use crate::resolve::{Resolved, resolve_dir_in_root};
use crate::target::{NsId, Target};

/// A target's mount namespace and root, held open.
#[derive(Debug)]
pub struct MountNs {
    /// The process the namespace was taken from (for messages and mountinfo).
    pub pid: u32,
    pub id: NsId,
    mnt: OwnedFd,
    root: OwnedFd,
}

impl MountNs {
    /// The mount namespace and root of a target (the fds are duplicated).
    pub fn of_target(t: &Target) -> Result<MountNs> {
        let dup = |fd: BorrowedFd<'_>| {
            fd.try_clone_to_owned()
                .map_err(|e| Error::sys("duplicating a namespace fd", e))
        };
        Ok(MountNs {
            pid: t.pid,
            id: t.mnt_ns,
            mnt: dup(t.mnt_ns_fd())?,
            root: dup(t.root_fd())?,
        })
    }

    /// The mount namespace and root of a pid.
    pub fn of_pid(pid: u32) -> Result<MountNs> {
        MountNs::of_target(&Target::from_pid(pid)?)
    }

    /// The target's root (`O_PATH`).
    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Run `f` on a dedicated thread that is inside the namespace, with the target's root as
    /// its root and cwd. `f`'s fds stay valid after it returns.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send,
        F: FnOnce() -> Result<T> + Send,
    {
        self.run_inner(true, f)
    }

    fn run_inner<T, F>(&self, chroot: bool, f: F) -> Result<T>
    where
        T: Send,
        F: FnOnce() -> Result<T> + Send,
    {
        std::thread::scope(|s| {
            let h = std::thread::Builder::new()
                .name("iochaos-ns".into())
                .spawn_scoped(s, || {
                    self.enter(chroot)?;
                    f()
                })
                .map_err(|e| Error::sys("spawning a namespace thread", e))?;
            match h.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    fn enter(&self, chroot: bool) -> Result<()> {
        crate::sys::unshare_fs().map_err(|e| Error::sys("unshare(CLONE_FS)", e))?;
        rustix::thread::move_into_link_name_space(
            self.mnt.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Mount),
        )
        .map_err(|e| {
            Error::sys(
                format!("entering the mount namespace of pid {}", self.pid),
                io::Error::from(e),
            )
        })?;
        if !chroot {
            return Ok(());
        }
        rustix::process::fchdir(&self.root).map_err(|e| {
            Error::sys(
                format!("fchdir to the root of pid {}", self.pid),
                io::Error::from(e),
            )
        })?;
        rustix::process::chroot(".").map_err(|e| {
            Error::sys(
                format!("chroot to the root of pid {}", self.pid),
                io::Error::from(e),
            )
        })?;
        Ok(())
    }

    /// The namespace's mount table as the target sees it (mount points relative to its root),
    /// read from inside, so it works even when no process of the target is left. Like the
    /// target's own `/proc/PID/mountinfo`, it leaves out mounts not reachable from the root
    /// (with a `chroot`ed rather than `pivot_root`ed target, the mount holding its root).
    pub fn mountinfo(&self) -> Result<MountInfo> {
        let proc = host_proc()?;
        self.run(|| read_thread_mountinfo(proc.as_fd()))
    }

    /// Every mount of the namespace, mount points relative to the namespace's root (not the
    /// target's): for looking mounts up by id.
    pub fn mountinfo_all(&self) -> Result<MountInfo> {
        let proc = host_proc()?;
        self.run_inner(false, || read_thread_mountinfo(proc.as_fd()))
    }
}

fn host_proc() -> Result<OwnedFd> {
    rustix::fs::open(
        "/proc",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("/proc", e.into()))
}

/// `/proc/thread-self/mountinfo` through the host's procfs (valid inside a chroot).
fn read_thread_mountinfo(proc: BorrowedFd<'_>) -> Result<MountInfo> {
    let path = "thread-self/mountinfo";
    let fd = rustix::fs::openat(proc, path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| Error::io(format!("/proc/{path}"), e.into()))?;
    let mut text = Vec::new();
    io::Read::read_to_end(&mut fs::File::from(fd), &mut text)
        .map_err(|e| Error::io(format!("/proc/{path}"), e))?;
    MountInfo::parse(&text).map_err(|(line, reason)| Error::Malformed {
        path: format!("/proc/{path}").into(),
        reason: format!("line {line}: {reason}"),
    })
}

/// What to mount over the target path.
#[derive(Debug, Clone, Copy)]
pub enum MountSource<'a> {
    /// A FUSE filesystem served on `dev_fuse` (an open `/dev/fuse`), mounted as
    /// `fuse.<subtype>` with `fd=N,rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions`.
    /// `source` is what mountinfo shows as the mount's source: [`mount_source_of`] the
    /// injection id, so that a mount whose server died before the journal recorded it can
    /// still be found and told from every other mount ([`find_tagged`]).
    Fuse {
        dev_fuse: BorrowedFd<'a>,
        subtype: &'a str,
        source: &'a str,
    },
    /// An empty tmpfs (tests, and a stand-in where no FUSE server is wanted).
    Tmpfs,
}

/// The ChaosFS subtype: mountinfo shows `fuse.chaosfs`.
pub const CHAOSFS_SUBTYPE: &str = "chaosfs";

/// The mount source an injection's ChaosFS mount carries: `iochaos:<id>`.
pub fn mount_source_of(id: &str) -> String {
    format!("iochaos:{id}")
}

/// The ChaosFS mount on `path` (canonical, in-target) whose source is `source`, if the
/// namespace has one: how recovery finds a mount the journal does not record (the server died
/// between mounting and journaling it).
pub fn find_tagged(ns: &MountNs, path: &Path, source: &str) -> Result<Option<Mount>> {
    let fs_type = format!("fuse.{CHAOSFS_SUBTYPE}");
    Ok(ns
        .mountinfo()?
        .mounts
        .into_iter()
        .find(|m| m.mount_point == path && m.fs_type == fs_type && m.source == source))
}

/// A mount made over a directory inside a target. Detach it with [`MountGuard::detach`]; if it
/// is dropped, it is detached on a best-effort basis. [`MountGuard::leak`] keeps it mounted
/// (when its lifetime passes to the journal).
#[derive(Debug)]
pub struct MountGuard {
    ns: MountNs,
    /// The canonical in-target path mounted over.
    path: PathBuf,
    /// The original directory under the mount (`O_PATH`): ChaosFS serves from it.
    backing: OwnedFd,
    /// `O_PATH` fd of the new mount's root (from `fsmount`).
    mount_root: Option<OwnedFd>,
    mnt_id: u64,
    under: Mount,
    fuse_connection: Option<u32>,
}

impl MountGuard {
    /// The canonical in-target path mounted over.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The original directory under the mount (`O_PATH|O_DIRECTORY` semantics); it still reaches
    /// the original files with `*at()` calls.
    pub fn backing(&self) -> BorrowedFd<'_> {
        self.backing.as_fd()
    }

    /// The mount id of the new mount (mountinfo, fdinfo `mnt_id`).
    pub fn mnt_id(&self) -> u64 {
        self.mnt_id
    }

    /// The mount the path was on before (the one mounted over).
    pub fn under(&self) -> &Mount {
        &self.under
    }

    /// For a FUSE mount, the connection number (`/sys/fs/fuse/connections/N`).
    pub fn fuse_connection(&self) -> Option<u32> {
        self.fuse_connection
    }

    /// The namespace the mount lives in.
    pub fn ns(&self) -> &MountNs {
        &self.ns
    }

    /// Detach the mount (`MNT_DETACH`): new opens reach the original directory again at once;
    /// files open through the mount keep working until closed.
    pub fn detach(mut self) -> Result<()> {
        self.detach_inner()
    }

    /// [`MountGuard::detach`] keeping the guard: after a failure it still owns the mount, so
    /// the detach can be tried again (or happens on drop).
    pub fn detach_in_place(&mut self) -> Result<()> {
        self.detach_inner()
    }

    /// Keep the mount after the guard is gone (its lifetime passes to the journal); returns a
    /// duplicate of the backing fd.
    pub fn leak(mut self) -> Result<OwnedFd> {
        let backing = self
            .backing
            .try_clone()
            .map_err(|e| Error::sys("duplicating the backing fd", e))?;
        self.mount_root = None;
        Ok(backing)
    }

    /// Detach; the guard forgets the mount only once it is detached.
    fn detach_inner(&mut self) -> Result<()> {
        let Some(root) = self.mount_root.as_ref() else {
            return Ok(());
        };
        let proc = host_proc()?;
        let path = format!("thread-self/fd/{}", root.as_raw_fd());
        let r = self.ns.run(|| {
            // Relative to the host's /proc: the magic link leads to the root of our own mount.
            rustix::process::fchdir(&proc)
                .map_err(|e| Error::sys("fchdir /proc", io::Error::from(e)))?;
            rustix::mount::unmount(path.as_str(), UnmountFlags::DETACH).map_err(|e| {
                Error::sys(
                    format!(
                        "detaching the mount on {} (pid {})",
                        self.path.display(),
                        self.ns.pid
                    ),
                    io::Error::from(e),
                )
            })
        });
        let r = match r {
            // EINVAL: no longer a mount (detached by someone else, or its namespace died).
            Err(Error::Sys { source, .. })
                if rustix::io::Errno::from_io_error(&source) == Some(rustix::io::Errno::INVAL) =>
            {
                Ok(())
            }
            r => r,
        };
        if r.is_ok() {
            self.mount_root = None;
        }
        r
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if self.mount_root.is_some()
            && let Err(e) = self.detach_inner()
        {
            tracing::warn!(path = %self.path.display(), error = %e, "could not detach mount");
        }
    }
}

/// Resolve `path` inside the target, check mount propagation under `policy`, open the backing
/// directory, and mount `source` on top of it from inside the target's mount namespace.
/// Nothing is created or moved in the target; the path need not be a mount point and may be on
/// a read-only filesystem. The new mount copies `ro`, `nosuid`, `nodev` and `noexec` from the
/// mount it covers.
pub fn mount_over(
    ns: &MountNs,
    path: &Path,
    source: MountSource<'_>,
    policy: SharedPolicy,
) -> Result<MountGuard> {
    let Resolved {
        fd: backing,
        path: canonical,
        mnt_id: under_id,
        ..
    } = resolve_dir_in_root(ns.root(), path)?;
    let mi = ns.mountinfo_all()?;
    let under = mi.by_id(under_id).cloned().ok_or_else(|| Error::NoMount {
        pid: ns.pid,
        path: canonical.clone(),
    })?;
    check_propagation(&under, &canonical, policy)?;
    let attrs = copied_attrs(&under);

    let (mount_root, mnt_id) = ns.run(|| {
        let what = |step: &str| {
            format!(
                "mounting over {} in pid {}: {step}",
                canonical.display(),
                ns.pid
            )
        };
        let err = |step: &str| {
            let w = what(step);
            move |e: rustix::io::Errno| Error::sys(w, io::Error::from(e))
        };
        let fs = match source {
            MountSource::Fuse {
                dev_fuse,
                subtype,
                source,
            } => {
                let fs = fsopen("fuse", FsOpenFlags::FSOPEN_CLOEXEC).map_err(err("fsopen fuse"))?;
                let fd = dev_fuse.as_raw_fd().to_string();
                let max_read = chaosfs::mount::MAX_READ.to_string();
                for (k, v) in [
                    ("source", source),
                    ("subtype", subtype),
                    ("fd", fd.as_str()),
                    ("rootmode", "40000"),
                    ("user_id", "0"),
                    ("group_id", "0"),
                    ("max_read", max_read.as_str()),
                ] {
                    fsconfig_set_string(&fs, k, v).map_err(err(&format!("fsconfig {k}={v}")))?;
                }
                for k in ["allow_other", "default_permissions"] {
                    fsconfig_set_flag(&fs, k).map_err(err(&format!("fsconfig {k}")))?;
                }
                fs
            }
            MountSource::Tmpfs => {
                let fs =
                    fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC).map_err(err("fsopen tmpfs"))?;
                fsconfig_set_string(&fs, "source", "iochaos").map_err(err("fsconfig source"))?;
                fs
            }
        };
        fsconfig_create(&fs).map_err(err("fsconfig create"))?;
        let m = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(err("fsmount"))?;
        move_mount(
            &m,
            "",
            &backing,
            "",
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
        )
        .map_err(err("move_mount"))?;
        let st = rustix::fs::statx(&m, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)
            .map_err(err("statx of the new mount"))?;
        Ok((m, st.stx_mnt_id))
    })?;
    let mut guard = MountGuard {
        ns: MountNs {
            pid: ns.pid,
            id: ns.id,
            mnt: ns
                .mnt
                .try_clone()
                .map_err(|e| Error::sys("duplicating a namespace fd", e))?,
            root: ns
                .root
                .try_clone()
                .map_err(|e| Error::sys("duplicating a root fd", e))?,
        },
        path: canonical,
        backing,
        mount_root: Some(mount_root),
        mnt_id,
        under,
        fuse_connection: None,
    };
    if matches!(source, MountSource::Fuse { .. }) {
        // The guard detaches on error from here on.
        let mi = guard.ns.mountinfo_all()?;
        guard.fuse_connection = mi.by_id(mnt_id).and_then(Mount::fuse_connection);
    }
    Ok(guard)
}

fn copied_attrs(under: &Mount) -> MountAttrFlags {
    let mut a = MountAttrFlags::empty();
    for opt in under.options.split(',') {
        a |= match opt {
            "ro" => MountAttrFlags::MOUNT_ATTR_RDONLY,
            "nosuid" => MountAttrFlags::MOUNT_ATTR_NOSUID,
            "nodev" => MountAttrFlags::MOUNT_ATTR_NODEV,
            "noexec" => MountAttrFlags::MOUNT_ATTR_NOEXEC,
            _ => MountAttrFlags::empty(),
        };
    }
    a
}

/// Outcome of [`detach_at`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detached {
    /// The mount was detached now.
    Detached,
    /// No mount with that id is left in the namespace.
    AlreadyGone,
}

/// Detach the mount `mnt_id` on `path` (canonical, in-target) without its guard: recovery from
/// the journal after the server died. Refuses with [`Error::MountNotOurs`] if the topmost mount
/// on `path` is another one.
pub fn detach_at(ns: &MountNs, path: &Path, mnt_id: u64) -> Result<Detached> {
    let proc = host_proc()?;
    ns.run(|| {
        let mi = read_thread_mountinfo(proc.as_fd())?;
        if mi.by_id(mnt_id).is_none() {
            return Ok(Detached::AlreadyGone);
        }
        match mi.top_at(path) {
            Some(m) if m.mnt_id == mnt_id => {}
            other => {
                return Err(Error::MountNotOurs {
                    path: path.to_owned(),
                    expected: mnt_id,
                    found: other.map_or(0, |m| m.mnt_id),
                });
            }
        }
        rustix::mount::unmount(path, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW).map_err(
            |e| {
                Error::sys(
                    format!("detaching the mount on {} (pid {})", path.display(), ns.pid),
                    io::Error::from(e),
                )
            },
        )?;
        Ok(Detached::Detached)
    })
}
