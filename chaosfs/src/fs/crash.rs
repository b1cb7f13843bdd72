//! Crash mode (docs/crash.md): an undo log that can roll every file back to its last durable
//! state.
//!
//! Before the first change of a byte range of a file since its last durable point, the bytes
//! it will destroy are copied into a memfd of the server (outside the target's view), and the
//! file's size at that point is kept. An `fsync`/`fdatasync` of the file makes it durable: its
//! undo state is dropped (and the memfd space punched out). A write through an `O_SYNC` /
//! `O_DSYNC` fd is durable at once: its range leaves the undo state. A crash puts the saved
//! bytes back and truncates each file to its durable size; from then on every change is
//! refused with EIO (the target is dead; nothing may land after the rollback).
//!
//! Only bytes below the durable size are ever saved: whatever lies above it is cut off by the
//! truncation, so appending costs no copy at all. Each byte is saved once per durable point.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use super::FsInner;
use super::handle::{Handle, HandleKind};
use super::inode::Inode;
use crate::fuse::{Errno, Reply};
use crate::rules::{CrashWhen, Verdict};
use crate::sys;

/// What a change may destroy of a file's current bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Touch {
    /// Bytes `[offset, offset + len)` (a write, a hole punched).
    Range(u64, u64),
    /// Everything from `offset` on (a truncation, a collapsed or inserted range).
    From(u64),
    /// Bytes `[offset, offset + len)` replaced by data (a write, a `copy_file_range`): the
    /// unit that a torn or reordered crash keeps or cuts.
    Write(u64, u64),
}

impl Touch {
    fn end(self) -> u64 {
        match self {
            Touch::Range(o, l) | Touch::Write(o, l) => o.saturating_add(l),
            Touch::From(_) => u64::MAX,
        }
    }

    fn start(self) -> u64 {
        match self {
            Touch::Range(o, _) | Touch::Write(o, _) | Touch::From(o) => o,
        }
    }
}

/// One saved range of a file: `len` bytes that were at the file offset it is keyed by.
#[derive(Debug, Clone, Copy)]
struct Saved {
    len: u64,
    /// Where the old bytes are in the store; `None`: they were zeros (a gap that an
    /// `O_DSYNC` write past the durable size made durable).
    at: Option<u64>,
}

/// The undo state of one file since its last durable point.
struct FileUndo {
    inode: Arc<Inode>,
    /// Read-write fd of the file (the handles' own may be write-only or `O_APPEND`).
    fd: OwnedFd,
    /// Size at the last durable point.
    durable_size: u64,
    /// Saved ranges by file offset; they never overlap.
    saved: BTreeMap<u64, Saved>,
    /// Every change since the durable point, in order (what a torn or reordered crash
    /// replays): 32 bytes per change, dropped with the saved ranges.
    log: Vec<Logged>,
}

/// One change of a file since its last durable point.
#[derive(Debug, Clone, Copy)]
struct Logged {
    touch: Touch,
    /// Durable once made (an `O_SYNC`/`O_DSYNC` write): never dropped, never a candidate.
    sync: bool,
}

/// How a crash treats the unsynced writes (docs/crash.md, "Torn and reordered writes").
/// The default loses every one of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CrashOptions {
    /// The last `torn` unsynced writes of each file survive up to a 512 B sector boundary
    /// the seed chooses; the writes before them survive whole (unless `reorder`).
    pub torn: u32,
    /// Each unsynced write (but the torn ones) survives or not as the seed chooses.
    pub reorder: bool,
    /// Seed of those choices.
    pub seed: u64,
}

impl CrashOptions {
    /// Whether any unsynced write may survive.
    fn keeps_any(self) -> bool {
        self.torn > 0 || self.reorder
    }

    /// A random value for unsynced write `i` of a file (0-based, in write order).
    fn draw(self, i: usize, purpose: u64) -> u64 {
        let i = u64::try_from(i).unwrap_or(u64::MAX);
        crate::rules::mix(self.seed ^ crate::rules::mix(i.wrapping_mul(4) | purpose))
    }

    /// How many bytes of unsynced write `i` of `n`, `[off, off + len)`, survive.
    fn kept(self, i: usize, n: usize, off: u64, len: u64) -> u64 {
        let torn = usize::try_from(self.torn).unwrap_or(usize::MAX);
        if i + torn >= n {
            // Cut at a sector boundary strictly inside the write; none inside: a sector is
            // written whole or not at all, and this one is not.
            let first = (off / SECTOR + 1) * SECTOR;
            let last = (off + len).saturating_sub(1) / SECTOR * SECTOR;
            if first > last {
                return 0;
            }
            let cuts = (last - first) / SECTOR + 1;
            return first + self.draw(i, 1) % cuts * SECTOR - off;
        }
        if self.reorder {
            return if self.draw(i, 2) & 1 == 1 { len } else { 0 };
        }
        len
    }
}

/// The unit a torn write is cut at.
const SECTOR: u64 = 512;

/// What a torn or reordered crash did with one unsynced write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteFate {
    /// Where the write was, in the file.
    pub offset: u64,
    pub len: u64,
    /// Bytes from `offset` on that survived: `len` whole, 0 lost, else torn at
    /// `offset + kept` (a multiple of 512).
    pub kept: u64,
}

/// What a crash did to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashedFile {
    /// Path relative to the mount root.
    pub path: std::path::PathBuf,
    /// Size when the power was cut.
    pub size_at_crash: u64,
    /// Size after the rollback (at its last durable point).
    pub durable_size: u64,
    /// Bytes put back where they had been overwritten, punched or truncated away.
    pub restored_bytes: u64,
    /// Byte positions whose content the crash took back: `restored_bytes` plus what lay past
    /// the durable size, less `kept_bytes`.
    pub dropped_bytes: u64,
    /// Bytes of unsynced writes written back after the rollback (torn or reordered crash).
    pub kept_bytes: u64,
    /// Every unsynced write in order and what survived of it (torn or reordered crash only).
    pub writes: Vec<WriteFate>,
}

/// One file's undo state, shared by the requests changing it.
type Shared = Arc<Mutex<FileUndo>>;

/// The memfd holding saved bytes, allocated at increasing offsets (a sparse file: space of
/// dropped ranges is punched out).
struct Store {
    fd: OwnedFd,
    next: u64,
}

/// What kills the target when a `crash` rule cuts the power ([`CrashLog::on_power_cut`]).
type Kill = Box<dyn Fn() + Send + Sync>;

/// The undo log of a crash-mode server.
#[derive(Default)]
pub(crate) struct CrashLog {
    /// Shared while a change is saved and made; exclusive while a crash rolls back. True once
    /// the crash happened: changes are refused from then on.
    gate: RwLock<bool>,
    files: Mutex<HashMap<(u64, u64), Shared>>,
    /// Files kept when the next prune of unlinked ones runs ([`CrashLog::file`]).
    prune_at: AtomicUsize,
    store: Mutex<Option<Store>>,
    /// A `crash` rule cut the power.
    cut: AtomicBool,
    /// Sends SIGKILL to every process of the target (set by whoever serves the mount).
    kill: OnceLock<Kill>,
    /// What every rollback so far dropped, per file.
    report: Mutex<Vec<(Arc<Inode>, CrashedFile)>>,
}

/// Files with undo state below which unlinked ones are not looked for.
const PRUNE_MIN: usize = 64;

/// Whether the file of `fd` has no name left (unlinked: names are not modelled, so its bytes
/// can never be seen again and need no rollback).
fn unlinked(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    sys::file::fstat(fd).is_ok_and(|st| st.st_nlink == 0)
}

/// Drop the undo state of unlinked files (a rollback journal is a new file per transaction:
/// without this every one would keep its fd until the crash). Entries busy right now stay.
fn prune_unlinked(files: &mut HashMap<(u64, u64), Shared>) {
    files.retain(|_, f| f.try_lock().map_or(true, |f| !unlinked(f.fd.as_fd())));
}

fn eio<T>(_: T) -> Errno {
    Errno::EIO
}

fn io_errno(e: &io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::EIO, Errno::from_i32)
}

impl CrashLog {
    /// Run `change` (which may destroy `touch` of `inode`'s bytes) after saving what it
    /// destroys; `sync`: the change is durable once made (an `O_SYNC`/`O_DSYNC` write).
    /// `open` gives a read-write fd of the file the first time it is touched.
    pub(crate) fn guard<T>(
        &self,
        inode: &Arc<Inode>,
        touch: Touch,
        sync: bool,
        open: impl FnOnce() -> io::Result<OwnedFd>,
        change: impl FnOnce() -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        let gate = self.gate.read().map_err(eio)?;
        if *gate {
            return Err(Errno::EIO);
        }
        let file = self.file(inode, open)?;
        let mut f = file.lock().map_err(eio)?;
        self.save(&mut f, touch)?;
        let r = change()?;
        if sync {
            self.synced(&mut f, touch);
        }
        if touch.end() > touch.start() {
            f.log.push(Logged { touch, sync });
        }
        Ok(r)
    }

    /// The undo state of `inode`, made (with its size now as the durable size) if it has none.
    fn file(
        &self,
        inode: &Arc<Inode>,
        open: impl FnOnce() -> io::Result<OwnedFd>,
    ) -> Result<Shared, Errno> {
        let mut files = self.files.lock().map_err(eio)?;
        if let Some(f) = files.get(&(inode.dev, inode.ino)) {
            return Ok(f.clone());
        }
        if files.len() >= self.prune_at.load(Ordering::Relaxed) {
            prune_unlinked(&mut files);
            self.prune_at
                .store((files.len() * 2).max(PRUNE_MIN), Ordering::Relaxed);
        }
        let fd = open().map_err(|e| io_errno(&e))?;
        let st = sys::file::fstat(fd.as_fd()).map_err(|e| io_errno(&e))?;
        let f = Arc::new(Mutex::new(FileUndo {
            inode: inode.clone(),
            fd,
            durable_size: super::stat_u64(st.st_size),
            saved: BTreeMap::new(),
            log: Vec::new(),
        }));
        files.insert((inode.dev, inode.ino), f.clone());
        Ok(f)
    }

    /// Save the bytes of `touch` below the durable size that no saved range holds yet.
    fn save(&self, f: &mut FileUndo, touch: Touch) -> Result<(), Errno> {
        let end = touch.end().min(f.durable_size);
        let mut pos = touch.start();
        let mut gaps = Vec::new();
        // The saved range that starts before `pos` may cover it.
        if let Some((&s, r)) = f.saved.range(..=pos).next_back() {
            pos = pos.max(s + r.len);
        }
        if pos >= end {
            return Ok(());
        }
        for (&s, r) in f.saved.range(pos..end) {
            if s > pos {
                gaps.push((pos, s - pos));
            }
            pos = pos.max(s + r.len);
        }
        if pos < end {
            gaps.push((pos, end - pos));
        }
        for (off, len) in gaps {
            let at = self.copy_out(f.fd.as_fd(), off, len)?;
            f.saved.insert(off, Saved { len, at: Some(at) });
        }
        Ok(())
    }

    /// Copy `len` bytes at `off` of `fd` into the store; where they are.
    fn copy_out(&self, fd: std::os::fd::BorrowedFd<'_>, off: u64, len: u64) -> Result<u64, Errno> {
        let mut store = self.store.lock().map_err(eio)?;
        if store.is_none() {
            let fd = sys::file::memfd(c"iochaos-crash-undo").map_err(|e| io_errno(&e))?;
            *store = Some(Store { fd, next: 0 });
        }
        let Some(st) = store.as_mut() else {
            return Err(Errno::EIO);
        };
        let at = st.next;
        let mut buf = vec![0u8; usize::try_from(len.min(1 << 20)).unwrap_or(1 << 20)];
        let mut done = 0u64;
        while done < len {
            let want = usize::try_from((len - done).min(buf.len() as u64)).unwrap_or(buf.len());
            let n = sys::file::pread(fd, &mut buf[..want], off + done).map_err(|e| io_errno(&e))?;
            // Past the end of the file (a size above what the file holds): zeros.
            if n < want {
                buf[n..want].fill(0);
            }
            write_all(st.fd.as_fd(), &buf[..want], at + done)?;
            done += want as u64;
        }
        st.next = at + len;
        Ok(at)
    }

    /// `touch` was made durable (an `O_SYNC`/`O_DSYNC` write): its bytes leave the undo state,
    /// and the durable size grows to its end (what lies between the old durable size and it is
    /// zeros after a crash: unsynced data there is lost).
    fn synced(&self, f: &mut FileUndo, touch: Touch) {
        let (Touch::Range(off, len) | Touch::Write(off, len)) = touch else {
            return;
        };
        let end = off.saturating_add(len);
        let mut freed = Vec::new();
        let starts: Vec<u64> = f
            .saved
            .range(..end)
            .filter(|(s, r)| *s + r.len > off)
            .map(|(s, _)| *s)
            .collect();
        for s in starts {
            let Some(r) = f.saved.remove(&s) else {
                continue;
            };
            // Keep the parts outside [off, end).
            if s < off {
                f.saved.insert(
                    s,
                    Saved {
                        len: off - s,
                        at: r.at,
                    },
                );
            }
            let r_end = s + r.len;
            if r_end > end {
                f.saved.insert(
                    end,
                    Saved {
                        len: r_end - end,
                        at: r.at.map(|a| a + (end - s)),
                    },
                );
            }
            if let Some(a) = r.at {
                let lo = s.max(off);
                let hi = r_end.min(end);
                freed.push((a + (lo - s), hi - lo));
            }
        }
        if end > f.durable_size {
            if off > f.durable_size {
                f.saved.insert(
                    f.durable_size,
                    Saved {
                        len: off - f.durable_size,
                        at: None,
                    },
                );
            }
            f.durable_size = end;
        }
        self.free(&freed);
    }

    /// An `fsync`/`fdatasync` of `inode` returned success: it is durable as it is now (unless
    /// the power went meanwhile).
    pub(crate) fn durable(&self, inode: &Inode) {
        let Ok(gate) = self.gate.read() else { return };
        if *gate {
            return;
        }
        let key = (inode.dev, inode.ino);
        let Some(file) = self.files.lock().ok().and_then(|m| m.get(&key).cloned()) else {
            return;
        };
        let Ok(mut f) = file.lock() else { return };
        // The file's fd and entry stay for its next durable period (no reopen, no lookup);
        // only its saved ranges go, and its size now is the new durable size.
        match sys::file::fstat(f.fd.as_fd()) {
            Ok(st) => f.durable_size = super::stat_u64(st.st_size),
            Err(e) => {
                tracing::debug!("crash undo: fstat after fsync: {e}");
                if let Ok(mut m) = self.files.lock() {
                    m.remove(&key);
                }
            }
        }
        let saved = std::mem::take(&mut f.saved);
        f.log = Vec::new();
        // Ranges saved one after the other sit side by side in the store: one punch each run.
        let mut freed: Vec<(u64, u64)> = Vec::new();
        let mut at: Vec<(u64, u64)> = saved
            .values()
            .filter_map(|r| r.at.map(|a| (a, r.len)))
            .collect();
        at.sort_unstable();
        for (a, len) in at {
            match freed.last_mut() {
                Some((b, l)) if *b + *l == a => *l += len,
                _ => freed.push((a, len)),
            }
        }
        self.free(&freed);
    }

    /// Give the store space of `ranges` back (punch holes in the memfd).
    fn free(&self, ranges: &[(u64, u64)]) {
        let Ok(store) = self.store.lock() else { return };
        let Some(st) = store.as_ref() else { return };
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        for &(at, len) in ranges {
            if let Err(e) = sys::file::fallocate(st.fd.as_fd(), mode, at, len) {
                tracing::debug!("crash undo store: punching {len} bytes at {at}: {e}");
            }
        }
    }

    /// A `crash` rule fired: close the gate (every later change fails with EIO, an fsync
    /// returning now makes nothing durable) and kill the target, once. The rollback follows
    /// ([`CrashLog::crash`]).
    fn cut(&self) {
        if self.cut.swap(true, Ordering::AcqRel) {
            return;
        }
        match self.gate.write() {
            Ok(mut g) => *g = true,
            Err(p) => *p.into_inner() = true,
        }
        tracing::info!("crash rule fired: power cut");
        if let Some(kill) = self.kill.get() {
            kill();
        }
    }

    /// What kills the target when a `crash` rule fires (run at once if one already did).
    pub(crate) fn on_power_cut(&self, kill: Kill) {
        if self.kill.set(kill).is_ok()
            && self.cut.load(Ordering::Acquire)
            && let Some(kill) = self.kill.get()
        {
            kill();
        }
    }

    /// Cut the power: refuse every later change, then roll every file back to its durable
    /// state (saved bytes back in place, size cut to the durable size). What each file lost
    /// is added to the report. `opts`: which unsynced writes survive after all.
    pub(crate) fn crash(&self, opts: CrashOptions) {
        let mut gate = match self.gate.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *gate = true;
        let files: Vec<Shared> = match self.files.lock() {
            Ok(mut m) => m.drain().map(|(_, f)| f).collect(),
            Err(_) => Vec::new(),
        };
        let mut out = Vec::new();
        for file in files {
            let Ok(f) = file.lock() else { continue };
            if unlinked(f.fd.as_fd()) {
                continue;
            }
            match self.roll_back(&f, opts) {
                Ok(c) => out.push((f.inode.clone(), c)),
                Err(e) => tracing::warn!(
                    ino = f.inode.ino,
                    "crash: rolling the file back failed: {e:?}"
                ),
            }
        }
        match self.report.lock() {
            Ok(mut r) => r.extend(out),
            Err(p) => p.into_inner().extend(out),
        }
    }

    /// What every rollback so far dropped, with `path` naming each file, sorted by path.
    fn report(&self, path: impl Fn(&Inode) -> std::path::PathBuf) -> Vec<CrashedFile> {
        let Ok(r) = self.report.lock() else {
            return Vec::new();
        };
        let mut out: Vec<CrashedFile> = r
            .iter()
            .map(|(inode, c)| CrashedFile {
                path: path(inode),
                ..c.clone()
            })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    /// A `crash` rule fired: cut the power (kill the target) and roll back.
    fn power_cut(&self, opts: CrashOptions) {
        self.cut();
        self.crash(opts);
    }

    fn roll_back(&self, f: &FileUndo, opts: CrashOptions) -> Result<CrashedFile, Errno> {
        let size_at_crash = sys::file::fstat(f.fd.as_fd())
            .map(|st| super::stat_u64(st.st_size))
            .map_err(|e| io_errno(&e))?;
        // The surviving bytes are read before the rollback puts the old ones back.
        let (writes, pieces) = if opts.keeps_any() {
            survivors(f, opts, size_at_crash)?
        } else {
            (Vec::new(), Vec::new())
        };
        let store = self.store.lock().map_err(eio)?;
        let mut restored = 0u64;
        let mut buf = Vec::new();
        for (&off, r) in f.saved.iter().rev() {
            let len = usize::try_from(r.len).map_err(eio)?;
            buf.clear();
            buf.resize(len, 0);
            if let (Some(at), Some(st)) = (r.at, store.as_ref()) {
                let n = sys::file::pread(st.fd.as_fd(), &mut buf, at).map_err(|e| io_errno(&e))?;
                if n < len {
                    return Err(Errno::EIO);
                }
            }
            write_all(f.fd.as_fd(), &buf, off)?;
            restored += r.len;
        }
        sys::file::ftruncate(f.fd.as_fd(), f.durable_size).map_err(|e| io_errno(&e))?;
        let mut kept = 0u64;
        for (off, data) in &pieces {
            write_all(f.fd.as_fd(), data, *off)?;
            kept += data.len() as u64;
        }
        let dropped = restored + size_at_crash.saturating_sub(f.durable_size);
        Ok(CrashedFile {
            path: std::path::PathBuf::new(),
            size_at_crash,
            durable_size: f.durable_size,
            restored_bytes: restored,
            dropped_bytes: dropped.saturating_sub(kept),
            kept_bytes: kept,
            writes,
        })
    }

    /// Drop every file's undo state (crash mode turned off, or a plain recover: everything
    /// written is kept).
    pub(crate) fn clear(&self) {
        if self.cut.load(Ordering::Acquire) {
            return;
        }
        let files: Vec<Shared> = match self.files.lock() {
            Ok(mut m) => m.drain().map(|(_, f)| f).collect(),
            Err(_) => return,
        };
        drop(files);
        if let Ok(mut store) = self.store.lock() {
            *store = None;
        }
    }

    /// Bytes of undo state kept now (saved ranges not yet dropped), for status and benches.
    pub(crate) fn saved_bytes(&self) -> u64 {
        let Ok(files) = self.files.lock() else {
            return 0;
        };
        files
            .values()
            .filter_map(|f| {
                f.lock()
                    .ok()
                    .map(|f| f.saved.values().map(|r| r.len).sum::<u64>())
            })
            .sum()
    }
}

/// Bytes to write back after a rollback, by file offset.
type Pieces = Vec<(u64, Vec<u8>)>;

/// A torn or reordered crash of `f` (its size now `size`): what became of each unsynced
/// write, and the bytes to write back after the rollback, read now. A byte belongs to the
/// last change that covered it (later wins): a kept write gives back only the bytes no later
/// change (write, truncation, hole) touched, and a sync write's are durable already.
fn survivors(
    f: &FileUndo,
    opts: CrashOptions,
    size: u64,
) -> Result<(Vec<WriteFate>, Pieces), Errno> {
    let n = f
        .log
        .iter()
        .filter(|l| !l.sync && matches!(l.touch, Touch::Write(..)))
        .count();
    let mut fates = Vec::with_capacity(n);
    let mut pieces = Vec::new();
    // Ranges of later changes, start -> end, disjoint.
    let mut later: BTreeMap<u64, u64> = BTreeMap::new();
    let mut i = n;
    for l in f.log.iter().rev() {
        if let (Touch::Write(off, len), false) = (l.touch, l.sync) {
            i -= 1;
            let kept = opts.kept(i, n, off, len);
            fates.push(WriteFate {
                offset: off,
                len,
                kept,
            });
            for (a, b) in uncovered(&later, off, (off + kept).min(size)) {
                let mut buf = vec![0u8; usize::try_from(b - a).map_err(eio)?];
                let got = sys::file::pread(f.fd.as_fd(), &mut buf, a).map_err(|e| io_errno(&e))?;
                buf.truncate(got);
                pieces.push((a, buf));
            }
        }
        cover(&mut later, l.touch.start(), l.touch.end());
    }
    fates.reverse();
    Ok((fates, pieces))
}

/// The parts of `[a, b)` outside every range of `cov`.
fn uncovered(cov: &BTreeMap<u64, u64>, a: u64, b: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    if a >= b {
        return out;
    }
    let mut pos = a;
    if let Some((_, &e)) = cov.range(..=a).next_back() {
        pos = pos.max(e);
    }
    for (&s, &e) in cov.range(a..b) {
        if pos >= b {
            break;
        }
        if s > pos {
            out.push((pos, s));
        }
        pos = pos.max(e);
    }
    if pos < b {
        out.push((pos, b));
    }
    out
}

/// Add `[a, b)` to `cov`, merging what it overlaps or touches.
fn cover(cov: &mut BTreeMap<u64, u64>, a: u64, b: u64) {
    if a >= b {
        return;
    }
    let (mut lo, mut hi) = (a, b);
    if let Some((&s, &e)) = cov.range(..=a).next_back()
        && e >= a
    {
        lo = s;
        hi = hi.max(e);
    }
    let inner: Vec<u64> = cov.range(lo..=hi).map(|(&s, _)| s).collect();
    for s in inner {
        if let Some(e) = cov.remove(&s) {
            hi = hi.max(e);
        }
    }
    cov.insert(lo, hi);
}

fn write_all(fd: std::os::fd::BorrowedFd<'_>, mut buf: &[u8], mut off: u64) -> Result<(), Errno> {
    while !buf.is_empty() {
        let n = sys::file::pwrite(fd, buf, off).map_err(|e| io_errno(&e))?;
        if n == 0 {
            return Err(Errno::EIO);
        }
        buf = &buf[n..];
        off += n as u64;
    }
    Ok(())
}

impl FsInner {
    /// Make a change of `inode` that may destroy `touch` of its bytes: in crash mode through
    /// the undo log ([`CrashLog::guard`]), else as is. `sync`: durable once made.
    pub(crate) fn changing<T>(
        &self,
        inode: &Arc<Inode>,
        touch: Touch,
        sync: bool,
        change: impl FnOnce() -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        if !self.crash_mode() {
            return change();
        }
        let open = || self.reopen(inode, libc::O_RDWR | libc::O_CLOEXEC);
        self.crash.guard(inode, touch, sync, open, change)
    }

    /// [`FsInner::changing`] through an open handle: durable at once if it was opened
    /// `O_SYNC` or `O_DSYNC`.
    pub(crate) fn changing_file<T>(
        &self,
        h: &Handle,
        touch: Touch,
        change: impl FnOnce() -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        let sync = matches!(h.kind, HandleKind::File { sync: true, .. });
        self.changing(&h.inode, touch, sync, change)
    }

    /// An `fsync`/`fdatasync` of `inode` succeeded.
    pub(crate) fn synced(&self, inode: &Inode) {
        if self.crash_mode() {
            self.crash.durable(inode);
        }
    }

    fn crash_mode(&self) -> bool {
        self.rules.load().set.crash_mode()
    }

    /// Cut the power: roll every file back to its last durable state and refuse every later
    /// change (EIO). What every rollback so far dropped (a `crash` rule's included).
    pub(crate) fn crash(&self, opts: CrashOptions) -> Vec<CrashedFile> {
        self.crash.crash(opts);
        self.crash.report(|i| self.path_of(i))
    }

    /// A `crash` rule fired for the request answered by `reply` (verdict `v`). Before it is
    /// served: cut the power (the target is killed), roll back, answer EIO (`None`: nothing
    /// is left to serve). After: the same is tied to the reply, right before it is written,
    /// and the reply is handed back to serve the request.
    pub(crate) fn crash_rule<R: Reply>(&self, v: &Verdict, mut reply: R) -> Option<R> {
        let Some(crash) = v.crash else {
            return Some(reply);
        };
        let opts = CrashOptions {
            torn: crash.torn,
            reorder: crash.reorder,
            seed: crash.seed,
        };
        match crash.when {
            CrashWhen::Before => {
                self.crash.power_cut(opts);
                reply.error(Errno::EIO);
                None
            }
            CrashWhen::After => {
                let log = self.crash.clone();
                reply.before_reply(Box::new(move || log.power_cut(opts)));
                Some(reply)
            }
        }
    }

    /// What kills the target when a `crash` rule cuts the power.
    pub(crate) fn on_power_cut(&self, kill: Kill) {
        self.crash.on_power_cut(kill);
    }

    /// What the power cut of a `crash` rule dropped, once one fired.
    pub(crate) fn power_cut_report(&self) -> Option<Vec<CrashedFile>> {
        self.crash
            .cut
            .load(Ordering::Acquire)
            .then(|| self.crash.report(|i| self.path_of(i)))
    }

    /// Bytes of undo state held now.
    pub(crate) fn crash_saved_bytes(&self) -> u64 {
        self.crash.saved_bytes()
    }
}
