//! Mounting ChaosFS: opening `/dev/fuse`, mount(2) of type `fuse.chaosfs` as root (no
//! fusermount), lazy detach, and the FUSE connection's control files under
//! `/sys/fs/fuse/connections/` (to abort a connection during teardown).

use std::ffi::CString;
use std::fmt::Write as _;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::sys;
use crate::{Error, Result};

/// Options of the FUSE mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// The "source" shown in mount tables.
    pub fsname: String,
    /// Subtype: the file system type becomes `fuse.<subtype>`.
    pub subtype: String,
    /// Extra mount flags. Default none: the mount behaves like the directory it covers.
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
    pub read_only: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            fsname: "chaosfs".to_owned(),
            subtype: "chaosfs".to_owned(),
            nosuid: false,
            nodev: false,
            noexec: false,
            read_only: false,
        }
    }
}

fn cpath(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        Error::sys(
            format!("path {}", path.display()),
            std::io::Error::from_raw_os_error(libc::EINVAL),
        )
    })
}

/// Open `/dev/fuse` (read-write, close-on-exec).
pub fn open_fuse_device() -> Result<OwnedFd> {
    sys::file::open(c"/dev/fuse", libc::O_RDWR).map_err(|e| Error::sys("open /dev/fuse", e))
}

/// The `max_read` mount option ChaosFS mounts use (see [`crate::fuse`]'s spliced replies).
pub const MAX_READ: u32 = crate::fuse::MAX_READ;

/// Mount a FUSE file system served through `fuse_fd` on `target` (mount(2) directly, as root):
/// type `fuse.<subtype>`, `allow_other,default_permissions,max_read`, owned by uid/gid 0. The root's file
/// type (`rootmode`) is taken from what `target` is now. The kernel queues the INIT request at
/// once; start serving `fuse_fd` (e.g. [`crate::server::Server::start`]) before touching the
/// mount.
pub fn mount_fuse(fuse_fd: BorrowedFd<'_>, target: &Path, opts: &MountOptions) -> Result<()> {
    let ctarget = cpath(target)?;
    let st = sys::file::fstatat(sys::file::cwd(), &ctarget, 0)
        .map_err(|e| Error::sys(format!("stat {}", target.display()), e))?;
    let mut data = String::new();
    let _ = write!(
        data,
        "fd={},rootmode={:o},user_id=0,group_id=0,allow_other,default_permissions,max_read={}",
        fuse_fd.as_raw_fd(),
        st.st_mode & libc::S_IFMT,
        MAX_READ
    );
    let mut flags = 0u64;
    if opts.nosuid {
        flags |= libc::MS_NOSUID;
    }
    if opts.nodev {
        flags |= libc::MS_NODEV;
    }
    if opts.noexec {
        flags |= libc::MS_NOEXEC;
    }
    if opts.read_only {
        flags |= libc::MS_RDONLY;
    }
    let fstype = CString::new(format!("fuse.{}", opts.subtype)).map_err(|_| {
        Error::sys(
            "mount subtype",
            std::io::Error::from_raw_os_error(libc::EINVAL),
        )
    })?;
    let source = CString::new(opts.fsname.as_bytes()).map_err(|_| {
        Error::sys(
            "mount fsname",
            std::io::Error::from_raw_os_error(libc::EINVAL),
        )
    })?;
    let cdata = CString::new(data).map_err(|_| {
        Error::sys(
            "mount options",
            std::io::Error::from_raw_os_error(libc::EINVAL),
        )
    })?;
    sys::mount::mount(&source, &ctarget, &fstype, flags, &cdata)
        .map_err(|e| Error::sys(format!("mount fuse on {}", target.display()), e))
}

/// Lazily detach the mount on `target` (`umount2(MNT_DETACH)`): new path lookups reach the
/// directory underneath at once; files already open on the mount keep working while the server
/// serves them.
pub fn detach(target: &Path) -> Result<()> {
    let c = cpath(target)?;
    sys::mount::umount2(&c, libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW)
        .map_err(|e| Error::sys(format!("umount {}", target.display()), e))
}

/// A FUSE connection, named by its directory under `/sys/fs/fuse/connections/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    id: u32,
}

const CONNECTIONS: &str = "/sys/fs/fuse/connections";

/// Whether fusectl is mounted at `/sys/fs/fuse/connections`: without it no connection can be
/// aborted ([`Connection::abort`]), so a server whose mount is still in use cannot be stopped.
pub fn fusectl_mounted() -> bool {
    self_mounts().is_ok_and(|mounts| {
        mounts
            .iter()
            .any(|m| m.mount_point == Path::new(CONNECTIONS))
    })
}

/// The lines of `/proc/self/mountinfo` that parse (iochaos-procinfo's parser).
fn self_mounts() -> std::io::Result<Vec<procinfo::Mount>> {
    let text = std::fs::read("/proc/self/mountinfo")?;
    Ok(text
        .split(|&b| b == b'\n')
        .filter_map(|l| procinfo::Mount::parse(l).ok())
        .collect())
}

impl Connection {
    /// The connection of a FUSE mount whose `st_dev` is `dev` (as `stat` reports it).
    pub fn from_dev(dev: u64) -> Connection {
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        // The directory is named after the kernel-internal dev_t: (major << 20) | minor.
        Connection {
            id: (major << 20) | minor,
        }
    }

    /// The connection id (the directory name under `/sys/fs/fuse/connections/`).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Find the connection of the topmost FUSE mount on `target` in this process's mount table
    /// (`/proc/self/mountinfo`). Sends no request to the file system, so it is safe to call
    /// before the server runs.
    pub fn of_mount(target: &Path) -> Result<Connection> {
        let mounts = self_mounts().map_err(|e| Error::sys("read /proc/self/mountinfo", e))?;
        let want = target.as_os_str().as_bytes();
        mounts
            .iter()
            .rev()
            .find(|m| m.fs_type.starts_with("fuse") && m.mount_point.as_os_str().as_bytes() == want)
            .map(|m| Connection {
                id: (m.major << 20) | m.minor,
            })
            .ok_or_else(|| {
                Error::sys(
                    format!("no FUSE mount on {}", target.display()),
                    std::io::Error::from_raw_os_error(libc::ENOENT),
                )
            })
    }

    fn file(&self, name: &str) -> PathBuf {
        Path::new(CONNECTIONS).join(self.id.to_string()).join(name)
    }

    /// Abort the connection: every pending and future request fails (ENOTCONN), the serving
    /// threads see the device disconnect and end. Use after detaching the mount.
    pub fn abort(&self) -> Result<()> {
        match std::fs::write(self.file("abort"), b"1") {
            Ok(()) => Ok(()),
            // The connection is already gone.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(Error::sys(format!("abort FUSE connection {}", self.id), e)),
        }
    }

    /// Requests waiting for an answer, or `None` once the connection is gone.
    pub fn waiting(&self) -> Option<u32> {
        std::fs::read_to_string(self.file("waiting"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// True while the kernel still has the connection.
    pub fn is_alive(&self) -> bool {
        self.file("waiting").exists()
    }
}

/// Undo mountinfo's octal escapes (`\040` for space, ...).
#[cfg(test)]
fn unescape_mountinfo(s: &str) -> Vec<u8> {
    procinfo::mountinfo::unescape_bytes(s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), b"/a b");
        assert_eq!(unescape_mountinfo("/plain"), b"/plain");
        assert_eq!(unescape_mountinfo(r"/x\134"), b"/x\\");
    }

    #[test]
    fn connection_ids() {
        assert_eq!(Connection::from_dev(libc::makedev(0, 57)).id(), 57);
        assert_eq!(Connection::from_dev(libc::makedev(0, 300)).id(), 300);
    }
}
