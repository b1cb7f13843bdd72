//! The `fuser::Filesystem` impl: evaluate the rules once per request, then serve it at once or,
//! after a latency fault, from the delay scheduler (copying the request's borrowed arguments).

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, FileHandle, Filesystem, INodeNo, IoctlFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::{Caller, FsInner, Target};
use crate::rules::Op;

/// The file system handed to fuser; shares its state with the [`crate::server::Server`].
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

// `serve!` calls use `&*name` so one expression fits both the borrowed argument (served now)
// and its owned copy (served after a delay); on the borrowed path that reborrow is a no-op.
#[allow(clippy::explicit_auto_deref, clippy::borrow_deref_ref)]
impl Filesystem for ChaosFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        self.0.init(config);
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let v = self
            .0
            .verdict(Op::Lookup, Caller::of(req), Target::Child(parent.0, name));
        serve!(self, v, [name], |fs| fs.lookup(parent, &*name, &v, reply))
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.0.forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let v = self
            .0
            .verdict(Op::Getattr, Caller::of(req), Target::Node(ino.0));
        serve!(self, v, [], |fs| fs.getattr(ino, &v, reply))
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let v = self
            .0
            .verdict(Op::Setattr, Caller::of(req), Target::Node(ino.0));
        serve!(self, v, [], |fs| fs.setattr(
            ino, mode, uid, gid, size, atime, mtime, fh, &v, reply
        ))
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let v = self
            .0
            .verdict(Op::Readlink, Caller::of(req), Target::Node(ino.0));
        serve!(self, v, [], |fs| fs.readlink(ino, &v, reply))
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let c = Caller::of(req);
        let v = self.0.verdict(Op::Mknod, c, Target::Child(parent.0, name));
        serve!(self, v, [name], |fs| fs
            .mknod(c, parent, &*name, mode, umask, rdev, &v, reply))
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let c = Caller::of(req);
        let v = self.0.verdict(Op::Mkdir, c, Target::Child(parent.0, name));
        serve!(self, v, [name], |fs| fs
            .mkdir(c, parent, &*name, mode, umask, &v, reply))
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let v = self
            .0
            .verdict(Op::Unlink, Caller::of(req), Target::Child(parent.0, name));
        serve!(self, v, [name], |fs| fs
            .unlink(parent, &*name, false, &v, reply))
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let v = self
            .0
            .verdict(Op::Rmdir, Caller::of(req), Target::Child(parent.0, name));
        serve!(self, v, [name], |fs| fs
            .unlink(parent, &*name, true, &v, reply))
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let c = Caller::of(req);
        let v = self
            .0
            .verdict(Op::Symlink, c, Target::Child(parent.0, link_name));
        serve!(self, v, [link_name, target], |fs| fs.symlink(
            c,
            parent,
            &*link_name,
            &*target,
            &v,
            reply
        ))
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let v = self
            .0
            .verdict(Op::Rename, Caller::of(req), Target::Child(parent.0, name));
        let flags = flags.bits();
        serve!(self, v, [name, newname], |fs| fs
            .rename(parent, &*name, newparent, &*newname, flags, &v, reply))
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let v = self.0.verdict(
            Op::Link,
            Caller::of(req),
            Target::Child(newparent.0, newname),
        );
        serve!(self, v, [newname], |fs| fs
            .link(ino, newparent, &*newname, &v, reply))
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let v = self
            .0
            .verdict(Op::Open, Caller::of(req), Target::Node(ino.0));
        let flags = flags.0;
        serve!(self, v, [], |fs| fs.open(ino, flags, &v, reply))
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let v = self
            .0
            .verdict(Op::Read, Caller::of(req), Target::File(fh.0, ino.0));
        serve!(self, v, [], |fs| fs.read(fh, offset, size, &v, reply))
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let v = self
            .0
            .verdict(Op::Write, Caller::of(req), Target::File(fh.0, ino.0));
        serve!(self, v, [data], |fs| fs
            .write(fh, offset, &*data, &v, reply))
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let v = self
            .0
            .verdict(Op::Flush, Caller::of(req), Target::File(fh.0, ino.0));
        serve!(self, v, [], |fs| fs.flush(fh, &v, reply))
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let v = self
            .0
            .verdict(Op::Release, Caller::of(req), Target::File(fh.0, ino.0));
        serve!(self, v, [], |fs| fs.release(fh, &v, reply))
    }

    fn fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let v = self
            .0
            .verdict(Op::Fsync, Caller::of(req), Target::File(fh.0, ino.0));
        serve!(self, v, [], |fs| fs.fsync(fh, datasync, &v, reply))
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let v = self
            .0
            .verdict(Op::Opendir, Caller::of(req), Target::Node(ino.0));
        serve!(self, v, [], |fs| fs.opendir(ino, &v, reply))
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let v = self
            .0
            .verdict(Op::Readdir, Caller::of(req), Target::Node(ino.0));
        serve!(self, v, [], |fs| fs.readdir(fh, offset, &v, reply))
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        let v = self
            .0
            .verdict(Op::Readdir, Caller::of(req), Target::Node(ino.0));
        serve!(self, v, [], |fs| fs.readdirplus(fh, offset, &v, reply))
    }

    fn releasedir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let v = self
            .0
            .verdict(Op::Releasedir, Caller::of(req), Target::Node(ino.0));
        serve!(self, v, [], |fs| fs.releasedir(fh, &v, reply))
    }

    fn fsyncdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let v = self
            .0
            .verdict(Op::Fsyncdir, Caller::of(req), Target::Node(ino.0));
        serve!(self, v, [], |fs| fs.fsync(fh, datasync, &v, reply))
    }

    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let v = self
            .0
            .verdict(Op::Statfs, Caller::of(req), Target::Node(ino.0));
        serve!(self, v, [], |fs| fs.statfs(ino, &v, reply))
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let v = self
            .0
            .verdict(Op::Setxattr, Caller::of(req), Target::Node(ino.0));
        serve!(self, v, [name, value], |fs| fs
            .setxattr(ino, &*name, &*value, flags, &v, reply))
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let v = self
            .0
            .verdict(Op::Getxattr, Caller::of(req), Target::Node(ino.0));
        serve!(self, v, [name], |fs| fs
            .getxattr(ino, &*name, size, &v, reply))
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let v = self
            .0
            .verdict(Op::Listxattr, Caller::of(req), Target::Node(ino.0));
        serve!(self, v, [], |fs| fs.listxattr(ino, size, &v, reply))
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let v = self
            .0
            .verdict(Op::Removexattr, Caller::of(req), Target::Node(ino.0));
        serve!(self, v, [name], |fs| fs.removexattr(ino, &*name, &v, reply))
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let v = self
            .0
            .verdict(Op::Access, Caller::of(req), Target::Node(ino.0));
        let mask = mask.bits();
        serve!(self, v, [], |fs| fs.access(ino, mask, &v, reply))
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let c = Caller::of(req);
        let v = self.0.verdict(Op::Create, c, Target::Child(parent.0, name));
        serve!(self, v, [name], |fs| fs
            .create(c, parent, &*name, mode, umask, flags, &v, reply))
    }

    fn ioctl(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        reply: ReplyIoctl,
    ) {
        let v = self
            .0
            .verdict(Op::Ioctl, Caller::of(req), Target::Node(ino.0));
        serve!(self, v, [in_data], |fs| fs
            .ioctl(fh, cmd, &*in_data, out_size, &v, reply))
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let v = self
            .0
            .verdict(Op::Fallocate, Caller::of(req), Target::File(fh.0, ino.0));
        serve!(self, v, [], |fs| fs
            .fallocate(fh, offset, length, mode, &v, reply))
    }

    fn lseek(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let v = self
            .0
            .verdict(Op::Lseek, Caller::of(req), Target::File(fh.0, ino.0));
        serve!(self, v, [], |fs| fs.lseek(fh, offset, whence, &v, reply))
    }

    fn copy_file_range(
        &self,
        req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let v = self.0.verdict(
            Op::CopyFileRange,
            Caller::of(req),
            Target::File(fh_in.0, ino_in.0),
        );
        let flags = flags.bits() as u32;
        serve!(self, v, [], |fs| fs.copy_file_range(
            fh_in, offset_in, fh_out, offset_out, len, flags, &v, reply
        ))
    }
}
