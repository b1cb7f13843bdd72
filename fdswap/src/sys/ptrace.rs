//! ptrace(2), and waitpid(2) for traced threads. Raw libc: rustix has no ptrace, and its
//! `waitpid` has no `__WALL`, which waiting for a traced thread (not our child) needs.

use std::ffi::c_void;
use std::mem::MaybeUninit;

use nix::errno::Errno;

use crate::arch::Regs;

/// What `waitpid` reported for a traced thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitStatus {
    /// It exited.
    Exited,
    /// It was killed by a signal.
    Signaled,
    /// Signal-delivery-stop (or group-stop without `PTRACE_SEIZE`) with this signal.
    Stopped(i32),
    /// `PTRACE_EVENT_*` stop (`PTRACE_EVENT_STOP` for an interrupt or group-stop).
    PtraceEvent(i32),
    /// Syscall-enter or -exit stop (`PTRACE_O_TRACESYSGOOD`).
    PtraceSyscall,
    /// Resumed by `SIGCONT`.
    Continued,
    /// `WNOHANG` and nothing to report.
    StillAlive,
}

/// `PTRACE_O_*` options fdswap seizes with: follow clones, report exec, mark syscall stops.
pub(crate) const SEIZE_OPTIONS: libc::c_int =
    libc::PTRACE_O_TRACECLONE | libc::PTRACE_O_TRACEEXEC | libc::PTRACE_O_TRACESYSGOOD;

/// An integer argument in ptrace's pointer-sized `data` slot.
fn word(v: libc::c_int) -> *mut c_void {
    std::ptr::without_provenance_mut(usize::try_from(v).unwrap_or(0))
}

/// One ptrace request whose `data` is `data` (an integer or a pointer the request fills).
fn request(req: libc::c_uint, tid: i32, data: *mut c_void) -> Result<(), Errno> {
    // SAFETY: `tid` is an integer; `addr` is unused by the requests made here (null); `data`
    // is an integer in pointer form, or points to a live, writable object of the type the
    // request writes (user_regs_struct, siginfo_t, unsigned long), as each caller ensures.
    let r = unsafe { libc::ptrace(req, tid, std::ptr::null_mut::<c_void>(), data) };
    if r == -1 { Err(Errno::last()) } else { Ok(()) }
}

/// `PTRACE_SEIZE` with [`SEIZE_OPTIONS`].
pub(crate) fn seize(tid: i32) -> Result<(), Errno> {
    request(libc::PTRACE_SEIZE, tid, word(SEIZE_OPTIONS))
}

/// `PTRACE_INTERRUPT`.
pub(crate) fn interrupt(tid: i32) -> Result<(), Errno> {
    request(libc::PTRACE_INTERRUPT, tid, word(0))
}

/// `PTRACE_CONT`, delivering signal `sig` (0: none).
pub(crate) fn cont(tid: i32, sig: i32) -> Result<(), Errno> {
    request(libc::PTRACE_CONT, tid, word(sig))
}

/// `PTRACE_SYSCALL`: run to the next syscall entry or exit.
pub(crate) fn syscall(tid: i32) -> Result<(), Errno> {
    request(libc::PTRACE_SYSCALL, tid, word(0))
}

/// `PTRACE_DETACH`, delivering signal `sig` (0: none).
pub(crate) fn detach(tid: i32, sig: i32) -> Result<(), Errno> {
    request(libc::PTRACE_DETACH, tid, word(sig))
}

/// `PTRACE_GETREGS`.
pub(crate) fn getregs(tid: i32) -> Result<Regs, Errno> {
    let mut regs = MaybeUninit::<Regs>::zeroed();
    request(libc::PTRACE_GETREGS, tid, regs.as_mut_ptr().cast())?;
    // SAFETY: zeroed (every field is an integer, so zero is valid) and filled by the kernel.
    Ok(unsafe { regs.assume_init() })
}

/// `PTRACE_SETREGS`.
pub(crate) fn setregs(tid: i32, regs: &Regs) -> Result<(), Errno> {
    let p: *const Regs = regs;
    // The kernel only reads through this pointer.
    request(libc::PTRACE_SETREGS, tid, p.cast_mut().cast())
}

/// `PTRACE_SETSIGMASK`: the thread's blocked signal mask (64 signals, as the kernel keeps it
/// on x86_64).
pub(crate) fn setsigmask(tid: i32, mask: u64) -> Result<(), Errno> {
    let p: *const u64 = &mask;
    // SAFETY: `addr` is the size of the set the kernel reads (8 bytes, `sizeof(sigset_t)` of
    // the kernel); `data` points to that many live bytes, only read.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_SETSIGMASK,
            tid,
            std::ptr::without_provenance_mut::<c_void>(8),
            p.cast_mut().cast::<c_void>(),
        )
    };
    if r == -1 { Err(Errno::last()) } else { Ok(()) }
}

/// `PTRACE_GETEVENTMSG` (the new thread's id at a `PTRACE_EVENT_CLONE` stop).
pub(crate) fn geteventmsg(tid: i32) -> Result<libc::c_ulong, Errno> {
    let mut msg: libc::c_ulong = 0;
    let p: *mut libc::c_ulong = &mut msg;
    request(libc::PTRACE_GETEVENTMSG, tid, p.cast())?;
    Ok(msg)
}

/// `PTRACE_GETSIGINFO` at a signal-delivery-stop.
pub(crate) fn getsiginfo(tid: i32) -> Result<libc::siginfo_t, Errno> {
    let mut info = MaybeUninit::<libc::siginfo_t>::zeroed();
    request(libc::PTRACE_GETSIGINFO, tid, info.as_mut_ptr().cast())?;
    // SAFETY: zeroed (a valid siginfo_t: integers and a union of integers) and filled by the
    // kernel.
    Ok(unsafe { info.assume_init() })
}

/// `waitpid(tid, __WALL [| WNOHANG])`, decoded for a thread seized with [`SEIZE_OPTIONS`].
pub(crate) fn waitpid(tid: i32, nohang: bool) -> Result<WaitStatus, Errno> {
    let flags = libc::__WALL | if nohang { libc::WNOHANG } else { 0 };
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is a live, writable int; waitpid writes nothing else.
    let r = unsafe { libc::waitpid(tid, &mut status, flags) };
    if r < 0 {
        return Err(Errno::last());
    }
    if r == 0 {
        return Ok(WaitStatus::StillAlive);
    }
    Ok(decode(status))
}

fn decode(status: libc::c_int) -> WaitStatus {
    if libc::WIFEXITED(status) {
        WaitStatus::Exited
    } else if libc::WIFSIGNALED(status) {
        WaitStatus::Signaled
    } else if libc::WIFSTOPPED(status) {
        let sig = libc::WSTOPSIG(status);
        let event = (status >> 16) & 0xff;
        if event != 0 {
            WaitStatus::PtraceEvent(event)
        } else if sig == libc::SIGTRAP | 0x80 {
            WaitStatus::PtraceSyscall
        } else {
            WaitStatus::Stopped(sig)
        }
    } else {
        WaitStatus::Continued
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_decode() {
        // Encodings from the kernel: exit code << 8; signal; 0x7f | sig << 8 | event << 16.
        assert_eq!(decode(3 << 8), WaitStatus::Exited);
        assert_eq!(decode(libc::SIGKILL), WaitStatus::Signaled);
        let stop = |sig: i32, ev: i32| 0x7f | (sig << 8) | (ev << 16);
        assert_eq!(
            decode(stop(libc::SIGUSR1, 0)),
            WaitStatus::Stopped(libc::SIGUSR1)
        );
        assert_eq!(
            decode(stop(libc::SIGTRAP | 0x80, 0)),
            WaitStatus::PtraceSyscall
        );
        assert_eq!(
            decode(stop(libc::SIGTRAP, libc::PTRACE_EVENT_STOP)),
            WaitStatus::PtraceEvent(libc::PTRACE_EVENT_STOP)
        );
        assert_eq!(decode(0xffff), WaitStatus::Continued);
    }
}
