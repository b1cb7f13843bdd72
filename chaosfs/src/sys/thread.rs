//! Per-thread process state: a private fs_struct (umask and cwd), file-system credentials
//! (fsuid/fsgid) and capabilities, and the fd limit.
//!
//! Linux keeps fsuid/fsgid, capabilities and (after `unshare(CLONE_FS)`) umask and cwd per
//! thread, so a serving thread can take on one caller's identity without affecting the others.
//! The raw syscalls are used on purpose: glibc's `setgroups`/`setuid` broadcast to every thread,
//! while `setfsuid`/`setfsgid` and `capset` affect only the calling thread.

use std::cell::Cell;
use std::io;
use std::os::fd::BorrowedFd;

use super::cvt_long;

#[derive(Clone, Copy, PartialEq, Eq)]
enum FsState {
    /// Not yet set up in this thread.
    Unknown,
    /// The thread has its own fs_struct; cwd is the `/proc/self/fd` directory and the umask is
    /// the value held.
    Private { umask: u32 },
    /// `unshare(CLONE_FS)` failed: the thread shares umask and cwd with the process.
    Shared,
}

thread_local! {
    static FS_STATE: Cell<FsState> = const { Cell::new(FsState::Unknown) };
}

/// Give this thread its own fs_struct with cwd = `proc_fd_dir` (so relative names "N" reach the
/// process's fd N through its magic link) and umask 0. Idempotent; returns false if the thread
/// could not get a private fs_struct (then umask and cwd are shared with the process and must not
/// be changed).
pub(crate) fn ensure_private_fs(proc_fd_dir: BorrowedFd<'_>) -> bool {
    match FS_STATE.with(Cell::get) {
        FsState::Private { .. } => true,
        FsState::Shared => false,
        FsState::Unknown => {
            // SAFETY: unshare(CLONE_FS) only detaches this thread's root/cwd/umask from the
            // other threads (no CLONE_FILES: the fd table stays shared, so every fd stays valid
            // on every thread, the condition `unshare_unsafe` asks for).
            let ok = unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) }
                .is_ok()
                // Only this thread's private fs_struct after the unshare above.
                && rustix::process::fchdir(proc_fd_dir).is_ok();
            if ok {
                // Only this thread's umask now that its fs_struct is private.
                rustix::process::umask(rustix::fs::Mode::empty());
                FS_STATE.with(|s| s.set(FsState::Private { umask: 0 }));
            } else {
                tracing::warn!(
                    "cannot give a serving thread its own fs_struct; umask is applied by hand"
                );
                FS_STATE.with(|s| s.set(FsState::Shared));
            }
            ok
        }
    }
}

/// Set this thread's umask (only after [`ensure_private_fs`] returned true).
pub(crate) fn set_thread_umask(mask: u32) {
    if let FsState::Private { umask } = FS_STATE.with(Cell::get)
        && umask != mask
    {
        // The thread has a private fs_struct, so only its own umask changes.
        rustix::process::umask(rustix::fs::Mode::from_bits_truncate(mask));
        FS_STATE.with(|s| s.set(FsState::Private { umask: mask }));
    }
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
/// Capability numbers from `<linux/capability.h>` (not in the libc crate).
const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_DAC_READ_SEARCH: u32 = 2;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn capget() -> io::Result<[CapData; 2]> {
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: version 3 capget reads the header and writes two CapData structs, which `data`
    // provides; both are repr(C) mirrors of the kernel's structs.
    cvt_long(unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut hdr as *mut CapHeader,
            data.as_mut_ptr(),
        )
    })?;
    Ok(data)
}

fn capset(data: &[CapData; 2]) -> io::Result<()> {
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: version 3 capset reads the header and two CapData structs; pid 0 means the
    // calling thread only.
    cvt_long(unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) })
        .map(drop)
}

/// This thread acts with a caller's fsuid/fsgid (so created files get the caller's ownership and
/// setgid-directory inheritance works as in the kernel) while keeping `CAP_DAC_OVERRIDE` and
/// `CAP_DAC_READ_SEARCH`: the kernel already checked permissions with the caller's full
/// credentials (`default_permissions`), including supplementary groups we do not know.
/// Dropping the guard returns to fsuid/fsgid 0, which restores the file-system capabilities.
pub(crate) struct CallerCreds {
    active: bool,
}

impl CallerCreds {
    pub(crate) fn enter(uid: u32, gid: u32) -> io::Result<CallerCreds> {
        // Raw libc: rustix 1.1 has no setfsuid/setfsgid (its `set_thread_uid` is setresuid,
        // which would change the real/effective ids, not the per-thread fs ids).
        // setfsuid/setfsgid return the previous id as an `int`; its bits are the `uid_t`, so
        // `cast_unsigned` gives back the id (ids above i32::MAX come back negative).
        // SAFETY: getfsuid has no portable form; setfsuid(-1) only reports the current fsuid.
        let current_uid = unsafe { libc::setfsuid(u32::MAX) }.cast_unsigned();
        // SAFETY: as above for the fsgid.
        let current_gid = unsafe { libc::setfsgid(u32::MAX) }.cast_unsigned();
        if current_uid == uid && current_gid == gid {
            return Ok(CallerCreds { active: false });
        }
        let guard = CallerCreds { active: true };
        // SAFETY: setfsgid/setfsuid change only this thread's credentials; the guard restores
        // them. Their return value is the previous id, so success is checked by reading back.
        unsafe {
            libc::setfsgid(gid);
            libc::setfsuid(uid);
        }
        // SAFETY: as above, reading back the values.
        let (now_uid, now_gid) = unsafe {
            (
                libc::setfsuid(u32::MAX).cast_unsigned(),
                libc::setfsgid(u32::MAX).cast_unsigned(),
            )
        };
        if now_uid != uid || now_gid != gid {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        if uid != 0 {
            let mut caps = capget()?;
            for bit in [CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH] {
                let (word, mask) = ((bit / 32) as usize, 1u32 << (bit % 32));
                if caps[word].permitted & mask != 0 {
                    caps[word].effective |= mask;
                }
            }
            capset(&caps)?;
        }
        Ok(guard)
    }
}

impl Drop for CallerCreds {
    fn drop(&mut self) {
        if self.active {
            // SAFETY: returning this thread to fsuid/fsgid 0; the kernel re-raises the
            // file-system capabilities from the permitted set when fsuid becomes 0 again.
            unsafe {
                libc::setfsuid(0);
                libc::setfsgid(0);
            }
        }
    }
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit; returns the new soft limit.
pub(crate) fn raise_nofile_limit() -> io::Result<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    // `None` is RLIM_INFINITY.
    let (cur, max) = (
        lim.current.unwrap_or(u64::MAX),
        lim.maximum.unwrap_or(u64::MAX),
    );
    if cur < max {
        let raised = Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        setrlimit(Resource::Nofile, raised)?;
        return Ok(max);
    }
    Ok(cur)
}
