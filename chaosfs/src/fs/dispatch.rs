//! The [`fuse::Filesystem`](crate::fuse::Filesystem) impl: evaluate the rules once per request,
//! then serve it at once or, after a latency fault, from the delay scheduler (copying the
//! request's borrowed arguments).

use std::sync::Arc;

use super::ops::entries::NewNode;
use super::{Caller, FsInner, Target};
use crate::fuse::{
    self, FileHandle, INodeNo, KernelConfig, Operation, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLock, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyStatx, ReplyWrite, ReplyXattr, Request, Sender,
};
use crate::rules::Op;

/// The file system handed to the FUSE session; shares its state with the
/// [`crate::server::Server`].
pub(crate) struct ChaosFs(pub(crate) Arc<FsInner>);

/// Serve now, or park the work in the delay scheduler. In the deferred branch the listed
/// borrowed arguments are first turned into owned copies (same names), so `$call` must use
/// them through `&*name`; the reply `$r` is handed to `$call` by the scheduler, which answers
/// it with EINTR instead if the caller dies while it waits.
macro_rules! serve {
    ($s:expr, $v:ident, $r:ident, [$($own:ident),*], |$fs:ident| $call:expr) => {{
        match $v.delay {
            Some(d) => {
                let inner = Arc::clone(&$s.0);
                $(let $own = $own.to_owned();)*
                $s.0.park(d, $r, move |$r| {
                    let $fs: &FsInner = &inner;
                    $call
                });
            }
            None => {
                let $fs: &FsInner = &$s.0;
                $call
            }
        }
    }};
}

/// Serve a request answered by one handler: [`serve!`] a call of [`FsInner::answer`], which
/// replies with the verdict's errno if it has one, else resolves `$key` (a handle, an inode, a
/// pair, or `()`) and calls `$call` with the resolved `$x`, the verdict `$v` and the reply `$r`.
macro_rules! answer {
    ($s:expr, $verdict:expr => $key:expr, $reply:expr, [$($own:ident),*],
     |$fs:ident, $x:pat, $v:ident, $r:ident| $call:expr) => {{
        let verdict = $verdict;
        let (key, reply) = ($key, $reply);
        serve!($s, verdict, reply, [$($own),*], |fs| fs.answer(&verdict, key, reply, |$x, $r| {
            let ($fs, $v): (&FsInner, &crate::rules::Verdict) = (fs, &verdict);
            $call
        }))
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

    fn interrupt(&self, unique: u64) {
        self.0.interrupt(unique);
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
            O::Getlk { .. } | O::Setlk { .. } => self.lock_op(cx, op, s),
            O::Opendir | O::Readdir { .. } | O::Readdirplus { .. } | O::Releasedir { .. } => {
                self.dir_op(cx, op, s)
            }
            O::Fsyncdir { fh, datasync } => {
                let v = self.verdict(cx, Op::Fsyncdir, Target::Node(cx.ino));
                answer!(self, v => fh, ReplyEmpty::new(s), [],
                    |fs, h, _v, r| r.result(fs.fsync(&h, datasync)))
            }
            // Handled by the session loop; nothing else reaches here.
            O::Init { .. } | O::Destroy => s.error(fuse::Errno::EIO),
            // These take no reply.
            O::Forget { .. } | O::BatchForget { .. } | O::Interrupt { .. } | O::NotifyReply => {
                drop(s)
            }
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
        let (entry, empty) = (ReplyEntry::new, ReplyEmpty::new);
        match op {
            // "." names the node itself, which the table may have forgotten (a file handle
            // decoded, FUSE_EXPORT_SUPPORT).
            Operation::Lookup { name } if name.as_encoded_bytes() == b"." => {
                let v = self.verdict(cx, Op::Lookup, Target::Node(ino));
                answer!(self, v => (), entry(s), [],
                    |fs, (), v, r| fs.lookup_self(ino, v, r))
            }
            Operation::Lookup { name } => {
                answer!(self, verdict(Op::Lookup, name) => node, entry(s), [name],
                    |fs, p, v, r| fs.lookup(&p, &*name, v, r))
            }
            Operation::Mknod {
                name,
                mode,
                rdev,
                umask,
            } => {
                let n = NewNode::Special { mode, umask, rdev };
                answer!(self, verdict(Op::Mknod, name) => node, entry(s), [name],
                    |fs, p, v, r| fs.make_node(c, &p, &*name, n, v, r))
            }
            Operation::Mkdir { name, mode, umask } => {
                let n = NewNode::Dir { mode, umask };
                answer!(self, verdict(Op::Mkdir, name) => node, entry(s), [name],
                    |fs, p, v, r| fs.make_node(c, &p, &*name, n, v, r))
            }
            Operation::Symlink { name, target } => {
                answer!(self, verdict(Op::Symlink, name) => node, entry(s), [name, target],
                |fs, p, v, r| {
                    let n = NewNode::Symlink { target: &*target };
                    fs.make_node(c, &p, &*name, n, v, r)
                })
            }
            Operation::Unlink { name } | Operation::Rmdir { name } => {
                let rmdir = matches!(op, Operation::Rmdir { .. });
                let v = verdict(if rmdir { Op::Rmdir } else { Op::Unlink }, name);
                answer!(self, v => node, empty(s), [name],
                    |_fs, p, _v, r| r.result(FsInner::unlink(&p, &*name, rmdir)))
            }
            Operation::Rename {
                name,
                newparent,
                newname,
                flags,
            } => {
                let v = verdict(Op::Rename, name);
                answer!(self, v => (node, newparent), empty(s), [name, newname],
                    |fs, (p, np), _v, r| r.result(fs.rename((&p, &*name), (&np, &*newname), flags)))
            }
            Operation::Link { oldnode, newname } => {
                answer!(self, verdict(Op::Link, newname) => (oldnode, node), entry(s), [newname],
                    |fs, (i, np), v, r| fs.link((&i, &np), &*newname, v, r))
            }
            Operation::Create {
                name,
                mode,
                umask,
                flags,
            } => answer!(self, verdict(Op::Create, name) => node, ReplyCreate::new(s), [name],
                |fs, p, v, r| fs.create((c, &p), Some(&*name), (mode, umask, flags), v, r)),
            Operation::Tmpfile { mode, umask, flags } => {
                let v = self.verdict(cx, Op::Create, Target::Node(ino));
                answer!(self, v => node, ReplyCreate::new(s), [],
                    |fs, p, v, r| fs.create((c, &p), None, (mode, umask, flags), v, r))
            }
            other => misrouted(&other, s),
        }
    }

    /// Requests on the inode `cx.node` itself (attributes, xattrs, the file system).
    fn node_op(&self, cx: Ctx, op: Operation<'_>, s: Sender) {
        let node = cx.node;
        let verdict = |op: Op| self.verdict(cx, op, Target::Node(cx.ino));
        let empty = ReplyEmpty::new;
        match op {
            Operation::Getattr => {
                answer!(self, verdict(Op::Getattr) => node, ReplyAttr::new(s), [],
                    |fs, i, v, r| fs.reply_attr(&i, v, r))
            }
            Operation::Statx => answer!(self, verdict(Op::Getattr) => node, ReplyStatx::new(s), [],
                |fs, i, v, r| fs.statx(&i, v, r)),
            Operation::Setattr(a) => {
                answer!(self, verdict(Op::Setattr) => node, ReplyAttr::new(s), [],
                    |fs, i, v, r| fs.setattr(&i, a, v, r))
            }
            Operation::Readlink => {
                answer!(self, verdict(Op::Readlink) => node, ReplyData::new(s), [],
                    |_fs, i, _v, r| FsInner::readlink(&i, r))
            }
            Operation::Access { mask } => answer!(self, verdict(Op::Access) => node, empty(s), [],
                |fs, i, _v, r| r.result(fs.access(&i, mask))),
            // No lookup: a gone node is answered for the root's file system.
            Operation::Statfs => answer!(self, verdict(Op::Statfs) => (), ReplyStatfs::new(s), [],
                |fs, (), v, r| fs.statfs(node, v, r)),
            Operation::Syncfs => answer!(self, verdict(Op::Fsync) => (), empty(s), [],
                |fs, (), _v, r| r.result(fs.syncfs())),
            Operation::Setxattr { name, value, flags } => {
                answer!(self, verdict(Op::Setxattr) => node, empty(s), [name, value],
                    |fs, i, _v, r| r.result(fs.setxattr(&i, &*name, &*value, flags)))
            }
            Operation::Getxattr { name, size } => {
                answer!(self, verdict(Op::Getxattr) => node, ReplyXattr::new(s), [name],
                    |fs, i, _v, r| fs.getxattr(&i, &*name, size, r))
            }
            Operation::Listxattr { size } => {
                answer!(self, verdict(Op::Listxattr) => node, ReplyXattr::new(s), [],
                    |fs, i, _v, r| fs.listxattr(&i, size, r))
            }
            Operation::Removexattr { name } => {
                answer!(self, verdict(Op::Removexattr) => node, empty(s), [name],
                    |fs, i, _v, r| r.result(fs.removexattr(&i, &*name)))
            }
            other => misrouted(&other, s),
        }
    }

    /// Requests on an open file (`open` itself included).
    fn file_op(&self, cx: Ctx, op: Operation<'_>, s: Sender) {
        let file = |op: Op, fh: FileHandle| self.verdict(cx, op, Target::File(fh.0, cx.ino));
        let empty = ReplyEmpty::new;
        match op {
            Operation::Open {
                flags,
                kill_suidgid,
            } => {
                let v = self.verdict(cx, Op::Open, Target::Node(cx.ino));
                answer!(self, v => cx.node, ReplyOpen::new(s), [],
                    |fs, i, _v, r| fs.open(&i, flags, kill_suidgid, r))
            }
            Operation::Read { fh, offset, size } => {
                answer!(self, file(Op::Read, fh) => fh, ReplyData::new(s), [],
                    |fs, h, v, r| fs.read(&h, offset, size, v, r))
            }
            Operation::Write {
                fh,
                offset,
                data,
                kill_suidgid,
            } => answer!(self, file(Op::Write, fh) => fh, ReplyWrite::new(s), [data],
                |fs, h, v, r| fs.write(&h, offset, &*data, kill_suidgid, v, r)),
            // No writeback cache: nothing to do but drop the closing process's forwarded POSIX
            // locks (whatever the verdict: close(2) drops them even when the flush fails) and
            // check the handle.
            Operation::Flush { fh, lock_owner } => {
                self.0.drop_posix_locks(cx.ino, lock_owner);
                answer!(self, file(Op::Flush, fh) => fh, empty(s), [],
                    |_fs, _h, _v, r| r.ok())
            }
            // The handle is freed whatever the verdict: release takes the verdict itself.
            Operation::Release { fh, flock_owner } => {
                if let Some(o) = flock_owner {
                    self.0.drop_flock(cx.ino, o);
                }
                let (v, r) = (file(Op::Release, fh), empty(s));
                serve!(self, v, r, [], |fs| fs.release(fh, &v, r))
            }
            Operation::Fsync { fh, datasync } => {
                answer!(self, file(Op::Fsync, fh) => fh, empty(s), [],
                    |fs, h, _v, r| r.result(fs.fsync(&h, datasync)))
            }
            Operation::Fallocate {
                fh,
                offset,
                length,
                mode,
            } => answer!(self, file(Op::Fallocate, fh) => fh, empty(s), [],
                |fs, h, _v, r| r.result(fs.fallocate(&h, offset, length, mode))),
            Operation::Lseek { fh, offset, whence } => {
                answer!(self, file(Op::Lseek, fh) => fh, ReplyLseek::new(s), [],
                    |fs, h, _v, r| fs.lseek(&h, offset, whence, r))
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
                answer!(self, v => (fh_in, fh_out), ReplyWrite::new(s), [],
                |fs, (hi, ho), _v, r| {
                    fs.copy_file_range((&hi, off_in), (&ho, off_out), len, flags, r)
                })
            }
            Operation::Ioctl {
                fh,
                cmd,
                in_data,
                out_size,
            } => {
                let v = self.verdict(cx, Op::Ioctl, Target::Node(cx.ino));
                answer!(self, v => fh, ReplyIoctl::new(s), [in_data],
                    |fs, h, _v, r| fs.ioctl(&h, (cmd, &*in_data), out_size, r))
            }
            other => misrouted(&other, s),
        }
    }

    /// Lock requests (sent only when locks are forwarded): served on the backing file, with no
    /// rule (no op name selects them).
    fn lock_op(&self, cx: Ctx, op: Operation<'_>, s: Sender) {
        let inode = match self.0.inode(cx.node) {
            Ok(i) => i,
            Err(e) => return s.error(e),
        };
        match op {
            Operation::Getlk { owner, lock } => {
                self.0
                    .getlk(&inode, owner, cx.c.pid, lock, ReplyLock::new(s))
            }
            Operation::Setlk {
                owner,
                lock,
                sleep,
                flock,
            } => self.0.setlk(
                &inode,
                (owner, flock, cx.c.pid),
                lock,
                sleep,
                ReplyEmpty::new(s),
            ),
            other => misrouted(&other, s),
        }
    }

    /// Requests on a directory handle (`opendir` itself included; fsyncdir is served as fsync).
    fn dir_op(&self, cx: Ctx, op: Operation<'_>, s: Sender) {
        let v = |op: Op| self.verdict(cx, op, Target::Node(cx.ino));
        match op {
            Operation::Opendir => answer!(self, v(Op::Opendir) => cx.node, ReplyOpen::new(s), [],
                |fs, i, _v, r| fs.opendir(i, r)),
            Operation::Readdir { fh, offset, size } => {
                answer!(self, v(Op::Readdir) => fh, ReplyDirectory::new(s, size), [],
                    |fs, h, _v, r| fs.readdir(&h, offset, r))
            }
            Operation::Readdirplus { fh, offset, size } => {
                answer!(self, v(Op::Readdir) => fh, ReplyDirectoryPlus::new(s, size), [],
                    |fs, h, _v, r| fs.readdirplus(&h, offset, r))
            }
            // As release: the handle is freed whatever the verdict.
            Operation::Releasedir { fh } => {
                let (v, r) = (v(Op::Releasedir), ReplyEmpty::new(s));
                serve!(self, v, r, [], |fs| fs.releasedir(fh, &v, r))
            }
            other => misrouted(&other, s),
        }
    }
}
