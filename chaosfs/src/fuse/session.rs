//! Serving a FUSE connection: the INIT handshake, then a pool of threads, each reading requests
//! from its own clone of the `/dev/fuse` fd and handing them to the file system.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::thread::JoinHandle;

use zerocopy::IntoBytes;

use super::abi::{self, init};
use super::reply::Sender;
use super::request::{Operation, Request, parse};
use super::types::{Errno, INodeNo, MAX_PAGES, MAX_WRITE};
use super::uring::{Queues, Rings, Slot, Transport};
use crate::sys::fuse_dev;

const BUFFER_SIZE: usize = MAX_WRITE as usize + 2 * abi::MIN_READ_BUFFER;

/// What the file system negotiates at INIT.
#[derive(Debug, Clone)]
pub struct KernelConfig {
    offered: u64,
    wanted: u64,
    kernel_max_readahead: u32,
    pub max_readahead: u32,
    pub max_background: u16,
    pub congestion_threshold: u16,
    /// Filesystem stacking depth under this one (passthrough needs 1).
    pub max_stack_depth: u32,
}

impl KernelConfig {
    /// Whether the kernel offers every flag of `flags`.
    pub fn offers(&self, flags: u64) -> bool {
        self.offered & flags == flags
    }

    /// Ask for `flag`; false (and nothing asked) if the kernel does not offer it.
    pub fn want(&mut self, flag: u64) -> bool {
        if self.offered & flag == flag {
            self.wanted |= flag;
            true
        } else {
            false
        }
    }
}

/// A file system served by a [`Session`].
pub trait Filesystem: Send + Sync + 'static {
    /// Choose capabilities and limits at INIT.
    fn init(&self, cfg: &mut KernelConfig);
    /// The kernel dropped `nlookup` references to `ino` (no reply).
    fn forget(&self, ino: INodeNo, nlookup: u64);
    /// The caller of request `unique` got a signal while waiting (`FUSE_INTERRUPT`; no reply).
    /// A request the file system holds back (a latency fault, a lock wait) may then be
    /// answered at once; one it does not know (already answered, or not parked yet) is left
    /// alone.
    fn interrupt(&self, unique: u64);
    /// Serve one request; every request handed here must be answered through `reply`.
    fn dispatch(&self, req: &Request, op: Operation<'_>, reply: Sender);
}

/// A connection whose INIT handshake is done.
pub struct Session<FS: Filesystem> {
    fs: Arc<FS>,
    dev: Arc<OwnedFd>,
    /// The per-CPU rings, when FUSE over io_uring was negotiated at INIT.
    rings: Option<Rings>,
    /// The queue threads once started.
    queues: Option<Queues>,
    transport: Transport,
    /// Requests that came in io_uring entries.
    ring_requests: Arc<AtomicU64>,
    /// Requests served, over either transport.
    requests: Arc<AtomicU64>,
}

impl<FS: Filesystem> Session<FS> {
    /// Do the INIT handshake on `dev` (a mounted connection's `/dev/fuse` fd): read the kernel's
    /// INIT, let `fs` choose, reply. Returns once the kernel has the reply, so requests for the
    /// file system may follow at once. With `uring`, FUSE over io_uring is negotiated when the
    /// kernel offers it and its rings could be made; [`Session::start_uring`] then registers
    /// the queues.
    pub fn handshake(fs: FS, dev: OwnedFd, uring: bool) -> io::Result<Session<FS>> {
        let dev = Arc::new(dev);
        let mut buf = vec![0u8; BUFFER_SIZE];
        loop {
            let n = match fuse_dev::read(dev.as_fd(), &mut buf) {
                Ok(n) => n,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::ENOENT)) => {
                    continue;
                }
                Err(e) => return Err(e),
            };
            let (req, op) =
                parse(&buf[..n]).map_err(|_| io::Error::other("malformed FUSE INIT request"))?;
            let Operation::Init {
                major,
                minor,
                max_readahead,
                flags,
            } = op
            else {
                // Nothing else can come before INIT; answer so the caller does not hang.
                Sender::new(dev.clone(), req.unique, 0, None).error(Errno::EIO);
                continue;
            };
            if major != abi::KERNEL_VERSION || minor < abi::MIN_KERNEL_MINOR_VERSION {
                Sender::new(dev.clone(), req.unique, 0, None).error(Errno::from_i32(libc::EPROTO));
                return Err(io::Error::other(format!(
                    "kernel FUSE protocol {major}.{minor} is not supported (need 7.{}+)",
                    abi::MIN_KERNEL_MINOR_VERSION
                )));
            }
            let mut cfg = KernelConfig {
                offered: flags,
                wanted: 0,
                kernel_max_readahead: max_readahead,
                max_readahead,
                max_background: 16,
                congestion_threshold: 12,
                max_stack_depth: 0,
            };
            for f in [
                init::ASYNC_READ,
                init::BIG_WRITES,
                init::MAX_PAGES,
                init::INIT_EXT,
            ] {
                cfg.want(f);
            }
            fs.init(&mut cfg);
            let (rings, transport) = if uring {
                negotiate_uring(&mut cfg)
            } else {
                (None, Transport::DevFuse { why: None })
            };
            let (wanted_lo, wanted_hi) = halves(cfg.wanted & cfg.offered);
            let out = abi::InitOut {
                major: abi::KERNEL_VERSION,
                minor: minor.min(abi::KERNEL_MINOR_VERSION),
                max_readahead: cfg.max_readahead.min(cfg.kernel_max_readahead),
                flags: wanted_lo,
                max_background: cfg.max_background,
                congestion_threshold: cfg.congestion_threshold.min(cfg.max_background),
                max_write: MAX_WRITE,
                time_gran: 1,
                max_pages: MAX_PAGES,
                map_alignment: 0,
                flags2: wanted_hi,
                max_stack_depth: cfg.max_stack_depth,
                request_timeout: 0,
                unused: [0; 11],
            };
            let h = abi::OutHeader::new(0, req.unique, std::mem::size_of::<abi::InitOut>())
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
            fuse_dev::writev(
                dev.as_fd(),
                &[IoSlice::new(h.as_bytes()), IoSlice::new(out.as_bytes())],
            )?;
            return Ok(Session {
                fs: Arc::new(fs),
                dev,
                rings,
                queues: None,
                transport,
                ring_requests: Arc::default(),
                requests: Arc::default(),
            });
        }
    }

    /// Register the io_uring queues negotiated at INIT and start their threads (nothing to do
    /// without them). Returns the transport requests now travel over: `/dev/fuse` (with the
    /// kernel's refusal) if a registration failed, in which case the kernel keeps using it.
    pub fn start_uring(&mut self) -> Transport {
        if let Some(rings) = self.rings.take() {
            let counts = [self.ring_requests.clone(), self.requests.clone()];
            let (queues, r) = Queues::start(rings, &self.fs, &self.dev, &counts);
            self.queues = Some(queues);
            self.transport = match r {
                Ok(t) => t,
                Err(e) => Transport::DevFuse {
                    why: Some(format!("the kernel refused the queue registration: {e}")),
                },
            };
        }
        self.transport.clone()
    }

    /// The counts (live) of requests that came in io_uring entries, and of all requests.
    pub fn counters(&self) -> (Arc<AtomicU64>, Arc<AtomicU64>) {
        (self.ring_requests.clone(), self.requests.clone())
    }

    /// The fd notifications can be written to.
    pub fn notifier(&self) -> super::Notifier {
        super::Notifier::new(self.dev.clone())
    }

    /// Serve on `n_threads` threads until the kernel ends the connection (unmount or abort).
    /// Threads after the first get their own clone of the fd when `/dev/fuse` can be opened
    /// (`clone_fd`); otherwise all share one. Returns the first error that is not the
    /// connection ending.
    /// With io_uring queues running, one `/dev/fuse` thread serves what still travels there
    /// (FORGET, INTERRUPT); the queues stop once the connection ended.
    pub fn run(mut self, n_threads: usize, clone_fd: bool) -> io::Result<()> {
        let queues = self.queues.take();
        let n_threads = if matches!(self.transport, Transport::Uring { .. }) {
            1
        } else {
            n_threads
        };
        let result = self.serve_dev(n_threads, clone_fd);
        if let Some(q) = queues {
            q.stop();
        }
        result
    }

    fn serve_dev(&self, n_threads: usize, clone_fd: bool) -> io::Result<()> {
        let mut handles: Vec<JoinHandle<io::Result<()>>> = Vec::new();
        for i in 1..n_threads.max(1) {
            let ch = if clone_fd {
                match fuse_dev::clone(self.dev.as_fd()) {
                    Ok(fd) => Arc::new(fd),
                    Err(e) => {
                        tracing::debug!("clone /dev/fuse: {e}; threads share one fd");
                        self.dev.clone()
                    }
                }
            } else {
                self.dev.clone()
            };
            let fs = self.fs.clone();
            let h = std::thread::Builder::new()
                .name(format!("chaosfs-fuse-{i}"))
                .spawn({
                    let n = self.requests.clone();
                    move || serve(&*fs, ch, &n)
                })?;
            handles.push(h);
        }
        let mut result = serve(&*self.fs, self.dev.clone(), &self.requests);
        for h in handles {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("FUSE serving thread panicked")));
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}

/// The INIT flags as `fuse_init_out` carries them: the low half in `flags`, the high half in
/// `flags2`.
fn halves(flags: u64) -> (u32, u32) {
    let [a, b, c, d, e, f, g, h] = flags.to_le_bytes();
    (
        u32::from_le_bytes([a, b, c, d]),
        u32::from_le_bytes([e, f, g, h]),
    )
}

/// An operation for the trace log: data payloads by length only.
fn brief(op: &Operation<'_>) -> String {
    match op {
        Operation::Write {
            fh, offset, data, ..
        } => {
            format!(
                "Write {{ fh: {fh:?}, offset: {offset}, len: {} }}",
                data.len()
            )
        }
        Operation::Setxattr { name, value, flags } => format!(
            "Setxattr {{ name: {name:?}, len: {}, flags: {flags} }}",
            value.len()
        ),
        Operation::Ioctl {
            fh,
            cmd,
            in_data,
            out_size,
        } => format!(
            "Ioctl {{ fh: {fh:?}, cmd: {cmd:#x}, in: {}, out: {out_size} }}",
            in_data.len()
        ),
        other => format!("{other:?}"),
    }
}

/// One serving thread's loop.
fn serve<FS: Filesystem>(fs: &FS, ch: Arc<OwnedFd>, requests: &AtomicU64) -> io::Result<()> {
    let mut buf = vec![0u8; BUFFER_SIZE];
    let route = Route::Dev(ch.clone());
    loop {
        let n = match fuse_dev::read(ch.as_fd(), &mut buf) {
            Ok(n) => n,
            Err(e) => match e.raw_os_error() {
                // Interrupted, or the request was aborted before we read it.
                Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::ENOENT) => continue,
                // The connection ended: unmounted (ENODEV), or aborted through fusectl
                // (ECONNABORTED, as FUSE_ABORT_ERROR asks). Either way there is nothing left
                // to serve; whoever aborted it (our own teardown after its grace period, an
                // operator) is the one to report it. Seen on 6.18 at the unmount of a
                // passthrough mount right after 600 passthrough files were closed, with no
                // abort written by this process: treating it as an error failed a clean
                // unmount.
                Some(libc::ENODEV) => return Ok(()),
                Some(libc::ECONNABORTED) => {
                    tracing::debug!("FUSE connection aborted");
                    return Ok(());
                }
                _ => return Err(e),
            },
        };
        requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        handle(fs, &buf[..n], &route);
    }
}

/// Where a request came from, so its reply goes back the same way.
#[derive(Debug)]
pub(crate) enum Route {
    /// Read from this `/dev/fuse` fd.
    Dev(Arc<OwnedFd>),
    /// Delivered in an io_uring entry of the connection `dev`.
    Ring { dev: Arc<OwnedFd>, slot: Arc<Slot> },
}

impl Route {
    fn sender(&self, unique: u64, pid: u32) -> Sender {
        match self {
            Route::Dev(ch) => Sender::new(ch.clone(), unique, pid, None),
            Route::Ring { dev, slot } => Sender::new(dev.clone(), unique, pid, Some(slot.clone())),
        }
    }
}

/// Serve one request (the bytes of a whole request as `/dev/fuse` delivers it), from either
/// transport.
pub(crate) fn handle<FS: Filesystem>(fs: &FS, buf: &[u8], route: &Route) {
    let (req, op) = match parse(buf) {
        Ok(x) => x,
        Err(_) => {
            if let Ok((h, _)) = <abi::InHeader as zerocopy::FromBytes>::read_from_prefix(buf) {
                tracing::warn!("malformed FUSE request (opcode {})", h.opcode);
                route.sender(h.unique, 0).error(Errno::EIO);
            }
            return;
        }
    };
    tracing::trace!(
        unique = req.unique,
        node = req.nodeid,
        uid = req.uid,
        gid = req.gid,
        "request {}",
        brief(&op)
    );
    let no_reply = match op {
        Operation::Forget { nlookup } => {
            fs.forget(INodeNo(req.nodeid), nlookup);
            true
        }
        Operation::BatchForget { nodes } => {
            for (ino, n) in nodes {
                fs.forget(ino, n);
            }
            true
        }
        Operation::Interrupt { unique } => {
            fs.interrupt(unique);
            true
        }
        Operation::NotifyReply => true,
        Operation::Init { .. } => {
            tracing::warn!("FUSE INIT after the handshake");
            route.sender(req.unique, 0).error(Errno::EIO);
            false
        }
        Operation::Destroy => {
            route.sender(req.unique, 0).ok();
            false
        }
        Operation::Unknown(code) => {
            tracing::debug!("FUSE opcode {code} not implemented");
            route.sender(req.unique, 0).error(Errno::ENOSYS);
            false
        }
        op => {
            fs.dispatch(&req, op, route.sender(req.unique, req.pid));
            false
        }
    };
    // Requests without a reply travel over /dev/fuse; should one come in a ring entry, the
    // entry is given back (the kernel has a request waiting on it) rather than lost.
    if no_reply && matches!(route, Route::Ring { .. }) {
        route.sender(req.unique, 0).error(Errno::ENOSYS);
    }
}

/// Ask for FUSE over io_uring if the kernel offers it and the rings can be made (before the
/// INIT reply: once the flag is granted, requests wait until the queues are registered).
fn negotiate_uring(cfg: &mut KernelConfig) -> (Option<Rings>, Transport) {
    let why = |w: String| (None, Transport::DevFuse { why: Some(w) });
    if !cfg.offers(init::OVER_IO_URING) {
        let param = std::fs::read_to_string(crate::sys::uring::ENABLE_PARAM);
        return why(match param.as_deref().map(str::trim) {
            Ok("N") => format!(
                "off in the kernel ({} is N)",
                crate::sys::uring::ENABLE_PARAM
            ),
            Ok(_) => "the kernel does not offer FUSE_OVER_IO_URING".to_owned(),
            Err(_) => "this kernel has no FUSE over io_uring".to_owned(),
        });
    }
    match Rings::new() {
        Ok(r) => {
            cfg.want(init::OVER_IO_URING);
            (Some(r), Transport::DevFuse { why: None })
        }
        Err(e) => why(format!(
            "cannot set up an io_uring with 128-byte entries: {e}"
        )),
    }
}
