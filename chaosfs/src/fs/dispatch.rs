//! The [`fuse::Filesystem`](crate::fuse::Filesystem) impl: evaluate the rules once per request,
//! then serve it at once or, after a latency fault, from the delay scheduler (copying the
//! request's borrowed arguments).

use std::sync::Arc;

use super::ops::entries::NewNode;
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

/// The header fields every request's dispatch needs.
#[derive(Clone, Copy)]
struct Ctx {
    c: Caller,
    node: INodeNo,
    ino: u64,
}

impl fuse::Filesystem for ChaosFs {
    fn init(&self, config: &mut KernelConfig) {
        self.0.init(config);
    }

    fn forget(&self, ino: INodeNo, nlookup: u64) {
        self.0.forget(ino.0, nlookup);
    }

    /// Route the request to its family's dispatcher.
    fn dispatch(&self, req: &Request, op: Operation<'_>, s: Sender) {
        let cx = Ctx {
            c: Caller::of(req),
            node: INodeNo(req.nodeid),
            ino: req.nodeid,
        };
        use Operation as O;
        match op {
            O::Lookup { .. }
            | O::Mknod { .. }
            | O::Mkdir { .. }
            | O::Unlink { .. }
            | O::Rmdir { .. }
            | O::Symlink { .. }
            | O::Rename { .. }
            | O::Link { .. }
            | O::Create { .. }
            | O::Tmpfile { .. } => self.entry_op(cx, op, s),
            O::Getattr
            | O::Statx
            | O::Setattr(_)
            | O::Readlink
            | O::Access { .. }
            | O::Statfs
            | O::Syncfs
            | O::Setxattr { .. }
            | O::Getxattr { .. }
            | O::Listxattr { .. }
            | O::Removexattr { .. } => self.node_op(cx, op, s),
            O::Open { .. }
            | O::Read { .. }
            | O::Write { .. }
            | O::Flush { .. }
            | O::Release { .. }
            | O::Fsync { .. }
            | O::Fallocate { .. }
            | O::Lseek { .. }
            | O::CopyFileRange { .. }
            | O::Ioctl { .. } => self.file_op(cx, op, s),
            O::Opendir | O::Readdir { .. } | O::Readdirplus { .. } | O::Releasedir { .. } => {
                self.dir_op(cx, op, s)
            }
            O::Fsyncdir { fh, datasync } => {
                let v = self.verdict(cx, Op::Fsyncdir, Target::Node(cx.ino));
                let r = ReplyEmpty::new(s);
                serve!(self, v, [], |fs| fs.fsync(fh, datasync, &v, r))
            }
            // Handled by the session loop; nothing else reaches here.
            O::Init { .. } | O::Destroy => s.error(fuse::Errno::EIO),
            // These take no reply.
            O::Forget { .. } | O::BatchForget { .. } | O::Interrupt | O::NotifyReply => drop(s),
            O::Unknown(_) => s.error(fuse::Errno::ENOSYS),
        }
    }
}

/// A request handed to a family dispatcher that does not serve it (a routing bug): EIO.
fn misrouted(op: &Operation<'_>, s: Sender) {
    tracing::error!("request routed to the wrong dispatcher: {op:?}");
    s.error(fuse::Errno::EIO);
}

// `serve!` calls use `&*name` so one expression fits both the borrowed argument (served now)
// and its owned copy (served after a delay); on the borrowed path that reborrow is a no-op.
#[allow(clippy::explicit_auto_deref, clippy::borrow_deref_ref)]
impl ChaosFs {
    fn verdict(&self, cx: Ctx, op: Op, t: Target<'_>) -> crate::rules::Verdict {
        self.0.verdict(op, cx.c, t)
    }

    /// Requests that name an entry of directory `cx.node`.
    fn entry_op(&self, cx: Ctx, op: Operation<'_>, s: Sender) {
        let Ctx { c, node, ino } = cx;
        let verdict = |op: Op, name| self.verdict(cx, op, Target::Child(ino, name));
        match op {
            Operation::Lookup { name } => {
                let v = verdict(Op::Lookup, name);
                let r = ReplyEntry::new(s);
                serve!(self, v, [name], |fs| fs.lookup(node, &*name, &v, r))
            }
            Operation::Mknod {
                name,
                mode,
                rdev,
                umask,
            } => {
                let v = verdict(Op::Mknod, name);
                let r = ReplyEntry::new(s);
                let n = NewNode::Special { mode, umask, rdev };
                serve!(self, v, [name], |fs| fs
                    .make_node(c, node, &*name, n, &v, r))
            }
            Operation::Mkdir { name, mode, umask } => {
                let v = verdict(Op::Mkdir, name);
                let r = ReplyEntry::new(s);
                let n = NewNode::Dir { mode, umask };
                serve!(self, v, [name], |fs| fs
                    .make_node(c, node, &*name, n, &v, r))
            }
            Operation::Symlink { name, target } => {
                let v = verdict(Op::Symlink, name);
                let r = ReplyEntry::new(s);
                serve!(self, v, [name, target], |fs| {
                    let n = NewNode::Symlink { target: &*target };
                    fs.make_node(c, node, &*name, n, &v, r)
                })
            }
            Operation::Unlink { name } | Operation::Rmdir { name } => {
                let rmdir = matches!(op, Operation::Rmdir { .. });
                let v = verdict(if rmdir { Op::Rmdir } else { Op::Unlink }, name);
                let r = ReplyEmpty::new(s);
                serve!(self, v, [name], |fs| fs.unlink(node, &*name, rmdir, &v, r))
            }
            Operation::Rename {
                name,
                newparent,
                newname,
                flags,
            } => {
                let v = verdict(Op::Rename, name);
                let r = ReplyEmpty::new(s);
                serve!(self, v, [name, newname], |fs| fs
                    .rename(node, &*name, newparent, &*newname, flags, &v, r))
            }
            Operation::Link { oldnode, newname } => {
                let v = verdict(Op::Link, newname);
                let r = ReplyEntry::new(s);
                serve!(self, v, [newname], |fs| fs
                    .link(oldnode, node, &*newname, &v, r))
            }
            Operation::Create {
                name,
                mode,
                umask,
                flags,
            } => {
                let v = verdict(Op::Create, name);
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
                let v = self.verdict(cx, Op::Create, Target::Node(ino));
                let r = ReplyCreate::new(s);
                serve!(self, v, [], |fs| fs
                    .create(c, node, None, mode, umask, flags, &v, r))
            }
            other => misrouted(&other, s),
        }
    }

    /// Requests on the inode `cx.node` itself (attributes, xattrs, the file system).
    fn node_op(&self, cx: Ctx, op: Operation<'_>, s: Sender) {
        let node = cx.node;
        let verdict = |op: Op| self.verdict(cx, op, Target::Node(cx.ino));
        match op {
            Operation::Getattr => {
                let v = verdict(Op::Getattr);
                let r = ReplyAttr::new(s);
                serve!(self, v, [], |fs| fs.getattr(node, &v, r))
            }
            Operation::Statx => {
                let v = verdict(Op::Getattr);
                let r = ReplyStatx::new(s);
                serve!(self, v, [], |fs| fs.statx(node, &v, r))
            }
            Operation::Setattr(a) => {
                let v = verdict(Op::Setattr);
                let r = ReplyAttr::new(s);
                serve!(self, v, [], |fs| fs.setattr(node, a, &v, r))
            }
            Operation::Readlink => {
                let v = verdict(Op::Readlink);
                let r = ReplyData::new(s);
                serve!(self, v, [], |fs| fs.readlink(node, &v, r))
            }
            Operation::Access { mask } => {
                let v = verdict(Op::Access);
                let r = ReplyEmpty::new(s);
                serve!(self, v, [], |fs| fs.access(node, mask, &v, r))
            }
            Operation::Statfs => {
                let v = verdict(Op::Statfs);
                let r = ReplyStatfs::new(s);
                serve!(self, v, [], |fs| fs.statfs(node, &v, r))
            }
            Operation::Syncfs => {
                let v = verdict(Op::Fsync);
                let r = ReplyEmpty::new(s);
                serve!(self, v, [], |fs| fs.syncfs(&v, r))
            }
            Operation::Setxattr { name, value, flags } => {
                let v = verdict(Op::Setxattr);
                let r = ReplyEmpty::new(s);
                serve!(self, v, [name, value], |fs| fs
                    .setxattr(node, &*name, &*value, flags, &v, r))
            }
            Operation::Getxattr { name, size } => {
                let v = verdict(Op::Getxattr);
                let r = ReplyXattr::new(s);
                serve!(self, v, [name], |fs| fs.getxattr(node, &*name, size, &v, r))
            }
            Operation::Listxattr { size } => {
                let v = verdict(Op::Listxattr);
                let r = ReplyXattr::new(s);
                serve!(self, v, [], |fs| fs.listxattr(node, size, &v, r))
            }
            Operation::Removexattr { name } => {
                let v = verdict(Op::Removexattr);
                let r = ReplyEmpty::new(s);
                serve!(self, v, [name], |fs| fs.removexattr(node, &*name, &v, r))
            }
            other => misrouted(&other, s),
        }
    }

    /// Requests on an open file (`open` itself included).
    fn file_op(&self, cx: Ctx, op: Operation<'_>, s: Sender) {
        let file = |op: Op, fh: FileHandle| self.verdict(cx, op, Target::File(fh.0, cx.ino));
        match op {
            Operation::Open {
                flags,
                kill_suidgid,
            } => {
                let v = self.verdict(cx, Op::Open, Target::Node(cx.ino));
                let r = ReplyOpen::new(s);
                let node = cx.node;
                serve!(self, v, [], |fs| fs.open(node, flags, kill_suidgid, &v, r))
            }
            Operation::Read { fh, offset, size } => {
                let v = file(Op::Read, fh);
                let r = ReplyData::new(s);
                serve!(self, v, [], |fs| fs.read(fh, offset, size, &v, r))
            }
            Operation::Write {
                fh,
                offset,
                data,
                kill_suidgid,
            } => {
                let v = file(Op::Write, fh);
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
                let v = file(Op::Flush, fh);
                let r = ReplyEmpty::new(s);
                serve!(self, v, [], |fs| fs.flush(fh, &v, r))
            }
            Operation::Release { fh } => {
                let v = file(Op::Release, fh);
                let r = ReplyEmpty::new(s);
                serve!(self, v, [], |fs| fs.release(fh, &v, r))
            }
            Operation::Fsync { fh, datasync } => {
                let v = file(Op::Fsync, fh);
                let r = ReplyEmpty::new(s);
                serve!(self, v, [], |fs| fs.fsync(fh, datasync, &v, r))
            }
            Operation::Fallocate {
                fh,
                offset,
                length,
                mode,
            } => {
                let v = file(Op::Fallocate, fh);
                let r = ReplyEmpty::new(s);
                serve!(self, v, [], |fs| fs
                    .fallocate(fh, offset, length, mode, &v, r))
            }
            Operation::Lseek { fh, offset, whence } => {
                let v = file(Op::Lseek, fh);
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
                let v = file(Op::CopyFileRange, fh_in);
                let r = ReplyWrite::new(s);
                let ranges = ((fh_in, off_in), (fh_out, off_out), len);
                serve!(self, v, [], |fs| fs.copy_file_range(ranges, flags, &v, r))
            }
            Operation::Ioctl {
                fh,
                cmd,
                in_data,
                out_size,
            } => {
                let v = self.verdict(cx, Op::Ioctl, Target::Node(cx.ino));
                let r = ReplyIoctl::new(s);
                serve!(self, v, [in_data], |fs| fs
                    .ioctl(fh, cmd, &*in_data, out_size, &v, r))
            }
            other => misrouted(&other, s),
        }
    }

    /// Requests on a directory handle (`opendir` itself included; fsyncdir is served as fsync).
    fn dir_op(&self, cx: Ctx, op: Operation<'_>, s: Sender) {
        let v = |op: Op| self.verdict(cx, op, Target::Node(cx.ino));
        match op {
            Operation::Opendir => {
                let v = v(Op::Opendir);
                let r = ReplyOpen::new(s);
                let node = cx.node;
                serve!(self, v, [], |fs| fs.opendir(node, &v, r))
            }
            Operation::Readdir { fh, offset, size } => {
                let v = v(Op::Readdir);
                let r = ReplyDirectory::new(s, size);
                serve!(self, v, [], |fs| fs.readdir(fh, offset, &v, r))
            }
            Operation::Readdirplus { fh, offset, size } => {
                let v = v(Op::Readdir);
                let r = ReplyDirectoryPlus::new(s, size);
                serve!(self, v, [], |fs| fs.readdirplus(fh, offset, &v, r))
            }
            Operation::Releasedir { fh } => {
                let v = v(Op::Releasedir);
                let r = ReplyEmpty::new(s);
                serve!(self, v, [], |fs| fs.releasedir(fh, &v, r))
            }
            other => misrouted(&other, s),
        }
    }
}
