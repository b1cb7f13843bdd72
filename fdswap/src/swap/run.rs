//! Running a unit's program: preparing it (trap signal, spare fds, fd gaps) before the stop,
//! mapping the stub into the stopped target, running it to its trap and reading the outcome.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use super::SwapOptions;
use super::build::{Built, Handoff, TAKE_LOCK_NOW, build};
use super::handoff::{Listener, PreOpened, Sender};
use super::remote::{
    Trampoline, back_to_event_stop, find_syscall_insn, read_mem, remote_syscall, write_mem,
};
use crate::arch::{self, Regs, hdr, status};
use crate::error::{Error, Result};
use crate::plan::{Item, ProcessPlan};
use crate::procfs;
use crate::program::{Header, Outcome, Stub, patch_header};
use crate::sys;
use crate::tracer::{self, Seen, Tracee};

/// The signals whose default action is to ignore them (signal(7); real-time signals
/// terminate), in the order tried. SIGCONT last: sending it drops pending stop signals.
const HARMLESS: [i32; 4] = [libc::SIGURG, libc::SIGWINCH, libc::SIGCHLD, libc::SIGCONT];

/// Is `sig` not caught by thread `tid` (default action or ignored)? Its blocked mask does not
/// matter: the stub sends the trap with its own mask in force.
fn not_caught(pid: i32, tid: i32, sig: i32) -> Result<bool> {
    let m = procfs::sig_masks(Path::new(&format!("/proc/{pid}/task/{tid}")))?;
    Ok(m.caught & (1u64 << (sig - 1)) == 0)
}

/// Pick the trap signal: one the thread does not catch and whose default is to ignore it, so
/// that if the tracer dies, the trap is a no-op. None: the thread is refused.
fn trap_signal(pid: i32, tid: i32, so: &SwapOptions) -> Result<i32> {
    if let Some(s) = so.force_trap_signal {
        return Ok(s);
    }
    for s in HARMLESS {
        if not_caught(pid, tid, s)? {
            return Ok(s);
        }
    }
    Err(Error::NoTrapSignal { pid, tid })
}

/// Raise RLIMIT_NOFILE while the stub needs temporaries; restores on drop.
struct NofileGuard {
    pid: i32,
    old: Option<(u64, u64)>,
}

impl NofileGuard {
    /// Raise the soft limit to `needed` (and the hard one, if allowed); returns the guard and
    /// the soft limit in force.
    fn raise(pid: i32, needed: u64) -> Result<(Self, u64)> {
        let (cur, max) =
            sys::prlimit_nofile(pid, None).map_err(|source| Error::Rlimit { pid, source })?;
        if cur >= needed {
            return Ok((Self { pid, old: None }, cur));
        }
        let got = match sys::prlimit_nofile(pid, Some((needed, max.max(needed)))) {
            Ok(_) => needed,
            // No CAP_SYS_RESOURCE: the hard limit is as far as we go.
            Err(Errno::EPERM) if cur < max => {
                sys::prlimit_nofile(pid, Some((max, max)))
                    .map_err(|source| Error::Rlimit { pid, source })?;
                max
            }
            Err(Errno::EPERM) => return Ok((Self { pid, old: None }, cur)),
            Err(source) => return Err(Error::Rlimit { pid, source }),
        };
        Ok((
            Self {
                pid,
                old: Some((cur, max)),
            },
            got,
        ))
    }
}

impl Drop for NofileGuard {
    fn drop(&mut self) {
        if let Some(old) = self.old {
            let _ = sys::prlimit_nofile(self.pid, Some(old));
        }
    }
}

/// A unit's program, built and serialised before its process is stopped.
pub(crate) struct Prepared {
    pub(super) built: Built,
    body: Vec<u8>,
    layout: crate::program::Layout,
    trapsig: i32,
    /// The fd gaps the program fills (see [`build`]).
    gaps: Option<Vec<i32>>,
    _nofile: NofileGuard,
}

/// Open file descriptions per transaction unless [`SwapOptions::max_batch`] says otherwise:
/// the stub holds at most this many fds of its own (plus a few) at any time, so a target
/// using nearly all of its `RLIMIT_NOFILE` can be swapped. (253 is also what one `SCM_RIGHTS`
/// message carries.)
pub(crate) const BATCH: usize = 253;

/// At most this many fd gaps are filled to reopen files in place; a sparser table has its
/// files reopened through spare fds.
const MAX_GAPS: usize = 4096;

/// The highest fd to reopen in place: the lowest fd of each description whose old file is on
/// a filesystem with a quiet close ([`crate::FdItem::old_close_costs`] false).
fn in_place_top(unit: &ProcessPlan) -> Option<i32> {
    let mut first: HashMap<usize, (i32, bool)> = HashMap::new();
    for f in &unit.fds {
        let e = first
            .entry(f.description)
            .or_insert((f.fd, f.old_close_costs));
        if f.fd < e.0 {
            *e = (f.fd, f.old_close_costs);
        }
    }
    first
        .values()
        .filter(|(_, costs)| !costs)
        .map(|(fd, _)| *fd)
        .max()
}

/// The free fd numbers below the highest fd to reopen in place, if not too many: as the fd
/// table is now (`live`), or as the scan saw it (every fd it listed is in the plan, moving or
/// skipped).
fn fd_gaps(unit: &ProcessPlan, live: bool) -> Option<Vec<i32>> {
    let top = in_place_top(unit)?;
    let open: HashSet<i32> = if live {
        let task = PathBuf::from(format!("/proc/{}/task/{}", unit.pid, unit.tid));
        procfs::fds(&task).ok()?.into_iter().collect()
    } else {
        let skipped = unit.skipped.iter().filter_map(|k| match k.item {
            Item::Fd(fd) => Some(fd),
            _ => None,
        });
        unit.fds.iter().map(|f| f.fd).chain(skipped).collect()
    };
    let gaps: Vec<i32> = (0..top).filter(|fd| !open.contains(fd)).collect();
    (gaps.len() <= MAX_GAPS).then_some(gaps)
}

/// Choose the trap signal, make room for the spare fds, build and serialise the program.
/// `stopped`: the process is stopped now (its fd table is read as it is, not taken from the
/// scan).
pub(crate) fn prepare(
    unit: &ProcessPlan,
    stub: &Stub,
    so: &SwapOptions,
    stopped: bool,
    hand: Option<&HandIn>,
) -> Result<Prepared> {
    let pid = unit.pid;
    let trapsig = trap_signal(pid, unit.tid, so)?;
    let ngroups = unit
        .fds
        .iter()
        .map(|f| f.description)
        .collect::<HashSet<_>>()
        .len() as u64;
    let max_fd = unit
        .fds
        .iter()
        .map(|f| f.fd)
        .chain(unit.skipped.iter().filter_map(|s| match s.item {
            Item::Fd(fd) => Some(fd),
            _ => None,
        }))
        .max()
        .and_then(|fd| u64::try_from(fd).ok())
        .unwrap_or(0);
    // Spare fds: the new file of each group until its batch commits, maps and cwd.
    let dirs = unit
        .fds
        .iter()
        .filter_map(|f| f.path.parent())
        .collect::<HashSet<_>>()
        .len() as u64;
    // (The placeholders in fd gaps take numbers below `max_fd`: no room needed for them.)
    let gaps = fd_gaps(unit, stopped);
    let base = max_fd + 1 + 2 * unit.maps.len() as u64 + dirs + 24;
    let wanted = so.max_batch.unwrap_or(BATCH).max(1);
    let spares = ngroups.min(u64::try_from(wanted).unwrap_or(u64::MAX));
    let (nofile, limit) = NofileGuard::raise(pid, base + spares)?;
    let batch = if limit >= base + spares {
        wanted
    } else {
        usize::try_from(limit.saturating_sub(base).max(1)).unwrap_or(wanted)
    };
    let handed: HashSet<i32> = hand
        .map(|h| h.files.files.keys().copied().collect())
        .unwrap_or_default();
    let handoff = hand.map(|h| Handoff {
        handed: &handed,
        addr: &h.listener.addr,
    });
    let built = build(unit, trapsig, batch, gaps.as_deref(), handoff.as_ref());
    let body = built.program.serialize();
    let layout = built.program.layout(stub.code.len());
    Ok(Prepared {
        built,
        body,
        layout,
        trapsig,
        gaps,
        _nofile: nofile,
    })
}

/// A process's pre-opened new files and the socket they are handed in through.
pub(crate) struct HandIn {
    pub(crate) files: PreOpened,
    pub(crate) listener: Listener,
}

/// Run a unit's program; with `hand`, the pre-opened files are handed in, and if the stub
/// cannot connect to receive them, the program runs again with in-stub opens. Returns
/// whether files were handed in.
pub(super) fn run_unit(
    t: &mut Tracee,
    unit: &ProcessPlan,
    stub: &Stub,
    so: &SwapOptions,
    prepared: Option<Prepared>,
    hand: Option<HandIn>,
) -> Result<bool> {
    let handing = hand.is_some();
    match run_unit_once(t, unit, stub, so, prepared, hand) {
        Err(Error::HandoffRefused { pid, step, errno }) => {
            tracing::info!(pid, step, %errno, "no handoff: opening in the stub");
            run_unit_once(t, unit, stub, so, None, None).map(|()| false)
        }
        r => r.map(|()| handing),
    }
}

fn run_unit_once(
    t: &mut Tracee,
    unit: &ProcessPlan,
    stub: &Stub,
    so: &SwapOptions,
    prepared: Option<Prepared>,
    mut hand: Option<HandIn>,
) -> Result<()> {
    let pid = t.pid;
    let tid = unit.tid;
    let Some(th) = t.threads.get(&tid) else {
        return Err(Error::Gone { pid });
    };
    let orig = th.regs;
    // A program prepared before the stop is good if its trap signal still is.
    let still_good = |p: &Prepared| -> Result<bool> {
        Ok(so.force_trap_signal.is_some() || not_caught(pid, tid, p.trapsig)?)
    };
    // ... and if the fd gaps it fills are still the gaps (the table is stopped now).
    let mut prepared = match prepared {
        Some(p) if still_good(&p)? && p.gaps == fd_gaps(unit, true) => p,
        _ => {
            tracing::debug!(pid, tid, "program prepared again while stopped");
            prepare(unit, stub, so, true, hand.as_ref())?
        }
    };
    let trapsig = prepared.trapsig;
    let layout = prepared.layout;
    // The injected syscalls run in a trampoline that, should this process die, returns the
    // thread to where it was; without a place for one, any syscall instruction will do.
    let tramp = Trampoline::place(pid, tid)?;
    let at = match &tramp {
        Some(t) => {
            t.write(&arch::trampoline(&orig)?)?;
            t.at
        }
        None => find_syscall_insn(pid, tid)?,
    };

    let prot = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    let total = layout.total as u64;
    let mapped = remote_syscall(
        t,
        tid,
        &orig,
        at,
        libc::SYS_mmap,
        "mmap",
        [0, total, prot, flags, u64::MAX, 0],
    );
    // From here on the mapping must go and the registers come back, whatever happens. The
    // munmap runs on the original registers, so that the trampoline would restore all of them.
    let result = mapped.and_then(|addr| {
        let addr = arch::word(addr);
        let ran = run_stub(
            t,
            unit,
            stub,
            so,
            &mut prepared,
            hand.take(),
            addr,
            trapsig,
            &orig,
        );
        // The thread's own signal mask back, before it leaves the stub in any way.
        let restored = restore_mask(tid, addr + layout.code_len as u64);
        let unmapped = remote_syscall(
            t,
            tid,
            &orig,
            at,
            libc::SYS_munmap,
            "munmap",
            [addr, total, 0, 0, 0, 0],
        );
        ran.and(restored).and(unmapped.map(|_| ()))
    });
    let back = back_to_event_stop(t, tid).and_then(|()| tracer::setregs(tid, orig));
    drop(prepared);
    let untrampoline = tramp.as_ref().map_or(Ok(()), Trampoline::restore);
    result.and(back).and(untrampoline)
}

/// Put back the signal mask the stub saved in its header at `header` (if it saved one): at
/// its trap (the stub would do it itself after the trap, but the tracer takes the thread
/// elsewhere from there), or wherever a failure left it.
fn restore_mask(tid: i32, header: u64) -> Result<()> {
    let mut w = [0u8; 8];
    read_mem(tid, header + hdr::ORIG_MASK as u64, &mut w)?;
    let mask = u64::from_le_bytes(w);
    if mask == hdr::NO_MASK {
        return Ok(());
    }
    tracer::setsigmask(tid, mask)
}

#[allow(clippy::too_many_arguments)]
fn run_stub(
    t: &mut Tracee,
    unit: &ProcessPlan,
    stub: &Stub,
    so: &SwapOptions,
    prepared: &mut Prepared,
    hand: Option<HandIn>,
    addr: u64,
    trapsig: i32,
    orig: &Regs,
) -> Result<()> {
    let pid = t.pid;
    let tid = unit.tid;
    let layout = prepared.layout;
    let (regs_block, ret_rip) = arch::return_block(orig);
    let mut code = stub.code.clone();
    code[stub.rip_slot..stub.rip_slot + 8].copy_from_slice(&ret_rip.to_le_bytes());
    patch_header(
        &mut prepared.body,
        &Header {
            tgid: pid,
            tid,
            trapsig,
            regs: regs_block,
        },
    );
    let header = addr + layout.code_len as u64;
    prepared.built.program.relocate(&mut prepared.body, header);
    write_mem(tid, addr, &code)?;
    write_mem(tid, header, &prepared.body)?;
    // The files the stub receives, one message per batch, in its order.
    let sender = hand.and_then(|mut h| {
        let messages = &prepared.built.messages;
        if messages.is_empty() {
            return None;
        }
        let batches = messages
            .iter()
            .map(|m| m.iter().filter_map(|fd| h.files.files.remove(fd)).collect())
            .collect();
        Some(Sender::start(h.listener, pid, batches))
    });
    let stack_top = addr + layout.total as u64 - 64;
    tracer::setregs(
        tid,
        arch::stub_regs(
            orig,
            addr + stub.entry as u64,
            addr + layout.code_len as u64,
            stack_top,
        ),
    )?;
    tracer::cont(tid, None)?;
    let trap_rip = addr + stub.after_tgkill as u64;
    loop {
        match t.wait(tid, None)? {
            Seen::Signal(sig) => {
                let r = tracer::getregs(tid)?;
                if sig == trapsig && arch::ip(&r) == trap_rip {
                    break;
                }
                if sig != trapsig {
                    t.keep_stray(tid);
                }
                tracer::cont(tid, None)?;
            }
            Seen::EventStop | Seen::Syscall => tracer::cont(tid, None)?,
            Seen::Exited => return Err(Error::Gone { pid }),
        }
    }
    if let Some(s) = sender {
        match s.finish() {
            Ok(sent) => t.sent.extend(sent),
            Err(e) => tracing::debug!(pid, error = %e, "handing the files in"),
        }
    }
    if let Some(d) = so.pause_at_trap {
        std::thread::sleep(d);
    }
    let mut h = vec![0u8; hdr::SIZE];
    read_mem(tid, addr + layout.code_len as u64, &mut h)?;
    let out = Outcome::parse(&h);
    let built = &prepared.built;
    let op_what = |i: u64| built.program.describe(i, unit);
    let errno = sys::neg_errno;
    match out.status {
        status::DONE if out.final_errors == 0 => Ok(()),
        status::DONE => Err(Error::StubFinal {
            pid,
            step: op_what(out.final_index),
            errno: errno(out.final_result),
        }),
        status::ROLLED_BACK
            if usize::try_from(out.fail_index).is_ok_and(|i| built.connect_ops.contains(&i)) =>
        {
            Err(Error::HandoffRefused {
                pid,
                step: op_what(out.fail_index),
                errno: errno(out.fail_result),
            })
        }
        status::ROLLED_BACK if built.program.step_of(out.fail_index) == Some(TAKE_LOCK_NOW) => {
            Err(Error::LockTaken {
                pid,
                step: op_what(out.fail_index),
                errno: errno(out.fail_result),
            })
        }
        status::ROLLED_BACK => Err(Error::StubStep {
            pid,
            step: op_what(out.fail_index),
            errno: errno(out.fail_result),
            kept: built
                .batches
                .iter()
                .filter(|(commit, _)| usize::try_from(out.floor).is_ok_and(|floor| *commit < floor))
                .flat_map(|(_, fds)| fds.iter().copied())
                .collect(),
        }),
        s => Err(Error::UnexpectedStop {
            tid,
            what: format!("stub status {s}"),
        }),
    }
}
