//! Who sent a request: the caller's process id and command names, read from `/proc`.
//!
//! FUSE gives the caller's thread id. `/proc` is opened once per process
//! ([`prepare_proc`], also called by [`RuleSet::new`](super::RuleSet::new)) and every later read
//! goes through that directory fd with `openat`, so the lookups keep working after the server
//! enters another mount namespace. Results are cached per thread id for a short time.

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags, open, openat};

static PROC: OnceLock<Option<OwnedFd>> = OnceLock::new();

/// Open `/proc` for caller lookups (`pid` and `comm` selectors), once per process. Call it
/// before entering another mount namespace if rules may be built after that; building a
/// [`RuleSet`](super::RuleSet) calls it too. Returns false if `/proc` could not be opened, in
/// which case `comm` never matches and `pid` matches thread ids only.
pub fn prepare_proc() -> bool {
    PROC.get_or_init(|| {
        match open(
            "/proc",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::warn!(error = %e, "cannot open /proc: comm selectors will not match");
                None
            }
        }
    })
    .is_some()
}

fn proc_dir() -> Option<BorrowedFd<'static>> {
    PROC.get().and_then(Option::as_ref).map(AsFd::as_fd)
}

/// A command name as stored by the kernel (at most 15 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Name {
    bytes: [u8; 16],
    len: u8,
}

impl Name {
    fn new(raw: &[u8]) -> Name {
        let mut n = Name::default();
        let len = raw.len().min(16);
        n.bytes[..len].copy_from_slice(&raw[..len]);
        // At most 16; the fallback is never taken.
        n.len = u8::try_from(len).unwrap_or(16);
        n
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// What the selectors need to know about a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caller {
    /// Thread group id: the process id users mean.
    pub tgid: u32,
    /// The calling thread's name.
    pub comm: Name,
    /// The process's (thread group leader's) name; equal to `comm` for its main thread.
    pub leader_comm: Name,
}

/// Read `/proc/<tid>/status` (name and tgid) and, for a non-leader thread, the leader's name.
pub(crate) fn read_caller(tid: u32) -> Option<Caller> {
    let dir = proc_dir()?;
    let mut buf = [0u8; 512];
    let n = read_proc(dir, &format!("{tid}/status"), &mut buf)?;
    let text = &buf[..n];
    let mut comm = None;
    let mut tgid = None;
    for line in text.split(|&b| b == b'\n') {
        if let Some(v) = line.strip_prefix(b"Name:\t") {
            comm = Some(Name::new(&unescape(v)));
        } else if let Some(v) = line.strip_prefix(b"Tgid:\t") {
            tgid = std::str::from_utf8(v).ok()?.trim().parse::<u32>().ok();
        }
        if comm.is_some() && tgid.is_some() {
            break;
        }
    }
    let (comm, tgid) = (comm?, tgid?);
    let leader_comm = if tgid == tid {
        comm
    } else {
        let n = read_proc(dir, &format!("{tgid}/comm"), &mut buf)?;
        let raw = buf[..n].strip_suffix(b"\n").unwrap_or(&buf[..n]);
        Name::new(raw)
    };
    Some(Caller {
        tgid,
        comm,
        leader_comm,
    })
}

/// The status file escapes `\n` as `\\n` and `\` as `\\\\` in the name.
fn unescape(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut it = v.iter().copied();
    while let Some(b) = it.next() {
        if b == b'\\' {
            match it.next() {
                Some(b'n') => out.push(b'\n'),
                Some(other) => out.push(other),
                None => out.push(b'\\'),
            }
        } else {
            out.push(b);
        }
    }
    out
}

fn read_proc(dir: BorrowedFd<'_>, rel: &str, buf: &mut [u8]) -> Option<usize> {
    let fd = openat(dir, rel, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()?;
    let mut file = std::fs::File::from(fd);
    let mut total = 0;
    while total < buf.len() {
        match file.read(&mut buf[total..]) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(total)
}

/// How long a looked-up caller is trusted (a thread can exec or be renamed).
const TTL: Duration = Duration::from_millis(50);
const SLOTS: usize = 64;

type Slot = Option<(u32, Instant, Caller)>;

/// A small direct-mapped cache of callers by thread id.
#[derive(Debug)]
pub(crate) struct CallerCache {
    slots: Box<[Mutex<Slot>]>,
}

impl CallerCache {
    pub(crate) fn new() -> Self {
        CallerCache {
            slots: (0..SLOTS).map(|_| Mutex::new(None)).collect(),
        }
    }

    pub(crate) fn get(&self, tid: u32) -> Option<Caller> {
        if tid == 0 {
            return None;
        }
        let slot = &self.slots[tid as usize % SLOTS];
        let now = Instant::now();
        {
            let guard = slot.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((t, at, caller)) = *guard
                && t == tid
                && now.duration_since(at) < TTL
            {
                return Some(caller);
            }
        }
        let caller = read_caller(tid)?;
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((tid, now, caller));
        Some(caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gettid() -> u32 {
        rustix::thread::gettid()
            .as_raw_nonzero()
            .get()
            .unsigned_abs()
    }

    #[test]
    fn reads_this_process() {
        assert!(prepare_proc(), "/proc must be readable for these tests");
        let me = std::process::id();
        let c = read_caller(me).expect("own status");
        assert_eq!(c.tgid, me);
        let expected = std::fs::read("/proc/self/comm").expect("comm");
        assert_eq!(
            c.comm.as_bytes(),
            expected.strip_suffix(b"\n").unwrap_or(&expected)
        );
        assert_eq!(c.comm, c.leader_comm);
    }

    #[test]
    fn a_named_thread_knows_its_process() {
        assert!(prepare_proc());
        let leader = read_caller(std::process::id()).expect("leader");
        let handle = std::thread::Builder::new()
            .name("rules-probe".into())
            .spawn(move || {
                let tid = gettid();
                (tid, read_caller(tid))
            })
            .expect("spawn");
        let (tid, c) = handle.join().expect("join");
        let c = c.expect("thread status");
        assert_ne!(tid, std::process::id());
        assert_eq!(c.tgid, std::process::id());
        assert_eq!(c.comm.as_bytes(), b"rules-probe");
        assert_eq!(c.leader_comm, leader.comm);
    }

    #[test]
    fn unknown_thread_and_cache() {
        assert!(prepare_proc());
        assert_eq!(read_caller(u32::MAX - 1), None);
        let cache = CallerCache::new();
        assert_eq!(cache.get(0), None);
        let me = std::process::id();
        let a = cache.get(me).expect("me");
        assert_eq!(cache.get(me), Some(a));
    }

    #[test]
    fn unescapes_names() {
        assert_eq!(unescape(b"a\\nb\\\\c"), b"a\nb\\c");
        assert_eq!(unescape(b"plain"), b"plain");
    }
}
