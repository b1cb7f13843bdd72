//! The engine's only unsafe code: the raw fd of a connection ttrpc has just accepted, a private file
//! table for the threads that do I/O on their own process's FUSE mount, and `unshare` of the
//! fs info (rustix marks `unshare` unsafe for its `CLONE_FILES` case).

use std::os::fd::{BorrowedFd, OwnedFd, RawFd};

/// Duplicate the connection ttrpc's sync server has just accepted, from its accept hook.
pub(crate) fn dup_accepted_connection(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: ttrpc's sync server calls the accept hook on its accept thread with the fd it has
    // just accepted (`PipeConnection::id`), before it starts any thread of that connection; it
    // closes a connection only after the hook returned (a rejected one, on the same thread) or
    // from its reaper once that connection's threads have ended. So the fd is open and is this
    // connection's for the whole call, and the borrow ends with it (the duplicate is a new,
    // owned descriptor).
    // (A handler's `TtrpcContext::fd` has no such guarantee: the reaper may close the
    // connection while a handler still runs, and the number may then name another file.)
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    fd.try_clone_to_owned()
}

/// `unshare(CLONE_FS)`: the calling thread gets its own root, cwd and umask, so it may `setns`
/// into a mount namespace and `chroot` without changing them for the rest of the process.
pub(crate) fn unshare_fs() -> std::io::Result<()> {
    // SAFETY: rustix marks `unshare` unsafe because `CLONE_FILES` would give this thread a
    // file table other threads' fds are not in; `FS` alone leaves the file table shared.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) }?;
    Ok(())
}

/// Give the calling thread a file table of its own holding only `/dev/null` as fds 0 and 1 and
/// the process's fd 2 (its log): the process's other descriptors are closed in the copy
/// (`close_range(3, ~0, CLOSE_RANGE_UNSHARE)`; the kernel copies just the three it keeps). The
/// process's own table, and every fd in it, is untouched: other threads go on using it; this
/// thread no longer can.
///
/// # Safety
/// No fd opened before the call may be used (or dropped) on this thread afterwards: its number
/// is closed here and may be reused by this thread's own opens. The caller must be a thread
/// that owns no such fd and runs only code that opens every fd it uses itself.
unsafe fn unshare_fd_table_closing_from_3() -> std::io::Result<()> {
    // libc: rustix has no close_range.
    // SAFETY: close_range takes no pointers; CLOSE_RANGE_UNSHARE makes it act on a private copy
    // of the table, so no `OwnedFd` anywhere in the process is invalidated. The caller
    // guarantees this thread holds no fd from before (see above).
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_UNSHARE,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // stdin and stdout may be pipes a starter waits on (the CLI's readiness pipe): not in here.
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    // Onto 0 and 1 of this thread's private table: nothing on this thread owns those numbers
    // (the caller's guarantee).
    rustix::stdio::dup2_stdin(&null)?;
    rustix::stdio::dup2_stdout(&null)?;
    Ok(())
}

/// Run `f` on a new thread whose file table is its own copy without the process's
/// descriptors ([`unshare_fd_table_closing_from_3`]). `f` must open every fd it uses itself
/// and hand none back (fds from before are not open on that thread; their numbers may name
/// `f`'s own files). Used for the fd swap.
///
/// The scan resolves the target's files through the ChaosFS mount this very process serves
/// (lookups, the read-ahead's `READDIRPLUS`). Were this process SIGKILLed while such a request
/// sits unanswered in ChaosFS, the thread waiting on it could never wake: FUSE waits out a
/// request userspace has read, and that thread, sharing the file table, would keep `/dev/fuse`
/// (and the starter's readiness pipe) open, so the kernel would never abort the connection and
/// the starter would wait forever. With a table of its own, the process's death closes
/// `/dev/fuse`, the kernel aborts the connection, the request ends with ECONNABORTED and the
/// thread exits.
pub(crate) fn on_private_fd_table<T: Send>(
    f: impl FnOnce() -> crate::Result<T> + Send,
) -> crate::Result<T> {
    std::thread::scope(|s| {
        let h = std::thread::Builder::new()
            .name("iochaos-swap".into())
            .spawn_scoped(s, || {
                // SAFETY: a new thread that owns no fd; `f` opens every fd it uses itself and
                // hands back none (this function's contract).
                unsafe { unshare_fd_table_closing_from_3() }
                    .map_err(|e| crate::Error::sys("a private file table for the swap", e))?;
                f()
            })
            .map_err(|e| crate::Error::sys("spawning the swap thread", e))?;
        match h.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}
