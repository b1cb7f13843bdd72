//! The `/proc` readers fdswap uses: those of `iochaos-procinfo`, with errors in this crate's
//! terms ([`Error::Proc`], [`Error::ProcFormat`]).

use std::path::Path;

pub use procinfo::{FdInfo, LockLine, MapLine, SigMasks};

use crate::error::Result;
use nix::errno::Errno;

use crate::sys::{self, FileId};

/// Thread ids of a process (`/proc/PID/task`).
pub fn tasks(pid: i32) -> Result<Vec<i32>> {
    Ok(procinfo::tasks(pid)?)
}

/// Open fd numbers in a task's fd table (`<task>/fd`).
pub fn fds(task_dir: &Path) -> Result<Vec<i32>> {
    Ok(procinfo::fds(task_dir)?)
}

/// Read `/proc/PID/maps`.
pub fn maps(pid: i32) -> Result<Vec<MapLine>> {
    Ok(procinfo::maps(pid)?)
}

/// Read the signal masks of a task.
pub fn sig_masks(task_dir: &Path) -> Result<SigMasks> {
    Ok(procinfo::sig_masks(task_dir)?)
}

/// `readlink`, as text.
pub fn link(path: &Path) -> Result<String> {
    Ok(procinfo::link(path)?)
}

/// A task's `fd/` and `fdinfo/` directories, opened once ([`procinfo::TaskFds`]), plus
/// `statx` of what an fd refers to.
#[derive(Debug)]
pub struct TaskFds(procinfo::TaskFds);

impl TaskFds {
    /// Open `<task>/fd` and `<task>/fdinfo`.
    pub fn open(task: &Path) -> Result<TaskFds> {
        Ok(TaskFds(procinfo::TaskFds::open(task)?))
    }

    /// Open fd numbers, sorted.
    pub fn list(&self) -> Result<Vec<i32>> {
        Ok(self.0.list()?)
    }

    /// The link text of fd `fd` (`/path`, `socket:[…]`, `anon_inode:…`).
    pub fn link(&self, fd: i32) -> std::io::Result<String> {
        self.0.link(fd)
    }

    /// `statx` of the file behind fd `fd` with `AT_STATX_DONT_SYNC` (cached attributes).
    pub fn stat(&self, fd: i32) -> std::result::Result<FileId, Errno> {
        sys::statx_at(
            self.0.fd_dir(),
            Path::new(&fd.to_string()),
            rustix::fs::AtFlags::STATX_DONT_SYNC,
        )
    }

    /// `fdinfo/N`.
    pub fn info(&mut self, fd: i32) -> Result<FdInfo> {
        Ok(self.0.info(fd)?)
    }
}
