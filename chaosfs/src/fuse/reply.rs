//! Replies. Each request gets exactly one: a typed reply object owns the request's [`Sender`],
//! is consumed by answering, and answers EIO if dropped unanswered (a request the kernel never
//! hears back about would hang its caller).

use std::ffi::OsStr;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use zerocopy::IntoBytes;

use super::abi;
use super::types::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, time_parts, valid,
};
use super::uring::Slot;
use crate::sys::fuse_dev;

/// Where and to which request a reply goes: the `/dev/fuse` fd the request was read from (the
/// kernel looks the request up in that fd's queue) and the request's unique id.
#[derive(Debug)]
pub struct Sender {
    ch: Arc<OwnedFd>,
    unique: u64,
    /// The caller's thread id (in the connection's pid namespace; 0 when unknown).
    pid: u32,
    /// The io_uring entry the request came in, which the reply goes back through (`ch` then
    /// serves only for passthrough backing ids).
    ring: Option<Arc<Slot>>,
}

impl Sender {
    pub(crate) fn new(ch: Arc<OwnedFd>, unique: u64, pid: u32, ring: Option<Arc<Slot>>) -> Sender {
        Sender {
            ch,
            unique,
            pid,
            ring,
        }
    }

    /// Answer with an error.
    pub(crate) fn error(self, e: Errno) {
        self.send(e.code(), &[]);
    }

    /// Answer with success and no payload.
    pub(crate) fn ok(self) {
        self.send(0, &[]);
    }

    /// Send a reply: `error` (0 or a positive errno) and the payload parts.
    fn send(&self, error: i32, parts: &[&[u8]]) {
        if error != 0 {
            tracing::trace!(unique = self.unique, "reply errno {error}");
        }
        let payload = parts.iter().map(|p| p.len()).sum::<usize>();
        let Some(h) = abi::OutHeader::new(-error, self.unique, payload) else {
            // No reply is that large (reads and lists are capped by the kernel's size); should
            // one be, the caller gets EIO rather than a header that lies about its length.
            tracing::warn!(
                "FUSE reply to request {} too long: {payload} bytes",
                self.unique
            );
            return self.send(libc::EIO, &[]);
        };
        if let Some(slot) = &self.ring {
            if let Err(e) = slot.reply(self.unique, h.as_bytes(), parts) {
                tracing::warn!("FUSE reply to request {}: {e}", self.unique);
                if error != libc::EIO {
                    return self.send(libc::EIO, &[]);
                }
            }
            return;
        }
        let mut iov = Vec::with_capacity(parts.len() + 1);
        iov.push(IoSlice::new(h.as_bytes()));
        iov.extend(
            parts
                .iter()
                .filter(|p| !p.is_empty())
                .map(|p| IoSlice::new(p)),
        );
        if let Err(e) = fuse_dev::writev(self.ch.as_fd(), &iov) {
            // ENOENT: the request was interrupted and is gone; ENODEV: the connection ended.
            if !matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENODEV)) {
                tracing::warn!("FUSE reply to request {}: {e}", self.unique);
            }
        }
    }
}

/// One backing file registered for kernel passthrough; unregistered when dropped.
#[derive(Debug)]
pub struct BackingId {
    ch: Weak<OwnedFd>,
    id: u32,
}

impl BackingId {
    fn open(ch: &Arc<OwnedFd>, fd: impl AsFd) -> io::Result<BackingId> {
        let id = fuse_dev::backing_open(ch.as_fd(), fd.as_fd())?;
        Ok(BackingId {
            ch: Arc::downgrade(ch),
            id,
        })
    }

    /// The id as `fuse_open_out.backing_id` (an `int32_t`) carries it: the ioctl returned it as
    /// a non-negative `int`, so the bits are the same number.
    fn abi_id(&self) -> i32 {
        self.id.cast_signed()
    }
}

impl Drop for BackingId {
    fn drop(&mut self) {
        if let Some(ch) = self.ch.upgrade()
            && let Err(e) = fuse_dev::backing_close(ch.as_fd(), self.id)
            && e.raw_os_error() != Some(libc::ENODEV)
        {
            tracing::warn!("close FUSE backing id {}: {e}", self.id);
        }
    }
}

/// Work to do right before a reply is written ([`Reply::before_reply`]).
pub struct BeforeReply(Box<dyn FnOnce() + Send>);

impl std::fmt::Debug for BeforeReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BeforeReply")
    }
}

/// The common part: a sender used at most once, and what to do right before it is used.
#[derive(Debug)]
struct Once(Option<Sender>, Option<BeforeReply>);

impl Once {
    fn new(s: Sender) -> Once {
        Once(Some(s), None)
    }
    fn send(&mut self, error: i32, parts: &[&[u8]]) {
        if let Some(s) = self.0.take() {
            if let Some(BeforeReply(f)) = self.1.take() {
                f();
            }
            s.send(error, parts);
        }
    }
    fn error(&mut self, e: Errno) {
        self.send(e.code(), &[]);
    }
    fn sender(&self) -> Option<&Sender> {
        self.0.as_ref()
    }
    fn request(&self) -> Option<(u64, u32)> {
        self.0.as_ref().map(|s| (s.unique, s.pid))
    }
    /// Register `fd` as a passthrough backing file on this request's connection.
    fn open_backing(&self, fd: impl AsFd) -> io::Result<BackingId> {
        let s = self
            .sender()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
        BackingId::open(&s.ch, fd)
    }
}

impl Drop for Once {
    fn drop(&mut self) {
        if let Some(s) = self.0.as_ref() {
            tracing::warn!(
                "request {} dropped without a reply; answering EIO",
                s.unique
            );
            self.send(libc::EIO, &[]);
        }
    }
}

/// What every typed reply can do: answer with an error (for code that serves any request), and
/// name its request.
pub trait Reply {
    fn error(self, e: Errno);
    /// The request's unique id and its caller's thread id; `None` once answered.
    fn request(&self) -> Option<(u64, u32)>;
    /// Run `f` right before the reply is written, whatever it is (nothing runs if the reply
    /// was already sent).
    fn before_reply(&mut self, f: Box<dyn FnOnce() + Send>);
}

macro_rules! reply_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug)]
        pub struct $name(Once);

        impl $name {
            pub(crate) fn new(s: Sender) -> Self {
                $name(Once::new(s))
            }
            /// Answer with an error.
            pub fn error(mut self, e: Errno) {
                self.0.error(e);
            }
        }

        impl Reply for $name {
            fn error(self, e: Errno) {
                $name::error(self, e);
            }
            fn request(&self) -> Option<(u64, u32)> {
                self.0.request()
            }
            fn before_reply(&mut self, f: Box<dyn FnOnce() + Send>) {
                self.0.1 = Some(BeforeReply(f));
            }
        }
    };
}

reply_type!(
    /// An answer with no payload.
    ReplyEmpty
);
reply_type!(
    /// Raw bytes (read, readlink).
    ReplyData
);
reply_type!(
    /// A directory entry (lookup, mknod, mkdir, symlink, link).
    ReplyEntry
);
reply_type!(
    /// Attributes (getattr, setattr).
    ReplyAttr
);
reply_type!(
    /// Extended attributes of a statx request.
    ReplyStatx
);
reply_type!(
    /// An open handle (open, opendir).
    ReplyOpen
);
reply_type!(
    /// Bytes written (write, copy_file_range).
    ReplyWrite
);
reply_type!(
    /// File system statistics.
    ReplyStatfs
);
reply_type!(
    /// A new entry and its open handle (create, tmpfile).
    ReplyCreate
);
reply_type!(
    /// An ioctl result.
    ReplyIoctl
);
reply_type!(
    /// An xattr value or list, or the size it needs.
    ReplyXattr
);
reply_type!(
    /// A file offset (lseek).
    ReplyLseek
);
reply_type!(
    /// The lock that would conflict (getlk).
    ReplyLock
);

impl ReplyLock {
    pub fn locked(mut self, lk: abi::FileLock) {
        let out = abi::LkOut { lk };
        self.0.send(0, &[out.as_bytes()]);
    }
}

impl ReplyEmpty {
    pub fn ok(mut self) {
        self.0.send(0, &[]);
    }

    /// Answer with success or the error.
    pub fn result(self, r: Result<(), Errno>) {
        match r {
            Ok(()) => self.ok(),
            Err(e) => self.error(e),
        }
    }
}

impl ReplyData {
    pub fn data(mut self, data: &[u8]) {
        self.0.send(0, &[data]);
    }

    /// Reply with `len` bytes of `file` from `offset`, moved through a pipe with `splice` (the
    /// kernel copies them once, into the reader's pages, instead of a `pread` into a buffer and
    /// a copy out of it). Gives the reply back when nothing was sent (the data is not exactly
    /// `len` bytes any more, the file cannot be spliced, no pipe): the caller replies another
    /// way.
    pub fn splice(mut self, file: BorrowedFd<'_>, offset: u64, len: usize) -> Result<(), Self> {
        // A reply through an io_uring entry is copied into its buffer: nothing to splice.
        let Some(sender) = self.0.0.as_ref().filter(|s| s.ring.is_none()) else {
            return Err(self);
        };
        match splice_reply(sender, file, offset, len) {
            SpliceOutcome::Sent => {
                self.0.0 = None;
                Ok(())
            }
            SpliceOutcome::NotSent => Err(self),
        }
    }
}

enum SpliceOutcome {
    /// The reply went to the kernel (or the kernel no longer wanted it).
    Sent,
    /// Nothing was written to the device.
    NotSent,
}

thread_local! {
    /// This thread's pipe for spliced replies: (read end, write end).
    static SPLICE_PIPE: std::cell::RefCell<Option<(OwnedFd, OwnedFd)>> =
        const { std::cell::RefCell::new(None) };
}

/// A header plus the largest read (`MAX_READ`, one page under this) fit.
const SPLICE_PIPE_SIZE: usize = super::types::MAX_WRITE as usize;
const PAGE: usize = 4096;
const PAGE_U64: u64 = 4096;

fn splice_reply(sender: &Sender, file: BorrowedFd<'_>, offset: u64, len: usize) -> SpliceOutcome {
    SPLICE_PIPE.with(|cell| {
        let Ok(mut slot) = cell.try_borrow_mut() else {
            return SpliceOutcome::NotSent;
        };
        if slot.is_none() {
            let made = fuse_dev::pipe().and_then(|(r, w)| {
                fuse_dev::set_pipe_size(w.as_fd(), SPLICE_PIPE_SIZE).map(|_| (r, w))
            });
            match made {
                Ok(p) => *slot = Some(p),
                Err(e) => {
                    tracing::debug!("no pipe for spliced replies: {e}");
                    return SpliceOutcome::NotSent;
                }
            }
        }
        let Some((r, w)) = slot.as_ref() else {
            return SpliceOutcome::NotSent;
        };
        // Pipe slots: one for the header, one per file page the data touches. The offset within
        // a page always fits a usize; an offset beyond i64::MAX is no file position (splice
        // would refuse it), so neither is spliced.
        let (Ok(in_page), Ok(mut off)) =
            (usize::try_from(offset % PAGE_U64), i64::try_from(offset))
        else {
            return SpliceOutcome::NotSent;
        };
        let pages = (in_page + len).div_ceil(PAGE);
        if (1 + pages) * PAGE > SPLICE_PIPE_SIZE {
            return SpliceOutcome::NotSent;
        }
        let Some(h) = abi::OutHeader::new(0, sender.unique, len) else {
            return SpliceOutcome::NotSent;
        };
        let total = std::mem::size_of::<abi::OutHeader>() + len;
        // Header, then exactly `len` bytes of the file; anything else and the pipe is dropped
        // (it may hold part of a message) and nothing is sent.
        let filled = fuse_dev::write(w.as_fd(), h.as_bytes())
            .is_ok_and(|n| n == std::mem::size_of::<abi::OutHeader>())
            && {
                let mut moved = 0;
                while moved < len {
                    match fuse_dev::splice(
                        file,
                        Some(&mut off),
                        w.as_fd(),
                        len - moved,
                        libc::SPLICE_F_NONBLOCK,
                    ) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => moved += n,
                    }
                }
                moved == len
            };
        if !filled {
            *slot = None;
            return SpliceOutcome::NotSent;
        }
        match fuse_dev::splice(
            r.as_fd(),
            None,
            sender.ch.as_fd(),
            total,
            libc::SPLICE_F_NONBLOCK,
        ) {
            Ok(n) if n == total => {}
            r => {
                // ENOENT: the request was interrupted; anything else leaves the pipe in an
                // unknown state. The reply is spent either way.
                if let Err(e) = r
                    && !matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENODEV))
                {
                    tracing::warn!("spliced FUSE reply to request {}: {e}", sender.unique);
                }
                *slot = None;
            }
        }
        SpliceOutcome::Sent
    })
}

fn entry_out(
    attr_ttl: &Duration,
    entry_ttl: &Duration,
    attr: &FileAttr,
    g: Generation,
) -> abi::EntryOut {
    let (entry_valid, entry_valid_nsec) = valid(entry_ttl);
    let (attr_valid, attr_valid_nsec) = valid(attr_ttl);
    abi::EntryOut {
        nodeid: attr.ino.0,
        generation: g.0,
        entry_valid,
        attr_valid,
        entry_valid_nsec,
        attr_valid_nsec,
        attr: attr.to_abi(),
    }
}

impl ReplyEntry {
    /// An entry whose node id is `attr.ino`. A node id of 0 with a non-zero `ttl` caches a
    /// negative entry.
    pub fn entry(self, ttl: &Duration, attr: &FileAttr, g: Generation) {
        self.node_entry(attr.ino, (ttl, ttl), attr, g);
    }

    /// An entry for node `nodeid` (which may differ from the `st_ino` in `attr`: the root's
    /// node id is 1) whose attributes and name are cached for different times
    /// (`(attr_ttl, entry_ttl)`).
    pub fn node_entry(
        mut self,
        nodeid: INodeNo,
        (attr_ttl, entry_ttl): (&Duration, &Duration),
        attr: &FileAttr,
        g: Generation,
    ) {
        let mut e = entry_out(attr_ttl, entry_ttl, attr, g);
        e.nodeid = nodeid.0;
        self.0.send(0, &[e.as_bytes()]);
    }
}

impl ReplyAttr {
    pub fn attr(mut self, ttl: &Duration, attr: &FileAttr) {
        let (attr_valid, attr_valid_nsec) = valid(ttl);
        let a = abi::AttrOut {
            attr_valid,
            attr_valid_nsec,
            dummy: 0,
            attr: attr.to_abi(),
        };
        self.0.send(0, &[a.as_bytes()]);
    }
}

impl ReplyStatx {
    /// Answer a statx request from a `struct statx` of the backing file (with the node id as
    /// `stx_ino` and the attribute overrides already applied to `attr`).
    pub fn statx(mut self, ttl: &Duration, attr: &FileAttr, stx: &crate::sys::file::Statx) {
        let (attr_valid, attr_valid_nsec) = valid(ttl);
        let a = attr.to_abi();
        let t = |(tv_sec, tv_nsec): (i64, u32)| abi::SxTime {
            tv_sec,
            tv_nsec,
            reserved: 0,
        };
        let rdev_major = (attr.rdev & 0xfff00) >> 8;
        let rdev_minor = (attr.rdev & 0xff) | ((attr.rdev >> 12) & 0xfff00);
        let out = abi::StatxOut {
            attr_valid,
            attr_valid_nsec,
            flags: 0,
            spare: [0; 2],
            stat: abi::Statx {
                mask: stx.stx_mask & (libc::STATX_BASIC_STATS | libc::STATX_BTIME),
                blksize: a.blksize,
                attributes: stx.stx_attributes.bits(),
                nlink: a.nlink,
                uid: a.uid,
                gid: a.gid,
                mode: statx_mode(a.mode),
                spare0: 0,
                ino: a.ino,
                size: a.size,
                blocks: a.blocks,
                attributes_mask: stx.stx_attributes_mask.bits(),
                atime: t(time_parts(attr.atime)),
                btime: t((stx.stx_btime.tv_sec, stx.stx_btime.tv_nsec)),
                ctime: t(time_parts(attr.ctime)),
                mtime: t(time_parts(attr.mtime)),
                rdev_major,
                rdev_minor,
                dev_major: 0,
                dev_minor: 0,
                spare2: [0; 14],
            },
        };
        self.0.send(0, &[out.as_bytes()]);
    }
}

/// `stx_mode` is 16 bits wide, and so is every mode: the file type (`S_IFMT`, 0o170000) is
/// its top. The low two bytes are the whole mode.
fn statx_mode(mode: u32) -> u16 {
    let [lo, hi, ..] = mode.to_le_bytes();
    u16::from_le_bytes([lo, hi])
}

/// `fuse_open_out` for handle `fh`; with a backing id, the open is in kernel passthrough mode.
fn open_out(fh: FileHandle, flags: FopenFlags, backing: Option<&BackingId>) -> abi::OpenOut {
    abi::OpenOut {
        fh: fh.0,
        open_flags: flags.bits() | backing.map_or(0, |_| abi::fopen::PASSTHROUGH),
        backing_id: backing.map_or(0, BackingId::abi_id),
    }
}

impl ReplyOpen {
    /// The new handle `fh`; with `backing`, its reads and writes go through that backing file
    /// (kernel passthrough).
    pub fn opened(mut self, fh: FileHandle, flags: FopenFlags, backing: Option<&BackingId>) {
        let o = open_out(fh, flags, backing);
        self.0.send(0, &[o.as_bytes()]);
    }

    /// Register `fd` as a passthrough backing file on this request's connection.
    pub fn open_backing(&self, fd: impl AsFd) -> io::Result<BackingId> {
        self.0.open_backing(fd)
    }
}

impl ReplyCreate {
    /// The new entry and its handle `fh` (with `backing`, kernel passthrough as for
    /// [`ReplyOpen::opened`]).
    pub fn created(
        mut self,
        ttl: &Duration,
        attr: &FileAttr,
        g: Generation,
        fh: FileHandle,
        flags: FopenFlags,
        backing: Option<&BackingId>,
    ) {
        let e = entry_out(ttl, ttl, attr, g);
        let o = open_out(fh, flags, backing);
        self.0.send(0, &[e.as_bytes(), o.as_bytes()]);
    }

    /// Register `fd` as a passthrough backing file on this request's connection.
    pub fn open_backing(&self, fd: impl AsFd) -> io::Result<BackingId> {
        self.0.open_backing(fd)
    }
}

impl ReplyWrite {
    pub fn written(mut self, size: u32) {
        let w = abi::WriteOut { size, padding: 0 };
        self.0.send(0, &[w.as_bytes()]);
    }
}

impl ReplyStatfs {
    #[allow(clippy::too_many_arguments)]
    pub fn statfs(
        mut self,
        blocks: u64,
        bfree: u64,
        bavail: u64,
        files: u64,
        ffree: u64,
        bsize: u32,
        namelen: u32,
        frsize: u32,
    ) {
        let s = abi::Kstatfs {
            blocks,
            bfree,
            bavail,
            files,
            ffree,
            bsize,
            namelen,
            frsize,
            padding: 0,
            spare: [0; 6],
        };
        self.0.send(0, &[s.as_bytes()]);
    }
}

impl ReplyIoctl {
    pub fn ioctl(mut self, result: i32, data: &[u8]) {
        let o = abi::IoctlOut {
            result,
            flags: 0,
            in_iovs: 0,
            out_iovs: 0,
        };
        self.0.send(0, &[o.as_bytes(), data]);
    }
}

impl ReplyXattr {
    /// The size a buffer needs (the caller asked with size 0).
    pub fn size(mut self, size: u32) {
        let o = abi::GetxattrOut { size, padding: 0 };
        self.0.send(0, &[o.as_bytes()]);
    }
    pub fn data(mut self, data: &[u8]) {
        self.0.send(0, &[data]);
    }
}

impl ReplyLseek {
    pub fn offset(mut self, offset: i64) {
        let o = abi::LseekOut {
            // `fuse_lseek_out` declares the offset `uint64_t`; the kernel reads it as a `loff_t`.
            offset: offset.cast_unsigned(),
        };
        self.0.send(0, &[o.as_bytes()]);
    }
}

/// Directory entries packed into the size the kernel asked for.
#[derive(Debug)]
struct DirBuf {
    buf: Vec<u8>,
    max: usize,
}

impl DirBuf {
    fn new(max: usize) -> DirBuf {
        DirBuf {
            buf: Vec::with_capacity(max.min(1 << 17)),
            max,
        }
    }

    /// A record's `namelen`; `None` for a name longer than a `u32` can say, which could not
    /// fit the reply either (its size is a `u32`), so the caller answers "full".
    fn namelen(name: &[u8]) -> Option<u32> {
        u32::try_from(name.len()).ok()
    }

    /// Append one record (parts, then the name, then padding to 8 bytes). True if it did not
    /// fit (the buffer is full).
    fn push(&mut self, parts: &[&[u8]], name: &[u8]) -> bool {
        let fixed: usize = parts.iter().map(|p| p.len()).sum();
        let len = (fixed + name.len()).next_multiple_of(8);
        if self.buf.len() + len > self.max {
            return true;
        }
        for p in parts {
            self.buf.extend_from_slice(p);
        }
        self.buf.extend_from_slice(name);
        self.buf
            .resize(self.buf.len() + (len - fixed - name.len()), 0);
        false
    }
}

/// Directory entries for READDIR (`PLUS = false`) or READDIRPLUS (`PLUS = true`, each entry
/// with its lookup result).
#[derive(Debug)]
pub struct DirReply<const PLUS: bool>(Once, DirBuf);

/// READDIR entries.
pub type ReplyDirectory = DirReply<false>;
/// READDIRPLUS entries.
pub type ReplyDirectoryPlus = DirReply<true>;

impl<const PLUS: bool> DirReply<PLUS> {
    pub(crate) fn new(s: Sender, size: u32) -> Self {
        DirReply(Once::new(s), DirBuf::new(size as usize))
    }

    pub fn ok(mut self) {
        let buf = std::mem::take(&mut self.1.buf);
        self.0.send(0, &[&buf]);
    }

    pub fn error(mut self, e: Errno) {
        self.0.error(e);
    }
}

impl<const PLUS: bool> Reply for DirReply<PLUS> {
    fn error(self, e: Errno) {
        DirReply::error(self, e);
    }
    fn request(&self) -> Option<(u64, u32)> {
        self.0.request()
    }
    fn before_reply(&mut self, f: Box<dyn FnOnce() + Send>) {
        self.0.1 = Some(BeforeReply(f));
    }
}

impl DirReply<false> {
    /// Add an entry; true if the reply is full (the entry was not added).
    #[must_use]
    pub fn add(
        &mut self,
        ino: INodeNo,
        offset: u64,
        kind: FileType,
        name: impl AsRef<OsStr>,
    ) -> bool {
        let name = name.as_ref().as_bytes();
        let Some(namelen) = DirBuf::namelen(name) else {
            return true;
        };
        let d = abi::Dirent {
            ino: ino.0,
            off: offset,
            namelen,
            typ: kind.dtype(),
        };
        self.1.push(&[d.as_bytes()], name)
    }
}

impl DirReply<true> {
    /// Add an entry; true if the reply is full (the entry was not added). A node id of 0 adds
    /// a name without a lookup (the kernel counts no reference).
    #[must_use]
    pub fn add(
        &mut self,
        ino: INodeNo,
        offset: u64,
        name: impl AsRef<OsStr>,
        ttl: &Duration,
        attr: &FileAttr,
        g: Generation,
    ) -> bool {
        let name = name.as_ref().as_bytes();
        let Some(namelen) = DirBuf::namelen(name) else {
            return true;
        };
        let mut e = entry_out(ttl, ttl, attr, g);
        e.nodeid = ino.0;
        let d = abi::Dirent {
            ino: attr.ino.0,
            off: offset,
            namelen,
            typ: attr.kind.dtype(),
        };
        self.1.push(&[e.as_bytes(), d.as_bytes()], name)
    }
}
