//! Locks forwarded to the backing file: each FUSE lock owner (a process's POSIX owner, or the
//! open file of a `flock`) gets its own open file description of the backing file, and its
//! locks are OFD locks (or `flock`s) on it. So a lock taken through ChaosFS is a real lock that
//! processes outside the mount see, and theirs block or are reported to callers here. A
//! SETLKW that cannot be granted at once waits in a thread of its own, never in a serving
//! thread; an interrupt (any signal, as `fcntl(F_SETLKW)` natively) wakes it with EINTR.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use super::FsInner;
use super::inode::Inode;
use crate::fuse::{Errno, FileLock, Reply, ReplyEmpty, ReplyLock};
use crate::sys;

/// `SEEK_SET` and `F_UNLCK` as `struct flock` holds them (small constants: 0 and 2).
const SEEK_SET: i16 = 0;
const F_UNLCK: i16 = 2;
const _: () = assert!(SEEK_SET as i32 == libc::SEEK_SET && F_UNLCK as i32 == libc::F_UNLCK);

/// `OFFSET_MAX`: a lock's end when it runs to EOF.
const OFFSET_MAX: u64 = i64::MAX as u64;

/// Whose locks an open file description carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Owner {
    node: u64,
    owner: u64,
    flock: bool,
}

/// A SETLKW waiting in its own thread.
#[derive(Default)]
struct Waiter {
    cancelled: AtomicBool,
    thread: OnceLock<libc::pthread_t>,
    done: Mutex<bool>,
    cv: Condvar,
}

#[derive(Default)]
pub(crate) struct Locks {
    files: Mutex<HashMap<Owner, Arc<OwnedFd>>>,
    /// The process (thread group id) whose request last set a POSIX lock of an owner.
    setters: Mutex<HashMap<Owner, i32>>,
    /// Waiting SETLKWs by request unique id.
    waiting: Mutex<HashMap<u64, Arc<Waiter>>>,
}

/// A FUSE lock as `struct flock` (`l_pid` 0, as OFD locks require).
fn to_flock(lk: &FileLock) -> libc::flock {
    let len = if lk.end >= OFFSET_MAX {
        0
    } else {
        lk.end.saturating_sub(lk.start).saturating_add(1)
    };
    libc::flock {
        l_type: i16::try_from(lk.typ).unwrap_or(i16::MAX),
        l_whence: SEEK_SET,
        l_start: i64::try_from(lk.start).unwrap_or(i64::MAX),
        l_len: i64::try_from(len).unwrap_or(0),
        l_pid: 0,
    }
}

/// The conflicting lock `F_OFD_GETLK` found, as FUSE reports it (an OFD holder has no pid: 0).
fn from_flock(fl: &libc::flock) -> FileLock {
    let start = u64::try_from(fl.l_start).unwrap_or(0);
    let end = match u64::try_from(fl.l_len) {
        Ok(0) | Err(_) => OFFSET_MAX,
        Ok(n) => start.saturating_add(n - 1),
    };
    FileLock {
        start,
        end,
        typ: u32::try_from(fl.l_type).unwrap_or(0),
        pid: u32::try_from(fl.l_pid).unwrap_or(0),
    }
}

fn lock_type(lk: &FileLock) -> i32 {
    i32::try_from(lk.typ).unwrap_or(libc::F_UNLCK)
}

impl FsInner {
    /// The open file description carrying `o`'s locks, opened on first use (read-write where
    /// the backing file allows it, else read-only or write-only).
    fn lock_file(&self, inode: &Inode, o: Owner) -> Result<Arc<OwnedFd>, Errno> {
        if inode.kind != libc::S_IFREG && inode.kind != libc::S_IFDIR {
            return Err(Errno::from_i32(libc::ENOLCK));
        }
        let mut files = self.locks.files.lock().map_err(|_| Errno::EIO)?;
        if let Some(f) = files.get(&o) {
            return Ok(f.clone());
        }
        let mut last = None;
        for mode in [libc::O_RDWR, libc::O_RDONLY, libc::O_WRONLY] {
            match self.reopen(inode, mode | libc::O_NONBLOCK) {
                Ok(fd) => {
                    let fd = Arc::new(fd);
                    files.insert(o, fd.clone());
                    return Ok(fd);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or(Errno::EIO, |e| self.fd_errno(e)))
    }

    /// Close the lock file of `o` (its locks go with it).
    fn drop_lock_file(&self, o: Owner) {
        if !self.locks_on.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(mut files) = self.locks.files.lock() {
            files.remove(&o);
        }
        if let Ok(mut setters) = self.locks.setters.lock() {
            setters.remove(&o);
        }
    }

    /// FLUSH: the closing process's POSIX locks on the file go (as `close(2)` drops them).
    pub(crate) fn drop_posix_locks(&self, node: u64, owner: u64) {
        self.drop_lock_file(Owner {
            node,
            owner,
            flock: false,
        });
    }

    /// RELEASE with `FUSE_RELEASE_FLOCK_UNLOCK`: the released file's flock goes.
    pub(crate) fn drop_flock(&self, node: u64, owner: u64) {
        self.drop_lock_file(Owner {
            node,
            owner,
            flock: true,
        });
    }

    /// The thread group id of thread `pid`, from `/proc/PID/status`.
    fn tgid_of(&self, pid: u32) -> Option<i32> {
        let text = self.proc_status(pid)?;
        text.lines()
            .find_map(|l| l.strip_prefix("Tgid:"))
            .and_then(|v| v.trim().parse().ok())
    }

    /// GETLK: the lock that would conflict with `lk` of `owner`, tested on the backing file. A
    /// POSIX lock the caller's own process holds on the backing file directly is no conflict
    /// (a process's POSIX locks never conflict with each other natively): fdswap checks that
    /// the file it moves a lock to is free of conflicts before it re-takes the lock.
    pub(crate) fn getlk(&self, inode: &Inode, owner: u64, caller: u32, lk: FileLock, r: ReplyLock) {
        let o = Owner {
            node: inode.nodeid,
            owner,
            flock: false,
        };
        let fd = match self.lock_file(inode, o) {
            Ok(f) => f,
            Err(e) => return r.error(e),
        };
        let mut fl = to_flock(&lk);
        if let Err(e) = sys::lock::ofd_getlk(fd.as_fd(), &mut fl) {
            return r.error(super::errno(e));
        }
        if i32::from(fl.l_type) != libc::F_UNLCK
            && fl.l_pid > 0
            && self.tgid_of(caller) == Some(fl.l_pid)
        {
            fl.l_type = F_UNLCK;
        }
        let mut out = from_flock(&fl);
        if i32::from(fl.l_type) == libc::F_UNLCK {
            out = FileLock {
                typ: libc::F_UNLCK as u32,
                ..lk
            };
        }
        r.locked(out);
    }

    /// SETLK / SETLKW: take or release `lk` for `owner` on the backing file. A wait happens in
    /// a thread of its own.
    pub(crate) fn setlk(
        &self,
        inode: &Inode,
        (owner, flock, caller): (u64, bool, u32),
        lk: FileLock,
        sleep: bool,
        r: ReplyEmpty,
    ) {
        let o = Owner {
            node: inode.nodeid,
            owner,
            flock,
        };
        let fd = match self.lock_file(inode, o) {
            Ok(f) => f,
            Err(e) => return r.error(e),
        };
        if !flock
            && let Some(tgid) = self.tgid_of(caller)
            && let Ok(mut setters) = self.locks.setters.lock()
        {
            setters.insert(o, tgid);
        }
        let take = move |wait: bool| {
            if flock {
                sys::lock::flock(fd.as_fd(), lock_type(&lk), wait)
            } else {
                sys::lock::ofd_setlk(fd.as_fd(), &to_flock(&lk), wait)
            }
        };
        match take(false) {
            Err(e) if sleep && matches!(e.raw_os_error(), Some(libc::EAGAIN)) => {}
            res => return r.result(res.map_err(super::errno)),
        }
        self.wait_for_lock(r, move || take(true));
    }

    /// Wait for a lock in a thread of its own; answered when `take` returns, or with EINTR
    /// when the request is interrupted.
    fn wait_for_lock(
        &self,
        r: ReplyEmpty,
        take: impl Fn() -> std::io::Result<()> + Send + 'static,
    ) {
        let Some((unique, _)) = r.request() else {
            return;
        };
        if let Err(e) = sys::lock::install_wake_handler() {
            tracing::warn!("lock waits cannot be interrupted: {e}");
        }
        let w = Arc::new(Waiter::default());
        {
            let Ok(mut waiting) = self.locks.waiting.lock() else {
                return r.error(Errno::EIO);
            };
            // An interrupt read before this point by another serving thread.
            if self.sched.take_early(unique) {
                return r.error(Errno::from_i32(libc::EINTR));
            }
            waiting.insert(unique, w.clone());
        }
        let (w2, locks) = (w.clone(), self.locks.clone());
        let spawned = std::thread::Builder::new()
            .name("chaosfs-lockwait".into())
            .spawn(move || {
                let res = loop {
                    if w2.cancelled.load(Ordering::Acquire) {
                        break Err(Errno::from_i32(libc::EINTR));
                    }
                    match take() {
                        Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                        res => break res.map_err(super::errno),
                    }
                };
                if let Ok(mut waiting) = locks.waiting.lock() {
                    waiting.remove(&unique);
                }
                r.result(res);
                if let Ok(mut done) = w2.done.lock() {
                    *done = true;
                }
                w2.cv.notify_all();
            });
        match spawned {
            Ok(h) => {
                use std::os::unix::thread::JoinHandleExt;
                let _ = w.thread.set(h.as_pthread_t());
            }
            Err(e) => {
                tracing::warn!("lock waiter thread: {e}");
                if let Ok(mut waiting) = self.locks.waiting.lock() {
                    waiting.remove(&unique);
                }
            }
        }
    }

    /// An interrupt of a waiting SETLKW: wake its thread until it has answered (EINTR, or the
    /// lock if it was granted first). False if `unique` is not a lock wait; then `other` is
    /// called with the waiting table still locked, so a wait being registered meanwhile sees
    /// the interrupt it records.
    pub(crate) fn interrupt_lock_wait(&self, unique: u64, other: impl FnOnce()) -> bool {
        let w = {
            let Ok(waiting) = self.locks.waiting.lock() else {
                return false;
            };
            match waiting.get(&unique) {
                Some(w) => w.clone(),
                None => {
                    other();
                    return false;
                }
            }
        };
        w.cancelled.store(true, Ordering::Release);
        let Ok(mut done) = w.done.lock() else {
            return true;
        };
        while !*done {
            if let Some(&t) = w.thread.get() {
                // Under `done`'s lock: the thread is still running, so its id is valid.
                let _ = sys::lock::wake(t);
            }
            done = match w.cv.wait_timeout(done, Duration::from_millis(5)) {
                Ok((g, _)) => g,
                Err(_) => return true,
            };
        }
        true
    }
}

/// A POSIX lock a process holds through ChaosFS: an OFD lock of the server on the backing file
/// (the kernel keeps no record of it on the ChaosFS file, so `/proc/PID/fdinfo` of the holder
/// does not list it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedLock {
    /// The holder (thread group id, in the server's pid namespace).
    pub pid: i32,
    /// Exclusive.
    pub write: bool,
    /// First byte.
    pub start: u64,
    /// Last byte (`None`: to EOF).
    pub end: Option<u64>,
    /// The backing file's device (major, minor).
    pub dev: (u32, u32),
    /// The backing file's inode number.
    pub ino: u64,
}

impl FsInner {
    /// The POSIX locks held through ChaosFS now, each with the process that set it, read from
    /// the kernel (the fdinfo of each owner's lock file: what is really held, after merges and
    /// splits).
    pub(crate) fn forwarded_posix_locks(&self) -> Vec<ForwardedLock> {
        use std::os::fd::AsRawFd;
        let owners: Vec<(i32, Arc<OwnedFd>)> = {
            let (Ok(files), Ok(setters)) = (self.locks.files.lock(), self.locks.setters.lock())
            else {
                return Vec::new();
            };
            setters
                .iter()
                .filter_map(|(o, &pid)| Some((pid, files.get(o)?.clone())))
                .collect()
        };
        let mut out = Vec::new();
        for (pid, fd) in owners {
            let path = format!("/proc/thread-self/fdinfo/{}", fd.as_raw_fd());
            let Some(info) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| procinfo::parse_fdinfo(&t))
            else {
                continue;
            };
            out.extend(
                info.locks
                    .into_iter()
                    .filter(|l| l.kind == "OFDLCK")
                    .map(|l| ForwardedLock {
                        pid,
                        write: l.write,
                        start: l.start,
                        end: l.end,
                        dev: l.dev,
                        ino: l.ino,
                    }),
            );
        }
        out
    }
}

impl Locks {
    pub(crate) fn new() -> Arc<Locks> {
        Arc::new(Locks::default())
    }
}
