//! Requests on the whole file system or outside the file model: statfs, syncfs, ioctl.

use std::os::fd::AsFd;

use crate::fs::handle::Handle;
use crate::fs::{FsInner, errno, stat_u32};
use crate::fuse::{Errno, INodeNo, ReplyIoctl, ReplyStatfs};
use crate::rules::Verdict;
use crate::sys;

impl FsInner {
    /// FUSE_SYNCFS: `syncfs` of the backing file system.
    pub(crate) fn syncfs(&self) -> Result<(), Errno> {
        let root = self.inodes.root().clone();
        // syncfs needs a real fd; the inode's is O_PATH.
        sys::file::openat(
            root.fd().as_fd(),
            c".",
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
        .and_then(|d| sys::file::syncfs(d.as_fd()))
        .map_err(errno)
    }

    /// FUSE_STATFS of the file system holding `ino` (the root's if `ino` is gone).
    pub(crate) fn statfs(&self, ino: INodeNo, v: &Verdict, reply: ReplyStatfs) {
        let inode = self
            .inode(ino)
            .unwrap_or_else(|_| self.inodes.root().clone());
        let s = tri!(sys::file::fstatfs(inode.fd().as_fd()).map_err(errno), reply);
        let (bfree, bavail) = if v.full {
            (0, 0)
        } else {
            (s.f_bfree, s.f_bavail)
        };
        reply.statfs(
            s.f_blocks,
            bfree,
            bavail,
            s.f_files,
            s.f_ffree,
            stat_u32(s.f_bsize),
            stat_u32(s.f_namemax),
            stat_u32(s.f_frsize),
        );
    }

    pub(crate) fn ioctl(
        &self,
        h: &Handle,
        (cmd, in_data): (u32, &[u8]),
        out_size: u32,
        reply: ReplyIoctl,
    ) {
        let fd = h.fd.as_fd();
        let out = out_size as usize;
        let int_in =
            |d: &[u8]| -> Option<u32> { Some(u32::from_ne_bytes(d.get(..4)?.try_into().ok()?)) };
        let cmd = cmd as libc::Ioctl;
        if cmd == libc::FS_IOC_GETFLAGS || cmd == libc::FS_IOC32_GETFLAGS {
            let f = tri!(sys::file::get_inode_flags(fd).map_err(errno), reply);
            let b = f.to_ne_bytes();
            reply.ioctl(0, &b[..out.min(4)]);
        } else if cmd == libc::FS_IOC_SETFLAGS || cmd == libc::FS_IOC32_SETFLAGS {
            let Some(f) = int_in(in_data) else {
                return reply.error(Errno::EFAULT);
            };
            tri!(sys::file::set_inode_flags(fd, f).map_err(errno), reply);
            reply.ioctl(0, &[]);
        } else if cmd == libc::FS_IOC_GETVERSION || cmd == libc::FS_IOC32_GETVERSION {
            let g = tri!(sys::file::get_inode_version(fd).map_err(errno), reply);
            let b = g.to_ne_bytes();
            reply.ioctl(0, &b[..out.min(4)]);
        } else if cmd == sys::file::FS_IOC_FSGETXATTR {
            let x = tri!(sys::file::get_fsxattr(fd).map_err(errno), reply);
            reply.ioctl(0, &x[..out.min(x.len())]);
        } else if cmd == sys::file::FS_IOC_FSSETXATTR {
            let Some(x) = in_data
                .get(..28)
                .and_then(|d| <sys::file::FsXattr>::try_from(d).ok())
            else {
                return reply.error(Errno::EFAULT);
            };
            tri!(sys::file::set_fsxattr(fd, &x).map_err(errno), reply);
            reply.ioctl(0, &[]);
        } else {
            reply.error(Errno::ENOTTY);
        }
    }
}
