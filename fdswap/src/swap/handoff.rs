//! Handing pre-opened files to the stub (see docs/fdswap.md, "Open before the stop").
//!
//! While the target runs, the injector opens each file to reopen in place through the mount
//! now on top (`/proc/PID/root`, `RESOLVE_IN_ROOT`), with the description's access mode and
//! status flags, and checks it is the file the scan resolved. It listens on an abstract unix
//! socket created in the target's network namespace; the stub connects, and the injector
//! (after checking the peer with `SO_PEERCRED`) sends one `SCM_RIGHTS` message per batch. The
//! stub then only frees the numbers and receives: the FUSE round trips of the opens happen
//! before the stop.

use std::collections::HashMap;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, poll};
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, openat2};
use rustix::net::{
    AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix,
    SocketFlags, SocketType, accept_with, bind, listen, sendmsg, socket_with, sockopt,
};

use crate::plan::{FdItem, ProcessPlan};
use crate::sys::statx_at;

/// The pre-opened files of one process: the new file for the description whose lowest fd is
/// the key.
#[derive(Debug, Default)]
pub(crate) struct PreOpened {
    pub files: HashMap<i32, OwnedFd>,
}

/// The flags the new file is opened with: the description's, less those that only matter at
/// creation, with close-on-exec (the stub sets each fd's own).
pub(crate) fn reopen_flags(f: &FdItem) -> i32 {
    use libc::{O_CLOEXEC, O_CREAT, O_EXCL, O_NOCTTY, O_TRUNC};
    f.flags & !(O_CLOEXEC | O_CREAT | O_EXCL | O_TRUNC | O_NOCTTY) | O_CLOEXEC
}

/// Open `f`'s path in `root` (the target's root) and check it is what the scan resolved.
fn open_one(root: BorrowedFd<'_>, f: &FdItem) -> Option<OwnedFd> {
    let rel = f.path.strip_prefix("/").unwrap_or(&f.path);
    let flags = OFlags::from_bits_retain(reopen_flags(f).cast_unsigned()) | OFlags::NOCTTY;
    let fd = openat2(root, rel, flags, Mode::empty(), ResolveFlags::IN_ROOT).ok()?;
    let id = statx_at(fd.as_fd(), Path::new(""), AtFlags::STATX_DONT_SYNC).ok()?;
    (id.ino == f.to.ino && id.dev == f.to.dev && id.mnt_id == f.to.mnt_id).then_some(fd)
}

/// Threads the opens are spread over (each is a FUSE round trip or two on ChaosFS).
const OPENERS: usize = 4;

/// Open the new file of each description in `fds` (its lowest fd first in each group), in
/// parallel. A file that cannot be opened, or is not the one the scan resolved, is left out:
/// the stub opens it itself.
pub(crate) fn preopen(unit: &ProcessPlan, wanted: &[&FdItem]) -> PreOpened {
    let root = format!("/proc/{}/root", unit.pid);
    let Ok(root) = rustix::fs::open(
        root.as_str(),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return PreOpened::default();
    };
    let chunk = wanted.len().div_ceil(OPENERS).max(64);
    let files = std::thread::scope(|s| {
        let handles: Vec<_> = wanted
            .chunks(chunk)
            .map(|part| {
                let root = root.as_fd();
                s.spawn(move || {
                    part.iter()
                        .filter_map(|f| open_one(root, f).map(|fd| (f.fd, fd)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().ok())
            .flatten()
            .collect()
    });
    PreOpened { files }
}

/// A listening abstract unix socket in the target's network namespace.
pub(crate) struct Listener {
    fd: OwnedFd,
    /// `struct sockaddr_un` bytes the stub connects to (family + abstract name).
    pub addr: Vec<u8>,
}

impl Listener {
    /// Listen in `pid`'s network namespace (entered on a helper thread that exits after).
    pub(crate) fn new(pid: i32) -> std::io::Result<Listener> {
        static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let name = format!("iochaos-fdswap-{}-{pid}-{n}", std::process::id());
        let ns = format!("/proc/{pid}/ns/net");
        let name2 = name.clone();
        let fd = std::thread::spawn(move || -> std::io::Result<OwnedFd> {
            let theirs = std::fs::File::open(&ns)?;
            let same = crate::sys::statx(Path::new(&ns)).ok()
                == crate::sys::statx(Path::new("/proc/thread-self/ns/net")).ok();
            if !same {
                rustix::thread::move_into_link_name_space(
                    theirs.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )?;
            }
            let fd = socket_with(
                AddressFamily::UNIX,
                SocketType::STREAM,
                SocketFlags::CLOEXEC,
                None,
            )?;
            bind(&fd, &SocketAddrUnix::new_abstract_name(name2.as_bytes())?)?;
            listen(&fd, 4)?;
            Ok(fd)
        })
        .join()
        .map_err(|_| std::io::Error::other("listener thread panicked"))??;
        let mut addr = u16::try_from(libc::AF_UNIX)
            .unwrap_or(1)
            .to_ne_bytes()
            .to_vec();
        addr.push(0);
        addr.extend_from_slice(name.as_bytes());
        Ok(Listener { fd, addr })
    }
}

/// The sending side, running while the stub does.
pub(crate) struct Sender {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<std::io::Result<Vec<OwnedFd>>>>,
}

impl Sender {
    /// Accept the stub's connection (from process `pid` only) and send `batches` in order,
    /// one message each. Our copies are kept: closing them while the stub waits for the next
    /// batch would put their FLUSH round trips (ChaosFS forwarding locks) into the pause.
    pub(crate) fn start(listener: Listener, pid: i32, batches: Vec<Vec<OwnedFd>>) -> Sender {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || serve(&listener, pid, batches, &stop2));
        Sender {
            stop,
            thread: Some(thread),
        }
    }

    /// Stop waiting (the stub trapped) and return our copies of the files sent, to be closed
    /// once the target runs again.
    pub(crate) fn finish(mut self) -> std::io::Result<Vec<OwnedFd>> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .map_or(Ok(Vec::new()), |t| t.join().unwrap_or(Ok(Vec::new())))
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How long the sender waits for the stub's connection at most.
const CONNECT_WAIT: Duration = Duration::from_secs(30);

fn serve(
    listener: &Listener,
    pid: i32,
    batches: Vec<Vec<OwnedFd>>,
    stop: &AtomicBool,
) -> std::io::Result<Vec<OwnedFd>> {
    let t0 = Instant::now();
    let tick = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 20_000_000,
    };
    let conn = loop {
        if stop.load(Ordering::SeqCst) || t0.elapsed() > CONNECT_WAIT {
            return Ok(Vec::new());
        }
        let mut p = [PollFd::new(&listener.fd, PollFlags::IN)];
        if poll(&mut p, Some(&tick))? == 0 {
            continue;
        }
        let c = accept_with(&listener.fd, SocketFlags::CLOEXEC)?;
        // Only the target's stub gets the files.
        let cred = sockopt::socket_peercred(&c)?;
        if cred.pid.as_raw_nonzero().get() == pid {
            break c;
        }
    };
    let mut sent = Vec::new();
    for batch in batches {
        send_batch(&conn, &batch)?;
        sent.extend(batch);
    }
    Ok(sent)
}

/// One `SCM_RIGHTS` message carrying `batch`.
fn send_batch(conn: &OwnedFd, batch: &[OwnedFd]) -> std::io::Result<()> {
    let fds: Vec<BorrowedFd<'_>> = batch.iter().map(AsFd::as_fd).collect();
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    if !anc.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(std::io::Error::other("SCM_RIGHTS buffer too small"));
    }
    sendmsg(conn, &[IoSlice::new(b"f")], &mut anc, SendFlags::NOSIGNAL)?;
    Ok(())
}
