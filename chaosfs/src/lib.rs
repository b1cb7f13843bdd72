#![doc = include_str!("../README.md")]

pub mod error;
pub mod fs;
pub(crate) mod fuse;
pub mod mount;
pub mod rules;
pub mod server;
mod sys;

use std::ffi::CString;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::{Error, Result};
pub use fs::{
    CrashOptions, CrashedFile, Escaped, ForwardedLock, InterruptStats, OpenMode, OpenStats,
    UpdateReport, WriteFate,
};
pub use fuse::Transport;
pub use mount::{Connection, MountOptions};
pub use server::{Config, Server, URING_ENV};

/// ChaosFS mounted on top of a directory by [`mount_over`]. Dropping it unmounts (best effort);
/// [`Mounted::unmount`] reports errors.
#[derive(Debug)]
pub struct Mounted {
    path: PathBuf,
    server: Option<Server>,
    connection: Option<Connection>,
    grace: Duration,
}

/// Mount ChaosFS on top of `path`, serving the directory that is there now, and start serving.
/// Faults are live when this returns.
pub fn mount_over(path: &Path, rules: rules::RuleSet, cfg: Config) -> Result<Mounted> {
    let path = std::fs::canonicalize(path)
        .map_err(|e| Error::sys(format!("resolve {}", path.display()), e))?;
    let cpath = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::sys("path", std::io::Error::from_raw_os_error(libc::EINVAL)))?;
    let backing = sys::file::open(&cpath, libc::O_PATH | libc::O_DIRECTORY)
        .map_err(|e| Error::sys(format!("open {}", path.display()), e))?;
    let fuse = mount::open_fuse_device()?;
    mount::mount_fuse(fuse.as_fd(), &path, &MountOptions::default())?;
    let connection = Connection::of_mount(&path).ok();
    let mut cfg = cfg;
    cfg.connection = connection;
    match Server::start(backing, fuse, rules, cfg) {
        Ok(server) => {
            // Fallback: the mount's device number names its connection (the server answers
            // the stat now).
            let connection = connection.or_else(|| {
                std::fs::metadata(&path)
                    .ok()
                    .map(|m| Connection::from_dev(std::os::unix::fs::MetadataExt::dev(&m)))
            });
            if let Some(c) = connection {
                server.set_connection(c);
            }
            Ok(Mounted {
                path,
                server: Some(server),
                connection,
                grace: Duration::from_secs(2),
            })
        }
        Err(e) => {
            // Abort while the mount still holds the connection's number (see `Server::stop`).
            if let Some(c) = connection {
                let _ = c.abort();
            }
            let _ = mount::detach(&path);
            Err(e)
        }
    }
}

impl Mounted {
    /// The server.
    pub fn server(&self) -> &Server {
        // `server` is only None during teardown, which consumes or drops self.
        self.server
            .as_ref()
            .unwrap_or_else(|| unreachable!("server taken before teardown"))
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The FUSE connection.
    pub fn connection(&self) -> Option<Connection> {
        self.connection
    }

    /// How long [`Mounted::unmount`] waits, after detaching, for files still open on the mount
    /// to be closed before it aborts the connection. Default 2 s.
    pub fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    /// Detach the mount (new accesses reach the directory underneath), answer parked requests,
    /// wait up to the grace period for open files on the mount to be closed, then abort the
    /// connection and stop serving.
    pub fn unmount(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        let Some(server) = self.server.take() else {
            return Ok(());
        };
        server.cancel_delays();
        let detached = mount::detach(&self.path);
        if !server.wait_timeout(self.grace) {
            if let Some(c) = self.connection {
                c.abort()?;
            }
            if !server.wait_timeout(Duration::from_secs(10)) {
                // Never hang here: leave the threads to end when the kernel lets go.
                return Err(Error::sys(
                    format!("stop serving {}", self.path.display()),
                    std::io::Error::from_raw_os_error(libc::EBUSY),
                ));
            }
        }
        let joined = server.wait();
        detached.and(joined)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::warn!("unmounting {}: {e}", self.path.display());
        }
    }
}
