//! Raw system calls that have no safe wrapper in `nix`. All `unsafe` of the crate lives here
//! (and in the architecture module's register plumbing, which has none).

use std::ffi::{CStr, CString};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;

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
    statx_flags(path, 0)
}

/// Like [`statx`], with `AT_STATX_DONT_SYNC`: cached attributes are enough to identify a file,
/// and they are there even when the filesystem cannot answer (a FUSE server that died).
pub fn statx_cached(path: &Path) -> Result<FileId, Errno> {
    statx_flags(path, libc::AT_STATX_DONT_SYNC)
}

/// `statx(dirfd, name, flags, BASIC|MNT_ID)`; an empty `name` is `dirfd` itself.
pub fn statx_at(dirfd: BorrowedFd<'_>, name: &Path, flags: libc::c_int) -> Result<FileId, Errno> {
    let c = CString::new(name.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    let flags = if c.as_bytes().is_empty() {
        flags | libc::AT_EMPTY_PATH
    } else {
        flags
    };
    statx_raw(dirfd.as_raw_fd(), &c, flags)
}

fn statx_flags(path: &Path, flags: libc::c_int) -> Result<FileId, Errno> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    statx_raw(libc::AT_FDCWD, &c, flags)
}

fn statx_raw(dirfd: RawFd, c: &CStr, flags: libc::c_int) -> Result<FileId, Errno> {
    let mut buf = MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `dirfd` is AT_FDCWD or an fd the caller borrows for the duration of the call, `c`
    // is a NUL-terminated string that outlives the call and `buf` is a writable `struct statx`
    // the kernel fills; statx(2) writes nothing else.
    let r = unsafe {
        libc::statx(
            dirfd,
            c.as_ptr(),
            flags,
            libc::STATX_BASIC_STATS | libc::STATX_MNT_ID,
            buf.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(Errno::last());
    }
    // SAFETY: statx returned 0, so the kernel initialised the struct (it was zeroed before anyway).
    let s = unsafe { buf.assume_init() };
    Ok(FileId {
        dev: (s.stx_dev_major, s.stx_dev_minor),
        ino: s.stx_ino,
        mnt_id: s.stx_mnt_id,
        nlink: s.stx_nlink,
        mode: u32::from(s.stx_mode),
    })
}

/// `getdents64(fd, buf)`: fills `buf` with `linux_dirent64` records; returns the bytes used
/// (0 at the end of the directory). The request size a FUSE filesystem sees is `buf.len()`.
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
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r as usize)
    }
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

/// `kcmp(pid1, pid2, type, ...) == 0`: do the two share the object?
pub fn kcmp_same(pid1: i32, pid2: i32, what: Kcmp) -> Result<bool, Errno> {
    let (ty, a, b) = match what {
        Kcmp::File(a, b) => (KCMP_FILE, a as libc::c_ulong, b as libc::c_ulong),
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

/// `prlimit(pid, RLIMIT_NOFILE, new, old)`; returns the old (soft, hard).
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
/// allows forging it (`si_code < 0`, not `SI_TKILL`), else with `tgkill`.
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
