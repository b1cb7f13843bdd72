//! FUSE connections through the fusectl filesystem (`/sys/fs/fuse/connections/N`), without
//! touching the host's mount table: fusectl is mounted privately (a detached mount from
//! `fsmount`, never attached anywhere) and used as a directory fd.
//!
//! Aborting a connection makes every pending and future request on its mount fail with
//! `ENOTCONN` instead of hanging: the last resort of recovery when a server is dead and its
//! mount is still busy.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;

use rustix::fs::{Mode, OFlags};
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, fsconfig_create, fsmount, fsopen};

use crate::error::{Error, Result};

/// A private fusectl mount.
#[derive(Debug)]
pub struct FuseCtl {
    root: OwnedFd,
}

impl FuseCtl {
    /// Mount fusectl privately.
    pub fn open() -> Result<FuseCtl> {
        let err =
            |what: &'static str| move |e: rustix::io::Errno| Error::sys(what, io::Error::from(e));
        let fs = fsopen("fusectl", FsOpenFlags::FSOPEN_CLOEXEC).map_err(err("fsopen fusectl"))?;
        fsconfig_create(&fs).map_err(err("fsconfig create fusectl"))?;
        let root = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())
            .map_err(err("fsmount fusectl"))?;
        Ok(FuseCtl { root })
    }

    /// True while connection `conn` exists.
    pub fn exists(&self, conn: u32) -> bool {
        rustix::fs::statat(&self.root, conn.to_string(), rustix::fs::AtFlags::empty()).is_ok()
    }

    /// Open file `name` of connection `conn`; `None` if the connection is gone.
    fn open_file(&self, conn: u32, name: &str, access: OFlags) -> Result<Option<File>> {
        let path = format!("{conn}/{name}");
        match rustix::fs::openat(&self.root, &path, access | OFlags::CLOEXEC, Mode::empty()) {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(Error::io(format!("fusectl/{path}"), e.into())),
        }
    }

    /// Requests waiting for the server on `conn` (`waiting`); `None` if it is gone.
    pub fn waiting(&self, conn: u32) -> Result<Option<u64>> {
        let path = format!("{conn}/waiting");
        let Some(mut f) = self.open_file(conn, "waiting", OFlags::RDONLY)? else {
            return Ok(None);
        };
        let mut s = String::new();
        f.read_to_string(&mut s)
            .map_err(|e| Error::io(format!("fusectl/{path}"), e))?;
        s.trim().parse().map(Some).map_err(|_| Error::Malformed {
            path: format!("fusectl/{path}").into(),
            reason: format!("not a number: {s:?}"),
        })
    }

    /// Abort connection `conn`. False if it no longer exists.
    pub fn abort(&self, conn: u32) -> Result<bool> {
        let Some(mut f) = self.open_file(conn, "abort", OFlags::WRONLY)? else {
            return Ok(false);
        };
        f.write_all(b"1")
            .map_err(|e| Error::io(format!("fusectl/{conn}/abort"), e))?;
        Ok(true)
    }
}
