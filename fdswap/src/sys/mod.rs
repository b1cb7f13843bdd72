//! System calls: through rustix where it has them; raw libc for the few it lacks, each with
//! the reason. All `unsafe` of the crate lives here. The crate's errno type is `nix`'s
//! [`Errno`] (its public errors carry it).

pub(crate) mod ptrace;

use std::ffi::c_void;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use nix::errno::Errno;
use rustix::fs::{AtFlags, CWD, StatxFlags};

/// What fdswap needs from `statx(2)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    /// `stx_dev_major`, `stx_dev_minor`.
    pub dev: (u32, u32),
    /// Inode number.
    pub ino: u64,
    /// Mount id (`STATX_MNT_ID`), the same number `/proc/PID/fdinfo` and `mountinfo` show.
    pub mnt_id: u64,
    /// Link count (0: deleted but open).
    pub nlink: u32,
    /// `st_mode`.
    pub mode: u32,
}

impl FileId {
    /// The device as `stx_dev_major | stx_dev_minor << 32`, the way the stub compares it.
    pub fn dev_word(&self) -> u64 {
        u64::from(self.dev.0) | (u64::from(self.dev.1) << 32)
    }
}

/// `statx(AT_FDCWD, path, 0, BASIC|MNT_ID)`: follows symlinks and `/proc` magic links.
pub fn statx(path: &Path) -> Result<FileId, Errno> {
    statx_at(CWD, path, AtFlags::empty())
}

/// Like [`statx`], with `AT_STATX_DONT_SYNC`: cached attributes are enough to identify a file,
/// and they are there even when the filesystem cannot answer (a FUSE server that died).
pub fn statx_cached(path: &Path) -> Result<FileId, Errno> {
    statx_at(CWD, path, AtFlags::STATX_DONT_SYNC)
}

/// `statx(dirfd, name, flags, BASIC|MNT_ID)`; an empty `name` is `dirfd` itself.
pub fn statx_at(dirfd: BorrowedFd<'_>, name: &Path, flags: AtFlags) -> Result<FileId, Errno> {
    let flags = if name.as_os_str().is_empty() {
        flags | AtFlags::EMPTY_PATH
    } else {
        flags
    };
    let s = rustix::fs::statx(
        dirfd,
        name,
        flags,
        StatxFlags::BASIC_STATS | StatxFlags::MNT_ID,
    )
    .map_err(errno)?;
    Ok(FileId {
        dev: (s.stx_dev_major, s.stx_dev_minor),
        ino: s.stx_ino,
        mnt_id: s.stx_mnt_id,
        nlink: s.stx_nlink,
        mode: u32::from(s.stx_mode),
    })
}

/// A syscall's `-errno` result (from a register) as an [`Errno`].
pub(crate) fn neg_errno(r: i64) -> Errno {
    Errno::from_raw(
        r.checked_neg()
            .and_then(|e| i32::try_from(e).ok())
            .unwrap_or(0),
    )
}

/// A rustix error as the crate's [`Errno`].
pub(crate) fn errno(e: rustix::io::Errno) -> Errno {
    Errno::from_raw(e.raw_os_error())
}

/// `getdents64(fd, buf)`: fills `buf` with `linux_dirent64` records; returns the bytes used
/// (0 at the end of the directory). The request size a FUSE filesystem sees is `buf.len()`.
/// Raw libc: rustix offers getdents only behind `RawDir`, which hides where one request ends
/// (the read-ahead resolves a name between requests).
pub fn getdents64(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: `fd` is borrowed for the call and `buf` is writable for `buf.len()` bytes;
    // getdents64(2) writes at most that many bytes into it and nothing else.
    let r = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    // A byte count (non-negative) or -1.
    usize::try_from(r).map_err(|_| Errno::last())
}

/// The names in `getdents64` output (`.` and `..` included).
pub fn dirent_names(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
    const NAME: usize = 19;
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let rec = buf.get(at..)?;
        let reclen = usize::from(u16::from_ne_bytes([*rec.get(16)?, *rec.get(17)?]));
        if reclen < NAME || reclen > rec.len() {
            return None;
        }
        at += reclen;
        let name = &rec[NAME..reclen];
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        Some(&name[..end])
    })
}

// kcmp types from <linux/kcmp.h> (libc does not export them).
const KCMP_FILE: libc::c_int = 0;
const KCMP_FILES: libc::c_int = 2;
const KCMP_FS: libc::c_int = 3;

/// `kcmp(2)` types used here.
#[derive(Debug, Clone, Copy)]
pub enum Kcmp {
    /// The file description behind two fds.
    File(i32, i32),
    /// The fd tables.
    Files,
    /// The fs_struct (cwd, root).
    Fs,
}

/// `kcmp(pid1, pid2, type, ...) == 0`: do the two share the object? Raw libc: rustix has no
/// kcmp.
pub fn kcmp_same(pid1: i32, pid2: i32, what: Kcmp) -> Result<bool, Errno> {
    let (ty, a, b) = match what {
        Kcmp::File(a, b) => (KCMP_FILE, fd_arg(a)?, fd_arg(b)?),
        Kcmp::Files => (KCMP_FILES, 0, 0),
        Kcmp::Fs => (KCMP_FS, 0, 0),
    };
    // SAFETY: kcmp takes only integer arguments and reads no user memory for these types.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, ty, a, b) };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r == 0)
    }
}

/// An fd number as kcmp's unsigned long argument (negative: no such fd).
fn fd_arg(fd: i32) -> Result<libc::c_ulong, Errno> {
    libc::c_ulong::try_from(fd).map_err(|_| Errno::EBADF)
}

/// `prlimit(pid, RLIMIT_NOFILE, new, old)`; returns the old (soft, hard). Raw libc: rustix's
/// `prlimit` always sets a new limit, and reading another process's limit must not.
pub fn prlimit_nofile(pid: i32, new: Option<(u64, u64)>) -> Result<(u64, u64), Errno> {
    let newlim = new.map(|(cur, max)| libc::rlimit64 {
        rlim_cur: cur,
        rlim_max: max,
    });
    let mut old = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let newp = newlim
        .as_ref()
        .map_or(std::ptr::null(), |l| l as *const libc::rlimit64);
    // SAFETY: `newp` is null or points to a live rlimit64, `old` is a writable rlimit64;
    // prlimit64 reads/writes exactly those.
    let r = unsafe { libc::prlimit64(pid, libc::RLIMIT_NOFILE, newp, &mut old) };
    if r != 0 {
        return Err(Errno::last());
    }
    Ok((old.rlim_cur, old.rlim_max))
}

/// Re-queue a signal for thread `tid` of `tgid`: with its original siginfo when the kernel
/// allows forging it (`si_code < 0`, not `SI_TKILL`), else with `tgkill`. Raw libc: rustix has
/// neither rt_tgsigqueueinfo nor tgkill.
pub fn requeue_signal(tgid: i32, tid: i32, info: &libc::siginfo_t) -> Result<(), Errno> {
    let r = if info.si_code < 0 && info.si_code != libc::SI_TKILL {
        // SAFETY: `info` is a valid siginfo_t the kernel only reads.
        unsafe {
            libc::syscall(
                libc::SYS_rt_tgsigqueueinfo,
                tgid,
                tid,
                info.si_signo,
                info as *const libc::siginfo_t,
            )
        }
    } else {
        // SAFETY: integer-only syscall.
        unsafe { libc::syscall(libc::SYS_tgkill, tgid, tid, info.si_signo) }
    };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// `process_vm_readv` of `buf.len()` bytes at `addr` in `tid`; returns the bytes read. Raw
/// libc: rustix has no process_vm_readv.
pub(crate) fn process_vm_read(tid: i32, addr: u64, buf: &mut [u8]) -> Result<usize, Errno> {
    let remote = remote_iov(addr, buf.len())?;
    let mut local = [IoSliceMut::new(buf)];
    // SAFETY: one local iovec (an IoSliceMut has iovec's layout) over `buf`, writable for its
    // length; one remote iovec, only read by the kernel; the kernel writes nothing else here.
    let r = unsafe { libc::process_vm_readv(tid, local.as_mut_ptr().cast(), 1, &remote, 1, 0) };
    usize::try_from(r).map_err(|_| Errno::last())
}

/// `process_vm_writev` of `buf` to `addr` in `tid`; returns the bytes written. Raw libc:
/// rustix has no process_vm_writev.
pub(crate) fn process_vm_write(tid: i32, addr: u64, buf: &[u8]) -> Result<usize, Errno> {
    let remote = remote_iov(addr, buf.len())?;
    let local = [IoSlice::new(buf)];
    // SAFETY: one local iovec (an IoSlice has iovec's layout) over `buf`, only read by the
    // kernel, as is the remote iovec; nothing of ours is written.
    let r = unsafe { libc::process_vm_writev(tid, local.as_ptr().cast(), 1, &remote, 1, 0) };
    usize::try_from(r).map_err(|_| Errno::last())
}

/// An iovec naming `len` bytes at `addr` in another process (never dereferenced here).
fn remote_iov(addr: u64, len: usize) -> Result<libc::iovec, Errno> {
    let addr = usize::try_from(addr).map_err(|_| Errno::EFAULT)?;
    Ok(libc::iovec {
        iov_base: std::ptr::without_provenance_mut::<c_void>(addr),
        iov_len: len,
    })
}
