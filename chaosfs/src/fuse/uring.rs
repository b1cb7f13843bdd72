//! FUSE over io_uring: one queue per possible CPU, each served by a thread pinned to its CPU,
//! feeding the same request handling as the `/dev/fuse` threads. A request is answered on the
//! requester's CPU through buffers shared with the kernel, with no `read`/`write` of
//! `/dev/fuse` per request. FORGET, INTERRUPT and notifications keep travelling over
//! `/dev/fuse`, so one `/dev/fuse` thread keeps running beside the queues.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread::{JoinHandle, ThreadId};

use super::session::{Filesystem, Route, handle};
use super::types::{MAX_PAGES, MAX_WRITE};
use crate::sys::uring::{self as sys, Buffers, Completion, Queue, WAKE, Waker};

/// Ring entries per queue. A request parked in a latency fault keeps its entry until it is
/// answered: with every entry of a CPU's queue parked, that CPU's other requests wait.
pub const ENTRIES_PER_QUEUE: u16 = 32;

/// The payload buffer of an entry: the connection's largest request or reply
/// (`max(FUSE_MIN_READ_BUFFER, max_write, max_pages * page size)` in the kernel).
fn payload_len() -> usize {
    let pages = usize::from(MAX_PAGES) * 4096;
    usize::try_from(MAX_WRITE)
        .unwrap_or(pages)
        .max(pages)
        .max(super::abi::MIN_READ_BUFFER)
}

/// How the server exchanges requests with the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// `read`/`write` of `/dev/fuse` by a pool of threads; `why` tells why not io_uring when
    /// it was asked for.
    DevFuse { why: Option<String> },
    /// FUSE over io_uring: `queues` per-CPU queues of `entries` entries each.
    Uring { queues: u16, entries: u16 },
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::DevFuse { why: None } => f.write_str("/dev/fuse"),
            Transport::DevFuse { why: Some(w) } => write!(f, "/dev/fuse (io_uring: {w})"),
            Transport::Uring { queues, entries } => {
                write!(f, "io_uring ({queues} per-CPU queues x {entries} entries)")
            }
        }
    }
}

/// What the threads answering a queue's requests share with its queue thread.
struct Shared {
    /// Entries answered and waiting for their COMMIT_AND_FETCH: (index, request unique id).
    pending: Mutex<Vec<(u16, u64)>>,
    waker: Waker,
    thread: OnceLock<ThreadId>,
    stop: AtomicBool,
}

/// One ring entry, lent to the request it holds until that request is answered.
pub struct Slot {
    bufs: Buffers,
    index: u16,
    queue: Arc<Shared>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("index", &self.index).finish()
    }
}

impl Slot {
    /// Put the reply to request `unique` in the entry and have the queue thread commit it.
    pub(crate) fn reply(&self, unique: u64, header: &[u8], parts: &[&[u8]]) -> io::Result<()> {
        self.bufs.put_reply(header, parts)?;
        if let Ok(mut p) = self.queue.pending.lock() {
            p.push((self.index, unique));
        }
        if self.queue.thread.get() != Some(&std::thread::current().id()) {
            self.queue.waker.wake();
        }
        Ok(())
    }
}

/// Rings made before the INIT reply (so the flag is only asked for when they exist).
pub(crate) struct Rings(Vec<(Queue, Waker)>);

impl Rings {
    /// One ring per possible CPU.
    pub(crate) fn new() -> io::Result<Rings> {
        let n = sys::possible_cpus()?;
        (0..n)
            .map(|qid| Queue::new(qid, u32::from(ENTRIES_PER_QUEUE)))
            .collect::<io::Result<Vec<_>>>()
            .map(Rings)
    }
}

/// A queue thread; it returns its entries, to be freed once the connection is gone.
type QueueThread = JoinHandle<Vec<Arc<Slot>>>;

/// The running queue threads.
pub(crate) struct Queues {
    threads: Vec<(Arc<Shared>, QueueThread)>,
}

impl Queues {
    /// Register every queue's entries (each on its own pinned thread) and start serving.
    /// `Err` (with the queues stopped) if the kernel refused a registration: it then keeps
    /// sending requests over `/dev/fuse`.
    pub(crate) fn start<FS: Filesystem>(
        rings: Rings,
        fs: &Arc<FS>,
        dev: &Arc<OwnedFd>,
        served: &[Arc<AtomicU64>; 2],
    ) -> (Queues, io::Result<Transport>) {
        let queues = u16::try_from(rings.0.len()).unwrap_or(u16::MAX);
        let (tx, rx) = mpsc::channel();
        let mut threads = Vec::new();
        for (qid, (ring, waker)) in (0u16..).zip(rings.0) {
            let shared = Arc::new(Shared {
                pending: Mutex::new(Vec::new()),
                waker,
                thread: OnceLock::new(),
                stop: AtomicBool::new(false),
            });
            let (fs, dev, sh, t) = (fs.clone(), dev.clone(), shared.clone(), tx.clone());
            let served = served.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("chaosfs-uring-{qid}"))
                .spawn(move || serve_queue(&*fs, &dev, ring, &sh, qid, &t, &served));
            match spawned {
                Ok(h) => threads.push((shared, h)),
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        }
        drop(tx);
        let mut result = Ok(Transport::Uring {
            queues,
            entries: ENTRIES_PER_QUEUE,
        });
        for r in rx.iter().take(usize::from(queues)) {
            if let Err(e) = r
                && result.is_ok()
            {
                result = Err(e);
            }
        }
        let q = Queues { threads };
        if result.is_err() {
            q.stop_threads();
        }
        (q, result)
    }

    fn stop_threads(&self) {
        for (sh, _) in &self.threads {
            sh.stop.store(true, Ordering::SeqCst);
            sh.waker.wake();
        }
    }

    /// Stop the queue threads and join them. Call once the connection ended (the kernel then
    /// no longer copies requests into the entries), so the entries' buffers can be freed.
    pub(crate) fn stop(self) {
        self.stop_threads();
        for (_, h) in self.threads {
            if let Ok(slots) = h.join() {
                drop(slots);
            } else {
                tracing::warn!("FUSE io_uring queue thread panicked");
            }
        }
    }
}

/// One queue's thread (`served`: counters of the requests that came through it): register the entries, report, then serve until stopped or every entry
/// was ended by the kernel. Returns the entries, to be freed once the connection is gone.
fn serve_queue<FS: Filesystem>(
    fs: &FS,
    dev: &Arc<OwnedFd>,
    mut ring: Queue,
    shared: &Arc<Shared>,
    qid: u16,
    report: &mpsc::Sender<io::Result<()>>,
    served: &[Arc<AtomicU64>; 2],
) -> Vec<Arc<Slot>> {
    let _ = shared.thread.set(std::thread::current().id());
    if let Err(e) = sys::pin_to(qid) {
        tracing::debug!("pin FUSE io_uring queue {qid} to its CPU: {e}");
    }
    let len = payload_len();
    let slots: Vec<Arc<Slot>> = (0..ENTRIES_PER_QUEUE)
        .map(|index| {
            Arc::new(Slot {
                bufs: Buffers::new(len),
                index,
                queue: shared.clone(),
            })
        })
        .collect();
    let mut comps: Vec<Completion> = Vec::new();
    let registered = slots
        .iter()
        .try_for_each(|s| ring.register(dev.as_fd(), u64::from(s.index), &s.bufs))
        .and_then(|()| ring.arm_wake())
        .and_then(|()| ring.wait(0, &mut comps));
    // A refused REGISTER completes at once; an accepted one only when a request arrives.
    let refused = comps
        .iter()
        .find(|&&(ud, res)| ud != WAKE && res < 0)
        .map(|&(_, res)| io::Error::from_raw_os_error(-res));
    let outcome = match (registered, refused) {
        (Err(e), _) | (Ok(()), Some(e)) => Err(e),
        (Ok(()), None) => Ok(()),
    };
    let ok = outcome.is_ok();
    let _ = report.send(outcome);
    if !ok {
        return slots;
    }
    let mut live = slots.len();
    let mut buf = Vec::new();
    loop {
        for &(ud, res) in &comps {
            if ud == WAKE {
                if let Err(e) = ring.arm_wake() {
                    tracing::warn!("FUSE io_uring queue {qid}: {e}");
                }
                continue;
            }
            let Some(slot) = usize::try_from(ud).ok().and_then(|i| slots.get(i)) else {
                continue;
            };
            if res < 0 {
                // The kernel ended the entry: teardown (ENOTCONN), an aborted connection.
                tracing::debug!(
                    "FUSE io_uring queue {qid} entry {}: {}",
                    slot.index,
                    io::Error::from_raw_os_error(-res)
                );
                live = live.saturating_sub(1);
                continue;
            }
            sys::completed(&slot.bufs);
            for c in served {
                c.fetch_add(1, Ordering::Relaxed);
            }
            let route = Route::Ring {
                dev: dev.clone(),
                slot: slot.clone(),
            };
            match slot.bufs.take_request(&mut buf) {
                Ok(()) => handle(fs, &buf, &route),
                Err(e) => {
                    tracing::warn!("FUSE io_uring queue {qid}: bad request in entry: {e}");
                    handle(fs, &buf, &route);
                }
            }
        }
        let answered = shared
            .pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default();
        for (index, unique) in answered {
            if let Some(s) = slots.get(usize::from(index))
                && let Err(e) = ring.commit(dev.as_fd(), u64::from(index), &s.bufs, unique)
            {
                tracing::warn!("FUSE io_uring queue {qid}: commit: {e}");
            }
        }
        if live == 0 || shared.stop.load(Ordering::SeqCst) {
            break;
        }
        if let Err(e) = ring.wait(1, &mut comps) {
            tracing::warn!("FUSE io_uring queue {qid}: {e}");
            break;
        }
    }
    drop(ring);
    slots
}
