//! The [`fuse::Filesystem`](crate::fuse::Filesystem) impl: evaluate the rules once per request,
//! then serve it at once or, after a latency fault, from the delay scheduler (copying the
//! request's borrowed arguments).

use std::sync::Arc;

use super::{Caller, FsInner, Target};
use crate::fuse::{
    self, FileHandle, INodeNo, KernelConfig, Operation, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyStatx, ReplyWrite, ReplyXattr, Request, Sender,
};
use crate::rules::Op;

/// The file system handed to the FUSE session; shares its state with the
/// [`crate::server::Server`].
pub(crate) struct ChaosFs(pub(crate) Arc<FsInner>);

/// Serve now, or park the work in the delay scheduler. In the deferred branch the listed
/// borrowed arguments are first turned into owned copies (same names), so `$call` must use
/// them through `&*name`.
macro_rules! serve {
    ($s:expr, $v:ident, [$($own:ident),*], |$fs:ident| $call:expr) => {{
        match $v.delay {
            Some(d) => {
                let inner = Arc::clone(&$s.0);
                $(let $own = $own.to_owned();)*
                $s.0.scheduler().defer(
                    d,
                    Box::new(move || {
                        let $fs: &FsInner = &inner;
                        $call
                    }),
                );
            }
            None => {
                let $fs: &FsInner = &$s.0;
                $call
            }
        }
    }};
}

impl fuse::Filesystem for ChaosFs {
    fn init(&self, config: &mut KernelConfig) {
        self.0.init(config);
    }

    fn forget(&self, ino: INodeNo, nlookup: u64) {
        self.0.forget(ino.0, nlookup);
    }

    // `serve!` calls use `&*name` so one expression fits both the borrowed argument (served now)
    // and its owned copy (served after a delay); on the borrowed path that reborrow is a no-op.
    #[allow(clippy::explicit_auto_deref, clippy::borrow_deref_ref)]
    fn dispatch(&self, req: &Request, op: Operation<'_>, s: Sender) {
        let c = Caller::of(req);
        let node = INodeNo(req.nodeid);
        let ino = req.nodeid;
        let verdict = |op: Op, t: Target<'_>| self.0.verdict(op, c, t);
        let file = |fh: FileHandle| Target::File(fh.0, ino);
        match op {
            Operation::Lookup { name } => {
                let v = verdict(Op::Lookup, Target::Child(ino, name));
                let r = ReplyEntry::new(s);
                serve!(self, v, [name], |fs| fs.lookup(node, &*name, &v, r))
            }
            Operation::Getattr => {
                let v = verdict(Op::Getattr, Target::Node(ino));
                let r = ReplyAttr::new(s);
                serve!(self, v, [], |fs| fs.getattr(node, &v, r))
            }
            Operation::Statx => {
                let v = verdict(Op::Getattr, Target::Node(ino));
                let r = ReplyStatx::new(s);
                serve!(self, v, [], |fs| fs.statx(node, &v, r))
            }
            Operation::Setattr(a) => {
                let v = verdict(Op::Setattr, Target::Node(ino));
                let r = ReplyAttr::new(s);
                serve!(self, v, [], |fs| fs.setattr(node, a, &v, r))
            }
            Operation::Readlink => {
                let v = verdict(Op::Readlink, Target::Node(ino));
                let r = ReplyData::new(s);
                serve!(self, v, [], |fs| fs.readlink(node, &v, r))
            }
            Operation::Mknod {
                name,
                mode,
                rdev,
                umask,
            } => {
                let v = verdict(Op::Mknod, Target::Child(ino, name));
                let r = ReplyEntry::new(s);
                serve!(self, v, [name], |fs| fs
                    .mknod(c, node, &*name, mode, umask, rdev, &v, r))
            }
            Operation::Mkdir { name, mode, umask } => {
                let v = verdict(Op::Mkdir, Target::Child(ino, name));
                let r = ReplyEntry::new(s);
                serve!(self, v, [name], |fs| fs
                    .mkdir(c, node, &*name, mode, umask, &v, r))
            }
            Operation::Unlink { name } => {
                let v = verdict(Op::Unlink, Target::Child(ino, name));
                let r = ReplyEmpty::new(s);
                serve!(self, v, [name], |fs| fs.unlink(node, &*name, false, &v, r))
            }
            Operation::Rmdir { name } => {
                let v = verdict(Op::Rmdir, Target::Child(ino, name));
                let r = ReplyEmpty::new(s);
                serve!(self, v, [name], |fs| fs.unlink(node, &*name, true, &v, r))
            }
            Operation::Symlink { name, target } => {
                let v = verdict(Op::Symlink, Target::Child(ino, name));
                let r = ReplyEntry::new(s);
                serve!(self, v, [name, target], |fs| fs
                    .symlink(c, node, &*name, &*target, &v, r))
            }
            Operation::Rename {
                name,
                newparent,
                newname,
                flags,
            } => {
                let v = verdict(Op::Rename, Target::Child(ino, name));
                let r = ReplyEmpty::new(s);
                serve!(self, v, [name, newname], |fs| fs
                    .rename(node, &*name, newparent, &*newname, flags, &v, r))
            }
            Operation::Link { oldnode, newname } => {
                let v = verdict(Op::Link, Target::Child(ino, newname));
                let r = ReplyEntry::new(s);
                serve!(self, v, [newname], |fs| fs
                    .link(oldnode, node, &*newname, &v, r))
            }
            Operation::Open {
                flags,
                kill_suidgid,
            } => {
                let v = verdict(Op::Open, Target::Node(ino));
                let r = ReplyOpen::new(s);
                serve!(self, v, [], |fs| fs.open(node, flags, kill_suidgid, &v, r))
            }
            Operation::Read { fh, offset, size } => {
                let v = verdict(Op::Read, file(fh));
                let r = ReplyData::new(s);
                serve!(self, v, [], |fs| fs.read(fh, offset, size, &v, r))
            }
            Operation::Write {
                fh,
                offset,
                data,
                kill_suidgid,
            } => {
                let v = verdict(Op::Write, file(fh));
                let r = ReplyWrite::new(s);
                serve!(self, v, [data], |fs| fs.write(
                    fh,
                    offset,
                    &*data,
                    kill_suidgid,
                    &v,
                    r
                ))
            }
            Operation::Flush { fh } => {
                let v = verdict(Op::Flush, file(fh));
                let r = ReplyEmpty::new(s);
                serve!(self, v, [], |fs| fs.flush(fh, &v, r))
            }
            Operation::Release { fh } => {
                let v = verdict(Op::Release, file(fh));
                let r = ReplyEmpty::new(s);
                serve!(self, v, [], |fs| fs.release(fh, &v, r))
            }
            Operation::Fsync { fh, datasync } => {
                let v = verdict(Op::Fsync, file(fh));
                let r = ReplyEmpty::new(s);
                serve!(self, v, [], |fs| fs.fsync(fh, datasync, &v, r))
            }
            Operation::Syncfs => {
                let v = verdict(Op::Fsync, Target::Node(ino));
                let r = ReplyEmpty::new(s);
                serve!(self, v, [], |fs| fs.syncfs(&v, r))
            }
            Operation::Opendir => {
                let v = verdict(Op::Opendir, Target::Node(ino));
                let r = ReplyOpen::new(s);
                serve!(self, v, [], |fs| fs.opendir(node, &v, r))
            }
            Operation::Readdir { fh, offset, size } => {
                let v = verdict(Op::Readdir, Target::Node(ino));
                let r = ReplyDirectory::new(s, size);
                serve!(self, v, [], |fs| fs.readdir(fh, offset, &v, r))
            }
            Operation::Readdirplus { fh, offset, size } => {
                let v = verdict(Op::Readdir, Target::Node(ino));
                let r = ReplyDirectoryPlus::new(s, size);
                serve!(self, v, [], |fs| fs.readdirplus(fh, offset, &v, r))
            }
            Operation::Releasedir { fh } => {
                let v = verdict(Op::Releasedir, Target::Node(ino));
                let r = ReplyEmpty::new(s);
                serve!(self, v, [], |fs| fs.releasedir(fh, &v, r))
            }
            Operation::Fsyncdir { fh, datasync } => {
                let v = verdict(Op::Fsyncdir, Target::Node(ino));
                let r = ReplyEmpty::new(s);
                serve!(self, v, [], |fs| fs.fsync(fh, datasync, &v, r))
            }
            Operation::Statfs => {
                let v = verdict(Op::Statfs, Target::Node(ino));
                let r = ReplyStatfs::new(s);
                serve!(self, v, [], |fs| fs.statfs(node, &v, r))
            }
            Operation::Setxattr { name, value, flags } => {
                let v = verdict(Op::Setxattr, Target::Node(ino));
                let r = ReplyEmpty::new(s);
                serve!(self, v, [name, value], |fs| fs
                    .setxattr(node, &*name, &*value, flags, &v, r))
            }
            Operation::Getxattr { name, size } => {
                let v = verdict(Op::Getxattr, Target::Node(ino));
                let r = ReplyXattr::new(s);
                serve!(self, v, [name], |fs| fs.getxattr(node, &*name, size, &v, r))
            }
            Operation::Listxattr { size } => {
                let v = verdict(Op::Listxattr, Target::Node(ino));
                let r = ReplyXattr::new(s);
                serve!(self, v, [], |fs| fs.listxattr(node, size, &v, r))
            }
            Operation::Removexattr { name } => {
                let v = verdict(Op::Removexattr, Target::Node(ino));
                let r = ReplyEmpty::new(s);
                serve!(self, v, [name], |fs| fs.removexattr(node, &*name, &v, r))
            }
            Operation::Access { mask } => {
                let v = verdict(Op::Access, Target::Node(ino));
                let r = ReplyEmpty::new(s);
                serve!(self, v, [], |fs| fs.access(node, mask, &v, r))
            }
            Operation::Create {
                name,
                mode,
                umask,
                flags,
            } => {
                let v = verdict(Op::Create, Target::Child(ino, name));
                let r = ReplyCreate::new(s);
                serve!(self, v, [name], |fs| fs.create(
                    c,
                    node,
                    Some(&*name),
                    mode,
                    umask,
                    flags,
                    &v,
                    r
                ))
            }
            Operation::Tmpfile { mode, umask, flags } => {
                let v = verdict(Op::Create, Target::Node(ino));
                let r = ReplyCreate::new(s);
                serve!(self, v, [], |fs| fs
                    .create(c, node, None, mode, umask, flags, &v, r))
            }
            Operation::Ioctl {
                fh,
                cmd,
                in_data,
                out_size,
            } => {
                let v = verdict(Op::Ioctl, Target::Node(ino));
                let r = ReplyIoctl::new(s);
                serve!(self, v, [in_data], |fs| fs
                    .ioctl(fh, cmd, &*in_data, out_size, &v, r))
            }
            Operation::Fallocate {
                fh,
                offset,
                length,
                mode,
            } => {
                let v = verdict(Op::Fallocate, file(fh));
                let r = ReplyEmpty::new(s);
                serve!(self, v, [], |fs| fs
                    .fallocate(fh, offset, length, mode, &v, r))
            }
            Operation::Lseek { fh, offset, whence } => {
                let v = verdict(Op::Lseek, file(fh));
                let r = ReplyLseek::new(s);
                serve!(self, v, [], |fs| fs.lseek(fh, offset, whence, &v, r))
            }
            Operation::CopyFileRange {
                fh_in,
                off_in,
                fh_out,
                off_out,
                len,
                flags,
            } => {
                let v = verdict(Op::CopyFileRange, file(fh_in));
                let r = ReplyWrite::new(s);
                let flags = flags as u32;
                serve!(self, v, [], |fs| fs.copy_file_range(
                    fh_in, off_in, fh_out, off_out, len, flags, &v, r
                ))
            }
            // Handled by the session loop; nothing else reaches here.
            Operation::Init { .. } | Operation::Destroy => s.error(fuse::Errno::EIO),
            // These take no reply.
            Operation::Forget { .. }
            | Operation::BatchForget { .. }
            | Operation::Interrupt
            | Operation::NotifyReply => drop(s),
            Operation::Unknown(_) => s.error(fuse::Errno::ENOSYS),
        }
    }
}
