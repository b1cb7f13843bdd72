//! Requests on open files: read, write, flush, release, fsync, fallocate, lseek,
//! copy_file_range.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;

use crate::fs::crash::Touch;
use crate::fs::handle::{Handle, HandleKind, OpenMode};
use crate::fs::{FsInner, errno, stat_u64};
use crate::fuse::{Errno, FileHandle, ReplyData, ReplyEmpty, ReplyLseek, ReplyWrite};
use crate::rules::{DataFault, Verdict};
use crate::sys;
use crate::sys::file::AlignedBuf;

/// Reads at least this large, with no data fault, are answered by splicing the backing file.
const SPLICE_MIN: usize = 64 << 10;

thread_local! {
    /// Reusable read buffer of a serving thread.
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Answer a read of up to `want` bytes at `offset` of `fd` by splicing it into the reply, if
/// `fd` is a regular file (whose size says how many bytes the read returns). The reply back
/// when nothing was sent: the caller reads and copies instead.
fn splice_read(
    fd: BorrowedFd<'_>,
    offset: u64,
    want: usize,
    reply: ReplyData,
) -> Option<ReplyData> {
    let Ok(st) = sys::file::fstat(fd) else {
        return Some(reply);
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Some(reply);
    }
    let left = stat_u64(st.st_size).saturating_sub(offset);
    let n = want.min(usize::try_from(left).unwrap_or(usize::MAX));
    if n == 0 {
        reply.data(&[]);
        return None;
    }
    reply.splice(fd, offset, n).err()
}

/// Answer a write-like request with the bytes moved. They never exceed the request's own size
/// (the write's data, copy_file_range's length capped at 1 GiB), both below `u32::MAX`; should
/// they, EIO rather than a wrapped count.
fn reply_written(reply: ReplyWrite, n: usize) {
    match u32::try_from(n) {
        Ok(n) => reply.written(n),
        Err(_) => reply.error(Errno::EIO),
    }
}

/// The bytes a `fallocate` of `mode` may destroy: the range for a punched or zeroed hole,
/// everything from `offset` on for a collapsed or inserted range (they shift the rest).
fn fallocate_touch(mode: i32, offset: u64, length: u64) -> Touch {
    if mode & (libc::FALLOC_FL_COLLAPSE_RANGE | libc::FALLOC_FL_INSERT_RANGE) != 0 {
        Touch::From(offset)
    } else if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 {
        Touch::Range(offset, length)
    } else {
        // Allocation only: no byte changes; a size it extends is cut back by a crash.
        Touch::Range(offset, 0)
    }
}

impl FsInner {
    pub(crate) fn read(&self, h: &Handle, offset: u64, size: u32, v: &Verdict, reply: ReplyData) {
        let mut want = size as usize;
        if let Some(DataFault::Short(_)) = v.data {
            want = v.short_len(want);
        }
        let o_direct = matches!(h.kind, HandleKind::File { o_direct: true, .. });
        if o_direct {
            let Some(mut buf) = AlignedBuf::new(want) else {
                return reply.error(Errno::ENOMEM);
            };
            let b = buf.as_mut_slice();
            let n = tri!(
                sys::file::pread(h.fd.as_fd(), b, offset).map_err(errno),
                reply
            );
            v.apply_data(&mut b[..n]);
            return reply.data(&b[..n]);
        }
        // No data fault: let the kernel move the bytes (one copy instead of two).
        let reply = if v.data.is_none() && want >= SPLICE_MIN {
            match splice_read(h.fd.as_fd(), offset, want, reply) {
                Some(r) => r,
                None => return,
            }
        } else {
            reply
        };
        READ_BUF.with(|cell| {
            let Ok(mut buf) = cell.try_borrow_mut() else {
                return reply.error(Errno::EIO);
            };
            if buf.len() < want {
                buf.resize(want, 0);
            }
            match sys::file::pread(h.fd.as_fd(), &mut buf[..want], offset) {
                Ok(n) => {
                    v.apply_data(&mut buf[..n]);
                    reply.data(&buf[..n]);
                }
                Err(e) => reply.error(errno(e)),
            }
            // Do not keep huge buffers around.
            if buf.len() > (4 << 20) {
                *buf = Vec::new();
            }
        });
    }

    pub(crate) fn write(
        &self,
        h: &Handle,
        offset: u64,
        data: &[u8],
        kill_suidgid: bool,
        v: &Verdict,
        reply: ReplyWrite,
    ) {
        // Before the write, as the kernel's `file_remove_privs` does.
        if kill_suidgid {
            tri!(
                self.kill_suidgid(&h.inode, Some(h.fd.as_fd()))
                    .map_err(errno),
                reply
            );
        }
        let mut data = data;
        if let Some(DataFault::Short(_)) = v.data {
            data = &data[..v.short_len(data.len()).min(data.len())];
        }
        let o_direct = matches!(h.kind, HandleKind::File { o_direct: true, .. });
        let corrupt = matches!(v.data, Some(DataFault::Corrupt));
        let touch = Touch::Write(offset, data.len() as u64);
        let r = self.changing_file(h, touch, || {
            if o_direct {
                match AlignedBuf::new(data.len()) {
                    Some(mut buf) => {
                        let b = buf.as_mut_slice();
                        b.copy_from_slice(data);
                        if corrupt {
                            v.apply_data(b);
                        }
                        sys::file::pwrite(h.fd.as_fd(), b, offset)
                    }
                    None => Err(io::Error::from_raw_os_error(libc::ENOMEM)),
                }
            } else if corrupt {
                let mut b = data.to_vec();
                v.apply_data(&mut b);
                sys::file::pwrite(h.fd.as_fd(), &b, offset)
            } else {
                sys::file::pwrite(h.fd.as_fd(), data, offset)
            }
            .map_err(errno)
        });
        match r {
            Ok(n) => reply_written(reply, n),
            Err(e) => reply.error(e),
        }
    }

    pub(crate) fn release(&self, fh: FileHandle, v: &Verdict, reply: ReplyEmpty) {
        // The handle is released whatever the rules say: the kernel forgets it anyway.
        if let Some(h) = self.handles.remove(fh.0)
            && let HandleKind::File { mode, noflush, .. } = h.kind
        {
            let c = &self.counters;
            let mut out_of_fds = false;
            if let Ok(mut st) = h.inode.open.lock() {
                if noflush {
                    st.noflush = st.noflush.saturating_sub(1);
                }
                match mode {
                    OpenMode::Passthrough => {
                        st.passthrough = st.passthrough.saturating_sub(1);
                        c.passthrough_now.fetch_sub(1, Ordering::Relaxed);
                        if st.passthrough == 0 {
                            st.backing = None;
                        }
                    }
                    OpenMode::Direct => {
                        st.direct = st.direct.saturating_sub(1);
                        c.direct_now.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                if st.passthrough == 0 && st.direct == 0 {
                    out_of_fds = h.inode.release_node_fd(self.proc_fd.as_fd());
                }
            }
            // After the open state's lock is dropped: the reclaim reads every inode's.
            if out_of_fds {
                self.reclaim_fds();
            }
        }
        match v.errno {
            Some(e) => reply.error(Errno::from_i32(e)),
            None => reply.ok(),
        }
    }

    pub(crate) fn fsync(&self, h: &Handle, datasync: bool) -> Result<(), Errno> {
        sys::file::fsync(h.fd.as_fd(), datasync).map_err(errno)?;
        self.synced(&h.inode);
        Ok(())
    }

    pub(crate) fn fallocate(
        &self,
        h: &Handle,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<(), Errno> {
        self.changing_file(h, fallocate_touch(mode, offset, length), || {
            sys::file::fallocate(h.fd.as_fd(), mode, offset, length).map_err(errno)
        })
    }

    pub(crate) fn lseek(&self, h: &Handle, offset: i64, whence: i32, reply: ReplyLseek) {
        match sys::file::lseek(h.fd.as_fd(), offset, whence) {
            Ok(off) => reply.offset(off),
            Err(e) => reply.error(errno(e)),
        }
    }

    /// FUSE_COPY_FILE_RANGE of `len` bytes from `(hi, off_in)` to `(ho, off_out)`.
    pub(crate) fn copy_file_range(
        &self,
        (hi, off_in): (&Handle, u64),
        (ho, off_out): (&Handle, u64),
        len: u64,
        flags: u64,
        reply: ReplyWrite,
    ) {
        let flags = tri!(u32::try_from(flags).map_err(|_| Errno::EINVAL), reply);
        let len = len.min(1 << 30) as usize;
        let n = tri!(
            self.changing_file(ho, Touch::Write(off_out, len as u64), || {
                sys::file::copy_file_range(
                    hi.fd.as_fd(),
                    off_in,
                    ho.fd.as_fd(),
                    off_out,
                    len,
                    flags,
                )
                .map_err(errno)
            }),
            reply
        );
        reply_written(reply, n);
    }
}
