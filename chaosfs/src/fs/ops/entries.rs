//! Requests that create, name, and remove directory entries: lookup, forget, readlink, mknod,
//! mkdir, symlink, unlink/rmdir, rename, link.

use std::ffi::{CStr, OsStr};
use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use super::{NO_GEN, name_cstr};
use crate::fs::inode::Inode;
use crate::fs::{Caller, FsInner, Target, decode_dev, errno, negative_attr};
use crate::fuse::{Errno, ReplyData, ReplyEntry};
use crate::rules::Verdict;
use crate::sys;

/// What [`FsInner::make_node`] makes.
pub(crate) enum NewNode<'a> {
    /// FUSE_MKNOD: a file of the type in `mode` (device number `rdev` for devices).
    Special { mode: u32, umask: u32, rdev: u32 },
    /// FUSE_MKDIR.
    Dir { mode: u32, umask: u32 },
    /// FUSE_SYMLINK.
    Symlink { target: &'a Path },
}

impl FsInner {
    pub(crate) fn lookup(&self, p: &Inode, name: &OsStr, v: &Verdict, reply: ReplyEntry) {
        let ttl = self.ttl(Target::Child(p.nodeid, name));
        match self.do_lookup(p, name) {
            Ok((inode, st)) => self.reply_entry(reply, &inode, &st, v, ttl, ttl),
            Err(e) if e == Errno::ENOENT && !ttl.is_zero() => {
                // A negative entry the kernel may cache (node id 0).
                reply.entry(&ttl, &negative_attr(), NO_GEN);
            }
            Err(e) => reply.error(e),
        }
    }

    /// FUSE_LOOKUP of "." (see [`FsInner::lookup_node`]).
    pub(crate) fn lookup_self(&self, nodeid: u64, v: &Verdict, reply: ReplyEntry) {
        let ttl = self.ttl(Target::Node(nodeid));
        match self.lookup_node(nodeid) {
            Ok((inode, st)) => self.reply_entry(reply, &inode, &st, v, ttl, ttl),
            Err(e) => reply.error(e),
        }
    }

    pub(crate) fn forget(&self, ino: u64, n: u64) {
        self.inodes.forget(ino, n);
    }

    pub(crate) fn readlink(inode: &Inode, reply: ReplyData) {
        let target = tri!(
            sys::file::readlinkat(inode.fd().as_fd(), c"").map_err(errno),
            reply
        );
        reply.data(&target);
    }

    /// Shared tail of mknod/mkdir/symlink: look the new entry up and reply.
    pub(super) fn finish_create(
        &self,
        parent: &Inode,
        name: &OsStr,
        v: &Verdict,
        reply: ReplyEntry,
    ) {
        let ttl = self.ttl(Target::Child(parent.nodeid, name));
        match self.entry_of_new(parent, name) {
            Ok((inode, st)) => self.reply_entry(reply, &inode, &st, v, ttl, ttl),
            Err(e) => reply.error(e),
        }
    }

    /// FUSE_MKNOD, FUSE_MKDIR and FUSE_SYMLINK: make `name` in `parent` as the caller (its
    /// fsuid/fsgid, and its umask through the thread umask), then look it up and reply.
    pub(crate) fn make_node(
        &self,
        c: Caller,
        p: &Inode,
        name: &OsStr,
        node: NewNode<'_>,
        v: &Verdict,
        reply: ReplyEntry,
    ) {
        let dir_fd = p.fd();
        let dir = dir_fd.as_fd();
        let as_caller = |make: &dyn Fn(&CStr) -> io::Result<()>| {
            sys::thread::CallerCreds::enter(c.uid, c.gid)
                .and_then(|_creds| sys::with_cstr(name, make))
        };
        let r = match node {
            NewNode::Special { mode, umask, rdev } => {
                let mode = self.prepare_umask(mode, umask);
                as_caller(&|n| sys::file::mknodat(dir, n, mode, decode_dev(rdev)))
            }
            NewNode::Dir { mode, umask } => {
                let mode = self.prepare_umask(mode, umask);
                as_caller(&|n| sys::file::mkdirat(dir, n, mode))
            }
            NewNode::Symlink { target } => as_caller(&|n| {
                sys::with_cstr(target.as_os_str(), |t| sys::file::symlinkat(t, dir, n))
            }),
        };
        tri!(r.map_err(errno), reply);
        self.finish_create(p, name, v, reply);
    }

    /// FUSE_UNLINK, or FUSE_RMDIR if `rmdir`.
    pub(crate) fn unlink(p: &Inode, name: &OsStr, rmdir: bool) -> Result<(), Errno> {
        let flags = if rmdir { libc::AT_REMOVEDIR } else { 0 };
        name_cstr(name, |n| sys::file::unlinkat(p.fd().as_fd(), n, flags))
    }

    /// FUSE_RENAME(2) of `name` in `p` to `newname` in `np`.
    pub(crate) fn rename(
        &self,
        (p, name): (&Inode, &OsStr),
        (np, newname): (&Inode, &OsStr),
        flags: u32,
    ) -> Result<(), Errno> {
        name_cstr(name, |a| {
            sys::with_cstr(newname, |b| {
                sys::file::renameat2(p.fd().as_fd(), a, np.fd().as_fd(), b, flags)
            })
        })?;
        // Keep the names the rules see current (the kernel moves its dentry, no lookup follows).
        self.renamed(np, newname);
        if flags & libc::RENAME_EXCHANGE != 0 {
            self.renamed(p, name);
        }
        Ok(())
    }

    /// `name` in `dir` now leads to an inode the kernel may know: remember it under that name.
    pub(super) fn renamed(&self, dir: &Inode, name: &OsStr) {
        let st = sys::with_cstr(name, |c| {
            sys::file::fstatat(dir.fd().as_fd(), c, libc::AT_SYMLINK_NOFOLLOW)
        });
        if let Ok(st) = st
            && let Some(inode) = self.inodes.find(st.st_dev, st.st_ino)
        {
            inode.remember_name(dir.nodeid, name);
        }
    }

    /// FUSE_LINK: a new name `newname` in `np` for `inode`.
    pub(crate) fn link(
        &self,
        (inode, np): (&Inode, &Inode),
        newname: &OsStr,
        v: &Verdict,
        reply: ReplyEntry,
    ) {
        let r = name_cstr(newname, |n| {
            sys::file::link_fd(inode.fd().as_fd(), np.fd().as_fd(), n)
        });
        tri!(r, reply);
        let st = tri!(sys::file::fstat(inode.fd().as_fd()).map_err(errno), reply);
        let Some(same) = self.inodes.lookup_existing(st.st_dev, st.st_ino) else {
            // The entry was split off (rules changed): give the new name its own entry.
            return self.finish_create(np, newname, v, reply);
        };
        let ttl = self.ttl(Target::Child(np.nodeid, newname));
        // Attribute time 0: the kernel adjusts the link count it caches after this reply, so
        // make it fetch the real one.
        self.reply_entry(reply, &same, &st, v, ttl, Duration::ZERO);
    }
}
