//! Stopping and resuming every thread of a process with `PTRACE_SEIZE` + `PTRACE_INTERRUPT`.
//!
//! Invariant: a thread in [`Tracee::threads`] is in a ptrace-stop of kind `PTRACE_EVENT_STOP`
//! (interrupt or group-stop) with the registers in `regs`, between [`Tracee::seize`] and
//! [`Tracee::release`]. The only code that moves a thread out of that stop (to run a syscall or
//! the stub) brings it back into one before returning. Dropping a `Tracee` detaches every thread.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use crate::arch::{self, Regs};
use crate::error::{Error, Result};
use crate::procfs;
use crate::sys::ptrace::{self, WaitStatus};

/// One stopped thread.
#[derive(Debug, Clone)]
pub(crate) struct Thread {
    /// Registers at the stop, as they must be on resume (spurious `EINTR` already fixed).
    pub regs: Regs,
    /// `regs` differ from what the kernel has and must be written back.
    pub dirty: bool,
}

/// What a wait saw.
#[derive(Debug)]
pub(crate) enum Seen {
    /// `PTRACE_EVENT_STOP` (interrupt, or group-stop with that signal).
    EventStop,
    /// Signal-delivery-stop, with the signal number.
    Signal(i32),
    /// Syscall-enter or -exit stop.
    Syscall,
    /// The thread exited or was killed.
    Exited,
}

/// All threads of one process, stopped.
#[derive(Debug)]
pub(crate) struct Tracee {
    pub pid: i32,
    pub threads: BTreeMap<i32, Thread>,
    /// Signals that arrived while a thread ran injected code; re-queued on release.
    pub strays: Vec<(i32, libc::siginfo_t)>,
    /// When the first thread was interrupted.
    pub stopped_at: Instant,
    /// The process executed a new program while being stopped.
    pub exec_seen: bool,
    /// Seized threads that did not stop in time (or were still pending when seizing failed):
    /// they stop whenever they can, and must then be detached.
    unstopped: Vec<i32>,
    timeout: Duration,
    /// Our copies of the files handed in to the process: closed only once it runs again
    /// (through a filesystem that wants a FLUSH, each close is a round trip).
    pub sent: Vec<std::os::fd::OwnedFd>,
}

fn perr(op: &'static str, tid: i32) -> impl FnOnce(Errno) -> Error {
    move |source| Error::Ptrace { op, tid, source }
}

impl Tracee {
    /// Seize and stop every thread of `pid`, including threads it creates meanwhile.
    pub(crate) fn seize(pid: i32, timeout: Duration) -> Result<Tracee> {
        let mut t = Tracee {
            pid,
            threads: BTreeMap::new(),
            strays: Vec::new(),
            sent: Vec::new(),
            stopped_at: Instant::now(),
            exec_seen: false,
            unstopped: Vec::new(),
            timeout,
        };
        let mut pending: Vec<i32> = Vec::new();
        let mut gone_leader = false;
        loop {
            let mut new = 0;
            let tids = match procfs::tasks(pid) {
                Ok(t) => t,
                Err(_) if t.threads.is_empty() && pending.is_empty() => {
                    return Err(Error::Gone { pid });
                }
                Err(_) => {
                    gone_leader = true;
                    Vec::new()
                }
            };
            for tid in tids {
                if t.threads.contains_key(&tid) || pending.contains(&tid) {
                    continue;
                }
                match ptrace::seize(tid) {
                    Ok(()) => {}
                    Err(Errno::ESRCH) => continue,
                    Err(Errno::EPERM) if traced_by_us(pid, tid) => {
                        // Auto-attached by PTRACE_O_TRACECLONE: it will report a stop.
                    }
                    Err(e) => return Err(perr("SEIZE", tid)(e)),
                }
                match ptrace::interrupt(tid) {
                    Ok(()) | Err(Errno::ESRCH) => {}
                    Err(e) => return Err(perr("INTERRUPT", tid)(e)),
                }
                pending.push(tid);
                new += 1;
            }
            // Wait for every seized thread even after one fails to stop, so that all the
            // others are in `threads` and get released at once.
            let mut failed = None;
            while let Some(tid) = pending.pop() {
                if let Err(e) = t.wait_initial(tid, &mut pending) {
                    t.unstopped.push(tid);
                    failed.get_or_insert(e);
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
            if new == 0 || gone_leader {
                break;
            }
        }
        if t.threads.is_empty() {
            return Err(Error::Gone { pid });
        }
        Ok(t)
    }

    /// Wait for the interrupt stop of a freshly seized thread.
    fn wait_initial(&mut self, tid: i32, pending: &mut Vec<i32>) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let st = wait_until(tid, deadline, self.timeout)?;
            match st {
                WaitStatus::PtraceEvent(libc::PTRACE_EVENT_STOP) => {
                    let mut regs = getregs(tid)?;
                    // Write the EINTR fix now, not on release: if this tracer dies, the kernel
                    // resumes the thread with what it has.
                    if arch::fix_spurious_eintr(&mut regs) {
                        setregs(tid, regs)?;
                    }
                    self.threads.insert(tid, Thread { regs, dirty: false });
                    return Ok(());
                }
                WaitStatus::PtraceEvent(libc::PTRACE_EVENT_CLONE) => {
                    // The message is the new thread's id, a pid_t.
                    if let Some(child) = ptrace::geteventmsg(tid)
                        .ok()
                        .and_then(|m| i32::try_from(m).ok())
                    {
                        pending.push(child);
                    }
                    cont(tid, None)?;
                }
                WaitStatus::PtraceEvent(libc::PTRACE_EVENT_EXEC) => {
                    self.exec_seen = true;
                    cont(tid, None)?;
                }
                WaitStatus::PtraceEvent(_) | WaitStatus::PtraceSyscall => cont(tid, None)?,
                WaitStatus::Stopped(sig) => {
                    // A signal being delivered: let it through now, the interrupt stays pending.
                    cont(tid, Some(sig))?;
                }
                WaitStatus::Exited | WaitStatus::Signaled => return Ok(()),
                WaitStatus::Continued | WaitStatus::StillAlive => {}
            }
        }
    }

    /// Wait for the next stop of `tid` (which must be running).
    pub(crate) fn wait(&mut self, tid: i32, timeout: Option<Duration>) -> Result<Seen> {
        let t = timeout.unwrap_or(Duration::MAX);
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let st = match deadline {
                Some(d) => wait_until(tid, d, t)?,
                // Block in the kernel: polling would steal the CPU from the target.
                None => loop {
                    match ptrace::waitpid(tid, false) {
                        Ok(st) => break st,
                        Err(Errno::EINTR) => continue,
                        Err(Errno::ECHILD) => break WaitStatus::Exited,
                        Err(e) => return Err(perr("WAIT", tid)(e)),
                    }
                },
            };
            match st {
                WaitStatus::PtraceEvent(libc::PTRACE_EVENT_STOP) => {
                    return Ok(Seen::EventStop);
                }
                WaitStatus::PtraceEvent(libc::PTRACE_EVENT_EXEC) => {
                    self.exec_seen = true;
                    return Err(Error::Exec { pid: self.pid });
                }
                WaitStatus::PtraceEvent(_) => cont(tid, None)?,
                WaitStatus::PtraceSyscall => return Ok(Seen::Syscall),
                WaitStatus::Stopped(sig) => return Ok(Seen::Signal(sig)),
                WaitStatus::Exited | WaitStatus::Signaled => {
                    self.threads.remove(&tid);
                    return Ok(Seen::Exited);
                }
                WaitStatus::Continued | WaitStatus::StillAlive => {}
            }
        }
    }

    /// Record the signal of the current signal-delivery-stop of `tid` for re-queueing.
    pub(crate) fn keep_stray(&mut self, tid: i32) {
        if let Ok(info) = ptrace::getsiginfo(tid) {
            self.strays.push((tid, info));
        }
    }

    /// Write back registers, re-queue stray signals and detach every thread.
    pub(crate) fn release(&mut self) -> Result<()> {
        let mut first_err = None;
        for (&tid, th) in &self.threads {
            if th.dirty
                && let Err(e) = ptrace::setregs(tid, &th.regs)
                && e != Errno::ESRCH
            {
                first_err.get_or_insert(Error::Ptrace {
                    op: "SETREGS",
                    tid,
                    source: e,
                });
            }
        }
        for (tid, info) in self.strays.drain(..) {
            let _ = crate::sys::requeue_signal(self.pid, tid, &info);
        }
        for (&tid, _) in std::mem::take(&mut self.threads).iter() {
            match ptrace::detach(tid, 0) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => {
                    first_err.get_or_insert(Error::Ptrace {
                        op: "DETACH",
                        tid,
                        source: e,
                    });
                }
            }
        }
        // Stopped threads are running again; now wait for the ones that could not stop.
        self.release_unstopped();
        first_err.map_or(Ok(()), Err)
    }
}

impl Tracee {
    /// A seized thread stays traced until it is detached, and can only be detached once it
    /// stops: wait for the ones that had not (blocking up to `UNSTOPPED_GRACE`), then detach.
    fn release_unstopped(&mut self) {
        const UNSTOPPED_GRACE: Duration = Duration::from_secs(30);
        for tid in std::mem::take(&mut self.unstopped) {
            let deadline = Instant::now() + UNSTOPPED_GRACE;
            match wait_until(tid, deadline, UNSTOPPED_GRACE) {
                Ok(WaitStatus::Exited | WaitStatus::Signaled) | Err(_) => {}
                Ok(WaitStatus::Stopped(sig)) => {
                    // A signal being delivered: hand it back on detach.
                    let _ = ptrace::detach(tid, sig);
                }
                Ok(_) => {
                    let _ = ptrace::detach(tid, 0);
                }
            }
        }
    }
}

impl Drop for Tracee {
    fn drop(&mut self) {
        if !self.threads.is_empty() || !self.unstopped.is_empty() {
            let _ = self.release();
        }
    }
}

/// Is `tid` traced by this process (auto-attached clone), rather than by someone else?
fn traced_by_us(pid: i32, tid: i32) -> bool {
    let me = std::process::id().to_string();
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
        .map(|s| {
            s.lines()
                .any(|l| l.strip_prefix("TracerPid:").map(str::trim) == Some(me.as_str()))
        })
        .unwrap_or(false)
}

/// Resume `tid`, delivering signal `sig` if any.
pub(crate) fn cont(tid: i32, sig: Option<i32>) -> Result<()> {
    match ptrace::cont(tid, sig.unwrap_or(0)) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(perr("CONT", tid)(e)),
    }
}

pub(crate) fn syscall_step(tid: i32) -> Result<()> {
    ptrace::syscall(tid).map_err(perr("SYSCALL", tid))
}

pub(crate) fn getregs(tid: i32) -> Result<Regs> {
    ptrace::getregs(tid).map_err(perr("GETREGS", tid))
}

pub(crate) fn setregs(tid: i32, regs: Regs) -> Result<()> {
    ptrace::setregs(tid, &regs).map_err(perr("SETREGS", tid))
}

pub(crate) fn setsigmask(tid: i32, mask: u64) -> Result<()> {
    ptrace::setsigmask(tid, mask).map_err(perr("SETSIGMASK", tid))
}

pub(crate) fn interrupt(tid: i32) -> Result<()> {
    ptrace::interrupt(tid).map_err(perr("INTERRUPT", tid))
}

/// `waitpid(tid, __WALL)` with a deadline: blocking would hang on a thread that never stops
/// (uninterruptible sleep), so poll, spinning briefly first.
fn wait_until(tid: i32, deadline: Instant, timeout: Duration) -> Result<WaitStatus> {
    let mut spins = 0u32;
    loop {
        match ptrace::waitpid(tid, true) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(st) => return Ok(st),
            Err(Errno::EINTR) => continue,
            Err(Errno::ECHILD) => return Ok(WaitStatus::Exited),
            Err(e) => return Err(perr("WAIT", tid)(e)),
        }
        if Instant::now() >= deadline {
            return Err(Error::StopTimeout {
                tid,
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            });
        }
        spins += 1;
        if spins < 2000 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(if spins < 2200 { 20 } else { 200 }));
        }
    }
}
