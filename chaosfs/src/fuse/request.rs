//! Parsing one request read from `/dev/fuse` into an [`Operation`] that borrows the buffer.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use zerocopy::FromBytes;

use super::abi::{self, op};
use super::types::{FileHandle, INodeNo, TimeOrNow};

/// The header fields a file system needs: who asks, about which node.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl Request {
    pub fn uid(&self) -> u32 {
        self.uid
    }
    pub fn gid(&self) -> u32 {
        self.gid
    }
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

/// `setattr` arguments, decoded from `fuse_setattr_in.valid`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetattrArgs {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
    pub fh: Option<FileHandle>,
    /// Clear setuid, and setgid where group execute is set (see [`abi::fattr::KILL_SUIDGID`]
    /// and the parser's note on empty requests).
    pub kill_suidgid: bool,
}

/// One request. Names and data borrow the read buffer.
#[derive(Debug)]
pub enum Operation<'a> {
    Init {
        major: u32,
        minor: u32,
        max_readahead: u32,
        flags: u64,
    },
    Destroy,
    Lookup {
        name: &'a OsStr,
    },
    Forget {
        nlookup: u64,
    },
    BatchForget {
        nodes: Vec<(INodeNo, u64)>,
    },
    Getattr,
    Statx,
    Setattr(SetattrArgs),
    Readlink,
    Symlink {
        name: &'a OsStr,
        target: &'a Path,
    },
    Mknod {
        name: &'a OsStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    },
    Mkdir {
        name: &'a OsStr,
        mode: u32,
        umask: u32,
    },
    Unlink {
        name: &'a OsStr,
    },
    Rmdir {
        name: &'a OsStr,
    },
    Rename {
        name: &'a OsStr,
        newparent: INodeNo,
        newname: &'a OsStr,
        flags: u32,
    },
    Link {
        oldnode: INodeNo,
        newname: &'a OsStr,
    },
    Open {
        flags: i32,
        /// An `O_TRUNC` open that must clear setuid/setgid ([`abi::OPEN_KILL_SUIDGID`]).
        kill_suidgid: bool,
    },
    Read {
        fh: FileHandle,
        offset: u64,
        size: u32,
    },
    Write {
        fh: FileHandle,
        offset: u64,
        data: &'a [u8],
        /// Clear setuid/setgid first ([`abi::WRITE_KILL_SUIDGID`]).
        kill_suidgid: bool,
    },
    Statfs,
    Release {
        fh: FileHandle,
        /// The flock owner to unlock (`FUSE_RELEASE_FLOCK_UNLOCK`), if any.
        flock_owner: Option<u64>,
    },
    Fsync {
        fh: FileHandle,
        datasync: bool,
    },
    Setxattr {
        name: &'a OsStr,
        value: &'a [u8],
        flags: i32,
    },
    Getxattr {
        name: &'a OsStr,
        size: u32,
    },
    Listxattr {
        size: u32,
    },
    Removexattr {
        name: &'a OsStr,
    },
    Flush {
        fh: FileHandle,
        /// The closing process's POSIX lock owner: its locks on the file go.
        lock_owner: u64,
    },
    /// Test for a lock that would conflict with `lock` of `owner`.
    Getlk {
        owner: u64,
        lock: abi::FileLock,
    },
    /// Take or release a lock (the file handle is not needed: locks are per node and owner;
    /// `sleep`: wait for it, SETLKW; `flock`: a `flock(2)` lock,
    /// whose owner is the open file).
    Setlk {
        owner: u64,
        lock: abi::FileLock,
        sleep: bool,
        flock: bool,
    },
    Opendir,
    Readdir {
        fh: FileHandle,
        offset: u64,
        size: u32,
    },
    Readdirplus {
        fh: FileHandle,
        offset: u64,
        size: u32,
    },
    Releasedir {
        fh: FileHandle,
    },
    Fsyncdir {
        fh: FileHandle,
        datasync: bool,
    },
    Access {
        mask: i32,
    },
    Create {
        name: &'a OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    },
    Tmpfile {
        mode: u32,
        umask: u32,
        flags: i32,
    },
    /// The caller of request `unique` got a signal while waiting for it.
    Interrupt {
        unique: u64,
    },
    NotifyReply,
    Ioctl {
        fh: FileHandle,
        cmd: u32,
        in_data: &'a [u8],
        out_size: u32,
    },
    Fallocate {
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
    },
    Lseek {
        fh: FileHandle,
        offset: i64,
        whence: i32,
    },
    CopyFileRange {
        fh_in: FileHandle,
        off_in: u64,
        fh_out: FileHandle,
        off_out: u64,
        len: u64,
        flags: u64,
    },
    Syncfs,
    /// An opcode this server does not implement (answered with ENOSYS).
    Unknown(u32),
}

/// Why a request could not be parsed (answered with EIO, the kernel's view of a garbled reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// Reads fixed structs and NUL-terminated strings off the argument bytes.
struct Args<'a>(&'a [u8]);

impl<'a> Args<'a> {
    fn get<T: FromBytes>(&mut self) -> Result<T, Malformed> {
        let (v, rest) = T::read_from_prefix(self.0).map_err(|_| Malformed)?;
        self.0 = rest;
        Ok(v)
    }

    fn name(&mut self) -> Result<&'a OsStr, Malformed> {
        let end = self.0.iter().position(|&b| b == 0).ok_or(Malformed)?;
        let (s, rest) = self.0.split_at(end);
        self.0 = &rest[1..];
        Ok(OsStr::from_bytes(s))
    }

    /// The next `n` bytes (`n` as the kernel sends a size: `u32`).
    fn bytes(&mut self, n: u32) -> Result<&'a [u8], Malformed> {
        let n = usize::try_from(n).map_err(|_| Malformed)?;
        if self.0.len() < n {
            return Err(Malformed);
        }
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(s)
    }
}

fn time_or_now(secs: u64, nsecs: u32, now: bool) -> TimeOrNow {
    if now {
        TimeOrNow::Now
    } else {
        let (s, n) = (c_i64(secs), nsecs.min(999_999_999));
        let t = if s >= 0 {
            std::time::UNIX_EPOCH + std::time::Duration::new(s.unsigned_abs(), n)
        } else {
            std::time::UNIX_EPOCH - std::time::Duration::new(s.unsigned_abs(), 0)
                + std::time::Duration::new(0, n)
        };
        TimeOrNow::SpecificTime(t)
    }
}

/// A C `int` the kernel sends as `u32` (open flags, access mask…): the same bits.
fn c_int(v: u32) -> i32 {
    i32::from_ne_bytes(v.to_ne_bytes())
}

/// A signed 64-bit value the kernel sends as `u64` (a seek offset, a time): the same bits.
fn c_i64(v: u64) -> i64 {
    i64::from_ne_bytes(v.to_ne_bytes())
}

/// Parses the arguments of the opcodes of one family; `None` for an opcode of another family
/// (nothing read then).
type FamilyParser = for<'a> fn(u32, &mut Args<'a>) -> Result<Option<Operation<'a>>, Malformed>;

/// Every family, tried in turn; an opcode none knows is [`Operation::Unknown`].
const FAMILIES: [FamilyParser; 4] = [session_op, entry_op, node_op, file_op];

/// Split `buf` (exactly what one `read` returned) into header and operation.
pub fn parse(buf: &[u8]) -> Result<(Request, Operation<'_>), Malformed> {
    let (h, _) = abi::InHeader::read_from_prefix(buf).map_err(|_| Malformed)?;
    let len = usize::try_from(h.len).map_or(buf.len(), |l| l.min(buf.len()));
    let ext = usize::from(h.total_extlen) * 8;
    let hdr = std::mem::size_of::<abi::InHeader>();
    if len < hdr + ext {
        return Err(Malformed);
    }
    let req = Request {
        unique: h.unique,
        nodeid: h.nodeid,
        uid: h.uid,
        gid: h.gid,
        pid: h.pid,
    };
    let mut a = Args(&buf[hdr..len - ext]);
    for family in FAMILIES {
        if let Some(o) = family(h.opcode, &mut a)? {
            return Ok((req, o));
        }
    }
    Ok((req, Operation::Unknown(h.opcode)))
}

/// The session's own requests: INIT, DESTROY, FORGET, BATCH_FORGET, INTERRUPT, NOTIFY_REPLY.
fn session_op<'a>(opcode: u32, a: &mut Args<'a>) -> Result<Option<Operation<'a>>, Malformed> {
    Ok(Some(match opcode {
        op::INIT => {
            let i: abi::InitIn = a.get()?;
            let flags2: u32 = if u64::from(i.flags) & abi::init::INIT_EXT != 0 {
                a.get().unwrap_or(0)
            } else {
                0
            };
            Operation::Init {
                major: i.major,
                minor: i.minor,
                max_readahead: i.max_readahead,
                flags: u64::from(i.flags) | (u64::from(flags2) << 32),
            }
        }
        op::DESTROY => Operation::Destroy,
        op::FORGET => Operation::Forget {
            nlookup: a.get::<abi::ForgetIn>()?.nlookup,
        },
        op::BATCH_FORGET => {
            let b: abi::BatchForgetIn = a.get()?;
            let mut nodes = Vec::with_capacity(usize::try_from(b.count).unwrap_or(0));
            for _ in 0..b.count {
                let f: abi::ForgetOne = a.get()?;
                nodes.push((INodeNo(f.nodeid), f.nlookup));
            }
            Operation::BatchForget { nodes }
        }
        op::INTERRUPT => Operation::Interrupt {
            unique: a.get::<abi::InterruptIn>()?.unique,
        },
        op::NOTIFY_REPLY => Operation::NotifyReply,
        _ => return Ok(None),
    }))
}

/// Requests that name an entry of the node: LOOKUP, SYMLINK, MKNOD, MKDIR, UNLINK, RMDIR,
/// RENAME(2), LINK, CREATE, TMPFILE.
fn entry_op<'a>(opcode: u32, a: &mut Args<'a>) -> Result<Option<Operation<'a>>, Malformed> {
    Ok(Some(match opcode {
        op::LOOKUP => Operation::Lookup { name: a.name()? },
        op::SYMLINK => {
            let name = a.name()?;
            let target = Path::new(a.name()?);
            Operation::Symlink { name, target }
        }
        op::MKNOD | op::MKDIR => {
            // The same header but for mknod's device number, then the name.
            let (mode, umask, rdev) = if opcode == op::MKNOD {
                let m: abi::MknodIn = a.get()?;
                (m.mode, m.umask, Some(m.rdev))
            } else {
                let m: abi::MkdirIn = a.get()?;
                (m.mode, m.umask, None)
            };
            let name = a.name()?;
            match rdev {
                Some(rdev) => Operation::Mknod {
                    name,
                    mode,
                    rdev,
                    umask,
                },
                None => Operation::Mkdir { name, mode, umask },
            }
        }
        op::UNLINK => Operation::Unlink { name: a.name()? },
        op::RMDIR => Operation::Rmdir { name: a.name()? },
        op::RENAME | op::RENAME2 => {
            let (newdir, flags) = if opcode == op::RENAME {
                (a.get::<abi::RenameIn>()?.newdir, 0)
            } else {
                let r: abi::Rename2In = a.get()?;
                (r.newdir, r.flags)
            };
            Operation::Rename {
                name: a.name()?,
                newparent: INodeNo(newdir),
                newname: a.name()?,
                flags,
            }
        }
        op::LINK => {
            let l: abi::LinkIn = a.get()?;
            Operation::Link {
                oldnode: INodeNo(l.oldnodeid),
                newname: a.name()?,
            }
        }
        op::CREATE => {
            let c: abi::CreateIn = a.get()?;
            Operation::Create {
                name: a.name()?,
                mode: c.mode,
                umask: c.umask,
                flags: c_int(c.flags),
            }
        }
        op::TMPFILE => {
            // Same arguments as CREATE; the name is the kernel's placeholder ("/").
            let c: abi::CreateIn = a.get()?;
            Operation::Tmpfile {
                mode: c.mode,
                umask: c.umask,
                flags: c_int(c.flags),
            }
        }
        _ => return Ok(None),
    }))
}

/// Requests on the node itself: GETATTR, STATX, SETATTR, READLINK, STATFS, ACCESS, SYNCFS and
/// the xattr calls.
fn node_op<'a>(opcode: u32, a: &mut Args<'a>) -> Result<Option<Operation<'a>>, Malformed> {
    Ok(Some(match opcode {
        // The server stats the inode itself (its O_PATH fd outlives unlinks), so the file
        // handle these may name is not needed.
        op::GETATTR => {
            a.get::<abi::GetattrIn>()?;
            Operation::Getattr
        }
        op::STATX => {
            a.get::<abi::StatxIn>()?;
            Operation::Statx
        }
        op::SETATTR => Operation::Setattr(setattr_args(&a.get()?)),
        op::READLINK => Operation::Readlink,
        op::STATFS => Operation::Statfs,
        op::ACCESS => Operation::Access {
            mask: c_int(a.get::<abi::AccessIn>()?.mask),
        },
        op::SYNCFS => Operation::Syncfs,
        op::SETXATTR => {
            let s: abi::SetxattrIn = a.get()?;
            let name = a.name()?;
            Operation::Setxattr {
                name,
                value: a.bytes(s.size)?,
                flags: c_int(s.flags),
            }
        }
        op::GETXATTR => {
            let g: abi::GetxattrIn = a.get()?;
            Operation::Getxattr {
                name: a.name()?,
                size: g.size,
            }
        }
        op::LISTXATTR => Operation::Listxattr {
            size: a.get::<abi::GetxattrIn>()?.size,
        },
        op::REMOVEXATTR => Operation::Removexattr { name: a.name()? },
        _ => return Ok(None),
    }))
}

/// The fields of a SETATTR the kernel marked valid.
fn setattr_args(s: &abi::SetattrIn) -> SetattrArgs {
    use abi::fattr as F;
    let v = s.valid;
    let on = |bit: u32| v & bit != 0;
    SetattrArgs {
        mode: on(F::MODE).then_some(s.mode),
        uid: on(F::UID).then_some(s.uid),
        gid: on(F::GID).then_some(s.gid),
        size: on(F::SIZE).then_some(s.size),
        atime: on(F::ATIME).then(|| time_or_now(s.atime, s.atimensec, on(F::ATIME_NOW))),
        mtime: on(F::MTIME).then(|| time_or_now(s.mtime, s.mtimensec, on(F::MTIME_NOW))),
        fh: on(F::FH).then_some(FileHandle(s.fh)),
        // With FUSE_HANDLE_KILLPRIV_V2 the kernel turns the VFS's "remove privileges"
        // request (`file_remove_privs`: a write through kernel passthrough, fallocate,
        // copy_file_range, by a caller lacking CAP_FSETID; `chown(f, -1, -1)`) into a
        // SETATTR that changes nothing: it is only ever a request to kill the bits.
        kill_suidgid: on(F::KILL_SUIDGID) || v & !(F::FH | F::LOCKOWNER) == 0,
    }
}

/// Requests on a file or directory handle (opening one included): OPEN(DIR), READ(DIR|DIRPLUS),
/// WRITE, RELEASE(DIR), FSYNC(DIR), FLUSH, IOCTL, FALLOCATE, LSEEK, COPY_FILE_RANGE.
fn file_op<'a>(opcode: u32, a: &mut Args<'a>) -> Result<Option<Operation<'a>>, Malformed> {
    let fh = FileHandle;
    Ok(Some(match opcode {
        op::OPEN => {
            let o: abi::OpenIn = a.get()?;
            Operation::Open {
                flags: c_int(o.flags),
                kill_suidgid: o.open_flags & abi::OPEN_KILL_SUIDGID != 0,
            }
        }
        op::OPENDIR => {
            a.get::<abi::OpenIn>()?;
            Operation::Opendir
        }
        op::READ | op::READDIR | op::READDIRPLUS => {
            let r: abi::ReadIn = a.get()?;
            let (fh, offset, size) = (fh(r.fh), r.offset, r.size);
            match opcode {
                op::READ => Operation::Read { fh, offset, size },
                op::READDIR => Operation::Readdir { fh, offset, size },
                _ => Operation::Readdirplus { fh, offset, size },
            }
        }
        op::WRITE => {
            let w: abi::WriteIn = a.get()?;
            Operation::Write {
                fh: fh(w.fh),
                offset: w.offset,
                data: a.bytes(w.size)?,
                kill_suidgid: w.write_flags & abi::WRITE_KILL_SUIDGID != 0,
            }
        }
        op::RELEASE => {
            let r: abi::ReleaseIn = a.get()?;
            Operation::Release {
                fh: fh(r.fh),
                flock_owner: (r.release_flags & abi::RELEASE_FLOCK_UNLOCK != 0)
                    .then_some(r.lock_owner),
            }
        }
        op::RELEASEDIR => Operation::Releasedir {
            fh: fh(a.get::<abi::ReleaseIn>()?.fh),
        },
        op::FSYNC | op::FSYNCDIR => {
            let f: abi::FsyncIn = a.get()?;
            let (fh, datasync) = (fh(f.fh), f.fsync_flags & abi::FSYNC_FDATASYNC != 0);
            if opcode == op::FSYNC {
                Operation::Fsync { fh, datasync }
            } else {
                Operation::Fsyncdir { fh, datasync }
            }
        }
        op::FLUSH => {
            let f: abi::FlushIn = a.get()?;
            Operation::Flush {
                fh: fh(f.fh),
                lock_owner: f.lock_owner,
            }
        }
        op::GETLK | op::SETLK | op::SETLKW => {
            let l: abi::LkIn = a.get()?;
            if opcode == op::GETLK {
                Operation::Getlk {
                    owner: l.owner,
                    lock: l.lk,
                }
            } else {
                Operation::Setlk {
                    owner: l.owner,
                    lock: l.lk,
                    sleep: opcode == op::SETLKW,
                    flock: l.lk_flags & abi::LK_FLOCK != 0,
                }
            }
        }
        op::IOCTL => {
            let i: abi::IoctlIn = a.get()?;
            Operation::Ioctl {
                fh: fh(i.fh),
                cmd: i.cmd,
                in_data: a.bytes(i.in_size)?,
                out_size: i.out_size,
            }
        }
        op::FALLOCATE => {
            let f: abi::FallocateIn = a.get()?;
            Operation::Fallocate {
                fh: fh(f.fh),
                offset: f.offset,
                length: f.length,
                mode: c_int(f.mode),
            }
        }
        op::LSEEK => {
            let l: abi::LseekIn = a.get()?;
            Operation::Lseek {
                fh: fh(l.fh),
                offset: c_i64(l.offset),
                whence: c_int(l.whence),
            }
        }
        op::COPY_FILE_RANGE => {
            let c: abi::CopyFileRangeIn = a.get()?;
            Operation::CopyFileRange {
                fh_in: fh(c.fh_in),
                off_in: c.off_in,
                fh_out: fh(c.fh_out),
                off_out: c.off_out,
                len: c.len,
                flags: c.flags,
            }
        }
        _ => return Ok(None),
    }))
}

#[cfg(test)]
mod tests {
    use zerocopy::IntoBytes;

    use super::*;

    fn request(opcode: u32, args: &[u8]) -> Vec<u8> {
        let len = 40 + args.len();
        let h = abi::InHeader {
            len: u32::try_from(len).expect("a test request is small"),
            opcode,
            unique: 7,
            nodeid: 9,
            uid: 1000,
            gid: 100,
            pid: 42,
            total_extlen: 0,
            padding: 0,
        };
        let mut v = h.as_bytes().to_vec();
        v.extend_from_slice(args);
        v
    }

    #[test]
    fn rename2_has_both_names_and_flags() {
        let mut args = abi::Rename2In {
            newdir: 5,
            flags: libc::RENAME_NOREPLACE,
            padding: 0,
        }
        .as_bytes()
        .to_vec();
        args.extend_from_slice(b"old\0new\0");
        let buf = request(op::RENAME2, &args);
        let (req, o) = parse(&buf).expect("parses");
        assert_eq!((req.unique, req.nodeid, req.uid, req.pid), (7, 9, 1000, 42));
        assert!(
            matches!(o, Operation::Rename { name, newparent: INodeNo(5), newname, flags }
                if (name.as_bytes(), newname.as_bytes()) == (b"old", b"new")
                    && flags == libc::RENAME_NOREPLACE),
            "wrong op {o:?}"
        );
    }

    #[test]
    fn write_data_is_the_declared_size() {
        let mut args = abi::WriteIn {
            fh: 3,
            offset: 4096,
            size: 5,
            write_flags: 0,
            lock_owner: 0,
            flags: 0,
            padding: 0,
        }
        .as_bytes()
        .to_vec();
        args.extend_from_slice(b"hello");
        let buf = request(op::WRITE, &args);
        match parse(&buf).expect("parses").1 {
            Operation::Write {
                fh, offset, data, ..
            } => {
                assert_eq!((fh, offset, data), (FileHandle(3), 4096, &b"hello"[..]));
            }
            other => panic!("wrong op {other:?}"),
        }
    }

    #[test]
    fn truncated_and_unterminated_requests_are_malformed() {
        let buf = request(op::LOOKUP, b"no-nul");
        assert_eq!(parse(&buf).err(), Some(Malformed));
        let buf = request(op::WRITE, &[0u8; 10]);
        assert_eq!(parse(&buf).err(), Some(Malformed));
        assert_eq!(parse(&[0u8; 12]).err(), Some(Malformed));
    }

    #[test]
    fn unknown_opcodes_are_reported_not_rejected() {
        let buf = request(4242, &[]);
        assert!(matches!(
            parse(&buf).expect("parses").1,
            Operation::Unknown(4242)
        ));
    }

    #[test]
    fn setattr_decodes_only_valid_fields() {
        let s = abi::SetattrIn {
            valid: abi::fattr::MODE | abi::fattr::MTIME | abi::fattr::MTIME_NOW,
            padding: 0,
            fh: 0,
            size: 99,
            lock_owner: 0,
            atime: 0,
            mtime: 0,
            ctime: 0,
            atimensec: 0,
            mtimensec: 0,
            ctimensec: 0,
            mode: 0o100600,
            unused4: 0,
            uid: 5,
            gid: 6,
            unused5: 0,
        };
        let buf = request(op::SETATTR, s.as_bytes());
        match parse(&buf).expect("parses").1 {
            Operation::Setattr(a) => {
                assert_eq!(a.mode, Some(0o100600));
                assert_eq!((a.uid, a.gid, a.size), (None, None, None));
                assert_eq!(a.mtime, Some(TimeOrNow::Now));
                assert!(a.atime.is_none());
            }
            other => panic!("wrong op {other:?}"),
        }
    }
}
