//! Locks on backing files: open file description (OFD) record locks and `flock`, and waking a
//! thread blocked waiting for one (a signal with a handler that does nothing, installed without
//! `SA_RESTART`, so the blocked call returns EINTR).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::OnceLock;

use rustix::fs::FlockOperation;

use super::cvt;

/// `fcntl(fd, F_OFD_GETLK, fl)`: `fl` becomes the first conflicting lock, or `F_UNLCK`.
pub(crate) fn ofd_getlk(fd: BorrowedFd<'_>, fl: &mut libc::flock) -> io::Result<()> {
    // SAFETY: F_OFD_GETLK reads and writes one `struct flock`, which `fl` is, exclusively
    // borrowed for the call; `fd` is open for its duration.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_GETLK, std::ptr::from_mut(fl)) }).map(drop)
}

/// `fcntl(fd, F_OFD_SETLK or F_OFD_SETLKW, fl)`.
pub(crate) fn ofd_setlk(fd: BorrowedFd<'_>, fl: &libc::flock, wait: bool) -> io::Result<()> {
    let cmd = if wait {
        libc::F_OFD_SETLKW
    } else {
        libc::F_OFD_SETLK
    };
    // SAFETY: F_OFD_SETLK(W) only reads one `struct flock`, which `fl` is, borrowed for the
    // call; `fd` is open for its duration.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), cmd, std::ptr::from_ref(fl)) }).map(drop)
}

/// `flock(fd, op)`: `typ` is `F_RDLCK` (shared), `F_WRLCK` (exclusive) or else unlock.
pub(crate) fn flock(fd: BorrowedFd<'_>, typ: i32, wait: bool) -> io::Result<()> {
    use FlockOperation as F;
    let op = match (typ, wait) {
        (libc::F_RDLCK, true) => F::LockShared,
        (libc::F_RDLCK, false) => F::NonBlockingLockShared,
        (libc::F_WRLCK, true) => F::LockExclusive,
        (libc::F_WRLCK, false) => F::NonBlockingLockExclusive,
        _ => F::Unlock,
    };
    Ok(rustix::fs::flock(fd, op)?)
}

/// The signal that wakes a lock waiter: a real-time one no default action or library here
/// uses.
fn wake_signal() -> i32 {
    libc::SIGRTMIN() + 4
}

extern "C" fn on_wake(_: libc::c_int) {}

/// Install the wake signal's handler (once per process).
pub(crate) fn install_wake_handler() -> io::Result<()> {
    static DONE: OnceLock<Result<(), i32>> = OnceLock::new();
    let r = DONE.get_or_init(|| {
        // SAFETY: an all-zero `sigaction` is a valid value (empty mask, no flags); the handler
        // set is an `extern "C"` function that does nothing, so it is async-signal-safe, and
        // without SA_RESTART a blocking call it interrupts returns EINTR.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = on_wake as extern "C" fn(libc::c_int) as usize;
        // SAFETY: `act` is initialised above; the old action is not asked for (null).
        let rc = unsafe { libc::sigaction(wake_signal(), &raw const act, std::ptr::null_mut()) };
        cvt(rc)
            .map(drop)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EINVAL))
    });
    r.map_err(io::Error::from_raw_os_error)
}

/// Send the wake signal to `thread` (a thread of this process that has not been joined).
pub(crate) fn wake(thread: libc::pthread_t) -> io::Result<()> {
    // SAFETY: the caller keeps `thread` alive (not joined, not detached-and-exited: waiters
    // are kicked only until they report they are done, before they return).
    let rc = unsafe { libc::pthread_kill(thread, wake_signal()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}
