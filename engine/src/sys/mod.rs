//! The engine's only unsafe code: raw file descriptors handed to us by ttrpc.

use std::os::fd::{BorrowedFd, OwnedFd, RawFd};

/// Duplicate a connection fd that ttrpc hands to a method handler as a raw number.
///
/// # Safety
/// `fd` must be open for the duration of this call. ttrpc passes the connection's fd in the
/// handler's context and keeps the connection (and so the fd) open until the handler returns.
pub(crate) unsafe fn dup_raw(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: the caller guarantees `fd` is open until we return; the borrow does not outlive
    // this call (we duplicate it into a new, owned descriptor).
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    fd.try_clone_to_owned()
}
