//! Working in the stopped target: its memory (`process_vm_readv`/`writev`, `/proc/PID/mem`),
//! one injected syscall at a time, and the trampoline the injected syscalls run in.

use nix::errno::Errno;

use crate::arch::{self, Regs};
use crate::error::{Error, Result};
use crate::procfs;
use crate::sys;
use crate::tracer::{self, Seen, Tracee};

/// Where the trampoline goes: the zero padding at the end of the vDSO (after its section
/// headers; never executed or read by anyone). Written through `/proc/PID/mem`, which
/// copies the page on write for this process only.
pub(super) struct Trampoline {
    mem: std::fs::File,
    pub(super) at: u64,
    original: Vec<u8>,
}

impl Trampoline {
    pub(super) fn place(pid: i32, tid: i32) -> Result<Option<Trampoline>> {
        let maps = procfs::maps(pid)?;
        let Some(v) = maps.iter().find(|m| m.path == "[vdso]") else {
            return Ok(None);
        };
        let at = v.end - arch::TRAMPOLINE_LEN as u64;
        let mut original = vec![0u8; arch::TRAMPOLINE_LEN];
        read_mem(tid, at, &mut original)?;
        // Free: zeros, or a trampoline an earlier (killed) swap left behind.
        let ours = original.starts_with(&arch::SYSCALL_INSN);
        if !ours && original.iter().any(|&b| b != 0) {
            return Ok(None);
        }
        let path = format!("/proc/{pid}/mem");
        let mem = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(crate::error::proc_err(&path))?;
        Ok(Some(Trampoline {
            mem,
            at,
            original: if ours {
                vec![0; arch::TRAMPOLINE_LEN]
            } else {
                original
            },
        }))
    }

    pub(super) fn write(&self, code: &[u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.mem
            .write_all_at(code, self.at)
            .map_err(|e| Error::RemoteMemory {
                tid: 0,
                addr: self.at,
                source: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            })
    }

    pub(super) fn restore(&self) -> Result<()> {
        self.write(&self.original)
    }
}

/// Find a `syscall` instruction in the vDSO (or any executable mapping).
pub(super) fn find_syscall_insn(pid: i32, tid: i32) -> Result<u64> {
    let maps = procfs::maps(pid)?;
    let mut cands: Vec<&procfs::MapLine> = maps
        .iter()
        .filter(|m| m.perms.as_bytes().get(2) == Some(&b'x'))
        .collect();
    cands.sort_by_key(|m| m.path != "[vdso]");
    for m in cands {
        let len = usize::try_from(m.end - m.start).map_or(1 << 20, |l| l.min(1 << 20));
        let mut buf = vec![0u8; len];
        if read_mem(tid, m.start, &mut buf).is_err() {
            continue;
        }
        if let Some(i) = buf.windows(2).position(|w| w == arch::SYSCALL_INSN) {
            return Ok(m.start + i as u64);
        }
    }
    Err(Error::NoSyscallInstruction { pid })
}

pub(super) fn read_mem(tid: i32, addr: u64, buf: &mut [u8]) -> Result<()> {
    let n = sys::process_vm_read(tid, addr, buf).map_err(|source| Error::RemoteMemory {
        tid,
        addr,
        source,
    })?;
    if n != buf.len() {
        return Err(Error::RemoteMemory {
            tid,
            addr,
            source: Errno::EFAULT,
        });
    }
    Ok(())
}

pub(super) fn write_mem(tid: i32, addr: u64, buf: &[u8]) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let at = addr + u64::try_from(done).unwrap_or(u64::MAX);
        let n = sys::process_vm_write(tid, at, &buf[done..])
            .map_err(|source| Error::RemoteMemory { tid, addr, source })?;
        if n == 0 {
            return Err(Error::RemoteMemory {
                tid,
                addr,
                source: Errno::EFAULT,
            });
        }
        done += n;
    }
    Ok(())
}

/// Run one syscall in stopped thread `tid` at the `syscall` instruction `at`, leaving the thread
/// in the syscall-exit stop. Signals that arrive meanwhile are kept for re-queueing.
pub(super) fn remote_syscall(
    t: &mut Tracee,
    tid: i32,
    base: &Regs,
    at: u64,
    nr: i64,
    name: &'static str,
    args: [u64; 6],
) -> Result<i64> {
    tracer::setregs(tid, arch::syscall_regs(base, at, nr, args))?;
    tracer::syscall_step(tid)?;
    let mut entered = false;
    loop {
        match t.wait(tid, None)? {
            Seen::Syscall if !entered => {
                entered = true;
                tracer::syscall_step(tid)?;
            }
            Seen::Syscall => break,
            Seen::Signal(_) => {
                t.keep_stray(tid);
                tracer::syscall_step(tid)?;
            }
            Seen::EventStop => tracer::syscall_step(tid)?,
            Seen::Exited => return Err(Error::Gone { pid: t.pid }),
        }
    }
    let r = arch::ret(&tracer::getregs(tid)?);
    if (-4095..0).contains(&r) {
        return Err(Error::RemoteSyscall {
            tid,
            name,
            errno: sys::neg_errno(r),
        });
    }
    Ok(r)
}

/// From a syscall-exit or signal stop, get `tid` back into a `PTRACE_EVENT_STOP`, where
/// restoring the registers makes the kernel apply the pending syscall restart on resume.
pub(super) fn back_to_event_stop(t: &mut Tracee, tid: i32) -> Result<()> {
    tracer::interrupt(tid)?;
    tracer::cont(tid, None)?;
    loop {
        match t.wait(tid, None)? {
            Seen::EventStop => return Ok(()),
            Seen::Signal(_) => {
                t.keep_stray(tid);
                tracer::cont(tid, None)?;
            }
            Seen::Syscall => tracer::cont(tid, None)?,
            Seen::Exited => return Err(Error::Gone { pid: t.pid }),
        }
    }
}
