//! Building the op table of one unit, step by step (see `program.rs` for how ops run and roll
//! back, and docs/fdswap.md for the order).
//!
//! `batch` bounds the descriptions per transaction: each keeps its new file open in a spare fd
//! until its batch commits, so a target near its hard RLIMIT_NOFILE (which cannot be raised
//! without CAP_SYS_RESOURCE) is done in several transactions within the same stop.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use libc::{
    AF_UNIX, F_SETFD, FD_CLOEXEC, MSG_CMSG_CLOEXEC, SCM_RIGHTS, SO_RCVTIMEO, SOCK_CLOEXEC,
    SOCK_STREAM, SOL_SOCKET, SYS_connect, SYS_recvmsg, SYS_setsockopt, SYS_socket,
};
use libc::{
    AT_EMPTY_PATH, AT_FDCWD, AT_STATX_DONT_SYNC, F_DUPFD_CLOEXEC, F_GETFD, F_GETFL, F_GETLK,
    F_RDLCK, F_SETLK, F_UNLCK, F_WRLCK, MAP_ANONYMOUS, MAP_NORESERVE, MAP_PRIVATE, MAP_SHARED,
    MREMAP_FIXED, MREMAP_MAYMOVE, O_ACCMODE, O_CLOEXEC, O_CREAT, O_DIRECTORY, O_EXCL, O_NOCTTY,
    O_PATH, O_RDONLY, O_RDWR, O_TRUNC, O_WRONLY, PROT_EXEC, PROT_NONE, PROT_READ, PROT_WRITE,
    SEEK_CUR, SEEK_SET, SIG_SETMASK, STATX_INO, STATX_MNT_ID, SYS_close, SYS_dup3, SYS_fchdir,
    SYS_fcntl, SYS_lseek, SYS_mmap, SYS_mremap, SYS_munmap, SYS_openat, SYS_rt_sigprocmask,
    SYS_statx,
};

/// The step taking a lock on the new file in place (its failure: `Error::LockTaken`).
pub(super) const TAKE_LOCK_NOW: &str =
    "F_SETLK (taken by another process meanwhile?) on the new file for";

/// How long the stub waits for the injector's files before it rolls back.
const RECEIVE_TIMEOUT_S: u64 = 10;

use crate::arch::hdr;
use crate::plan::{CwdItem, FdItem, MapItem, ProcessPlan};
use crate::program::{Arg, Call, Check, Desc, Program, on_fd, on_map, step};
use crate::sys::FileId;

/// A unit's program and which fds each batch commits.
pub(super) struct Built {
    pub(super) program: Program,
    /// Per batch: the index of its commit op (`usize::MAX` for the last batch, which commits
    /// when the stub ends) and the fds it moves.
    pub(super) batches: Vec<(usize, Vec<i32>)>,
    /// Per `SCM_RIGHTS` message the stub receives, in order: the lowest fd of each
    /// description whose new file comes in it (see `handoff.rs`).
    pub(super) messages: Vec<Vec<i32>>,
    /// The ops that set up the connection to the injector: a failure there (seccomp, a
    /// network namespace without unix sockets) means "open in the stub instead".
    pub(super) connect_ops: std::ops::Range<usize>,
}

/// What the stub needs to receive pre-opened files: the descriptions that have one (by
/// their lowest fd) and the `sockaddr_un` to connect to.
pub(super) struct Handoff<'a> {
    pub(super) handed: &'a HashSet<i32>,
    pub(super) addr: &'a [u8],
}

/// Build the op table for one unit. `gaps`: the free fd numbers below the highest fd to reopen
/// in place (see `run::in_place_top`), as they are when the program runs; `None`: reopen
/// nothing in place.
pub(super) fn build(
    unit: &ProcessPlan,
    trapsig: i32,
    batch: usize,
    gaps: Option<&[i32]>,
    handoff: Option<&Handoff<'_>>,
) -> Built {
    let mut b = Builder::new(unit, gaps);
    b.block_signals(trapsig);
    let batch_groups = b.batch_groups(batch);
    b.find_lock_carriers();
    let start = b.pr.ops.len();
    if let Some(h) = handoff {
        b.handed = h.handed.clone();
        if (0..b.groups.len()).any(|g| b.handed_off(g)) {
            b.connect(h.addr);
        } else {
            b.handed.clear();
        }
    }
    let connect_ops = start..b.pr.ops.len();
    let n = batch_groups.len();
    let batches = batch_groups
        .iter()
        .enumerate()
        .map(|(i, groups)| b.batch(groups, i == 0, i + 1 == n))
        .collect();
    Built {
        program: b.pr,
        batches,
        messages: b.messages,
        connect_ops,
    }
}

/// A C `int` argument as the 64-bit register the kernel reads it from (sign-extended, as the
/// C calling convention passes it).
fn reg(v: i32) -> u64 {
    u64::from_ne_bytes(i64::from(v).to_ne_bytes())
}

/// An `int` immediate argument.
fn int(v: i32) -> Arg {
    Arg::Imm(reg(v))
}

/// The NUL-terminated bytes of a path (an empty string if it holds a NUL, which no path the
/// kernel gave us does).
fn cstr(p: &Path) -> Vec<u8> {
    CString::new(p.as_os_str().as_bytes())
        .map(|c| c.into_bytes_with_nul())
        .unwrap_or_else(|_| b"\0".to_vec())
}

/// A `struct flock` (x86_64 layout) of a read or write lock on bytes `start..=end` (`None`:
/// to EOF), for `F_SETLK`, or for the `F_GETLK` probe (a copy of its own: the kernel
/// overwrites it, with `F_UNLCK` when nobody holds a conflicting lock).
fn flock_bytes(write: bool, start: u64, end: Option<u64>) -> Vec<u8> {
    // l_type and l_whence are C shorts; the F_*LCK and SEEK_* constants are small.
    let short = |v: i32| i16::try_from(v).expect("F_*LCK and SEEK_* fit a short");
    let ty = if write { F_WRLCK } else { F_RDLCK };
    let len = end.map_or(0, |e| e.saturating_sub(start) + 1);
    let mut b = vec![0u8; 32];
    b[0..2].copy_from_slice(&short(ty).to_le_bytes());
    b[2..4].copy_from_slice(&short(SEEK_SET).to_le_bytes());
    b[8..16].copy_from_slice(&start.to_le_bytes());
    b[16..24].copy_from_slice(&len.to_le_bytes());
    b
}

/// A POSIX lock and the fd (and description group) that carries it.
struct LockSlot {
    fd: i32,
    group: usize,
    /// `struct flock` that takes it again.
    take: usize,
    /// `struct flock` for the `F_GETLK` probe on the new file.
    probe: usize,
    /// Held for the process by the old file's server (see `PosixLock::forwarded`): no probe.
    forwarded: bool,
}

/// What a group leaves for after the point of no return.
enum Opened {
    /// The new file is open in a spare fd (`new`: the result of the op that opened it, or
    /// where `recvmsg` wrote its number): put it on the fds of group `group`, then close the
    /// spare.
    Spare { new: Arg, group: usize },
    /// The new file is on the fds of group `group` already; the old description is kept
    /// open here.
    InPlace { saved: usize, group: usize },
}

/// What one batch's open phase leaves for its final part.
#[derive(Default)]
struct BatchOps<'u> {
    opened: Vec<Opened>,
    moved: Vec<i32>,
    placeholders: Vec<usize>,
    dir_ops: HashMap<&'u Path, usize>,
    /// Parked old mappings: (reservation op, length).
    parks: Vec<(usize, u64)>,
    temps: Vec<usize>,
}

struct Builder<'u> {
    unit: &'u ProcessPlan,
    gaps: Option<&'u [i32]>,
    pr: Program,
    /// An empty path (`statx` on an fd with `AT_EMPTY_PATH`).
    empty: usize,
    /// A `struct statx` buffer.
    stx: usize,
    /// Description groups (indices into `unit.fds`), a file's groups next to each other.
    groups: Vec<Vec<usize>>,
    locks: Vec<LockSlot>,
    /// Descriptions (by lowest fd) whose new file the injector hands in.
    handed: HashSet<i32>,
    /// The op whose result is the socket to the injector.
    socket: Option<usize>,
    messages: Vec<Vec<i32>>,
}

impl<'u> Builder<'u> {
    fn new(unit: &'u ProcessPlan, gaps: Option<&'u [i32]>) -> Self {
        let mut pr = Program::default();
        let empty = pr.data(b"\0".to_vec());
        let stx = pr.data(vec![0u8; 256]);
        Builder {
            unit,
            gaps,
            pr,
            empty,
            stx,
            groups: Vec::new(),
            locks: Vec::new(),
            handed: HashSet::new(),
            socket: None,
            messages: Vec::new(),
        }
    }

    fn fd(&self, group: usize) -> &'u FdItem {
        &self.unit.fds[self.groups[group][0]]
    }

    /// Push an `openat(dirfd, path, flags)` step whose result must be an fd, closed again if a
    /// later step fails; returns the step's index (its result is the new fd).
    fn openat(&mut self, what: Desc, dirfd: Arg, path: usize, flags: i32) -> usize {
        let o = self.pr.push(
            what,
            Call::sys(SYS_openat, &[dirfd, Arg::Data(path), int(flags), int(0)]),
            Check::NonNeg,
            None,
        );
        self.pr.ops[o].set_undo(Call::sys(SYS_close, &[Arg::Result(o)]));
        o
    }

    /// Push "dup3 the file opened by step `from` onto `f`'s number, with its close-on-exec";
    /// with `undo_from`, undone by dup3 of that step's file (the saved old description) back.
    fn dup3_onto(&mut self, from: Arg, f: &FdItem, undo_from: Option<Arg>) {
        let dup3 = |src: Arg| {
            let cl = f.flags & O_CLOEXEC;
            Call::sys(SYS_dup3, &[src, int(f.fd), int(cl)])
        };
        self.pr.push(
            on_fd("dup3 onto", f.fd),
            dup3(from),
            Check::Eq(reg(f.fd)),
            undo_from.map(dup3),
        );
    }

    /// `statx` of `fd` and a comparison with `id`: is it still the file the scan saw?
    fn check_file(&mut self, fd: Arg, id: &FileId, what: Desc) {
        let statx_mask = STATX_INO | STATX_MNT_ID;
        let statx_flags = AT_EMPTY_PATH | AT_STATX_DONT_SYNC;
        self.pr.push(
            what,
            Call::sys(
                SYS_statx,
                &[
                    fd,
                    Arg::Data(self.empty),
                    int(statx_flags),
                    Arg::Imm(u64::from(statx_mask)),
                    Arg::Data(self.stx),
                ],
            ),
            Check::NonNeg,
            None,
        );
        self.pr
            .push(what, Call::compare_file(self.stx, id), Check::NonNeg, None);
    }

    /// Plain fcntl(fd, cmd, arg) as a call.
    fn fcntl(fd: Arg, cmd: i32, arg: Arg) -> Call {
        Call::sys(SYS_fcntl, &[fd, int(cmd), arg])
    }

    /// The stub runs with every signal blocked but the trap signal, the thread's mask saved in
    /// the header. Not undone here: the stub restores it after its trap (the tracer, at the
    /// trap), so that the trap is sent with the trap signal unblocked whatever the thread's
    /// own mask is.
    fn block_signals(&mut self, trapsig: i32) {
        let block: u64 = !(1u64 << (trapsig - 1));
        let block_d = self.pr.data(block.to_le_bytes().to_vec());
        self.pr.push(
            step("block signals"),
            Call::sys(
                SYS_rt_sigprocmask,
                &[
                    int(SIG_SETMASK),
                    Arg::Data(block_d),
                    Arg::Header(hdr::ORIG_MASK),
                    int(8),
                ],
            ),
            Check::NonNeg,
            None,
        );
    }

    /// Group the fds by description, a file's groups kept together, and cut the groups into
    /// batches of at most `batch` (a batch never splits a file's fds: closing one drops the
    /// process's POSIX locks on the whole file). Returns the group indices of each batch.
    fn batch_groups(&mut self, batch: usize) -> Vec<Vec<usize>> {
        let unit = self.unit;
        let mut groups: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, f) in unit.fds.iter().enumerate() {
            groups.entry(f.description).or_default().push(i);
        }
        let mut gl: Vec<Vec<usize>> = groups.into_values().collect();
        gl.sort_by_key(|m| {
            let f = &unit.fds[m[0]];
            (f.from.dev, f.from.ino, f.fd)
        });
        let file_of = |g: &Vec<usize>| {
            let f = &unit.fds[g[0]];
            (f.from.dev, f.from.ino)
        };
        let mut batches: Vec<Vec<usize>> = vec![Vec::new()];
        for g in 0..gl.len() {
            let cur = batches.last().map_or(0, Vec::len);
            let same_file = g > 0 && file_of(&gl[g]) == file_of(&gl[g - 1]);
            if cur >= batch.max(1) && !same_file {
                batches.push(Vec::new());
            }
            if let Some(b) = batches.last_mut() {
                b.push(g);
            }
        }
        self.groups = gl;
        batches
    }

    /// For each POSIX lock, the fd (and group) that carries it: one on the same file opened
    /// with an access mode that allows the lock.
    fn find_lock_carriers(&mut self) {
        let unit = self.unit;
        for l in &unit.locks {
            let carrier = self.groups.iter().enumerate().find_map(|(g, members)| {
                members.iter().find_map(|&i| {
                    let f = &unit.fds[i];
                    let a = f.flags & O_ACCMODE;
                    let ok = if l.write {
                        a == O_WRONLY || a == O_RDWR
                    } else {
                        a == O_RDONLY || a == O_RDWR
                    };
                    ((f.from.ino, f.from.dev) == (l.ino, l.dev) && ok).then_some((f.fd, g))
                })
            });
            if let Some((fd, group)) = carrier {
                let take = self.pr.data(flock_bytes(l.write, l.start, l.end));
                let probe = self.pr.data(flock_bytes(l.write, l.start, l.end));
                self.locks.push(LockSlot {
                    fd,
                    group,
                    take,
                    probe,
                    forwarded: l.forwarded,
                });
            }
        }
    }

    /// One batch: the open phase (undoable), then its final part; returns its commit op and
    /// the fds it moves.
    fn batch(&mut self, groups: &[usize], first: bool, last: bool) -> (usize, Vec<i32>) {
        if let Some(sock) = self.socket.filter(|_| !first) {
            // A rollback of this batch stops at the commit before it: close the socket then.
            self.pr.push(
                step("(close the socket to the injector on rollback)"),
                Call::nothing(),
                Check::None,
                Some(Call::sys(SYS_close, &[Arg::Result(sock)])),
            );
        }
        self.retake_locks_on_rollback(groups);
        let (handed, opened): (Vec<usize>, Vec<usize>) =
            groups.iter().partition(|&&g| self.handed_off(g));
        let (handed, handed_spare): (Vec<usize>, Vec<usize>) =
            handed.into_iter().partition(|&g| self.in_place(g));
        let mut ops = BatchOps {
            placeholders: self.fill_gaps(groups),
            dir_ops: self.open_parent_dirs(&opened),
            ..BatchOps::default()
        };
        for &g in &opened {
            self.reopen_group(g, &mut ops);
        }
        if !handed.is_empty() {
            self.receive_groups(handed, &mut ops);
        }
        if !handed_spare.is_empty() {
            self.receive_spares(handed_spare, &mut ops);
        }
        if last {
            for m in &self.unit.maps {
                self.remap(m, &mut ops);
            }
            if let Some(c) = &self.unit.cwd {
                self.move_cwd(c, &mut ops);
            }
        }
        self.final_part(groups, ops, last)
    }

    /// On rollback, re-take the original locks last (closing the file dropped them).
    fn retake_locks_on_rollback(&mut self, groups: &[usize]) {
        for l in self.locks.iter().filter(|l| groups.contains(&l.group)) {
            self.pr.push(
                on_fd("re-take the original lock on", l.fd),
                Call::nothing(),
                Check::None,
                Some(Self::fcntl(int(l.fd), F_SETLK, Arg::Data(l.take))),
            );
        }
    }

    /// Reopened in place: the group's old file is on a filesystem with a quiet close.
    fn in_place(&self, g: usize) -> bool {
        self.gaps.is_some() && !self.fd(g).old_close_costs
    }

    /// Reopening in place needs the fd being reopened to be the lowest free number when the
    /// openat runs: fill the gaps below it first (O_PATH placeholders, whose close costs
    /// nothing), so that every other fd the stub opens lands above. Returns the placeholders.
    fn fill_gaps(&mut self, groups: &[usize]) -> Vec<usize> {
        let mut placeholders = Vec::new();
        let Some(gaps) = self.gaps.filter(|g| !g.is_empty()) else {
            return placeholders;
        };
        if !groups.iter().any(|&g| self.in_place(g)) {
            return placeholders;
        }
        let root = self.pr.data(b"/\0".to_vec());
        let src = self.openat(
            step("open a placeholder for the fd gaps"),
            int(AT_FDCWD),
            root,
            O_PATH | O_CLOEXEC,
        );
        self.pr.push(
            step("the placeholder in the first fd gap (fds changed since the scan?)"),
            Call::compare_result(src, reg(gaps[0])),
            Check::NonNeg,
            None,
        );
        placeholders.push(src);
        for &h in &gaps[1..] {
            let o = self.pr.push(
                step("fill an fd gap"),
                Self::fcntl(Arg::Result(src), F_DUPFD_CLOEXEC, int(h)),
                Check::NonNeg,
                None,
            );
            self.pr.ops[o].set_undo(Call::sys(SYS_close, &[Arg::Result(o)]));
            self.pr.push(
                step("a placeholder in an fd gap (fds changed since the scan?)"),
                Call::compare_result(o, reg(h)),
                Check::NonNeg,
                None,
            );
            placeholders.push(o);
        }
        placeholders
    }

    /// Directories holding two or more of this batch's files are opened once (O_PATH), and
    /// the files relative to them: one path component to walk instead of all.
    fn open_parent_dirs(&mut self, groups: &[usize]) -> HashMap<&'u Path, usize> {
        let mut dir_count: HashMap<&'u Path, usize> = HashMap::new();
        for &g in groups {
            if let Some(d) = self.fd(g).path.parent() {
                *dir_count.entry(d).or_default() += 1;
            }
        }
        let mut dir_ops = HashMap::new();
        for (d, _) in dir_count.into_iter().filter(|(_, n)| *n >= 2) {
            let dp = self.pr.data(cstr(d));
            let o = self.openat(
                step("open a parent directory"),
                int(AT_FDCWD),
                dp,
                O_PATH | O_DIRECTORY | O_CLOEXEC,
            );
            dir_ops.insert(d, o);
        }
        dir_ops
    }

    /// The old description of group `g` is still what the scan saw: same file, flags and
    /// close-on-exec of each fd.
    fn check_old(&mut self, g: usize) {
        let f0 = self.fd(g);
        self.check_file(
            int(f0.fd),
            &f0.from,
            on_fd("check (changed since the scan?) of", f0.fd),
        );
        self.pr.push(
            on_fd("F_GETFL (flags changed since the scan?) of", f0.fd),
            Self::fcntl(int(f0.fd), F_GETFL, int(0)),
            Check::Eq(reg(f0.flags & !O_CLOEXEC)),
            None,
        );
        for &i in &self.groups[g] {
            let f = &self.unit.fds[i];
            self.pr.push(
                on_fd("F_GETFD (close-on-exec changed since the scan?) of", f.fd),
                Self::fcntl(int(f.fd), F_GETFD, int(0)),
                Check::Eq(u64::from(f.flags & O_CLOEXEC != 0)),
                None,
            );
        }
    }

    /// Check group `g`'s old description; returns the op reading its offset (none for a
    /// directory or `O_PATH` fd).
    fn check_old_and_pos(&mut self, g: usize) -> Option<usize> {
        let f0 = self.fd(g);
        self.check_old(g);
        let seekable = f0.flags & O_PATH == 0 && !f0.is_dir();
        seekable.then(|| {
            self.pr.push(
                on_fd("lseek of", f0.fd),
                Call::sys(SYS_lseek, &[int(f0.fd), int(0), int(SEEK_CUR)]),
                Check::NonNeg,
                None,
            )
        })
    }

    /// The new file `new` (for `fd`) at the old offset read by op `pos`, if any.
    fn seek_new(&mut self, new: Arg, pos: Option<usize>, fd: i32) {
        if let Some(pos) = pos {
            self.pr.push(
                on_fd("lseek of the new file for", fd),
                Call::sys(SYS_lseek, &[new, Arg::Result(pos), int(SEEK_SET)]),
                Check::EqResult(pos),
                None,
            );
        }
    }

    /// Keep the old description of `f0` in a new fd and free `f0`'s number, which the openat
    /// then takes; returns the op holding the old description.
    fn free_number(&mut self, f0: &FdItem) -> usize {
        let s = self.save_old(f0);
        self.close_saved(f0, s);
        s
    }

    /// Keep the old description of `f0` in a new fd (closed again on rollback); returns the op
    /// holding it.
    fn save_old(&mut self, f0: &FdItem) -> usize {
        let s = self.pr.push(
            on_fd("F_DUPFD_CLOEXEC of", f0.fd),
            Self::fcntl(int(f0.fd), F_DUPFD_CLOEXEC, int(0)),
            Check::NonNeg,
            None,
        );
        self.pr.ops[s].set_undo(Call::sys(SYS_close, &[Arg::Result(s)]));
        s
    }

    /// Close `f0`'s number; on rollback, the old description kept by op `saved` goes back on
    /// it.
    fn close_saved(&mut self, f0: &FdItem, saved: usize) {
        self.pr.push(
            on_fd("close of", f0.fd),
            Call::sys(SYS_close, &[int(f0.fd)]),
            Check::None,
            Some(Call::sys(
                SYS_dup3,
                &[Arg::Result(saved), int(f0.fd), int(f0.flags & O_CLOEXEC)],
            )),
        );
    }

    /// Nobody else holds a conflicting lock on the new file (op `n`) of group `g`. Not for
    /// locks the old file's server holds: the probe would meet the server's own lock, which
    /// goes only with the old file's last close; the `F_SETLK` after it is the check.
    fn probe_locks(&mut self, g: usize, n: Arg) {
        for l in self.locks.iter().filter(|l| l.group == g && !l.forwarded) {
            self.pr.push(
                on_fd("F_GETLK on the new file for", l.fd),
                Self::fcntl(n, F_GETLK, Arg::Data(l.probe)),
                Check::NonNeg,
                None,
            );
            self.pr.push(
                on_fd("a conflicting lock on the new file for", l.fd),
                Call::compare_data(l.probe, 0, reg(F_UNLCK)),
                Check::NonNeg,
                None,
            );
        }
    }

    /// Group `g` was reopened in place: its new file is on its lowest fd, and the close of its
    /// old fd dropped the process's POSIX locks on the old file (any close does). Take them on
    /// the new file at once, before the point of no return (a conflict rolls the batch back),
    /// so that the lock is free for others only for the open or receive between that close
    /// and this. Through a filesystem that forwards locks (ChaosFS) this is what makes the lock
    /// visible outside again. Not when the new file is the old one (a bind mount of the same
    /// directory): closes still to come would drop them; nor when the group carries no lock.
    /// Returns whether it took any (then no probe is needed). The final part takes them again
    /// (idempotent): a mapping's temporary fd of the same file, closed there, drops them.
    fn take_locks_now(&mut self, g: usize) -> bool {
        let f0 = self.fd(g);
        if (f0.to.dev, f0.to.ino) == (f0.from.dev, f0.from.ino) {
            return false;
        }
        let takes: Vec<usize> = self
            .locks
            .iter()
            .filter(|l| l.group == g)
            .map(|l| l.take)
            .collect();
        for &take in &takes {
            self.pr.push(
                on_fd(TAKE_LOCK_NOW, f0.fd),
                Self::fcntl(int(f0.fd), F_SETLK, Arg::Data(take)),
                Check::NonNeg,
                None,
            );
        }
        !takes.is_empty()
    }

    /// Does group `g` carry a POSIX lock?
    fn carries_lock(&self, g: usize) -> bool {
        self.locks.iter().any(|l| l.group == g)
    }

    /// The injector hands in group `g`'s new file (reopened in place, or through a spare fd).
    fn handed_off(&self, g: usize) -> bool {
        self.handed.contains(&self.fd(g).fd)
    }

    /// Connect to the injector: `socket`, moved above every fd the program counts on (so
    /// that the fd gaps stay as listed), `connect`, and a receive timeout (should the
    /// injector never send, the stub rolls back instead of waiting for ever).
    fn connect(&mut self, addr: &[u8]) {
        let top = self.unit.fds.iter().map(|f| f.fd).max().unwrap_or(0);
        let s0 = self.pr.push(
            step("socket(AF_UNIX) to receive the new files"),
            Call::sys(
                SYS_socket,
                &[int(AF_UNIX), int(SOCK_STREAM | SOCK_CLOEXEC), int(0)],
            ),
            Check::NonNeg,
            None,
        );
        self.pr.ops[s0].set_undo(Call::sys(SYS_close, &[Arg::Result(s0)]));
        let s = self.pr.push(
            step("F_DUPFD_CLOEXEC of the socket"),
            Self::fcntl(Arg::Result(s0), F_DUPFD_CLOEXEC, int(top.saturating_add(1))),
            Check::NonNeg,
            None,
        );
        self.pr.ops[s].set_undo(Call::sys(SYS_close, &[Arg::Result(s)]));
        self.pr.push(
            step("close of the first socket fd"),
            Call::sys(SYS_close, &[Arg::Result(s0)]),
            Check::NonNeg,
            None,
        );
        let a = self.pr.data(addr.to_vec());
        let len = u64::try_from(addr.len()).unwrap_or(0);
        self.pr.push(
            step("connect to the injector"),
            Call::sys(SYS_connect, &[Arg::Result(s), Arg::Data(a), Arg::Imm(len)]),
            Check::NonNeg,
            None,
        );
        let mut tv = Vec::with_capacity(16);
        tv.extend_from_slice(&RECEIVE_TIMEOUT_S.to_le_bytes());
        tv.extend_from_slice(&0u64.to_le_bytes());
        let tv = self.pr.data(tv);
        self.pr.push(
            step("SO_RCVTIMEO on the socket"),
            Call::sys(
                SYS_setsockopt,
                &[
                    Arg::Result(s),
                    int(SOL_SOCKET),
                    int(SO_RCVTIMEO),
                    Arg::Data(tv),
                    int(16),
                ],
            ),
            Check::NonNeg,
            None,
        );
        self.socket = Some(s);
    }

    /// Groups whose new file the injector hands in: check each old description, keep it in
    /// a spare fd and free its number (every number below them is taken: the freed ones are
    /// the lowest free), then receive the new files in one `recvmsg`, which installs them at
    /// the lowest free numbers in order: exactly the freed ones. Then each fd's close-on-exec,
    /// offset, the lock probe, and the other fds of the description. Nothing here waits for
    /// the filesystem of the new file.
    fn receive_groups(&mut self, mut hs: Vec<usize>, ops: &mut BatchOps<'u>) {
        let Some(sock) = self.socket else { return };
        hs.sort_by_key(|&g| self.fd(g).fd);
        let mut kept = Vec::new();
        for &g in &hs {
            let f0 = self.fd(g);
            let pos = self.check_old_and_pos(g);
            let s = self.save_old(f0);
            kept.push((g, pos, s));
        }
        // The locked files' fds last: their locks are free for others from this close to the
        // F_SETLK right after the receive.
        let mut closing: Vec<(usize, usize)> = kept.iter().map(|&(g, _, s)| (g, s)).collect();
        closing.sort_by_key(|&(g, _)| self.carries_lock(g));
        for (g, s) in closing {
            let f0 = self.fd(g);
            self.close_saved(f0, s);
        }
        let fds: Vec<i32> = hs.iter().map(|&g| self.fd(g).fd).collect();
        self.recvmsg(sock, &fds);
        let taken: HashSet<usize> = hs
            .iter()
            .copied()
            .filter(|&g| self.take_locks_now(g))
            .collect();
        let unit = self.unit;
        for (g, pos, s) in kept {
            let f0 = self.fd(g);
            // Its own close-on-exec (whatever the received fd came with).
            let cloexec = if f0.flags & O_CLOEXEC == 0 {
                0
            } else {
                FD_CLOEXEC
            };
            self.pr.push(
                on_fd("F_SETFD of the new file for", f0.fd),
                Self::fcntl(int(f0.fd), F_SETFD, int(cloexec)),
                Check::NonNeg,
                None,
            );
            self.seek_new(int(f0.fd), pos, f0.fd);
            if !taken.contains(&g) {
                self.probe_locks(g, int(f0.fd));
            }
            let others: Vec<&FdItem> = self.groups[g][1..].iter().map(|&i| &unit.fds[i]).collect();
            for f in others {
                self.dup3_onto(int(f0.fd), f, Some(Arg::Result(s)));
            }
            ops.opened.push(Opened::InPlace { saved: s, group: g });
            ops.moved
                .extend(self.groups[g].iter().map(|&i| unit.fds[i].fd));
        }
        self.messages.push(fds);
    }

    /// `recvmsg` of one message carrying `fds.len()` files, checked: one byte, one
    /// `SCM_RIGHTS` header of the right length, and the files installed at `fds` in order.
    fn recvmsg(&mut self, sock: usize, fds: &[i32]) {
        let control = self.recvmsg_any(sock, fds);
        for (i, pair) in fds.chunks(2).enumerate() {
            let lo = u64::from(pair[0].cast_unsigned());
            // (An odd count leaves the -1 the slot after the last file was filled with.)
            let hi = pair
                .get(1)
                .map_or(u64::from(u32::MAX), |&f| u64::from(f.cast_unsigned()));
            self.pr.push(
                on_fd("the new file received at the number of", pair[0]),
                Call::compare_data(control, 16 + 8 * i as u64, lo | (hi << 32)),
                Check::NonNeg,
                None,
            );
        }
    }

    /// `recvmsg` of one message carrying `fds.len()` files (for the descriptions whose lowest
    /// fds are `fds`), wherever the kernel installs them; returns the control buffer, whose
    /// file numbers start at byte 16 (-1 where none came). Each received file is closed on
    /// rollback, also when the message's checks fail.
    fn recvmsg_any(&mut self, sock: usize, fds: &[i32]) -> usize {
        let k = fds.len();
        let space = 16 + (4 * k).div_ceil(8) * 8;
        let buf = self.pr.data(vec![0u8; 8]);
        let iov = self
            .pr
            .data([0u64.to_le_bytes(), 1u64.to_le_bytes()].concat());
        self.pr.pointer(iov, 0, buf);
        // -1 in every file slot, so that an undo meeting a slot the kernel did not fill
        // closes nothing; 8 bytes more, so that loading the last slot as a u64 stays inside.
        let mut buf0 = vec![0u8; space + 8];
        buf0[16..].fill(0xff);
        let control = self.pr.data(buf0);
        let mut hdr = vec![0u8; 56];
        hdr[24..32].copy_from_slice(&1u64.to_le_bytes());
        hdr[40..48].copy_from_slice(&(space as u64).to_le_bytes());
        let msg = self.pr.data(hdr);
        self.pr.pointer(msg, 16, iov);
        self.pr.pointer(msg, 32, control);
        let first = fds.first().copied().unwrap_or(-1);
        self.pr.push(
            on_fd("recvmsg of the new files, from", first),
            Call::sys(
                SYS_recvmsg,
                &[Arg::Result(sock), Arg::Data(msg), int(MSG_CMSG_CLOEXEC)],
            ),
            Check::Eq(1),
            None,
        );
        for (i, &fd) in fds.iter().enumerate() {
            self.pr.push(
                on_fd("(close the received new file on rollback) for", fd),
                Call::nothing(),
                Check::None,
                Some(Call::sys(
                    SYS_close,
                    &[Arg::Load(control, 16 + 4 * i as u64)],
                )),
            );
        }
        let len = 16 + 4 * k as u64;
        self.pr.push(
            on_fd("the SCM_RIGHTS message (length), from", first),
            Call::compare_data(control, 0, len),
            Check::NonNeg,
            None,
        );
        let kind =
            u64::from(SOL_SOCKET.cast_unsigned()) | (u64::from(SCM_RIGHTS.cast_unsigned()) << 32);
        self.pr.push(
            on_fd("the SCM_RIGHTS message (type), from", first),
            Call::compare_data(control, 8, kind),
            Check::NonNeg,
            None,
        );
        control
    }

    /// Groups reopened through spare fds whose new file the injector hands in (recover from
    /// ChaosFS): check each old description and read its offset, receive the new files in one
    /// `recvmsg` (at any free numbers), then check each against the scan's resolve, set its
    /// offset and probe its locks, as an `openat` in the stub would have been. The final part
    /// puts them on the fds.
    fn receive_spares(&mut self, mut hs: Vec<usize>, ops: &mut BatchOps<'u>) {
        let Some(sock) = self.socket else { return };
        hs.sort_by_key(|&g| self.fd(g).fd);
        let pos: Vec<Option<usize>> = hs.iter().map(|&g| self.check_old_and_pos(g)).collect();
        let fds: Vec<i32> = hs.iter().map(|&g| self.fd(g).fd).collect();
        let control = self.recvmsg_any(sock, &fds);
        let unit = self.unit;
        for (i, (g, pos)) in hs.into_iter().zip(pos).enumerate() {
            let f0 = self.fd(g);
            let new = Arg::Load(control, 16 + 4 * i as u64);
            self.check_file(new, &f0.to, on_fd("check of the handed-in file for", f0.fd));
            self.seek_new(new, pos, f0.fd);
            self.probe_locks(g, new);
            ops.opened.push(Opened::Spare { new, group: g });
            ops.moved
                .extend(self.groups[g].iter().map(|&i| unit.fds[i].fd));
        }
        self.messages.push(fds);
    }

    /// Check group `g`'s old description, open its file again through the new mount with the
    /// same flags and offset, and check that.
    fn reopen_group(&mut self, g: usize, ops: &mut BatchOps<'u>) {
        let f0 = self.fd(g);
        let pos = self.check_old_and_pos(g);
        // Open the new one: same flags, through the mount now on top.
        let (dirfd, path) = match (f0.path.parent(), f0.path.file_name()) {
            (Some(d), Some(name)) if ops.dir_ops.contains_key(d) => (
                Arg::Result(ops.dir_ops[d]),
                self.pr.data(cstr(Path::new(name))),
            ),
            _ => (int(AT_FDCWD), self.pr.data(cstr(&f0.path))),
        };
        let base = f0.flags & !(O_CLOEXEC | O_CREAT | O_EXCL | O_TRUNC | O_NOCTTY);
        let saved = self.in_place(g).then(|| self.free_number(f0));
        let oflags = if saved.is_some() {
            base | (f0.flags & O_CLOEXEC)
        } else {
            base | O_CLOEXEC
        };
        let n = self.openat(
            on_fd("openat through the new mount for", f0.fd),
            dirfd,
            path,
            oflags,
        );
        let mut taken = false;
        if saved.is_some() {
            self.pr.push(
                on_fd(
                    "the new file at the number of (fds changed since the scan?)",
                    f0.fd,
                ),
                Call::compare_result(n, reg(f0.fd)),
                Check::NonNeg,
                None,
            );
            taken = self.take_locks_now(g);
        }
        self.check_file(
            Arg::Result(n),
            &f0.to,
            on_fd("check of the new file for", f0.fd),
        );
        self.seek_new(Arg::Result(n), pos, f0.fd);
        if !taken {
            self.probe_locks(g, Arg::Result(n));
        }
        let unit = self.unit;
        match saved {
            Some(s) => {
                // The other fds of the description: onto the new file now (undoable).
                let others: Vec<&FdItem> =
                    self.groups[g][1..].iter().map(|&i| &unit.fds[i]).collect();
                for f in others {
                    self.dup3_onto(Arg::Result(n), f, Some(Arg::Result(s)));
                }
                ops.opened.push(Opened::InPlace { saved: s, group: g });
            }
            None => ops.opened.push(Opened::Spare {
                new: Arg::Result(n),
                group: g,
            }),
        }
        ops.moved
            .extend(self.groups[g].iter().map(|&i| unit.fds[i].fd));
    }

    /// A shared mapping: map the new file, park the old mapping in a reserved range, move the
    /// new one to its address (the old one is unmapped in the final part).
    fn remap(&mut self, m: &MapItem, ops: &mut BatchOps<'u>) {
        let p = m.perms.as_bytes();
        let writable = p.get(1) == Some(&b'w');
        let mut prot = 0;
        if p.first() == Some(&b'r') {
            prot |= PROT_READ;
        }
        if writable {
            prot |= PROT_WRITE;
        }
        if p.get(2) == Some(&b'x') {
            prot |= PROT_EXEC;
        }
        let path = self.pr.data(cstr(&m.path));
        // A read-only mapping is never reopened for writing.
        let acc = if writable { O_RDWR } else { O_RDONLY };
        let fd = self.openat(
            on_map("openat through the new mount for", m.start),
            int(AT_FDCWD),
            path,
            acc | O_CLOEXEC,
        );
        self.check_file(
            Arg::Result(fd),
            &m.to,
            on_map("check of the new file for", m.start),
        );
        let len = m.end - m.start;
        let trial = self.mmap(
            on_map("mmap of the new file for", m.start),
            len,
            prot,
            MAP_SHARED,
            (Arg::Result(fd), Arg::Imm(m.offset)),
        );
        let park = self.mmap(
            on_map("reserving space to park", m.start),
            len,
            PROT_NONE,
            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
            (int(-1), int(0)),
        );
        let mremap = |from: Arg, to: Arg| {
            Call::sys(
                SYS_mremap,
                &[
                    from,
                    Arg::Imm(len),
                    Arg::Imm(len),
                    int(MREMAP_MAYMOVE | MREMAP_FIXED),
                    to,
                ],
            )
        };
        let at = Arg::Imm(m.start);
        self.pr.push(
            on_map("parking", m.start),
            mremap(at, Arg::Result(park)),
            Check::EqResult(park),
            Some(mremap(Arg::Result(park), at)),
        );
        self.pr.push(
            on_map("moving the new mapping to", m.start),
            mremap(Arg::Result(trial), at),
            Check::Eq(m.start),
            Some(mremap(at, Arg::Result(trial))),
        );
        ops.parks.push((park, len));
        ops.temps.push(fd);
    }

    /// Push an `mmap(NULL, len, prot, flags, fd, offset)` step (`file`: fd and offset),
    /// unmapped again if a later step fails; returns the step (its result is the address).
    fn mmap(&mut self, what: Desc, len: u64, prot: i32, flags: i32, file: (Arg, Arg)) -> usize {
        let m = self.pr.push(
            what,
            Call::sys(
                SYS_mmap,
                &[int(0), Arg::Imm(len), int(prot), int(flags), file.0, file.1],
            ),
            Check::NonNeg,
            None,
        );
        self.pr.ops[m].set_undo(Call::sys(SYS_munmap, &[Arg::Result(m), Arg::Imm(len)]));
        m
    }

    /// The cwd: open the current one (to go back on rollback) and the new one, `fchdir`.
    fn move_cwd(&mut self, c: &CwdItem, ops: &mut BatchOps<'u>) {
        let dot = self.pr.data(b".\0".to_vec());
        let dflags = O_PATH | O_DIRECTORY | O_CLOEXEC;
        let saved_cwd = self.openat(step("open the current cwd"), int(AT_FDCWD), dot, dflags);
        self.check_file(
            Arg::Result(saved_cwd),
            &c.from,
            step("check of the cwd (changed since the scan?)"),
        );
        let path = self.pr.data(cstr(&c.path));
        let new_cwd = self.openat(
            step("openat through the new mount for the cwd"),
            int(AT_FDCWD),
            path,
            dflags,
        );
        self.check_file(Arg::Result(new_cwd), &c.to, step("check of the new cwd"));
        self.pr.push(
            step("fchdir to the new cwd"),
            Call::sys(SYS_fchdir, &[Arg::Result(new_cwd)]),
            Check::NonNeg,
            Some(Call::sys(SYS_fchdir, &[Arg::Result(saved_cwd)])),
        );
        ops.temps.push(saved_cwd);
        ops.temps.push(new_cwd);
    }

    /// Point of no return for this batch: every new file is open and checked. Put each on
    /// its fds (dup3 closes the old description: one close per fd, and on FUSE one FLUSH
    /// round trip each, the fewest possible) and close the spare, drop the temporaries,
    /// then re-take the locks (closing any fd of a file drops the process's POSIX locks on
    /// it). dup3 onto an open fd from an fd we opened cannot fail while every thread
    /// sharing the table is stopped (EBUSY needs an open racing in another thread).
    fn final_part(&mut self, groups: &[usize], ops: BatchOps<'u>, last: bool) -> (usize, Vec<i32>) {
        self.pr.begin_final();
        let close = |what: Desc, fd: Arg| (what, Call::sys(SYS_close, &[fd]));
        // The groups of locked files last, so that their locks are re-taken right after the
        // closes that drop them (on a lock-forwarding filesystem, the FLUSH of the first old
        // fd makes the server let go of the process's lock).
        let locked: HashSet<(u32, u32, u64)> = self
            .locks
            .iter()
            .map(|l| {
                let f = self.fd(l.group);
                (f.from.dev.0, f.from.dev.1, f.from.ino)
            })
            .collect();
        let mut opened = ops.opened;
        opened.sort_by_key(|o| {
            let (Opened::Spare { group, .. } | Opened::InPlace { group, .. }) = *o;
            let f = self.fd(group);
            locked.contains(&(f.from.dev.0, f.from.dev.1, f.from.ino))
        });
        for o in opened {
            match o {
                Opened::Spare { new, group } => {
                    let unit = self.unit;
                    let fds: Vec<&FdItem> =
                        self.groups[group].iter().map(|&i| &unit.fds[i]).collect();
                    for f in fds {
                        self.dup3_onto(new, f, None);
                    }
                    let (what, call) = close(
                        on_fd("close of the spare new file for", self.fd(group).fd),
                        new,
                    );
                    self.pr.push(what, call, Check::None, None);
                }
                Opened::InPlace { saved, .. } => {
                    let (what, call) =
                        close(step("close a kept old description"), Arg::Result(saved));
                    self.pr.push(what, call, Check::None, None);
                }
            }
        }
        for fd in ops
            .temps
            .into_iter()
            .chain(ops.dir_ops.into_values())
            .chain(ops.placeholders)
        {
            let (what, call) = close(step("close a temporary fd"), Arg::Result(fd));
            self.pr.push(what, call, Check::None, None);
        }
        for (park, len) in ops.parks {
            self.pr.push(
                step("unmap a parked old mapping"),
                Call::sys(SYS_munmap, &[Arg::Result(park), Arg::Imm(len)]),
                Check::NonNeg,
                None,
            );
        }
        for l in self.locks.iter().filter(|l| groups.contains(&l.group)) {
            self.pr.push(
                on_fd("take the POSIX lock again on", l.fd),
                Self::fcntl(int(l.fd), F_SETLK, Arg::Data(l.take)),
                Check::NonNeg,
                None,
            );
        }
        if last {
            if let Some(sock) = self.socket {
                let (what, call) =
                    close(step("close the socket to the injector"), Arg::Result(sock));
                self.pr.push(what, call, Check::None, None);
            }
            (usize::MAX, ops.moved)
        } else {
            self.pr.end_final();
            let c = self
                .pr
                .push(step("commit a batch"), Call::commit(), Check::None, None);
            (c, ops.moved)
        }
    }
}
