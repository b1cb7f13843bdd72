//! FUSE over io_uring (kernel 6.14+, `CONFIG_FUSE_IO_URING`, module parameter
//! `fuse.enable_uring`): the ring of one per-CPU queue and the buffers each of its entries shares
//! with the kernel.
//!
//! Protocol (`include/uapi/linux/fuse.h`, `fs/fuse/dev_uring.c`): after the INIT reply carried
//! `FUSE_OVER_IO_URING`, the server submits, per entry, an `IORING_OP_URING_CMD` on its
//! `/dev/fuse` fd with `cmd_op` `FUSE_IO_URING_CMD_REGISTER`, `addr` pointing to two iovecs
//! (the 288-byte `fuse_uring_req_header`, then a payload buffer of at least the connection's
//! largest request) and a `fuse_uring_cmd_req` naming the queue (one per possible CPU) in the
//! 128-byte SQE's command area. The command completes when a request was copied into the
//! entry; the server answers with `FUSE_IO_URING_CMD_COMMIT_AND_FETCH` (the reply in the same
//! buffers, `commit_id` the request's unique id), which also waits for the next request. At
//! teardown (abort, unmount) the kernel completes the waiting commands with an error.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Mutex;

use io_uring::{IoUring, cqueue, opcode, squeue, types};

/// `FUSE_IO_URING_CMD_REGISTER`.
const CMD_REGISTER: u32 = 1;
/// `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`.
const CMD_COMMIT_AND_FETCH: u32 = 2;
/// `sizeof(struct fuse_uring_req_header)`: `in_out[128]`, `op_in[128]`, then
/// `struct fuse_uring_ent_in_out` (flags, commit_id, payload_sz, padding, reserved).
const HEADER_SIZE: usize = 288;
/// Offset of `op_in`, the request's per-opcode header.
const OP_IN: usize = 128;
/// Largest per-opcode header the kernel copies to `op_in`.
const OP_IN_SIZE: usize = 128;
/// Offset of `fuse_uring_ent_in_out.payload_sz`.
const PAYLOAD_SZ: usize = 256 + 16;
/// `sizeof(struct fuse_in_header)`.
const IN_HEADER: usize = 40;
/// `sizeof(struct fuse_out_header)`.
const OUT_HEADER: usize = 16;
/// Byte offset of `len` (a `__u32`) in `struct io_uring_sqe`.
const SQE_LEN: usize = 24;

const _: () = assert!(std::mem::size_of::<squeue::Entry128>() == 128);

/// The buffers of one ring entry, shared with the kernel. The kernel writes them only while
/// the entry's command is with it (between a REGISTER or COMMIT_AND_FETCH submission and its
/// completion); this side reads and writes them only while `owned` is true, which the queue
/// thread sets when the command completes and clears before it submits the next one, both
/// under the lock.
pub(crate) struct Buffers {
    owned: Mutex<bool>,
    header: *mut u8,
    payload: *mut u8,
    payload_len: usize,
    /// The two iovecs REGISTER points to (the kernel copies them while the SQE is issued).
    iov: Box<[libc::iovec; 2]>,
}

// SAFETY: the raw pointers are owned allocations of this struct (freed in Drop only); every
// access from this side goes through `owned`'s lock and happens only while the kernel does not
// use the memory (see the struct's doc), so sharing between threads cannot race.
unsafe impl Send for Buffers {}
// SAFETY: as for Send.
unsafe impl Sync for Buffers {}

impl std::fmt::Debug for Buffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffers")
            .field("payload_len", &self.payload_len)
            .finish()
    }
}

fn alloc(len: usize) -> *mut u8 {
    Box::into_raw(vec![0u8; len].into_boxed_slice()).cast::<u8>()
}

impl Buffers {
    /// An entry whose payload buffer holds `payload_len` bytes (at least the connection's
    /// largest request: `max(8192, max_write, max_pages * page size)`).
    pub(crate) fn new(payload_len: usize) -> Buffers {
        let header = alloc(HEADER_SIZE);
        let payload = alloc(payload_len);
        let iov = Box::new([
            libc::iovec {
                iov_base: header.cast(),
                iov_len: HEADER_SIZE,
            },
            libc::iovec {
                iov_base: payload.cast(),
                iov_len: payload_len,
            },
        ]);
        Buffers {
            owned: Mutex::new(true),
            header,
            payload,
            payload_len,
            iov,
        }
    }

    fn lock_owned(&self) -> io::Result<std::sync::MutexGuard<'_, bool>> {
        let g = self
            .owned
            .lock()
            .map_err(|_| io::Error::other("ring entry lock poisoned"))?;
        if *g {
            Ok(g)
        } else {
            Err(io::Error::from_raw_os_error(libc::EBUSY))
        }
    }

    /// Copy the request the kernel put in this entry into `out` as `/dev/fuse` would have
    /// delivered it: `fuse_in_header`, the per-opcode header, then the payload. The header's
    /// `len` (the request's total size) less the payload's size is the per-opcode header's.
    /// EPROTO if those sizes do not add up (`out` then holds the `fuse_in_header` alone, so the
    /// request can still be answered).
    pub(crate) fn take_request(&self, out: &mut Vec<u8>) -> io::Result<()> {
        let _g = self.lock_owned()?;
        let mut hdr = [0u8; HEADER_SIZE];
        // SAFETY: `header` points to HEADER_SIZE bytes we own; the kernel does not write them
        // now (`owned`), and `hdr` is a distinct local of that size.
        unsafe { std::ptr::copy_nonoverlapping(self.header, hdr.as_mut_ptr(), HEADER_SIZE) };
        let u32_at = |o: usize| u32::from_ne_bytes([hdr[o], hdr[o + 1], hdr[o + 2], hdr[o + 3]]);
        let total = usize::try_from(u32_at(0)).unwrap_or(usize::MAX);
        let payload = usize::try_from(u32_at(PAYLOAD_SZ)).unwrap_or(usize::MAX);
        let bad = || io::Error::from_raw_os_error(libc::EPROTO);
        out.clear();
        out.extend_from_slice(&hdr[..IN_HEADER]);
        let op_len = total
            .checked_sub(IN_HEADER)
            .and_then(|n| n.checked_sub(payload))
            .ok_or_else(bad)?;
        if op_len > OP_IN_SIZE || payload > self.payload_len {
            return Err(bad());
        }
        out.extend_from_slice(&hdr[OP_IN..OP_IN + op_len]);
        let start = out.len();
        out.resize(start + payload, 0);
        // SAFETY: `payload` bytes (checked <= payload_len) of our payload allocation are
        // copied into the freshly resized tail of `out`; the kernel does not write them now.
        unsafe {
            std::ptr::copy_nonoverlapping(self.payload, out[start..].as_mut_ptr(), payload);
        }
        Ok(())
    }

    /// Put a reply in this entry: `out_header` (a 16-byte `fuse_out_header`) in `in_out`, the
    /// parts one after the other in the payload, their total in `payload_sz`. EOVERFLOW if
    /// they do not fit.
    pub(crate) fn put_reply(&self, out_header: &[u8], parts: &[&[u8]]) -> io::Result<()> {
        let _g = self.lock_owned()?;
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let payload_sz = u32::try_from(total)
            .ok()
            .filter(|_| total <= self.payload_len && out_header.len() == OUT_HEADER)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        // SAFETY: all writes stay inside our own allocations (16 bytes at the header's start,
        // 4 bytes at PAYLOAD_SZ < HEADER_SIZE - 4, `total <= payload_len` bytes of payload),
        // which the kernel does not use now (`owned`); sources are live slices.
        unsafe {
            std::ptr::copy_nonoverlapping(out_header.as_ptr(), self.header, OUT_HEADER);
            let sz = payload_sz.to_ne_bytes();
            std::ptr::copy_nonoverlapping(sz.as_ptr(), self.header.add(PAYLOAD_SZ), 4);
            let mut at = 0;
            for p in parts {
                std::ptr::copy_nonoverlapping(p.as_ptr(), self.payload.add(at), p.len());
                at += p.len();
            }
        }
        Ok(())
    }

    /// Mark the entry as the kernel's (before its command is submitted) or ours (its command
    /// completed).
    fn set_owned(&self, owned: bool) {
        if let Ok(mut g) = self.owned.lock() {
            *g = owned;
        }
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        // SAFETY: both were made by `alloc` with these lengths and are freed once, here. The
        // queue owning the ring that gave them to the kernel is dropped (its commands
        // cancelled) before the buffers: see `Queue`.
        unsafe {
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.header,
                HEADER_SIZE,
            )));
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.payload,
                self.payload_len,
            )));
        }
    }
}

/// Wakes a queue thread blocked in the ring (an eventfd the ring keeps a read posted on).
#[derive(Debug)]
pub(crate) struct Waker(OwnedFd);

impl Waker {
    pub(crate) fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        if let Err(e) = super::fuse_dev::write(std::os::fd::AsFd::as_fd(&self.0), &one) {
            tracing::debug!("wake FUSE ring queue: {e}");
        }
    }
}

/// The `user_data` of the eventfd read.
pub(crate) const WAKE: u64 = u64::MAX;

/// One queue's io_uring (128-byte SQEs). Field order matters: the ring is dropped (its
/// commands cancelled) before the eventfd buffer; entries' [`Buffers`] must outlive the queue.
pub(crate) struct Queue {
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    wake_buf: Box<u64>,
    eventfd: OwnedFd,
    qid: u16,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("qid", &self.qid).finish()
    }
}

/// A completion: `user_data` and the result (negative errno on failure).
pub(crate) type Completion = (u64, i32);

impl Queue {
    /// A ring for queue `qid` with room for `entries` commands plus the wake-up read.
    pub(crate) fn new(qid: u16, entries: u32) -> io::Result<(Queue, Waker)> {
        // The Entry128 type makes the crate ask for IORING_SETUP_SQE128.
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .build((entries + 1).next_power_of_two())?;
        // SAFETY: eventfd takes integers only; on success it returns a new fd we own.
        let fd = super::cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) })?;
        // SAFETY: `fd` was just returned by eventfd and nothing else owns it.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        let waker = Waker(eventfd.try_clone()?);
        Ok((
            Queue {
                ring,
                wake_buf: Box::new(0),
                eventfd,
                qid,
            },
            waker,
        ))
    }

    fn cmd(&self, commit_id: u64) -> [u8; 80] {
        // struct fuse_uring_cmd_req { u64 flags; u64 commit_id; u16 qid; u8 padding[6]; }
        let mut c = [0u8; 80];
        c[8..16].copy_from_slice(&commit_id.to_ne_bytes());
        c[16..18].copy_from_slice(&self.qid.to_ne_bytes());
        c
    }

    fn push(&mut self, e: squeue::Entry128) -> io::Result<()> {
        if self.ring.submission().is_full() {
            self.ring.submit()?;
        }
        // SAFETY: every pointer the entry carries (REGISTER's iovec array and the buffers it
        // names, the eventfd read's `wake_buf`) belongs to a `Buffers` or to this queue, which
        // outlive the ring's use of them (see the struct docs).
        unsafe { self.ring.submission().push(&e) }
            .map_err(|_| io::Error::from_raw_os_error(libc::EBUSY))
    }

    /// Give entry `bufs` (tagged `user_data`) to the kernel for queue `qid` (REGISTER).
    pub(crate) fn register(
        &mut self,
        dev: BorrowedFd<'_>,
        user_data: u64,
        bufs: &Buffers,
    ) -> io::Result<()> {
        bufs.set_owned(false);
        let e = opcode::UringCmd80::new(types::Fd(dev.as_raw_fd()), CMD_REGISTER)
            .cmd(self.cmd(0))
            .addr(Some(bufs.iov.as_ptr() as u64))
            .build()
            .user_data(user_data);
        self.push(with_len(e, 2))
    }

    /// Hand the reply in `bufs` to request `unique` and wait for the next request
    /// (COMMIT_AND_FETCH).
    pub(crate) fn commit(
        &mut self,
        dev: BorrowedFd<'_>,
        user_data: u64,
        bufs: &Buffers,
        unique: u64,
    ) -> io::Result<()> {
        bufs.set_owned(false);
        let e = opcode::UringCmd80::new(types::Fd(dev.as_raw_fd()), CMD_COMMIT_AND_FETCH)
            .cmd(self.cmd(unique))
            .build()
            .user_data(user_data);
        self.push(e)
    }

    /// Post the read of the wake-up eventfd (completes with [`WAKE`]).
    pub(crate) fn arm_wake(&mut self) -> io::Result<()> {
        let ptr = std::ptr::from_mut::<u64>(&mut self.wake_buf).cast::<u8>();
        let e = opcode::Read::new(types::Fd(self.eventfd.as_raw_fd()), ptr, 8)
            .build()
            .user_data(WAKE);
        self.push(e.into())
    }

    /// Submit what is queued and wait for at least `want` completions; then take them all.
    /// Entries whose command completed are marked ours again.
    pub(crate) fn wait(&mut self, want: usize, out: &mut Vec<Completion>) -> io::Result<()> {
        match self.ring.submit_and_wait(want) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
        out.clear();
        out.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        Ok(())
    }
}

/// Mark `bufs` as ours after its command completed.
pub(crate) fn completed(bufs: &Buffers) {
    bufs.set_owned(true);
}

/// `e` with the SQE's `len` field set (the io-uring crate's `UringCmd80` has no setter for it;
/// REGISTER needs the iovec count there).
fn with_len(e: squeue::Entry128, len: u32) -> squeue::Entry128 {
    // SAFETY: `Entry128` is `#[repr(C)]`: the kernel's 64-byte `struct io_uring_sqe` followed
    // by 64 bytes of command, 128 bytes (asserted above) of plain initialized data with no
    // invariants beyond the bytes, so it can be viewed as bytes and back.
    let mut bytes: [u8; 128] = unsafe { std::mem::transmute(e) };
    bytes[SQE_LEN..SQE_LEN + 4].copy_from_slice(&len.to_ne_bytes());
    // SAFETY: as above; only the `len` field changed.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(bytes) }
}

/// The CPUs the kernel makes queues for (`num_possible_cpus()`): one queue per possible CPU.
pub(crate) fn possible_cpus() -> io::Result<u16> {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let last = s
        .trim()
        .split([',', '-'])
        .filter_map(|n| n.parse::<u16>().ok())
        .max()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    Ok(last + 1)
}

/// Pin the calling thread to `cpu`.
pub(crate) fn pin_to(cpu: u16) -> io::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(usize::from(cpu));
    rustix::thread::sched_setaffinity(None, &set).map_err(io::Error::from)
}

/// `/sys/module/fuse/parameters/enable_uring`: whether the kernel offers FUSE over io_uring
/// to new connections.
pub(crate) const ENABLE_PARAM: &str = "/sys/module/fuse/parameters/enable_uring";
